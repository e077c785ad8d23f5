"""agent_server/mcp/server.py: every graph as an MCP tool at /mcp, driven by the official
clients: the ``mcp`` Python SDK (``streamablehttp_client`` + ``ClientSession``) and, in
Node, ``@modelcontextprotocol/sdk`` (tests/js/mcp.mjs)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession, McpError, types
from mcp.client.streamable_http import streamablehttp_client
from starlette.applications import Starlette

from agent_server.app import create_app
from agent_server.runs import RunStatus
from tests.conftest import test_settings
from tests.live import live_server
from tests.test_js_clients import node

JS = Path(__file__).resolve().parent / "js"
# The client the issue names; mcp 1.2x deprecates it for ``streamable_http_client``.
pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client` instead")


@pytest.fixture(scope="module")
def app() -> Starlette:
    settings = test_settings()
    settings.graphs["approval"] = "tests.hitl_graphs:approval"
    return create_app(settings)


@pytest.fixture(scope="module")
def server(app: Starlette) -> Iterator[str]:
    with live_server(app) as url:
        yield url


@asynccontextmanager
async def session(
    url: str, token: str | None = None, **options: Any
) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        streamablehttp_client(url + "/mcp", headers=headers) as (read, write, _),
        ClientSession(read, write, **options) as client,
    ):
        await client.initialize()
        yield client


def text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_lists_every_graph_and_calls_one_with_progress(server: str) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        assert total is None
        seen.append((progress, message))

    async with session(server) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) == {"agent", "rag", "failing", "ticker", "quiet", "approval"}
        agent = listed["agent"]
        assert agent.description and "tool-calling agent" in agent.description
        assert set(agent.inputSchema["properties"]) == {"message", "thread_id", "resume"}
        assert agent.outputSchema is not None

        result = await client.call_tool(
            "agent", {"message": "what is 6*7?"}, progress_callback=on_progress
        )
        assert not result.isError
        assert text(result) == "The calculator tool returned 42."
        structured = result.structuredContent
        assert structured is not None
        assert structured["answer"] == text(result) and structured["status"] == "success"
        assert set(structured) == {"answer", "thread_id", "run_id", "status"}
        progress = [p for p, _ in seen]
        assert progress == sorted(set(progress))  # strictly increasing: frames so far
        messages = [m for _, m in seen]
        assert messages[:2] == [
            'tool_start calculator {"expression":"6*7"}',
            "tool_end calculator: 42",
        ]
        assert "".join(messages[2:]) == "The calculator tool returned 42."

        # The same thread goes on; a new one is made without a thread_id.
        thread_id = structured["thread_id"]
        again = await client.call_tool("agent", {"message": "hello", "thread_id": thread_id})
        assert again.structuredContent and again.structuredContent["thread_id"] == thread_id
        assert 'You said: "hello"' in text(again)
    runs = httpx.get(f"{server}/threads/{thread_id}/runs").json()["runs"]
    assert [run["run_id"] for run in runs] == [
        structured["run_id"],
        again.structuredContent["run_id"],
    ]


async def test_errors_are_results_and_bad_calls_are_invalid_params(server: str) -> None:
    async with session(server) as client:
        failed = await client.call_tool("failing", {"message": "hi"})
        assert failed.isError and text(failed) == "the model backend went away"
        assert failed.structuredContent is not None
        assert failed.structuredContent["error"] == {
            "code": "run_error",
            "message": "the model backend went away",
        }
        for name, arguments in [
            ("nope", {"message": "hi"}),
            ("agent", {}),
            ("agent", {"message": 1}),
            ("agent", {"message": "hi", "extra": 1}),
            ("agent", {"resume": "yes"}),
        ]:
            with pytest.raises(McpError) as raised:
                await client.call_tool(name, arguments)
            assert raised.value.error.code == types.INVALID_PARAMS, (name, arguments)
        refused = await client.call_tool("approval", {"resume": "yes", "thread_id": "t-none"})
        assert refused.isError and "not waiting on an interrupt" in text(refused)


async def test_interrupt_then_resume(server: str) -> None:
    async with session(server) as client:
        asked = await client.call_tool("approval", {"message": "ship it?"})
        assert not asked.isError
        structured = asked.structuredContent
        assert structured is not None and structured["status"] == "interrupted"
        assert [item["value"] for item in structured["interrupts"]] == [{"question": "approve?"}]
        assert "waiting for input" in text(asked) and structured["thread_id"] in text(asked)
        answered = await client.call_tool(
            "approval", {"resume": "yes", "thread_id": structured["thread_id"]}
        )
        assert text(answered) == "approved: yes"


async def test_cancelling_the_request_cancels_the_run(app: Starlette, server: str) -> None:
    progressed = anyio.Event()
    token: list[types.ProgressToken] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ProgressNotification
        ):
            token.append(message.root.params.progressToken)
            progressed.set()

    async with session(server, message_handler=on_message) as client:

        async def call() -> None:
            with pytest.raises(McpError):  # the server answers a cancelled request
                await client.call_tool("ticker", {"message": "go"}, progress_callback=ignore)

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await progressed.wait()
            await client.send_notification(
                types.ClientNotification(
                    types.CancelledNotification(
                        params=types.CancelledNotificationParams(
                            requestId=token[0], reason="changed my mind"
                        )
                    )
                )
            )
    runs = app.state.agent_server.runs
    ticker = [run for run in runs.runs.values() if run.graph.name == "ticker"]
    assert len(ticker) == 1
    with anyio.fail_after(10):
        await ticker[0].wait()
    assert ticker[0].status == RunStatus.CANCELLED
    assert ticker[0].final.message == "cancelled by the MCP client"


async def ignore(progress: float, total: float | None, message: str | None) -> None:
    pass


async def test_auth_and_thread_ownership_hold() -> None:
    settings = test_settings(auth="api_keys", api_keys={"alice": "key-a", "bob": "key-b"})
    with live_server(create_app(settings)) as url:
        response = httpx.post(url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert response.status_code == 401 and response.json()["code"] == "unauthorized"
        async with session(url, "key-a") as alice:
            mine = await alice.call_tool("agent", {"message": "hi"})
            assert mine.structuredContent is not None
        thread_id = mine.structuredContent["thread_id"]
        async with session(url, "key-b") as bob:
            theirs = await bob.call_tool("agent", {"message": "hi", "thread_id": thread_id})
            assert theirs.isError and text(theirs).startswith("forbidden:")


def test_transport_refusals_are_json_rpc_errors_and_documented(server: str) -> None:
    refusals = [
        httpx.post(server + "/mcp", content=b"{}", headers={"Content-Type": "text/plain"}),
        httpx.post(
            server + "/mcp", content=b"x" * 20_000, headers={"Content-Type": "application/json"}
        ),
        httpx.post(
            server + "/mcp",
            content=b"{",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
        ),
        httpx.get(server + "/mcp", headers={"Accept": "text/event-stream"}),
        httpx.post(server + "/mcp", json={}, headers={"Origin": "https://evil.example"}),
    ]
    assert [r.status_code for r in refusals] == [400, 413, 400, 400, 403]
    for response in refusals:
        body = response.json()
        assert body["jsonrpc"] == "2.0" and isinstance(body["error"]["message"], str)
    document = httpx.get(server + "/openapi.json").json()
    assert set(document["paths"]["/mcp"]) == {"get", "post", "delete"}
    post = document["paths"]["/mcp"]["post"]
    assert post["responses"]["413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JSONRPCErrorBody"
    }


def test_official_typescript_client(server: str) -> None:
    if not (JS / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        node()  # skips (or, in CI, fails) the way the other JS client tests do
        pytest.skip("tests/js has no @modelcontextprotocol/sdk: run `npm ci --prefix tests/js`")
    result = subprocess.run(
        [node(), str(JS / "mcp.mjs"), server], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {tool["name"] for tool in summary["tools"]} >= {"agent", "approval"}
    assert all(tool["input"] == ["message", "thread_id", "resume"] for tool in summary["tools"])
    assert summary["first"]["text"] == "The calculator tool returned 42."
    assert summary["first"]["structured"]["status"] == "success"
    assert [p["progress"] for p in summary["progress"]] == sorted(
        {p["progress"] for p in summary["progress"]}
    )
    assert summary["progress"][0]["message"].startswith("tool_start calculator")
    assert summary["again"] == {
        "text": "The calculator tool returned 5.",
        "thread_id": summary["first"]["structured"]["thread_id"],
    }
