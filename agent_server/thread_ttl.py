"""Thread TTLs: threads that expire after a time without activity (LangGraph's ``ttl``).

A thread created or patched with ``ttl: {"ttl": minutes, "strategy": ...}`` (or, by
default, ``AGENT_SERVER_THREAD_TTL_MINUTES``) gets an expiry here: ``minutes`` after its
last update. A sweeper (:func:`sweep_threads`, a supervised lifespan job) looks for due
expiries every ``AGENT_SERVER_TTL_SWEEP_INTERVAL`` seconds and, for each:

- a thread updated since (a run started on it, its metadata patched: the thread record's
  ``updated_at``) is rescheduled to ``updated_at + minutes``; so is one with a run in
  progress on this worker;
- otherwise strategy ``delete`` deletes it (runs cancelled, checkpoints, record) and
  ``keep_latest`` prunes its checkpoints to the latest of each namespace, then drops
  the expiry.

Kept where the checkpoints are (:mod:`agent_server.sql`; table
``agent_server_thread_ttl``). With several workers every worker sweeps; deleting a
thread twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from agent_server.sql import Database

logger = logging.getLogger("agent_server.thread_ttl")


class ThreadExpiries(Protocol):
    async def set(self, thread_id: str, minutes: float, strategy: str) -> None: ...

    async def clear(self, thread_id: str) -> None: ...

    async def due(self, now: float, limit: int) -> list[tuple[str, float, str]]:
        """``(thread_id, minutes, strategy)`` of expiries at or before ``now``."""

    async def reschedule(self, thread_id: str, expires_at: float) -> None: ...


class MemoryExpiries:
    def __init__(self) -> None:
        self.expiries: dict[str, tuple[float, float, str]] = {}  # id -> (at, minutes, strategy)

    async def set(self, thread_id: str, minutes: float, strategy: str) -> None:
        self.expiries[thread_id] = (time.time() + minutes * 60, minutes, strategy)

    async def clear(self, thread_id: str) -> None:
        self.expiries.pop(thread_id, None)

    async def due(self, now: float, limit: int) -> list[tuple[str, float, str]]:
        found = [(t, m, s) for t, (at, m, s) in self.expiries.items() if at <= now]
        return found[:limit]

    async def reschedule(self, thread_id: str, expires_at: float) -> None:
        if thread_id in self.expiries:
            _, minutes, strategy = self.expiries[thread_id]
            self.expiries[thread_id] = (expires_at, minutes, strategy)


class SqlExpiries:
    SCHEMA = (
        """CREATE TABLE IF NOT EXISTS agent_server_thread_ttl (
        thread_id TEXT PRIMARY KEY, minutes DOUBLE PRECISION NOT NULL,
        strategy TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
        """CREATE INDEX IF NOT EXISTS agent_server_thread_ttl_expires
        ON agent_server_thread_ttl (expires_at)""",
    )

    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, thread_id: str, minutes: float, strategy: str) -> None:
        await self.db.run(
            "INSERT INTO agent_server_thread_ttl VALUES (?, ?, ?, ?) ON CONFLICT (thread_id) "
            "DO UPDATE SET minutes = excluded.minutes, strategy = excluded.strategy, "
            "expires_at = excluded.expires_at",
            (thread_id, minutes, strategy, time.time() + minutes * 60),
        )

    async def clear(self, thread_id: str) -> None:
        await self.db.run("DELETE FROM agent_server_thread_ttl WHERE thread_id = ?", (thread_id,))

    async def due(self, now: float, limit: int) -> list[tuple[str, float, str]]:
        rows = await self.db.run(
            "SELECT thread_id, minutes, strategy FROM agent_server_thread_ttl "
            "WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now, limit),
        )
        return [(str(t), float(m), str(s)) for t, m, s in rows]

    async def reschedule(self, thread_id: str, expires_at: float) -> None:
        await self.db.run(
            "UPDATE agent_server_thread_ttl SET expires_at = ? WHERE thread_id = ?",
            (expires_at, thread_id),
        )


async def open_thread_expiries(db: Database | None) -> ThreadExpiries:
    if db is None:
        return MemoryExpiries()
    await db.setup(SqlExpiries.SCHEMA)
    return SqlExpiries(db)


# What the sweeper needs from the app: the thread's last update and whether it is busy,
# and how to expire it. Passed in, so this module does not import the API's routes.
LastActive = Callable[[str], Awaitable[float | None]]
Expire = Callable[[str, str], Awaitable[None]]


async def sweep_once(
    expiries: ThreadExpiries, last_active: LastActive, expire: Expire, batch: int = 100
) -> int:
    """Expire what is due; the number of threads expired."""
    now = time.time()
    expired = 0
    for thread_id, minutes, strategy in await expiries.due(now, batch):
        active = await last_active(thread_id)
        if active is not None and active + minutes * 60 > now:
            await expiries.reschedule(thread_id, active + minutes * 60)
            continue
        await expire(thread_id, strategy)
        await expiries.clear(thread_id)
        expired += 1
    return expired


async def sweep_threads(
    expiries: ThreadExpiries, last_active: LastActive, expire: Expire, interval: float
) -> None:
    """The lifespan job: sweep every ``interval`` seconds, for ever."""
    while True:
        await asyncio.sleep(interval)
        expired = await sweep_once(expiries, last_active, expire)
        if expired:
            logger.info("expired %d threads (TTL)", expired)


def minutes_of(ttl: Any) -> tuple[float, str] | None:
    """``(minutes, strategy)`` of a request's ``ttl`` (a number or LangGraph's object)."""
    if ttl is None:
        return None
    if isinstance(ttl, int | float):
        return float(ttl), "delete"
    return float(ttl.ttl), ttl.strategy
