"""The WebSocket protocol end to end: real uvicorn, the `websockets` client."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server
from tests.services import redis_prefix

GRAPHS = {"approval": "tests.hitl_graphs:approval"}


@pytest.fixture(scope="module", params=["memory", "redis"])
def app_and_url(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """The same suite with each broker."""
    if request.param == "redis":
        with redis_prefix() as (redis_url, prefix):
            yield from _serve(broker_url=redis_url, broker_prefix=prefix)
    else:
        yield from _serve()


def _serve(**broker: str) -> Iterator[tuple[Any, str]]:
    settings = test_settings(
        **broker,
        ws_ping_interval=0.2,
        ws_idle_timeout=5,
        ws_rate_limit=200,
        ws_rate_burst=100,
        ws_max_message_bytes=4096,
    )
    settings.graphs.update(GRAPHS)
    app = create_app(settings)
    with live_server(app) as url:
        yield app, url


@pytest.fixture
def url(app_and_url: tuple[Any, str]) -> str:
    return app_and_url[1].replace("http://", "ws://") + "/ws"


def unpacked(raw: str | bytes) -> list[dict[str, Any]]:
    """One server message's items: an array of frames flattened, app pings skipped."""
    data = json.loads(raw)
    return [
        item for item in (data if isinstance(data, list) else [data]) if item.get("type") != "ping"
    ]


async def messages(ws: ClientConnection, timeout: float = 10) -> AsyncIterator[dict[str, Any]]:
    """Every server message (:func:`unpacked`)."""
    while True:
        for item in unpacked(await asyncio.wait_for(ws.recv(), timeout)):
            yield item


async def for_a_while(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """What the server sends in the next ``seconds``, app pings skipped. One level of
    time-out, not ``wait_for`` around :func:`messages`: Python 3.11's ``wait_for`` can
    lose its cancellation when a message (the app pings, every 0.2 s here) arrives at
    the same moment, and the outer wait then lasted until the idle time-out closed the
    socket (4001, 5 s later)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    seen: list[dict[str, Any]] = []
    while (left := deadline - loop.time()) > 0:
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        seen += unpacked(raw)
    return seen


async def until_done(ws: ClientConnection, runs: int = 1) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    finished = 0
    async for message in messages(ws):
        seen.append(message)
        if message["type"] in ("done", "error") and "seq" in message:
            finished += 1
            if finished == runs:
                return seen
    return seen


async def test_multi_turn_memory_on_one_socket(url: str, app_and_url: tuple[Any, str]) -> None:
    async with connect(url) as ws:
        for text in ("hello", "again"):
            await ws.send(
                json.dumps(
                    {
                        "type": "run",
                        "graph": "agent",
                        "message": text,
                        "thread_id": "ws-memory",
                        "client_run_id": text,
                    }
                )
            )
            seen = await until_done(ws)
            accepted = seen[0]
            assert accepted["type"] == "run_accepted" and accepted["client_run_id"] == text
            frames = [m for m in seen if "seq" in m]
            assert frames[0]["type"] == "run_start" and frames[0]["run_id"] == accepted["run_id"]
            assert text in "".join(m["content"] for m in frames if m["type"] == "token")
    async with httpx.AsyncClient() as client:
        state = (await client.get(f"{app_and_url[1]}/threads/ws-memory/state")).json()
    assert len(state["values"]["messages"]) == 4


async def test_two_runs_interleave_on_one_socket(url: str) -> None:
    async with connect(url) as ws:
        for thread in ("i-1", "i-2"):
            await ws.send(
                json.dumps(
                    {
                        "type": "run",
                        "graph": "ticker",
                        "message": "x",
                        "thread_id": thread,
                        "timeout": 0.4,
                    }
                )
            )
        seen = await until_done(ws, runs=2)
    frames = [m for m in seen if "seq" in m]
    by_run: dict[str, list[int]] = {}
    for frame in frames:
        by_run.setdefault(frame["run_id"], []).append(frame["seq"])
    assert len(by_run) == 2
    for seqs in by_run.values():
        assert seqs == list(range(1, len(seqs) + 1))
    order = [frame["run_id"] for frame in frames]
    first_end = min(max(i for i, r in enumerate(order) if r == run) for run in by_run)
    assert len(set(order[: first_end + 1])) == 2  # both were streaming at once


async def test_cancel_mid_run_then_silence(url: str) -> None:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "run", "graph": "ticker", "message": "x"}))
        run_id = None
        async for message in messages(ws):
            if message["type"] == "run_accepted":
                run_id = message["run_id"]
            if message.get("type") == "custom" and message["data"] == 2:
                await ws.send(json.dumps({"type": "cancel", "run_id": run_id}))
            if message.get("type") == "error" and "seq" in message:
                assert message["code"] == "cancelled"
                break
        later = await for_a_while(ws, 0.5)  # app pings arrive; nothing more for that run
        assert not [m for m in later if m.get("run_id") == run_id]


async def test_interrupt_and_resume(url: str) -> None:
    async with connect(url) as ws:
        await ws.send(
            json.dumps(
                {"type": "run", "graph": "approval", "message": "deploy?", "thread_id": "hitl"}
            )
        )
        seen = await until_done(ws)
        kinds = [m["type"] for m in seen if "seq" in m]
        assert kinds[-2:] == ["interrupt", "done"]
        interrupt = next(m for m in seen if m["type"] == "interrupt")
        assert interrupt["value"] == {"question": "approve?"} and interrupt["resumable"]
        await ws.send(json.dumps({"type": "resume", "thread_id": "hitl", "value": "yes"}))
        resumed = await until_done(ws)
        accepted = resumed[0]
        assert accepted["type"] == "run_accepted" and accepted["run_id"] != interrupt["run_id"]
        frames = [m for m in resumed if "seq" in m]
        assert frames[0]["type"] == "run_start" and frames[0]["thread_id"] == "hitl"
        assert "approved: yes" in "".join(m["content"] for m in frames if m["type"] == "token")
        assert frames[-1]["type"] == "done"
        # nothing left to answer
        await ws.send(json.dumps({"type": "resume", "thread_id": "hitl", "value": "again"}))
        error = await anext(messages(ws))
        assert (error["type"], error["code"]) == ("error", "not_interrupted")


async def test_a_large_room_tells_the_count_and_lists_members_to_joiners(
    app_and_url: tuple[Any, str], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``presence_members_max`` only a joiner's own ``join`` lists the members; every
    presence message carries the room's ``count`` (docs/protocol.md, "Presence"), here
    and, with Redis, across workers."""
    connections = app_and_url[0].state.agent_server.connections
    monkeypatch.setattr(connections, "presence_members_max", 1)  # this test's only
    async with connect(url) as a, connect(url) as b:
        await a.send(json.dumps({"type": "join", "thread_id": "big-room"}))
        first = await anext(messages(a))
        assert (first["count"], len(first["members"])) == (1, 1)
        await b.send(json.dumps({"type": "join", "thread_id": "big-room"}))
        own, seen = await anext(messages(b)), await anext(messages(a))
        assert (own["event"], own["count"], len(own["members"])) == ("join", 2, 2)
        assert (seen["client_id"], seen["count"], "members" in seen) == (own["client_id"], 2, False)
        await b.send(json.dumps({"type": "leave", "thread_id": "big-room"}))
        left = await anext(messages(a))
        assert (left["event"], left["count"], "members" in left) == ("leave", 1, True)


async def test_room_of_three(url: str) -> None:
    async with connect(url) as a, connect(url) as b, connect(url) as c:
        for ws in (a, b, c):
            await ws.send(json.dumps({"type": "join", "thread_id": "room-1"}))
            presence = await anext(messages(ws))
            assert presence["type"] == "presence" and presence["event"] == "join"
        # a saw b and c arrive; c sees three members
        assert len(presence["members"]) == 3
        await a.send(
            json.dumps({"type": "run", "graph": "agent", "message": "2+2", "thread_id": "room-1"})
        )
        results = await asyncio.gather(*(until_done(ws) for ws in (a, b, c)))
        streams = [[m for m in seen if "seq" in m] for seen in results]
        assert streams[0] == streams[1] == streams[2]  # identical frames for every member
        assert any(m["type"] == "tool_end" and m["output"] == "4" for m in streams[0])
        await b.send(json.dumps({"type": "leave", "thread_id": "room-1"}))
        for ws in (a, c):
            left = None
            async for message in messages(ws):
                if message["type"] == "presence":
                    left = message
                    break
            assert left and left["event"] == "leave" and len(left["members"]) == 2


async def test_subscribe_to_a_run_started_over_http(url: str, app_and_url: tuple[Any, str]) -> None:
    async with httpx.AsyncClient() as client:
        run = (
            await client.post(f"{app_and_url[1]}/runs", json={"graph": "agent", "message": "hi"})
        ).json()
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "run_id": run["run_id"], "after": 2}))
        seen = await until_done(ws)
    frames = [m for m in seen if "seq" in m]
    assert frames[0]["seq"] == 3 and frames[-1]["type"] == "done"
    assert any(m["type"] == "subscribed" for m in seen)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "run", "message": "x"}', "invalid_message"),
        ('{"type": "run", "graph": "agent"}', "invalid_message"),
        ('{"type": "run", "graph": "nope", "message": "x"}', "graph_not_found"),
        ('{"type": "cancel", "run_id": "nope"}', "run_not_found"),
        ('{"type": "join"}', "invalid_message"),
        ('{"type": "resume", "value": 1}', "invalid_message"),
        # A NUL in a thread id reached PostgreSQL and killed the socket there; a seq past
        # cursors.MAX_SEQ is refused as the HTTP routes refuse it.
        ('{"type": "resume", "thread_id": "a\\u0000b", "graph": "agent"}', "invalid_message"),
        ('{"type": "subscribe", "thread_id": "a\\u0000b"}', "invalid_message"),
        ('{"type": "subscribe", "run_id": "r", "after": 1000000000000000000}', "invalid_message"),
    ],
)
async def test_bad_input_gets_an_error_and_the_socket_stays(
    url: str, payload: str, code: str
) -> None:
    async with connect(url) as ws:
        await ws.send(payload)
        error = await anext(messages(ws))
        assert error["type"] == "error" and error["code"] == code and error["message"]
        await ws.send(json.dumps({"type": "ping", "id": 7}))
        pong = await anext(messages(ws))
        assert pong == {"type": "pong", "id": 7, "ts": pong["ts"]}


async def test_oversize_message_closes_1009(url: str) -> None:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "ping", "id": "x" * 5000}))
        with pytest.raises(ConnectionClosed) as closed:
            async for _ in messages(ws):
                pass
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_flood_closes_1008(url: str) -> None:
    async with connect(url) as ws:
        for _ in range(150):  # burst is 100
            await ws.send(json.dumps({"type": "ping"}))
        with pytest.raises(ConnectionClosed) as closed:
            async for _ in messages(ws):
                pass
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "rate limit" in closed.value.rcvd.reason


async def test_app_heartbeat_and_idle_timeout() -> None:
    settings = test_settings(ws_ping_interval=0.1, ws_idle_timeout=0.5)
    with live_server(create_app(settings)) as base:
        async with connect(base.replace("http", "ws") + "/ws") as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 2))
            assert first["type"] == "ping"
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 3)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


async def test_two_hundred_sockets_leave_nothing_behind(
    url: str, app_and_url: tuple[Any, str]
) -> None:
    app = app_and_url[0]
    state = app.state.agent_server

    async def one(i: int) -> None:
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "join", "thread_id": f"leak-{i % 7}"}))
            await anext(messages(ws))
            if i % 3 == 0:
                await ws.send(json.dumps({"type": "subscribe", "thread_id": f"leak-{i % 5}"}))
                await anext(messages(ws))

    for start in range(0, 200, 50):
        await asyncio.gather(*(one(i) for i in range(start, start + 50)))
    for _ in range(50):
        if not state.connections.clients and not state.sessions:
            break
        await asyncio.sleep(0.05)
    assert state.connections.clients == {}
    assert state.connections.rooms == {}
    assert state.connections.watchers == {}
    assert state.sessions == {}
    gc.collect()
    leftover = [t for t in asyncio.all_tasks() if "ws-" in t.get_name()]
    assert leftover == []  # (this loop's tasks; the server's are checked via its tables)


async def test_leaving_a_room_stops_its_runs_frames(url: str) -> None:
    # The starter reads nothing: with a bounded queue its client would stop reading the
    # socket, miss the server's close frame and wait out its close timeout (10 s).
    async with connect(url, max_queue=None) as starter, connect(url) as watcher:
        await watcher.send(json.dumps({"type": "join", "thread_id": "leave-room"}))
        await anext(messages(watcher))
        await starter.send(
            json.dumps(
                {
                    "type": "run",
                    "graph": "ticker",
                    "message": "x",
                    "thread_id": "leave-room",
                    "timeout": 3,
                }
            )
        )
        async for message in messages(watcher):
            if message.get("type") == "custom":
                run_id = message["run_id"]
                break
        await watcher.send(json.dumps({"type": "leave", "thread_id": "leave-room"}))
        after = await for_a_while(watcher, 0.6)
        # at most what was already on its way when the leave arrived
        assert len([m for m in after if m.get("type") == "custom"]) <= 3
        # Ended now, so the server's shutdown does not wait for it.
        await starter.send(json.dumps({"type": "cancel", "run_id": run_id}))
        await until_done(starter)


async def test_foreign_origins_are_refused_unless_listed() -> None:
    settings = test_settings(cors_origins=["https://app.example"])
    with live_server(create_app(settings)) as base:
        url = base.replace("http", "ws") + "/ws"
        host = base.removeprefix("http://")
        for origin, allowed in (
            ("https://app.example", True),
            (f"http://{host}", True),  # the server's own page
            ("https://evil.example", False),
        ):
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                if allowed:
                    await ws.send(json.dumps({"type": "ping", "id": 1}))
                    assert (await anext(messages(ws)))["type"] == "pong"
                else:
                    with pytest.raises(ConnectionClosed) as closed:
                        await anext(messages(ws))
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == 1008
                    assert "origin not allowed" in closed.value.rcvd.reason
        async with httpx.AsyncClient() as client:
            preflight = await client.options(
                f"{base}/runs/stream",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "content-type"},
            )  # fmt: skip
            foreign = await client.options(
                f"{base}/runs/stream",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in foreign.headers
