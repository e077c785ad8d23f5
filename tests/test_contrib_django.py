"""agent_server.contrib.django in-process: the example's ASGI application and the consumer
through Channels' ``WebsocketCommunicator`` on the in-memory layer, and the SSE view
called as Django calls it. Real server processes: tests/test_contrib_django_server.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import django
import pytest

try:
    import daphne  # noqa: F401  (channels.testing imports it: Channels' "daphne" extra)
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("channels.testing needs daphne: pip install 'channels[daphne]'",
                allow_module_level=True)  # fmt: skip

# The example project's settings (its in-memory Channels layer).
os.environ["DJANGO_SETTINGS_MODULE"] = "examples.django_app.settings"
django.setup()

from channels.layers import get_channel_layer  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402
from django.contrib.auth.models import AnonymousUser  # noqa: E402
from django.contrib.auth.models import User as DjangoUser  # noqa: E402
from django.test import AsyncRequestFactory, override_settings  # noqa: E402

from agent_server.contrib.django import AgentConsumer, runtime, stream_run  # noqa: E402
from agent_server.contrib.django.groups import GroupPublisher, group_name  # noqa: E402
from agent_server.state import AppState  # noqa: E402
from examples.django_app.asgi import application  # noqa: E402
from tests.conftest import ROOT, test_settings  # noqa: E402

ALICE = DjangoUser(pk=1, username="alice")
BOB = DjangoUser(pk=2, username="bob")


@asynccontextmanager
async def started(layer: dict[str, Any] | None = None) -> AsyncIterator[AppState]:
    """agent-server for the Django side, on a fresh in-memory layer (``layer``: its
    config, e.g. a small ``capacity``; None: no layer at all)."""
    in_memory = {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": layer or {}}
    layers = {"default": in_memory} if layer is not None else {}
    settings = test_settings(
        ws_ping_interval=30, reconnect_grace=0, shutdown_grace=0, ws_rate_burst=100
    )
    settings.graphs["approval"] = "tests.hitl_graphs:approval"
    with override_settings(CHANNEL_LAYERS=layers):
        state = await runtime.start(settings)
        try:
            yield state
        finally:
            await runtime.stop()


@pytest.fixture
async def state() -> AsyncIterator[AppState]:
    async with started({}) as state:
        yield state


async def connect(user: Any, consumer: type[AgentConsumer] = AgentConsumer) -> Any:
    communicator = WebsocketCommunicator(consumer.as_asgi(), "/ws/agent/")
    if user is not None:
        communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def send(communicator: Any, **message: Any) -> None:
    await communicator.send_to(text_data=json.dumps(message))


async def messages(communicator: Any, timeout: float = 10) -> AsyncIterator[dict[str, Any]]:
    """Every message, arrays of frames flattened."""
    while True:
        data = json.loads(await communicator.receive_from(timeout))
        for item in data if isinstance(data, list) else [data]:
            yield item


async def until_done(communicator: Any) -> list[dict[str, Any]]:
    seen = []
    async for message in messages(communicator):
        seen.append(message)
        if message["type"] in ("done", "error") and "seq" in message:
            return seen
    return seen


async def drain(communicator: Any, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Whatever arrives until ``quiet`` seconds pass without a message."""
    seen: list[dict[str, Any]] = []
    while not await communicator.receive_nothing(quiet):
        data = json.loads(await communicator.receive_from())
        seen.extend(data if isinstance(data, list) else [data])
    return seen


async def through_the_example(**headers: str) -> Any:
    """A socket through the example's whole application: its URL router, the session
    and auth middleware (no cookie: anonymous) and the origin check."""
    origin = [(b"origin", b"http://127.0.0.1:8000")]
    communicator = WebsocketCommunicator(application, "/ws/agent/", headers=origin)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def test_anonymous_is_accepted_then_closed_1008(state: AppState) -> None:
    for communicator in (await through_the_example(), await connect(None)):
        closed = await communicator.receive_output()
        assert closed["type"] == "websocket.close" and closed["code"] == 1008
        assert "unauthorized" in closed["reason"]
    assert state.sessions == {}


async def test_anonymous_allowed_by_the_setting(state: AppState) -> None:
    with override_settings(AGENT_SERVER_ALLOW_ANONYMOUS=True):
        communicator = await through_the_example()
        await send(communicator, type="ping", id=1)
        assert (await anext(messages(communicator)))["type"] == "pong"
        await send(communicator, type="run", graph="agent", message="2+2")
        seen = await until_done(communicator)
        await communicator.disconnect()
    run = state.runs.get(seen[0]["run_id"])
    assert run is not None and run.owner is None


def test_the_core_never_imports_django() -> None:
    code = (
        "import sys, agent_server, agent_server.app, agent_server.embed\n"
        "agent_server.create_app(agent_server.Settings(database_url='memory://'))\n"
        "assert not {'django', 'channels'} & set(sys.modules), 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


async def test_a_run_belongs_to_the_django_user(state: AppState) -> None:
    alice = await connect(ALICE)
    await send(alice, type="run", graph="agent", message="2+2", thread_id="dj-own")
    seen = await until_done(alice)
    accepted, frames = seen[0], [m for m in seen if "seq" in m]
    assert accepted["type"] == "run_accepted"
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert any(f["type"] == "tool_end" and f["output"] == "4" for f in frames)
    run = state.runs.get(accepted["run_id"])
    assert run is not None and run.owner == "1"
    bob = await connect(BOB)
    for message in (
        {"type": "subscribe", "run_id": accepted["run_id"]},
        {"type": "join", "thread_id": "dj-own"},
        {"type": "run", "graph": "agent", "message": "x", "thread_id": "dj-own"},
    ):
        await send(bob, **message)
        error = await anext(messages(bob))
        assert (error["type"], error["code"]) == ("error", "forbidden")
    await alice.disconnect()
    await bob.disconnect()


async def test_cancel_resume_and_bad_input(state: AppState) -> None:
    alice = await connect(ALICE)
    await send(alice, type="run", graph="ticker", message="x", thread_id="dj-cancel")
    async for message in messages(alice):
        if message["type"] == "run_accepted":
            run_id = message["run_id"]
        if message["type"] == "custom":
            await send(alice, type="cancel", run_id=run_id)
        if message["type"] == "error" and "seq" in message:
            assert message["code"] == "cancelled"
            break
    await send(alice, type="run", graph="approval", message="ship?", thread_id="dj-hitl")
    kinds = [m["type"] for m in await until_done(alice) if "seq" in m]
    assert kinds[-2:] == ["interrupt", "done"]
    await send(alice, type="resume", thread_id="dj-hitl", value="yes")
    resumed = await until_done(alice)
    assert "approved: yes" in "".join(m["content"] for m in resumed if m["type"] == "token")
    for raw, code in (("nope", "invalid_json"), ('{"type": "dance"}', "unknown_type"),
                      ('{"type": "join"}', "invalid_message")):  # fmt: skip
        await alice.send_to(text_data=raw)
        error = await anext(messages(alice))
        assert (error["type"], error["code"]) == ("error", code)
    await alice.disconnect()


async def test_a_large_room_over_the_channel_layer_lists_members_to_joiners(
    state: AppState,
) -> None:
    """Past ``presence_members_max`` a group's presence carries the count; only the
    joiner's own ``join`` lists the members (as on /ws, docs/protocol.md)."""
    state.connections.presence_members_max = 1
    a, b = await connect(ALICE), await connect(BOB)
    await send(a, type="join", thread_id="dj-big")
    first = await anext(messages(a))
    assert (first["count"], len(first["members"])) == (1, 1)
    await send(b, type="join", thread_id="dj-big")
    own, seen = await anext(messages(b)), await anext(messages(a))
    assert (own["client_id"], own["count"], len(own["members"])) == (seen["client_id"], 2, 2)
    assert (seen["event"], seen["count"], "members" in seen) == ("join", 2, False)
    for communicator in (a, b):
        await communicator.disconnect()


async def test_a_room_over_the_channel_layer(state: AppState) -> None:
    sockets = [await connect(ALICE) for _ in range(3)]
    for communicator in sockets:
        await send(communicator, type="join", thread_id="dj-room")
        presence = await anext(messages(communicator))
        assert presence["type"] == "presence" and presence["event"] == "join"
    assert len(presence["members"]) == 3
    # the members are in the thread's group, not in agent-server's own fan-out
    layer = get_channel_layer()
    assert len(layer.groups[group_name("dj-room")]) == 3
    assert state.connections.watchers == {}
    a, b, c = sockets
    for other in (a, b):  # they saw c arrive
        assert (await anext(messages(other)))["event"] == "join"
    await send(a, type="run", graph="agent", message="2+2", thread_id="dj-room")
    results = await asyncio.gather(*(until_done(s) for s in sockets))
    streams = [[m for m in seen if "seq" in m] for seen in results]
    assert streams[0] == streams[1] == streams[2]  # identical frames, each once
    assert any(m["type"] == "tool_end" and m["output"] == "4" for m in streams[0])
    await send(b, type="leave", thread_id="dj-room")
    for communicator in (a, c):
        left = await anext(messages(communicator))
        assert left["event"] == "leave" and len(left["members"]) == 2
    assert await b.receive_nothing(0.2)
    for communicator in sockets:
        await communicator.disconnect()
    assert state.sessions == {} and state.connections.clients == {}
    assert state.connections.rooms == {} and not layer.groups.get(group_name("dj-room"))


async def test_without_a_channel_layer_rooms_stay_in_the_process() -> None:
    async with started(None) as state:
        assert get_channel_layer() is None
        a, b = await connect(ALICE), await connect(ALICE)
        for communicator in (a, b):
            await send(communicator, type="join", thread_id="dj-local")
            assert (await anext(messages(communicator)))["type"] == "presence"
        assert len(state.connections.watching("dj-local")) == 2  # agent-server's fan-out
        await send(b, type="run", graph="agent", message="2+2", thread_id="dj-local")
        seen_a, seen_b = await asyncio.gather(until_done(a), until_done(b))
        assert [m for m in seen_a if "seq" in m] == [m for m in seen_b if "seq" in m]
        for communicator in (a, b):
            await communicator.disconnect()
        assert state.connections.watchers == {} and state.sessions == {}


def slow_consumer(gate: asyncio.Event, batches: list[int]) -> type[AgentConsumer]:
    """A member whose handling of group messages waits for ``gate``: its channel fills."""

    class Slow(AgentConsumer):
        async def agent_server_frames(self, event: dict[str, Any]) -> None:
            batches.append(event["batch"])
            await gate.wait()
            await super().agent_server_frames(event)

    return Slow


async def room_with_a_slow_member(
    state: AppState, thread: str, timeout: float, release: Callable[[Any], Awaitable[None]]
) -> tuple[Any, list[int], str]:
    """A slow member and a starter in ``thread``'s room; the starter runs ``ticker`` for
    ``timeout`` s, and ``release(starter)`` decides when the member catches up."""
    gate, batches = asyncio.Event(), list[int]()
    member = await connect(ALICE, slow_consumer(gate, batches))
    starter = await connect(ALICE)
    await send(member, type="join", thread_id=thread)
    assert (await anext(messages(member)))["type"] == "presence"
    await send(starter, type="run", graph="ticker", message="x", thread_id=thread, timeout=timeout)
    run_id = (await anext(messages(starter)))["run_id"]
    await release(starter)
    gate.set()
    await starter.disconnect()
    return member, batches, run_id


async def published(state: AppState) -> None:
    """Until the group publishers have sent everything: one may trail its run (on a
    loaded machine, batches sent after the slow member's gate opens would reach it)."""
    for callback in state.runs.on_submit:
        if isinstance(callback, GroupPublisher):
            while callback.tasks:
                await asyncio.wait(set(callback.tasks))


async def test_a_member_that_lost_the_end_resumes_from_the_log() -> None:
    async with started({"capacity": 3}) as state:

        async def after_the_run(starter: Any) -> None:
            await until_done(starter)
            await published(state)

        member, batches, run_id = await room_with_a_slow_member(
            state, "dj-drop-end", 1.0, after_the_run
        )
        got = [m for m in await drain(member) if m.get("run_id") == run_id]
        run = state.runs.get(run_id)
        assert run is not None and run.finished
        assert len(batches) <= 4 < run.last_seq  # the channel held 3: the rest was dropped
        seqs = [m["seq"] for m in got]
        assert seqs == list(range(1, len(seqs) + 1))  # what came is in order
        rest: list[dict[str, Any]] = []
        # Usually the end never came. On a loaded machine the member may have taken its
        # first batch late, seen a gap among the four it got and caught up by itself
        # (the next test's case); either way nothing may be missing.
        if got[-1]["type"] not in ("done", "error"):
            await send(member, type="subscribe", run_id=run_id, after=seqs[-1])
            rest = [m for m in await until_done(member) if "seq" in m]
        await member.disconnect()
    assert got + rest == [json.loads(entry.data) for entry in run.log]  # nothing lost


async def test_a_member_that_missed_batches_catches_up_by_itself() -> None:
    async with started({"capacity": 3}) as state:

        async def mid_run(starter: Any) -> None:
            ticks = 0
            async for message in messages(starter):
                ticks += message["type"] == "custom"
                if ticks == 12:
                    return

        member, batches, run_id = await room_with_a_slow_member(
            state, "dj-drop-middle", 1.0, mid_run
        )
        got = [m for m in await until_done(member) if m.get("run_id") == run_id]
        await member.disconnect()
        run = state.runs.get(run_id)
    assert run is not None
    assert any(b - a > 1 for a, b in itertools.pairwise(batches))  # a gap
    assert got == [json.loads(entry.data) for entry in run.log]  # every frame, once


def auser(user: Any) -> Callable[[], Awaitable[Any]]:
    async def get() -> Any:
        return user

    return get


async def sse_view(user: Any, query: dict[str, str], resume: str | None = None) -> Any:
    headers = {"Last-Event-ID": resume} if resume else None
    request = AsyncRequestFactory().get("/sse/agent/", query, headers=headers)
    request.auser = auser(user)
    return await stream_run(request)


async def read(response: Any) -> list[str]:
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    return [block for block in body.split("\n\n") if block]


async def test_the_sse_view(state: AppState) -> None:
    response = await sse_view(ALICE, {"graph": "agent", "message": "2+2"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    assert response["X-Accel-Buffering"] == "no" and response["Cache-Control"] == "no-cache"
    run_id = response["X-Run-Id"]
    blocks = await read(response)
    assert blocks[-1] == "data: [DONE]"
    ids = [line[4:] for block in blocks for line in block.split("\n") if line.startswith("id: ")]
    assert ids == [f"{run_id}:{n}" for n in range(1, len(ids) + 1)]
    run = state.runs.get(run_id)
    assert run is not None and run.owner == "1"
    # EventSource's reconnect: exactly the rest, then 204 from the end
    resumed = await sse_view(ALICE, {}, resume=f"{run_id}:2")
    rest = await read(resumed)
    assert rest[0].splitlines()[1] == f"id: {run_id}:3" and len(rest) == len(blocks) - 2
    assert (await sse_view(ALICE, {}, resume=ids[-1])).status_code == 204
    foreign = await sse_view(BOB, {}, resume=f"{run_id}:2")
    assert foreign.status_code == 403


@pytest.mark.parametrize(
    ("user", "query", "status", "code"),
    [
        (AnonymousUser(), {"graph": "agent", "message": "x"}, 401, "unauthorized"),
        (ALICE, {"graph": "nope", "message": "x"}, 404, "graph_not_found"),
        (ALICE, {"graph": "agent", "message": "x", "config": "{"}, 400, "invalid_json"),
        (ALICE, {"graph": "agent"}, 422, "validation_error"),
        (ALICE, {"graph": "agent", "message": "x", "thread_id": "a b"}, 422, "validation_error"),
    ],
)
async def test_the_sse_view_refuses_with_json(
    state: AppState, user: Any, query: dict[str, str], status: int, code: str
) -> None:
    response = await sse_view(user, query)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["code"] == code and body["message"]


async def test_a_client_leaving_the_sse_view_cancels_its_run(state: AppState) -> None:
    response = await sse_view(ALICE, {"graph": "ticker", "message": "x"})
    run = state.runs.get(response["X-Run-Id"])
    ticking = asyncio.Event()

    async def client() -> None:
        async for chunk in response.streaming_content:
            if b'"custom"' in chunk:
                ticking.set()

    reading = asyncio.create_task(client())
    await asyncio.wait_for(ticking.wait(), 5)
    reading.cancel()  # what Django does to the response when its client goes
    assert run is not None
    await asyncio.wait_for(run.wait(), 5)
    assert run.status.value == "cancelled"
