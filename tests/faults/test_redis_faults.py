"""Redis restarted under two workers, with streams on both (real processes).

The private Redis keeps nothing on disk here (``--save "" --appendonly no``, as this
machine's own): a restart loses every key, the hardest case for the workers. What must
hold for every client: all frames in order, no gap, no duplicate, and the run's own end;
for the workers: ``/healthz`` says 503 ``broker_unavailable`` during the outage and 200
after it, and every feature works again by itself (queued runs are taken, cancels reach
the executing worker, heartbeats keep quiet runs alive). Each test prints its figures
(``-s``); docs/reliability.md quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from tests.faults.checks import assert_complete
from tests.faults.clients import Reconnect, SseFollower, gather
from tests.faults.cluster import Cluster, Worker
from tests.faults.scenarios import Watched, body, same_frames, seq_reached, start_run

pytestmark = pytest.mark.slow

DOWN = 2.6  # seconds, as in the black-box finding


class HealthLog:
    """``GET /healthz`` of some workers every 0.1 s: when each answered what."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.seen: dict[str, list[tuple[float, int, str]]] = {w.name: [] for w in workers}
        self.task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                for worker in self.workers:
                    try:
                        response = await client.get(f"{worker.url}/healthz")
                        status = response.json().get("status", "")
                        code = response.status_code
                    except (httpx.HTTPError, ValueError) as exc:
                        code, status = 0, type(exc).__name__
                    self.seen[worker.name].append((time.monotonic(), code, status))
                await asyncio.sleep(0.1)

    def start(self) -> None:
        self.task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def outage(self, worker: Worker, since: float) -> tuple[float | None, float | None]:
        """Seconds after ``since`` of its first 503 ``broker_unavailable`` and of its first
        200 after that (None: not seen)."""
        down = next(
            (t for t, code, status in self.seen[worker.name]
             if t >= since and code == 503 and status == "broker_unavailable"),
            None,
        )  # fmt: skip
        if down is None:
            return None, None
        up = next((t for t, code, _ in self.seen[worker.name] if t > down and code == 200), None)
        return down - since, None if up is None else up - since


async def finished(client: httpx.AsyncClient, worker: Worker, run_id: str, timeout: float) -> Any:
    """The run's description once it has finished (polling ``GET /runs/{id}``)."""
    deadline = time.monotonic() + timeout
    while True:
        described = (await client.get(f"{worker.url}/runs/{run_id}")).json()
        if described.get("status") not in ("pending", "running", None):
            return described
        assert time.monotonic() < deadline, f"run {run_id} still {described}"
        await asyncio.sleep(0.1)


async def test_a_redis_restart_loses_no_frame_and_every_feature_recovers(
    running: Cluster,
) -> None:
    a, b = running.workers
    again = Reconnect(attempts=30, delay=0.5)  # a careful client, same worker
    runs: list[Watched] = [
        await start_run("a-sse", a, reconnect=again, tokens=500, pause=0.012),
        await start_run("a-ws", a, ws=True, reconnect=again, tokens=500, pause=0.012),
        await start_run("b-sse", b, reconnect=again, tokens=500, pause=0.012),
    ]
    for run in runs:
        run.watch(a, sse=1, ws=1, reconnect=again)
        run.watch(b, sse=1, ws=1, reconnect=again)
    # Silent for longer than a heartbeat lives, across the outage: it must end "done".
    quiet = SseFollower(
        "quiet@a",
        a.url,
        body={**body(), "graph": "quiet", "config": {"configurable": {"seconds": 11}}},
    )
    quiet.start()
    await asyncio.wait_for(quiet.started.wait(), 10)
    quiet_on_b = SseFollower("quiet@b", b.url, quiet.run_id)
    quiet_on_b.start()
    for run in runs:
        await seq_reached(run.starter, 40)
    health = HealthLog([a, b])
    health.start()
    await asyncio.sleep(0.3)
    down_at = time.monotonic()
    await asyncio.to_thread(running.redis.restart, DOWN)
    up_at = time.monotonic()

    followers = [f for run in runs for f in run.followers]
    recordings = await gather([*followers, quiet, quiet_on_b], timeout=40)
    await asyncio.sleep(0.5)
    await health.stop()

    for run in runs:
        for follower in run.followers:
            assert_complete(follower.recording, ends={"done"})
        same_frames(run.followers)
    for follower in (quiet, quiet_on_b):
        assert_complete(follower.recording, ends={"done"})  # never worker_lost
    reconnected = [r.name for r in recordings if len(r.attempts) > 1]
    assert not reconnected, f"outage shorter than broker_wait, yet: {reconnected}"
    outages = {w.name: health.outage(w, down_at) for w in (a, b)}
    shown = {name: f"{down:.2f}/{up:.2f}" for name, (down, up) in outages.items() if down and up}
    for name, (down, up) in outages.items():
        assert down is not None, f"{name} never reported broker_unavailable: {health.seen[name]}"
        assert up is not None, f"{name} never became healthy again"

    async with httpx.AsyncClient(timeout=10) as client:
        # The queue: background runs are taken again (by either worker).
        queued_at = time.monotonic()
        queued = [
            (await client.post(f"{w.url}/runs", json={**body(tokens=5), "thread_id": None})).json()
            for w in (a, b, a, b)
        ]
        for run in queued:
            assert (await finished(client, a, run["run_id"], 20))["status"] == "success"
        queue_after = time.monotonic() - queued_at
        # Cancels: asked of B, acted on by A.
        long = SseFollower("cancelled@a", a.url, body=body(tokens=3000, pause=0.01))
        long.start()
        await asyncio.wait_for(long.started.wait(), 10)
        cancel = await client.post(f"{b.url}/runs/{long.run_id}/cancel")
        assert cancel.status_code == 202, cancel.text
        (cancelled,) = await gather([long], timeout=15)
        assert_complete(cancelled, ends={"cancelled"})

    frames = sum(len(r.frames) for r in recordings)
    print(
        f"\nRedis restart ({DOWN} s down, no persistence): {len(recordings)} clients "
        f"({len(followers)} on 3 streaming runs, SSE and WS, both workers; 2 on a quiet "
        f"run), {frames} frames, every one complete with no gap, no duplicate, no "
        f"reconnect; /healthz 503 broker_unavailable then 200 (s after the stop): "
        f"{shown}; Redis back {up_at - down_at:.1f} s after the stop; 4 background "
        f"runs queued after it finished within {queue_after:.1f} s; a cancel through B "
        f"stopped A's run"
    )


class RoomMember:
    """A ``/ws`` socket in a room: the presence events it hears, arrays unpacked."""

    def __init__(self, name: str, worker: Worker, thread_id: str) -> None:
        self.name = name
        self.url = worker.url.replace("http://", "ws://") + "/ws"
        self.thread_id = thread_id
        self.heard: list[dict[str, Any]] = []
        self.client_id = ""
        self.socket: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    async def join(self, timeout: float = 10) -> RoomMember:
        self.socket = await connect(self.url)
        await self.socket.send(json.dumps({"type": "join", "thread_id": self.thread_id}))
        self.task = asyncio.create_task(self._listen())
        # Its own join is the first presence it hears: the test's joins come one by one.
        joined = await self.hears(lambda e: e["event"] == "join", timeout)
        self.client_id = joined["client_id"]
        return self

    async def _listen(self) -> None:
        assert self.socket is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.socket:
                data = json.loads(raw)
                for message in data if isinstance(data, list) else [data]:
                    if message.get("type") == "presence":
                        self.heard.append(message)
                    elif message.get("type") == "ping":
                        await self.socket.send(json.dumps({"type": "pong"}))

    async def hears(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 10) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.heard:
                    if wanted(event):
                        return event
                await asyncio.sleep(0.02)

    async def leave(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.task is not None:
            await self.task


@pytest.mark.parametrize("down", [0.0, DOWN], ids=["at once", "down a while"])
async def test_rooms_are_whole_again_after_a_redis_restart(running: Cluster, down: float) -> None:
    """Redis holds every worker's room members; restarted empty, it holds none. Each
    worker records its members again once it hears presence again, so a member who joins
    after the restart is told of everyone, on every worker, and a leave is counted right.
    Restarted at once, Redis is back within redis-py's own retries, which reconnect the
    presence relay without a word."""
    a, b = running.workers
    thread_id = str(uuid.uuid4())
    opened: list[RoomMember] = []  # closed at the end, also on failure

    async def member(name: str, worker: Worker, timeout: float = 10) -> RoomMember:
        opened.append(RoomMember(name, worker, thread_id))
        return await opened[-1].join(timeout)

    try:
        first = await member("first@a", a)
        second = await member("second@b", b)
        await first.hears(lambda e: e["client_id"] == second.client_id and e["count"] == 2)

        await asyncio.to_thread(running.redis.restart, down)

        # Each worker hears presence again: a joiner on one is heard on the other (a
        # joiner hears its own join through its worker's relay too).
        probes = []
        for probe_at, listener in ((a, second), (b, first)):
            deadline = time.monotonic() + 30
            while True:
                try:
                    probe = await member("probe", probe_at, timeout=1)
                    await listener.hears(lambda e, p=probe: e["client_id"] == p.client_id, 1)
                    probes.append(probe)
                    break
                except (OSError, WebSocketException, TimeoutError):
                    await opened[-1].leave()
                assert time.monotonic() < deadline, "presence never came back after the restart"
                await asyncio.sleep(0.2)

        everyone = {m.client_id for m in (first, second, *probes)}
        third = await member("third@b", b)
        own = await third.hears(lambda e: e["client_id"] == third.client_id)
        assert own["count"] == len(everyone) + 1, own
        assert {m["client_id"] for m in own["members"]} == everyone | {third.client_id}
        await first.leave()
        left = await third.hears(
            lambda e: e["event"] == "leave" and e["client_id"] == first.client_id
        )
        assert left["count"] == len(everyone), left
    finally:
        for each in opened:
            await each.leave()
