"""AG-UI over SSE, every event validated with the ag-ui-protocol package's own models."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ag_ui.core import Event
from pydantic import TypeAdapter

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server

EVENT: TypeAdapter[Event] = TypeAdapter(Event)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    settings = test_settings()
    settings.graphs["approval"] = "tests.hitl_graphs:approval"
    with live_server(create_app(settings)) as url:
        yield url


def run_agent(url: str, graph: str, thread: str, **body: Any) -> list[Any]:
    payload = {
        "threadId": thread,
        "runId": str(uuid.uuid4()),
        "state": {},
        "messages": [],
        "tools": [],
        "context": [],
        "forwardedProps": {},
        **body,
    }
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{url}/ag-ui/{graph}", json=payload)
    assert response.status_code == 200, response.text
    raw = response.content
    assert b"\r" not in raw  # the official client rejects \r\n
    events = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            events.append(EVENT.validate_python(json.loads(block[6:])))  # the package's models
    check_order(events)
    return events


def check_order(events: list[Any]) -> None:
    """The ordering rules the official client enforces."""
    kinds = [e.type.value if hasattr(e.type, "value") else e.type for e in events]
    assert kinds[0] == "RUN_STARTED"
    assert kinds[-1] in ("RUN_FINISHED", "RUN_ERROR")
    assert sum(k in ("RUN_FINISHED", "RUN_ERROR") for k in kinds) == 1
    open_messages: set[str] = set()
    open_steps: set[str] = set()
    for event, kind in zip(events, kinds, strict=True):
        if kind == "TEXT_MESSAGE_START":
            open_messages.add(event.message_id)
        elif kind == "TEXT_MESSAGE_CONTENT":
            assert event.message_id in open_messages and event.delta
        elif kind == "TEXT_MESSAGE_END":
            open_messages.remove(event.message_id)
        elif kind == "STEP_STARTED":
            open_steps.add(event.step_name)
        elif kind == "STEP_FINISHED":
            open_steps.remove(event.step_name)
        elif kind in ("RUN_FINISHED", "RUN_ERROR"):
            assert not open_messages and not open_steps


def user(text: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "role": "user", "content": text}


def kinds_of(events: list[Any]) -> list[str]:
    return [e.type.value if hasattr(e.type, "value") else e.type for e in events]


def test_tool_calling_conversation_continues_on_the_thread(server: str) -> None:
    first_message = user("what is 6*7?")
    events = run_agent(server, "agent", "agui-1", messages=[first_message])
    kinds = kinds_of(events)
    for expected in (
        "STEP_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "STATE_SNAPSHOT",
        "MESSAGES_SNAPSHOT",
    ):
        assert expected in kinds
    start = next(e for e in events if kinds_of([e])[0] == "TOOL_CALL_START")
    result = next(e for e in events if kinds_of([e])[0] == "TOOL_CALL_RESULT")
    assert start.tool_call_name == "calculator" and result.content == "42"
    assert result.tool_call_id == start.tool_call_id
    text = "".join(e.delta for e in events if kinds_of([e])[0] == "TEXT_MESSAGE_CONTENT")
    assert "42" in text
    assert events[-1].outcome.type == "success"
    snapshot = next(e for e in events if kinds_of([e])[0] == "MESSAGES_SNAPSHOT")
    history = [m.model_dump(by_alias=True, exclude_none=True) for m in snapshot.messages]
    assert history[0]["id"] == first_message["id"]
    # a follow-up sends the whole history, as AG-UI clients do: only the new turn is new
    follow_up = run_agent(server, "agent", "agui-1", messages=[*history, user("thanks")])
    final = next(e for e in follow_up if kinds_of([e])[0] == "MESSAGES_SNAPSHOT").messages
    assert [m.role for m in final].count("user") == 2


def test_interrupt_then_resume(server: str) -> None:
    events = run_agent(server, "approval", "agui-hitl", messages=[user("deploy?")])
    finished = events[-1]
    assert finished.outcome.type == "interrupt"
    interrupt = finished.outcome.interrupts[0]
    assert interrupt.metadata == {"value": {"question": "approve?"}}
    resumed = run_agent(
        server,
        "approval",
        "agui-hitl",
        resume=[{"interruptId": interrupt.id, "status": "resolved", "payload": "yes"}],
    )
    assert resumed[-1].outcome.type == "success"
    text = "".join(e.delta for e in resumed if kinds_of([e])[0] == "TEXT_MESSAGE_CONTENT")
    assert text == "approved: yes"


def test_bad_input_and_unknown_graph(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        missing = client.post(f"{server}/ag-ui/agent", json={"messages": []})
        unknown = client.post(
            f"{server}/ag-ui/nope",
            json={"threadId": "t", "runId": "r", "state": {}, "messages": [], "tools": [],
                  "context": [], "forwardedProps": {}},
        )  # fmt: skip
    assert missing.status_code == 422 and missing.json()["code"] == "validation_error"
    assert unknown.status_code == 404 and unknown.json()["code"] == "graph_not_found"


def test_a_cancelled_run_finishes_with_outcome_cancelled(server: str) -> None:
    payload = {"threadId": "agui-cancel", "runId": "r-1", "state": {}, "messages": [user("x")],
               "tools": [], "context": [], "forwardedProps": {}}  # fmt: skip
    events = []
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{server}/ag-ui/ticker", json=payload) as response,
    ):
        run_id = response.headers["x-run-id"]
        buffer = b""
        for chunk in response.iter_raw():
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                events.append(EVENT.validate_python(json.loads(block[6:])))
                if kinds_of(events)[-1] == "CUSTOM" and len(events) == 3:
                    client.post(f"{server}/runs/{run_id}/cancel")
    check_order(events)
    assert events[-1].outcome.type == "cancelled"


def test_a_thread_id_with_a_nul_is_refused(server: str) -> None:
    """A NUL in ``threadId`` reached PostgreSQL's checkpoints and was a 500 there."""
    body = {"threadId": "a\x00b", "runId": "r", "state": {}, "messages": [], "tools": [],
            "context": [], "forwardedProps": {}}  # fmt: skip
    response = httpx.post(f"{server}/ag-ui/agent", json=body, timeout=30)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"
    assert "threadId" in response.json()["message"]
