"""PostgreSQL restarted under two workers mid-run (real processes).

A run writes checkpoints as it goes; when PostgreSQL goes away, those writes (and the
run records) retry on fresh connections for up to ``storage_wait`` (15 s by default):
a restart of a few seconds pauses the runs, it does not fail them.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.faults.checks import assert_complete
from tests.faults.clients import SseFollower, WsFollower, gather
from tests.faults.cluster import Cluster
from tests.faults.scenarios import body, seq_reached

pytestmark = pytest.mark.slow

DOWN = 3.0


@pytest.mark.parametrize("mode", ["immediate", "fast"])
async def test_a_postgres_restart_mid_run_pauses_runs_not_fails_them(
    running: Cluster, mode: str
) -> None:
    """PostgreSQL stops (``immediate``: as if it crashed; ``fast``: a clean restart) while
    four runs stream, and stays down ``DOWN`` s; two more runs start during the outage.
    Every run ends ``done``, its thread's state and run records readable afterwards."""
    a, b = running.workers
    followers = [
        SseFollower(f"sse@{w.name}", w.url, body=body(tokens=150, pause=0.01)) for w in (a, b)
    ] + [
        WsFollower(f"ws@{w.name}", w.url, message={"graph": "tokens", "message": "go",
                   "config": {"configurable": {"tokens": 150, "pause": 0.01}}})
        for w in (a, b)
    ]  # fmt: skip
    for follower in followers:
        follower.start()
    for follower in followers:
        await seq_reached(follower, 20)
    stopped = time.monotonic()
    await asyncio.to_thread(running.postgres.stop, mode)  # type: ignore[arg-type]
    during = [SseFollower(f"during@{w.name}", w.url, body=body(tokens=20)) for w in (a, b)]
    for follower in during:
        follower.start()
    await asyncio.sleep(DOWN)
    await asyncio.to_thread(running.postgres.start)
    back = time.monotonic() - stopped
    recordings = await gather([*followers, *during], timeout=40)
    for recording in recordings:
        assert_complete(recording, ends={"done"})
    ended = [(r.final_at or 0) - stopped for r in recordings]
    async with httpx.AsyncClient(timeout=10) as client:
        for recording in recordings:
            described = (await client.get(f"{a.url}/runs/{recording.run_id}")).json()
            assert described["status"] == "success", described
            runs = await client.get(f"{b.url}/threads/{described['thread_id']}/runs")
            assert [r["run_id"] for r in runs.json()["runs"]] == [recording.run_id]
            thread = described["thread_id"]
            state = await client.get(f"{b.url}/threads/{thread}/state?graph=tokens")
            assert state.status_code == 200 and len(state.json()["values"]["messages"]) == 2
    print(
        f"\nPostgreSQL stopped ({mode}) for {back:.1f} s mid-run: {len(recordings)} runs "
        f"(4 streaming through it, 2 started during it) all done; final frames "
        f"{min(ended):.1f}-{max(ended):.1f} s after the stop; records and state read back"
    )
