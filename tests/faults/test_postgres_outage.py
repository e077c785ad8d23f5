"""PostgreSQL away, or hung, for longer than ``storage_wait``: runs fail clearly, then
recover."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.checks import assert_complete
from tests.faults.clients import SseFollower, gather
from tests.faults.cluster import Cluster, Worker
from tests.faults.scenarios import body, seq_reached

pytestmark = pytest.mark.slow

CLUSTER_SETTINGS = {"AGENT_SERVER_STORAGE_WAIT": "2"}


async def succeeds_again(worker: Worker, since: float) -> float:
    """Seconds after ``since`` until a run on ``worker`` succeeds: the pool reconnects by
    itself (psycopg_pool, with its own backoff), and a client retries a run that
    failed meanwhile."""
    while True:
        (recording,) = await gather([SseFollower("after", worker.url, body=body())], 30)
        if recording.outcome != "storage_unavailable":
            break
        assert time.monotonic() - since < 30, "storage never recovered"
    assert_complete(recording, ends={"done"})
    return round(time.monotonic() - since, 1)


async def test_past_storage_wait_a_run_fails_with_storage_unavailable(running: Cluster) -> None:
    a, b = running.workers
    streaming = SseFollower("through@a", a.url, body=body(tokens=80, pause=0.01))
    streaming.start()
    await seq_reached(streaming, 20)
    stopped = time.monotonic()
    await asyncio.to_thread(running.postgres.stop, "immediate")
    (failed,) = await gather([streaming], timeout=20)
    failed_after = (failed.final_at or 0) - stopped
    assert_complete(failed, ends={"storage_unavailable"})
    assert "PostgreSQL unreachable for 2 s" in str(failed.final)
    await asyncio.to_thread(running.postgres.start)
    restarted = time.monotonic()
    recovered = {worker.name: await succeeds_again(worker, restarted) for worker in (a, b)}
    print(
        f"\nPostgreSQL down past storage_wait (2 s): the run in flight ended "
        f"storage_unavailable {failed_after:.1f} s after the stop; once it was back, "
        f"runs succeeded again after (s) {recovered}"
    )


HANG = 16.0  # seconds: storage_wait (2) + psycopg's cancellation of the hung query (<= 10)


async def test_a_hung_postgres_fails_runs_clearly_instead_of_hanging_them(
    running: Cluster,
) -> None:
    """PostgreSQL hangs (SIGSTOP: nothing answered, connections kept): a run started
    meanwhile ends ``storage_unavailable`` while the database still hangs, instead of
    waiting for it for ever; once it answers again runs succeed."""
    a, _ = running.workers
    running.postgres.freeze()
    hung = time.monotonic()
    try:
        stuck = SseFollower("during@a", a.url, body=body(tokens=20))
        stuck.start()
        (failed,) = await gather([stuck], timeout=HANG - 1)
        failed_after = (failed.final_at or 0) - hung
    finally:
        running.postgres.thaw()
    assert_complete(failed, ends={"storage_unavailable"})
    assert "PostgreSQL unreachable for 2 s" in str(failed.final)
    recovered = await succeeds_again(a, time.monotonic())
    print(
        f"\nPostgreSQL hung: a run started during it ended storage_unavailable "
        f"{failed_after:.1f} s in; after it, runs succeeded again within {recovered} s"
    )
