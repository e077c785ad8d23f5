"""Crons, delayed runs and webhooks on a real deployment: two (then three) `agent-server
serve` processes sharing Redis and PostgreSQL, driven by langgraph-sdk.

- Several crons due at the same second, both workers looking for due crons twice a
  second: each cron starts exactly one run.
- A delayed background run accepted by a third worker that stops before the run is due
  is started by another worker when due (the job waits in Redis, not in a process), and
  its webhook, which travelled in the job, is delivered by that worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langgraph_sdk import get_client

from tests.services import postgres_schema, redis_prefix
from tests.test_crons import once_at, runs_of, when
from tests.test_langgraph_api import UPSTREAM, human
from tests.test_multiworker import start_workers, stop
from tests.test_webhooks import Receiver

pytestmark = pytest.mark.skipif(UPSTREAM is not None, reason="agent-server only")

ENV = {
    "AGENT_SERVER_CRON_INTERVAL": "0.5",
    "AGENT_SERVER_WEBHOOK_ALLOW_PRIVATE": "1",
    "AGENT_SERVER_SHUTDOWN_GRACE": "1",
}


@pytest.fixture(scope="module")
def deployment() -> Iterator[tuple[list[str], Any]]:
    """The two workers' URLs, and a function starting one more worker."""
    with postgres_schema() as database, redis_prefix() as (redis_url, prefix):
        processes, urls = start_workers(database, redis_url, prefix, **ENV)

        def another() -> tuple[Any, str]:
            started, [url] = start_workers(database, redis_url, prefix, count=1, **ENV)
            processes.extend(started)
            return started[0], url

        try:
            yield urls, another
        finally:
            stop(processes)


def test_a_cron_fires_once_on_two_workers(deployment: tuple[list[str], Any]) -> None:
    (a, b), _ = deployment

    async def check() -> None:
        on_a = get_client(url=f"{a}/langgraph", api_key=None)
        on_b = get_client(url=f"{b}/langgraph", api_key=None)
        due = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
        threads = [await on_a.threads.create() for _ in range(3)]
        for thread in threads:
            await on_a.crons.create_for_thread(
                thread["thread_id"], "agent", schedule=once_at(due), input=human("tick")
            )
        for thread in threads:
            [run] = await runs_of(on_b, thread["thread_id"])
            await on_b.runs.join(thread["thread_id"], run["run_id"])
            assert when(run["created_at"]) >= due
        await asyncio.sleep(2)  # four more looks by each worker: no second run appears
        for thread in threads:
            runs = await on_a.runs.list(thread["thread_id"])
            assert [r["status"] for r in runs] == ["success"]
            [cron] = await on_b.crons.search(thread_id=thread["thread_id"])
            assert cron["next_run_date"] is None or when(cron["next_run_date"]) > due
        await on_a.aclose()
        await on_b.aclose()

    asyncio.run(check())


def test_a_delayed_run_outlives_its_worker_and_sends_its_webhook(
    deployment: tuple[list[str], Any],
) -> None:
    (a, _), another = deployment
    process, c = another()
    receiver = Receiver([200])

    async def check() -> None:
        on_c = get_client(url=f"{c}/langgraph", api_key=None)
        thread = await on_c.threads.create()
        run = await on_c.runs.create(
            thread["thread_id"],
            "agent",
            input=human("2+2"),
            after_seconds=4,
            webhook=f"{receiver.url}/done",
        )
        await on_c.aclose()
        os.kill(process.pid, signal.SIGTERM)  # C stops before the run is due
        process.wait(timeout=20)
        on_a = get_client(url=f"{a}/langgraph", api_key=None)
        assert (await on_a.runs.get(thread["thread_id"], run["run_id"]))["status"] == "pending"
        values = await on_a.runs.join(thread["thread_id"], run["run_id"])
        assert values["messages"][-1]["type"] == "ai"
        [got] = await asyncio.to_thread(receiver.wait_for, 1)
        payload = json.loads(got["body"])
        assert payload["run_id"] == run["run_id"] and payload["status"] == "success"
        assert got["path"] == "/done" and got["headers"]["Idempotency-Key"] == run["run_id"]
        await on_a.aclose()

    try:
        asyncio.run(check())
    finally:
        receiver.close()
