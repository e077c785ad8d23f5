"""Redis outages longer than ``broker_wait``, a restart that keeps its data, a worker
killed during an outage, a Redis that hangs and one that is full (real processes; see
test_redis_faults.py for the short outage).

Redis persists here (``appendonly yes``, ``appendfsync always``), as an operator who
queues background runs in it should run it; one slot per worker, so runs queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
import redis.asyncio as redis

from agent_server.client import AgentClient
from tests.faults.checks import assert_complete
from tests.faults.clients import Reconnect, SseFollower, gather
from tests.faults.cluster import Cluster, RedisServer
from tests.faults.scenarios import body, same_frames, seq_reached, start_run
from tests.faults.test_redis_faults import HealthLog, finished

pytestmark = pytest.mark.slow

CLUSTER_PERSISTENT_REDIS = True
CLUSTER_SETTINGS = {"AGENT_SERVER_BROKER_WAIT": "1.5", "AGENT_SERVER_MAX_CONCURRENT_RUNS": "1"}


async def test_past_broker_wait_remote_streams_end_clearly_and_resume(running: Cluster) -> None:
    """Redis down 5 s (> broker_wait 1.5 s): the clients on B of A's run get an ``error``
    frame ``broker_unavailable`` (seq 0) then ``[DONE]``, or a 503 while they retry,
    and resume after their last seq once Redis is back, missing nothing; A's own clients
    are served throughout."""
    a, b = running.workers
    to_b = Reconnect([b.url], attempts=80, delay=0.25)
    run = await start_run("a", a, reconnect=to_b, tokens=700, pause=0.01)
    run.watch(b, sse=2, ws=2, reconnect=to_b)
    run.watch(a, sse=1, ws=1)

    async def python_client() -> list[int]:  # agent_server.client resumes by itself
        async with AgentClient(b.url) as client:
            return [frame.seq async for frame in client.runs.join(run.run_id)]

    joined = asyncio.create_task(python_client())
    await seq_reached(run.starter, 40)
    stopped = time.monotonic()
    running.redis.stop()
    await asyncio.sleep(5)
    running.redis.start()
    back = time.monotonic() - stopped
    recordings = await gather(run.followers, timeout=40)
    for follower in run.followers:
        assert_complete(follower.recording, ends={"done"})
    same_frames(run.followers)
    assert await asyncio.wait_for(joined, 10) == run.starter.recording.seqs
    on_b = run.on(b)
    for follower in on_b:
        # SSE: an error frame of seq 0 then [DONE]; WebSocket: an error message naming
        # the run. Either way the client is told, and resumes.
        first = follower.recording.attempts[0]
        assert "broker_unavailable" in first.end, follower.recording.describe()
    for follower in run.on(a):
        assert len(follower.recording.attempts) == 1, follower.recording.describe()
    told = [f.recording.attempts[0].began for f in on_b]
    print(
        f"\nRedis down 5 s (back after {back:.1f} s): {len(recordings)} clients, "
        f"{sum(len(r.frames) for r in recordings)} frames, all complete; the {len(on_b)} "
        f"clients on B were told broker_unavailable and resumed in "
        f"{[len(f.recording.attempts) for f in on_b]} connections; A's clients: one each"
        f" (first connections began {max(told) - min(told):.2f} s apart)"
    )


async def test_queued_runs_survive_a_redis_restart(running: Cluster) -> None:
    """Both workers busy (one slot each), three background runs wait in Redis's queue;
    Redis restarts (persistent): every queued run is taken and finishes."""
    a, b = running.workers
    busy = [SseFollower(f"busy@{w.name}", w.url, body=body(tokens=300, pause=0.01)) for w in (a, b)]
    for follower in busy:
        follower.start()
        await asyncio.wait_for(follower.started.wait(), 10)
    async with httpx.AsyncClient(timeout=10) as client:
        queued = [
            (await client.post(f"{w.url}/runs", json=body(tokens=5))).json()["run_id"]
            for w in (a, b, a)
        ]
        for run_id in queued:
            assert (await client.get(f"{a.url}/runs/{run_id}")).json()["status"] == "pending"
        restarted = time.monotonic()
        await asyncio.to_thread(running.redis.restart, 2.6)
        for run_id in queued:
            assert (await finished(client, b, run_id, 30))["status"] == "success"
        took = time.monotonic() - restarted
    for recording in await gather(busy, timeout=20):
        assert_complete(recording, ends={"done"})
    print(
        f"\nRedis restart (persistent, 2.6 s down): 3 queued runs all finished {took:.1f} s after"
    )


async def test_a_worker_killed_during_an_outage_ends_its_runs_for_everyone(
    running: Cluster,
) -> None:
    """Redis stops; A's clients keep getting frames from A (which Redis cannot hold yet);
    A is killed; Redis returns. Every client, on resuming at B, gets its frames without
    gap or duplicate and then ``worker_lost``, whatever position it had reached."""
    a, b = running.workers
    to_b = Reconnect([b.url], attempts=80, delay=0.25)
    run = await start_run("a", a, reconnect=to_b, tokens=3000, pause=0.01)
    run.watch(a, sse=1, ws=1, reconnect=to_b)
    run.watch(b, sse=1, ws=1, reconnect=to_b)
    await seq_reached(run.starter, 40)
    running.redis.stop()
    seen = run.starter.recording.last_seq
    await seq_reached(run.starter, seen + 30)  # served from A's own log meanwhile
    a.kill()
    killed = time.monotonic()
    running.redis.start()
    recordings = await gather(run.followers, timeout=40)
    for recording in recordings:
        assert_complete(recording, ends={"worker_lost"})
    ends = sorted({r.last_seq for r in recordings})
    lost_after = max(r.final_at or 0 for r in recordings) - killed
    print(
        f"\nA killed during a Redis outage: {len(recordings)} clients all complete, ending "
        f"worker_lost at seqs {ends} (A's clients were ahead of the shared log); the last "
        f"final frame {lost_after:.1f} s after the kill"
    )


async def ride_out(
    running: Cluster, what: str, seconds: float, fault: AbstractAsyncContextManager[None]
) -> None:
    """A run on A watched on both workers, ``fault`` held for ``seconds`` once it streams:
    both workers say ``broker_unavailable`` on ``/healthz`` meanwhile and are healthy
    after it, and every client gets the whole run, ending ``done`` (not ``worker_lost``).
    """
    a, b = running.workers
    to_b = Reconnect([b.url], attempts=120, delay=0.25)
    run = await start_run("a", a, reconnect=to_b, tokens=int(seconds * 100) + 600, pause=0.01)
    run.watch(b, sse=1, ws=1, reconnect=to_b)
    run.watch(a, sse=1, ws=1)
    health = HealthLog([a, b])
    health.start()
    await seq_reached(run.starter, 40)
    began = time.monotonic()
    async with fault:
        await asyncio.sleep(seconds)
    recordings = await gather(run.followers, timeout=60)
    await asyncio.sleep(1.0)
    await health.stop()
    for follower in run.followers:
        assert_complete(follower.recording, ends={"done"})
    same_frames(run.followers)
    shown = {}
    for worker in (a, b):
        down, up = health.outage(worker, began)
        shown[worker.name] = (down, up)
        assert down is not None and down < seconds, f"{worker.name} never said it"
        assert up is not None, f"{worker.name} never became healthy again"
    print(
        f"\nRedis {what} {seconds} s: /healthz 503 then 200 (s after it began): {shown}; "
        f"{len(recordings)} clients, {sum(len(r.frames) for r in recordings)} frames, all "
        f"complete, ending done"
    )


@asynccontextmanager
async def hung(redis_server: RedisServer) -> AsyncIterator[None]:
    redis_server.freeze()
    try:
        yield
    finally:
        redis_server.thaw()


@asynccontextmanager
async def full(url: str) -> AsyncIterator[None]:
    admin = redis.Redis.from_url(url)
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1")
    try:
        yield
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.aclose()


async def test_a_hung_redis_is_an_outage_and_nobody_looks_lost_after_it(
    running: Cluster,
) -> None:
    """Redis hangs (SIGSTOP: connections open, nothing answered) for 9 s, longer than a
    command may wait (5 s) and a heartbeat lives (6 s). Each worker notices within its
    command timeout instead of hanging with Redis, and A's run is not taken for lost
    by B although A's heartbeat expired meanwhile."""
    await ride_out(running, "hung", 9.0, hung(running.redis))


async def test_a_full_redis_is_an_outage_and_publishing_resumes_after_it(
    running: Cluster,
) -> None:
    """Redis reaches ``maxmemory`` (``noeviction``: every write answered ``OOM``) for 4 s:
    each worker says so, and once Redis takes writes again publishing resumes and
    nobody is taken for lost although no heartbeat could be written meanwhile."""
    await ride_out(running, "full", 4.0, full(running.redis.url))
