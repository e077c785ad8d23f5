"""Supervised background jobs: restarted after a failure, with a bounded backoff."""

from __future__ import annotations

import asyncio

import pytest

from agent_server.brokers import BrokerUnavailable
from agent_server.supervise import Supervisor, backoff


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    for failures, bound in [(1, 0.1), (2, 0.2), (3, 0.4), (10, 5.0), (60, 5.0)]:
        waits = [backoff(failures, 0.1, 5.0) for _ in range(200)]
        assert all(bound / 2 <= w <= bound for w in waits)
        assert len(set(waits)) > 1  # jittered


async def test_a_failing_job_is_started_again(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor()
    calls = 0
    running = asyncio.Event()

    async def job() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        if calls == 2:
            raise BrokerUnavailable("Redis is unreachable")
        if calls == 3:
            return  # a loop that ends by itself is restarted too
        running.set()
        await asyncio.Event().wait()

    supervisor.start("job", job, base=0.01, cap=0.02)
    await asyncio.wait_for(running.wait(), 5)
    assert supervisor.restarts == {"job": 3}
    assert "background job job failed" in caplog.text  # with its traceback
    assert "background job job: Redis is unreachable; retrying" in caplog.text
    assert "background job job ended; starting it again" in caplog.text
    task = supervisor.tasks["job"]
    await supervisor.close()
    assert task.cancelled() and supervisor.tasks == {}


async def test_close_cancels_jobs_waiting_in_their_backoff() -> None:
    supervisor = Supervisor()

    async def job() -> None:
        raise RuntimeError("always")

    supervisor.start("job", job, base=30, cap=30)
    await asyncio.sleep(0.05)
    assert supervisor.restarts["job"] == 1
    await asyncio.wait_for(supervisor.close(), 1)
