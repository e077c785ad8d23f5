"""LangGraph's thread-centric streaming (Agent Protocol v2), judged by its own clients.

The first tests drive ``langgraph-sdk``'s ``client.threads.stream`` (async over SSE and
over its WebSocket transport, sync over SSE) against a live server; they also run
against LangGraph's dev server when ``LANGGRAPH_API_URL`` names one
(``make test-langgraph-dev``), apart from what it does not serve (marked ``ours``: the
``tools`` channel of a plain ``ToolNode`` agent, the state commands). The rest check the
protocol itself on agent-server: exact resume by every cursor on both transports, the
errors, subgraph namespaces, auth and origins. The cross-worker cases (Redis and
PostgreSQL) are in tests/test_thread_stream_workers.py; the JS client's in
tests/test_js_clients.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client, get_sync_client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server
from tests.relay import Relay

UPSTREAM = os.environ.get("LANGGRAPH_API_URL")
ours = pytest.mark.skipif(UPSTREAM is not None, reason="agent-server only")

GRAPHS = {
    "agent": "tests.lg_graphs:agent",
    "slow": "tests.lg_graphs:slow",
    "nested": "tests.lg_graphs:nested",
    "approval": "tests.hitl_graphs:approval",
}
WORDS = " ".join(f"word{i}" for i in range(30))  # the slow graph echoes them, 20 ms a token


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    if UPSTREAM is not None:
        yield UPSTREAM
        return
    with live_server(create_app(test_settings(graphs=GRAPHS))) as url:
        yield url


@pytest.fixture(scope="module")
def url(base: str) -> str:
    return base if UPSTREAM is not None else f"{base}/langgraph"


def human(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def text(message: dict[str, Any]) -> str:
    """A state message's text (LangGraph's dev server keeps content as blocks)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


def root_end(event: dict[str, Any]) -> bool:
    params = event["params"]
    return (
        event["method"] == "lifecycle"
        and not params["namespace"]
        and params["data"]["event"] in ("completed", "failed", "interrupted")
    )


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- the official Python client ---------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_tool_calling_run_streams_text_deltas_and_tool_calls(
    url: str, transport: str
) -> None:
    client = get_client(url=url, api_key=None)
    async with client.threads.stream(assistant_id="agent", transport=transport) as thread:  # type: ignore[arg-type]
        started = await thread.run.start(input=human("what is 6*7?"))
        assert started["run_id"]
        messages, calls = [], []
        async for kind, item in thread.interleave_projections(["messages", "tool_calls"]):
            (messages if kind == "messages" else calls).append(item)
        deltas = [[d async for d in message.text] for message in messages]
        requested = [call for message in messages for call in await message.tool_calls]
        output = await thread.output
    await client.aclose()
    deltas = [d for d in deltas if d]  # LangGraph's server also sends the tool call's message
    assert len(deltas) == 1 and len(deltas[0]) > 1  # token by token
    assert "".join(deltas[0]) == text(output["messages"][-1])
    assert "42" in text(output["messages"][-1])
    assert [m["type"] for m in output["messages"]] == ["human", "ai", "tool", "ai"]
    assert [(c["name"], c["args"]) for c in requested] == [("calculator", {"expression": "6*7"})]
    if UPSTREAM is None:  # LangGraph's server: no tools channel for a plain ToolNode agent
        assert [(c.name, c.input, await c.output) for c in calls] == [
            ("calculator", {"expression": "6*7"}, "42")
        ]


def test_sync_client_over_sse(url: str) -> None:
    client = get_sync_client(url=url, api_key=None)
    with client.threads.stream(assistant_id="agent") as thread:
        thread.run.start(input=human("what is 6*7?"))
        events = list(thread.subscribe(["messages", "tools"]))
        output = thread.output
    data = [e["params"]["data"] for e in events]
    deltas = [d["delta"].get("text", "") for d in data if d["event"] == "content-block-delta"]
    assert "".join(deltas) == text(output["messages"][-1])
    assert data[-1]["event"] == "message-finish"
    if UPSTREAM is None:
        tools = [d for d in data if d["event"].startswith("tool-")]
        assert [d["event"] for d in tools] == ["tool-started", "tool-finished"]
        assert tools[0]["tool_name"] == "calculator" and tools[1]["output"] == "42"
        assert tools[0]["tool_call_id"] == tools[1]["tool_call_id"]


async def test_interrupt_is_requested_then_answered(url: str) -> None:
    client = get_client(url=url, api_key=None)
    async with client.threads.stream(assistant_id="approval") as thread:
        await thread.run.start(input=human("deploy?"))
        await until(lambda: thread.interrupted)
        [interrupt] = thread.interrupts
        assert interrupt["interrupt_id"] and interrupt["namespace"] == []
        await thread.run.respond("yes")
        output = await thread.output
    await client.aclose()
    assert text(output["messages"][-1]) == "approved: yes"


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_dropped_stream_reconnects_with_every_token_once(url: str, transport: str) -> None:
    relay = Relay(url)
    client = get_client(url=await relay.start(), api_key=None)
    try:
        async with client.threads.stream(assistant_id="slow", transport=transport) as thread:  # type: ignore[arg-type]
            await thread.run.start(input=human(WORDS))
            deltas: list[str] = []
            async for event in thread.subscribe(["messages"]):
                data = event["params"]["data"]
                if data["event"] == "content-block-delta":
                    deltas.append(data["delta"]["text"])
                    if len(deltas) == 8:
                        relay.cut()  # mid-run: the client reconnects with `since`
            state = await client.threads.get_state(thread.thread_id)
    finally:
        await client.aclose()
        await relay.close()
    assert len(deltas) > 30
    assert "".join(deltas) == text(state["values"]["messages"][-1])


async def test_two_subscribers_on_one_thread_see_the_same_events(url: str) -> None:
    first, second = get_client(url=url, api_key=None), get_client(url=url, api_key=None)
    async with first.threads.stream(assistant_id="slow") as one:
        await one.run.start(input=human("hello there"))
        async with second.threads.stream(one.thread_id, assistant_id="slow") as two:

            async def events(thread: Any) -> list[tuple[str, Any]]:
                found = []
                async for event in thread.subscribe(["messages", "lifecycle"]):
                    found.append((event["event_id"], event["params"]["data"]))
                    if root_end(event):
                        break
                return found

            seen_one, seen_two = await asyncio.gather(events(one), events(two))
    await first.aclose()
    await second.aclose()
    assert seen_one == seen_two
    assert any(data.get("event") == "content-block-delta" for _, data in seen_one)


# -- the protocol, raw ---------------------------------------------------------------------


async def command(
    client: httpx.AsyncClient, thread_id: str, method: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.post(
        f"/threads/{thread_id}/commands",
        json={"id": 1, "method": method, "params": params or {}},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def run_start(
    client: httpx.AsyncClient, thread_id: str, assistant: str, text: str
) -> dict[str, Any]:
    return await command(
        client, thread_id, "run.start", {"assistant_id": assistant, "input": human(text)}
    )


async def sse_events(
    client: httpx.AsyncClient,
    thread_id: str,
    body: dict[str, Any],
    *,
    limit: int | None = None,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Events of one stream request, until ``limit`` of them or the root's end."""
    found: list[dict[str, Any]] = []
    async with client.stream(
        "POST", f"/threads/{thread_id}/stream/events", json=body, headers=headers
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            found.append(event)
            if len(found) == limit or root_end(event):
                break
    return found


@pytest.fixture
async def raw(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


ALL = ["values", "updates", "messages", "tools", "lifecycle", "input", "tasks", "checkpoints"]


@ours
async def test_resume_by_every_cursor_is_exact_on_both_transports(
    raw: httpx.AsyncClient, url: str
) -> None:
    thread_id = str(uuid.uuid4())
    started = await run_start(raw, thread_id, "slow", WORDS)
    assert started["type"] == "success" and started["result"]["run_id"]
    applied = started["meta"]["applied_through_seq"]
    first = await sse_events(raw, thread_id, {"channels": ALL, "since": applied}, limit=12)
    cursor = first[-1]["seq"]
    rest = await sse_events(raw, thread_id, {"channels": ALL, "since": cursor})
    full = await sse_events(raw, thread_id, {"channels": ALL})  # no cursor: the whole thread
    assert first + rest == full
    seqs = [e["seq"] for e in full]
    assert seqs == sorted(set(seqs)) and all(e["event_id"] == str(e["seq"]) for e in full)
    assert sum(e["method"] == "messages" for e in rest) > 10  # dropped mid-message
    by_id = await sse_events(raw, thread_id, {"channels": ALL, "since_event_id": str(cursor)})
    by_header = await sse_events(
        raw, thread_id, {"channels": ALL}, headers={"Last-Event-ID": str(cursor)}
    )
    assert by_id == by_header == rest

    ws_url = url.replace("http", "ws", 1) + f"/threads/{thread_id}/stream/events"
    async with connect(ws_url) as socket:
        subscribe = {"channels": ALL, "since": cursor}
        await socket.send(
            json.dumps({"id": 7, "method": "subscription.subscribe", "params": subscribe})
        )
        reply = json.loads(await socket.recv())
        assert reply["type"] == "success" and reply["id"] == 7
        over_ws = []
        while not over_ws or not root_end(over_ws[-1]):
            message = json.loads(await socket.recv())  # one JSON object per text frame
            assert isinstance(message, dict) and message["type"] == "event"
            over_ws.append(message)
    assert over_ws == rest


@ours
async def test_channels_namespaces_and_subgraph_lifecycle(raw: httpx.AsyncClient) -> None:
    thread_id = str(uuid.uuid4())
    await run_start(raw, thread_id, "nested", "what is 6*7?")
    everything = await sse_events(raw, thread_id, {"channels": ALL})
    inside = {tuple(e["params"]["namespace"]) for e in everything}
    assert inside == {(), ("research",)}
    lifecycle = [
        (e["params"]["namespace"], e["params"]["data"]["event"])
        for e in everything
        if e["method"] == "lifecycle"
    ]
    assert lifecycle == [
        ([], "running"),
        (["research"], "started"),
        (["research"], "completed"),
        ([], "completed"),
    ]
    tools = [e for e in everything if e["method"] == "tools"]
    assert {tuple(e["params"]["namespace"]) for e in tools} == {("research",)}
    scoped = await sse_events(
        raw,
        thread_id,
        {"channels": ["messages", "lifecycle"], "namespaces": [["research"]], "depth": 0},
        limit=sum(
            e["method"] in ("messages", "lifecycle") and e["params"]["namespace"] == ["research"]
            for e in everything
        ),
    )
    assert scoped == [
        e
        for e in everything
        if e["method"] in ("messages", "lifecycle") and e["params"]["namespace"] == ["research"]
    ]
    tree = await command(raw, thread_id, "agent.getTree")
    assert tree["result"]["tree"] == {
        "namespace": [],
        "status": "completed",
        "graph_name": "nested",
        "children": [{"namespace": ["research"], "status": "completed", "graph_name": "research"}],
    }


@ours
async def test_tools_channel_errors_and_output_deltas(raw: httpx.AsyncClient) -> None:
    thread_id = str(uuid.uuid4())
    calls = '/calculator {"expression": "1/0"}\n/long_task {"steps": 3, "delay": 0.05}'
    await run_start(raw, thread_id, "agent", calls)
    events = await sse_events(raw, thread_id, {"channels": ["tools", "lifecycle"]})
    tools = [e["params"]["data"] for e in events if e["method"] == "tools"]
    by_call: dict[str, list[dict[str, Any]]] = {}
    for data in tools:
        by_call.setdefault(data["tool_call_id"], []).append(data)
    calculator, long_task = sorted(by_call.values(), key=lambda c: c[0]["tool_name"])
    assert [d["event"] for d in calculator] == ["tool-started", "tool-error"]
    assert calculator[1]["message"] == "division by zero"
    kinds = [d["event"] for d in long_task]
    assert kinds[0] == "tool-started" and kinds[-1] == "tool-finished"
    deltas = [json.loads(d["delta"]) for d in long_task if d["event"] == "tool-output-delta"]
    assert deltas and deltas[0]["step"] == 1  # the stream writer's progress, while it ran
    assert long_task[-1]["output"] == "long_task finished 3 steps"


@ours
async def test_runs_of_one_thread_follow_each_other_in_one_seq_space(
    raw: httpx.AsyncClient,
) -> None:
    thread_id = str(uuid.uuid4())
    await run_start(raw, thread_id, "agent", "hi")
    first = await sse_events(raw, thread_id, {"channels": ["lifecycle", "values"]})
    again = await run_start(raw, thread_id, "agent", "and again")
    applied = again["meta"]["applied_through_seq"]
    assert applied >= first[-1]["seq"]
    second = await sse_events(
        raw, thread_id, {"channels": ["lifecycle", "values"], "since": applied}
    )
    assert second[0]["params"]["data"] == {"event": "running", "graph_name": "agent"}
    assert second[0]["seq"] > first[-1]["seq"]
    both = await sse_events(raw, thread_id, {"channels": ["lifecycle", "values"]}, limit=99)
    assert [e["seq"] for e in both] == [e["seq"] for e in first + second][: len(both)]


@ours
async def test_state_commands_inject_and_fork(raw: httpx.AsyncClient) -> None:
    thread_id = str(uuid.uuid4())
    run = await run_start(raw, thread_id, "agent", "what is 6*7?")
    await sse_events(raw, thread_id, {"channels": ["lifecycle"]})
    state = (await command(raw, thread_id, "state.get", {"namespace": []}))["result"]
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai", "tool", "ai"]
    assert state["checkpoint"]["id"]
    keys = await command(raw, thread_id, "state.get", {"namespace": [], "keys": ["nothing"]})
    assert keys["result"]["values"] == {}
    listed = (await command(raw, thread_id, "state.listCheckpoints", {"limit": 3}))["result"]
    checkpoints = listed["checkpoints"]
    assert checkpoints[0]["id"] == state["checkpoint"]["id"] and len(checkpoints) == 3
    assert [c["step"] for c in checkpoints] == [3, 2, 1]
    assert checkpoints[0]["node_name"] == "agent" and checkpoints[1]["node_name"] == "tools"
    assert "owner" not in checkpoints[0]["metadata"]
    older = await command(
        raw, thread_id, "state.listCheckpoints", {"limit": 2, "before": checkpoints[1]["id"]}
    )
    assert [c["step"] for c in older["result"]["checkpoints"]] == [1, 0]

    fork = await command(raw, thread_id, "state.fork", {"checkpoint_id": checkpoints[2]["id"]})
    assert fork["result"]["thread_id"] == thread_id
    assert fork["result"]["run_id"] != run["result"]["run_id"]
    await sse_events(
        raw, thread_id, {"channels": ["lifecycle"], "since": fork["meta"]["applied_through_seq"]}
    )
    injected = await command(
        raw,
        thread_id,
        "input.inject",
        {"namespace": [], "message": {"role": "user", "content": "2+3"}},
    )
    values = await sse_events(
        raw,
        thread_id,
        {"channels": ["values", "lifecycle"], "since": injected["meta"]["applied_through_seq"]},
    )
    last = [e for e in values if e["method"] == "values"][-1]["params"]["data"]
    assert last["messages"][-1]["content"] == "The calculator tool returned 5."


@ours
async def test_protocol_errors(raw: httpx.AsyncClient, url: str) -> None:
    fresh = str(uuid.uuid4())

    async def error(method: str, params: dict[str, Any], thread_id: str = fresh) -> str:
        reply = await command(raw, thread_id, method, params)
        assert reply["type"] == "error" and reply["id"] == 1, reply
        return str(reply["error"])

    assert await error("run.begin", {}) == "unknown_command"
    assert await error("run.start", {"input": {}}) == "invalid_argument"
    assert await error("run.start", {"assistant_id": "nope"}) == "invalid_argument"
    assert await error("subscription.subscribe", {"channels": ["values"]}) == "not_supported"
    assert await error("input.respond", {"interrupt_id": "x", "response": 1}) == "no_such_run"
    assert await error("agent.getTree", {}) == "no_such_run"
    assert await error("state.fork", {"checkpoint_id": "nope"}) == "no_such_checkpoint"
    assert await error("state.listCheckpoints", {"namespace": ["a"]}) == "not_supported"

    asked = str(uuid.uuid4())
    await run_start(raw, asked, "approval", "go?")
    events = await sse_events(raw, asked, {"channels": ["input", "lifecycle"]})
    assert events[-1]["params"]["data"] == {"event": "interrupted", "graph_name": "approval"}
    [requested] = [e for e in events if e["method"] == "input.requested"]
    assert requested["params"]["data"]["payload"] == {"question": "approve?"}
    assert await error("input.respond", {"interrupt_id": "x", "response": 1}, asked) == (
        "no_such_interrupt"
    )
    assert await error("state.get", {"namespace": ["nowhere"]}, asked) == "no_such_namespace"
    assert await error("state.fork", {"checkpoint_id": "nope"}, asked) == "no_such_checkpoint"
    assert (
        await error(
            "input.inject",
            {"namespace": ["x"], "message": {"role": "user", "content": "hi"}},
            asked,
        )
        == "not_supported"
    )
    interrupt_id = requested["params"]["data"]["interrupt_id"]
    answered = await command(
        raw,
        asked,
        "input.respond",
        {"interrupt_id": interrupt_id, "namespace": [], "response": "ok"},
    )
    assert answered["type"] == "success"

    bad = await raw.post(f"/threads/{fresh}/commands", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_argument"
    bad = await raw.post(f"/threads/{fresh}/commands", json={"id": True, "method": "x"})
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    missing = await raw.post(f"/threads/{fresh}/stream/events", json={"channels": ["values"]})
    assert missing.status_code == 404  # no such thread (yet): the SDKs do not retry
    channel = await raw.post(f"/threads/{asked}/stream/events", json={"channels": ["nope"]})
    assert channel.status_code == 422

    ws_url = url.replace("http", "ws", 1) + f"/threads/{fresh}/stream/events"
    async with connect(ws_url) as socket:
        await socket.send("not json")
        assert json.loads(await socket.recv())["error"] == "invalid_argument"
        await socket.send(
            json.dumps(
                {
                    "id": 2,
                    "method": "subscription.unsubscribe",
                    "params": {"subscription_id": "nope"},
                }
            )
        )
        assert json.loads(await socket.recv())["error"] == "no_such_subscription"
        await socket.send(
            json.dumps(
                {
                    "id": 3,
                    "method": "run.start",
                    "params": {"assistant_id": "agent", "input": human("hi")},
                }
            )
        )  # a new thread, over the socket
        reply = json.loads(await socket.recv())
        assert reply["type"] == "success" and reply["id"] == 3


@ours
def test_auth_ownership_and_origins() -> None:
    keys = {"alice": "key-alice", "bob": "key-bob"}
    settings = test_settings(
        graphs=GRAPHS, auth="api_keys", api_keys=keys, cors_origins=["http://app.example"]
    )

    async def check(base: str) -> None:
        url = f"{base}/langgraph"
        alice = httpx.AsyncClient(base_url=url, headers={"X-Api-Key": "key-alice"}, timeout=30)
        bob = httpx.AsyncClient(base_url=url, headers={"X-Api-Key": "key-bob"}, timeout=30)
        thread_id = str(uuid.uuid4())
        async with alice, bob:
            await run_start(alice, thread_id, "agent", "hi")
            assert len(await sse_events(alice, thread_id, {"channels": ["lifecycle"]})) == 2
            refused = await bob.post(
                f"/threads/{thread_id}/commands",
                json={"id": 4, "method": "state.get", "params": {}},
            )
            assert refused.status_code == 403
            assert refused.json()["error"] == "permission_denied" and refused.json()["id"] == 4
            stream = await bob.post(
                f"/threads/{thread_id}/stream/events", json={"channels": ["values"]}
            )
            assert stream.status_code == 403
            nobody = await httpx.AsyncClient(base_url=url).post(
                f"/threads/{thread_id}/commands", json={"id": 1, "method": "state.get"}
            )
            assert nobody.status_code == 401

        ws = url.replace("http", "ws", 1) + f"/threads/{thread_id}/stream/events"
        cases = [
            ({"X-Api-Key": "key-bob"}, 4403),  # another user's thread
            ({}, 4401),  # no credentials
            ({"X-Api-Key": "key-alice", "Origin": "http://evil.example"}, 4403),
        ]
        for headers, code in cases:
            async with connect(ws, additional_headers=headers) as socket:
                with pytest.raises(ConnectionClosed) as closed:
                    await socket.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == code
        headers = {"X-Api-Key": "key-alice", "Origin": "http://app.example"}
        async with connect(ws, additional_headers=headers) as socket:
            await socket.send(json.dumps({"id": 1, "method": "state.get", "params": {}}))
            assert json.loads(await socket.recv())["type"] == "success"
        protocols = ["agent-server.v1", "bearer.key-alice"]  # a browser's way
        async with connect(ws, subprotocols=protocols) as socket:  # type: ignore[arg-type]
            assert socket.subprotocol == "agent-server.v1"
            await socket.send(json.dumps({"id": 2, "method": "state.get", "params": {}}))
            assert json.loads(await socket.recv())["type"] == "success"

    with live_server(create_app(settings)) as base:
        asyncio.run(check(base))


@ours
async def test_hostile_websocket_messages_are_answered_with_errors(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    hostile: list[str | bytes] = [
        "", "[]", "null", "{}", "\x00", b"\xff\xfe", '{"id": 1e400}', '{"id": -1, "method": "x"}',
        '{"id": 1.5, "method": "state.get"}', '{"id": 1, "method": 5}',
        '{"id": 1, "method": "run.start", "params": []}',
        '{"id": 1, "method": "run.start", "params": {"assistant_id": ""}}',
        '{"id": 1, "method": "run.start", "params": {"assistant_id": "agent", "config": 3}}',
        '{"id": 1, "method": "subscription.subscribe", "params": {"channels": ["nope"]}}',
        '{"id": 1, "method": "subscription.subscribe", "params": {"channels": []}}',
        '{"id": 1, "method": "subscription.subscribe", '
        '"params": {"channels": ["values"], "since": true}}',
        '{"id": 1, "method": "subscription.subscribe", '
        '"params": {"channels": ["values"], "since_event_id": "²"}}',
        '{"id": 1, "method": "subscription.reconnect", "params": {"run_id": "nope"}}',
        '{"id": 1, "method": "state.listCheckpoints", "params": {"limit": 0}}',
        '{"id": 1, "method": "state.get", "params": {"namespace": "x"}}',
        '{"id": 1, "method": "input.respond", "params": {"responses": []}}',
        '{"id": 1, "method": "input.respond", "params": {"interrupt_id": "x", "goto": 5}}',
        '{"id": 1, "method": "state.fork", "params": {"checkpoint_id": "a\\u0000b"}}',
    ]  # fmt: skip
    ws_url = url.replace("http", "ws", 1) + f"/threads/{uuid.uuid4()}/stream/events"
    with caplog.at_level("ERROR"):
        async with connect(ws_url) as socket:
            for message in hostile:
                await socket.send(message)
                reply = json.loads(await socket.recv())
                assert reply["type"] == "error", (message, reply)
                assert reply["error"] in ("invalid_argument", "unknown_command", "no_such_run")
            await socket.send(json.dumps({"id": 9, "method": "state.get", "params": {}}))
            assert json.loads(await socket.recv()) == {
                "type": "success", "id": 9, "result": {"values": {}},
                "meta": {"applied_through_seq": 0},
            }  # fmt: skip
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@ours
def test_a_restarted_server_numbers_an_older_thread_above_its_old_events(
    tmp_path: Any,
) -> None:
    """Without PostgreSQL a new process cannot know an older thread's runs: it numbers
    them above anything an earlier process did, so kept cursors and seen ids hold."""
    settings = test_settings(graphs=GRAPHS, database_url=str(tmp_path / "threads.sqlite"))
    thread_id = str(uuid.uuid4())

    async def turn(base: str, text: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=f"{base}/langgraph", timeout=30) as client:
            started = await run_start(client, thread_id, "agent", text)
            body = {"channels": ["lifecycle"], "since": started["meta"]["applied_through_seq"]}
            return await sse_events(client, thread_id, body)

    with live_server(create_app(settings)) as base:
        before = asyncio.run(turn(base, "hi"))
    with live_server(create_app(settings)) as base:
        after = asyncio.run(turn(base, "again"))
    assert before[-1]["seq"] < 10_000 < after[0]["seq"]
    assert [e["params"]["data"]["event"] for e in after] == ["running", "completed"]
