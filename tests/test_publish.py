"""A run's log copied to a real Redis by its worker (``RunManager._publish``): whatever
fails on the way, the copy goes on from what Redis holds, so the run's watchers on
other workers are never left waiting with no word."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent_server.brokers import Entry
from agent_server.brokers.redis import RedisBroker
from agent_server.runs import Run, RunManager
from tests.helpers import user
from tests.services import redis_prefix
from tests.test_runs import AGENT


class FailsAtFirst(RedisBroker):
    """A real Redis broker whose first publishes fail with an error nobody foresaw."""

    def __init__(self, url: str, prefix: str, failures: int) -> None:
        super().__init__(url, prefix=prefix)
        self.failures = failures

    async def publish(self, run_id: str, entries: Sequence[Entry]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("an answer nobody foresaw")
        await super().publish(run_id, entries)


async def test_a_run_is_published_whole_after_an_unforeseen_error() -> None:
    with redis_prefix() as (url, prefix):
        broker = FailsAtFirst(url, prefix, failures=2)
        manager = RunManager(broker=broker)
        try:
            run = manager.submit(Run(graph=AGENT, input=user("2+2"), thread_id="t"))
            await run.wait()
            await asyncio.wait_for(run.published.wait(), 10)
            shared = await broker.read(run.run_id, 0, None)
            assert [seq for seq, _, _ in shared] == [e.seq for e in run.log]
            assert (await broker.get_record(run.run_id) or {}).get("status") == "success"
            assert broker.failures == 0
        finally:
            await manager.shutdown()
            await broker.close()
