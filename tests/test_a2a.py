"""Assistants as A2A agents (``/langgraph/a2a/{assistant_id}``), judged by the official
``a2a-sdk`` client: its card resolver, then ``message/send`` (non-streaming),
``message/stream``, ``tasks/get`` and an interrupt answered in the same context."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import (
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    TaskState,
)

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server
from tests.test_langgraph_api import GRAPHS


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with live_server(create_app(test_settings(graphs=GRAPHS))) as url:
        yield f"{url}/langgraph"


def ask(text: str, context_id: str | None = None) -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, parts=[Part(text=text)], message_id=str(uuid.uuid4()))
    if context_id:
        message.context_id = context_id
    return SendMessageRequest(message=message)


async def client_for(base: str, assistant: str, *, streaming: bool) -> Any:
    factory = ClientFactory(ClientConfig(streaming=streaming))
    return await factory.create_from_url(f"{base}/a2a/{assistant}")


def reply(task: Any) -> str:
    return "".join(part.text for artifact in task.artifacts for part in artifact.parts)


async def test_message_send_and_tasks_get(base: str) -> None:
    client = await client_for(base, "agent", streaming=False)
    try:
        events = [event async for event in client.send_message(ask("what is 6*7?"))]
        task = events[-1].task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert reply(task) == "The calculator tool returned 42."
        again = await client.get_task(GetTaskRequest(id=task.id))
        assert again.status.state == TaskState.TASK_STATE_COMPLETED
        assert reply(again) == "The calculator tool returned 42."
        # The context is the thread: a second message continues it.
        follow = [e async for e in client.send_message(ask("thanks", task.context_id))]
        assert follow[-1].task.context_id == task.context_id
    finally:
        await client.close()


async def test_message_stream(base: str) -> None:
    client = await client_for(base, "agent", streaming=True)
    try:
        events = [event async for event in client.send_message(ask("hello there"))]
        kinds = [event.WhichOneof("payload") for event in events]
        assert kinds[0] == "task" and kinds[-1] == "status_update"
        artifacts = [e.artifact_update.artifact for e in events if e.HasField("artifact_update")]
        assert artifacts and artifacts[0].parts[0].text.startswith("You said")
        final = events[-1].status_update
        assert final.status.state == TaskState.TASK_STATE_COMPLETED
    finally:
        await client.close()


async def test_an_interrupt_is_input_required_then_resumed(base: str) -> None:
    client = await client_for(base, "approval", streaming=False)
    try:
        asked = [e async for e in client.send_message(ask("deploy?"))][-1].task
        assert asked.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        answered = [e async for e in client.send_message(ask("yes", asked.context_id))]
        assert reply(answered[-1].task) == "approved: yes"
    finally:
        await client.close()


async def test_card_and_json_rpc_errors(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        card = (await http.get("/a2a/agent/.well-known/agent-card.json")).json()
        assert card["protocolVersion"] == "0.3.0" and card["capabilities"]["streaming"]
        assert card["url"].endswith("/langgraph/a2a/agent")
        assert (await http.get("/a2a/nope/.well-known/agent-card.json")).status_code == 404
        answers = [
            await http.post("/a2a/agent", content=b"{nope"),
            await http.post("/a2a/agent", json={"jsonrpc": "2.0", "id": 1, "method": "x/y"}),
            await http.post(
                "/a2a/agent", json={"jsonrpc": "2.0", "id": 2, "method": "message/send"}
            ),
            await http.post(
                "/a2a/agent",
                json={"jsonrpc": "2.0", "id": 3, "method": "tasks/get", "params": {"id": "a:b"}},
            ),
        ]
    codes = [a.json()["error"]["code"] for a in answers]
    assert [a.status_code for a in answers] == [200] * 4
    assert codes == [-32700, -32601, -32602, -32001]
