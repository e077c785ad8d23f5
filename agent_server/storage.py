"""Riding out PostgreSQL outages (a restart, a failover, a dropped connection).

Every database call of the PostgreSQL backend (checkpoint reads and writes, run and
thread records) goes through a :class:`StorageRetry`: a call that fails because the
database cannot be reached is tried again, on a fresh connection, until ``storage_wait``
seconds have passed since the call began; then it raises :class:`StorageUnavailable`,
and a run that needed it ends with an ``error`` frame of code ``storage_unavailable``.
A restart of a few seconds therefore costs a run a pause, not its result.

Decisions:

- Retrying is safe because every statement retried is idempotent: LangGraph's saver
  writes with upserts keyed by thread, namespace and checkpoint (and task and index for
  pending writes); the records are upserts and deletes by key. A write whose reply was
  lost is simply written again.
- Only connection-class failures are retried (``psycopg.OperationalError``, which
  covers a refused or reset connection, "the database system is shutting down" or
  "starting up", and the pool's own timeout); a bad query fails at once.
- A call is also bounded in time, by the same ``storage_wait``: a database that hangs
  (a stalled disk, a partition that drops packets) answers nothing and raises nothing,
  and would hold the run, its thread and its slot for ever. psycopg then cancels the
  query it was waiting for, which against a hung server takes up to 10 s more.
- After a failure the pool checks its idle connections, so a retry does not pick the
  next connection broken by the same restart. The pool also checks each connection it
  hands out (one empty query), which keeps most calls from failing in the first place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from agent_server.supervise import backoff

logger = logging.getLogger("agent_server.storage")

T = TypeVar("T")


class StorageUnavailable(Exception):
    """The database stayed unreachable for longer than ``storage_wait``."""


class StorageRetry:
    """Calls an operation until it succeeds or the database has been unreachable for
    ``wait`` seconds (see the module docstring)."""

    def __init__(self, pool: Any, wait: float) -> None:
        self.pool = pool
        self.wait = wait

    async def __call__(self, operation: Callable[[], Awaitable[T]]) -> T:
        # From the call, not its first failure: an attempt can itself wait (for a pool
        # connection) up to ``wait``.
        deadline = time.monotonic() + self.wait
        failures = 0
        while True:
            try:
                # Bounded too: a database that hangs answers nothing, and raises nothing.
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    return await operation()
            except (psycopg.OperationalError, TimeoutError) as exc:
                now = time.monotonic()
                if now >= deadline:
                    detail = f"{type(exc).__name__}: {exc}" if str(exc) else "no answer"
                    raise StorageUnavailable(
                        f"PostgreSQL unreachable for {self.wait:g} s ({detail})"
                    ) from exc
                failures += 1
                if failures == 1:
                    logger.warning("PostgreSQL unreachable (%s); retrying", exc)
                await self._forget_broken()
                await asyncio.sleep(min(backoff(failures, 0.05, 1.0), max(0.0, deadline - now)))

    async def _forget_broken(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.pool.check()


class RetryingPostgresSaver(AsyncPostgresSaver):
    """LangGraph's PostgreSQL saver with every database call under a :class:`StorageRetry`
    (its sync methods call these too)."""

    def __init__(self, pool: Any, retry: StorageRetry) -> None:
        super().__init__(pool)
        self.retry = retry

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        get = super().aget_tuple
        return await self.retry(lambda: get(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        # Read whole, so that a failure can be retried from the start.
        async def read() -> list[CheckpointTuple]:
            parent = AsyncPostgresSaver.alist
            found = parent(self, config, filter=filter, before=before, limit=limit)
            return [checkpoint async for checkpoint in found]

        for found in await self.retry(read):
            yield found

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        put = super().aput
        return await self.retry(lambda: put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        put_writes = super().aput_writes
        await self.retry(lambda: put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        delete = super().adelete_thread
        await self.retry(lambda: delete(thread_id))
