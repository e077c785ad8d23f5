"""Where threads are kept: LangGraph checkpointers chosen by ``AGENT_SERVER_DATABASE_URL``.

- ``memory://``: in process, gone on exit (tests, notebooks).
- a file path (or ``sqlite:///path``): SQLite, the single-machine default.
- ``postgresql://...``: PostgreSQL through ``langgraph-checkpoint-postgres``, for several
  workers sharing threads. Tables are created at start-up (``setup()`` is idempotent,
  and concurrent starts take turns under an advisory lock); a ``search_path`` given in
  the URL (``?options=-csearch_path%3Dmyschema``) selects the schema, which is how tests
  isolate themselves.

Each backend is the library's own saver; we only open and close it.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from agent_server.crons import PostgresCrons
from agent_server.records import SCHEMA as RECORDS_SCHEMA
from agent_server.records import NoRecords, PostgresRecords, RunRecords
from agent_server.settings import Settings
from agent_server.threads import PostgresThreads

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SETUP_LOCK = 0x6167656E74  # any fixed key: "agent"
TRY_LOCK = "SELECT pg_try_advisory_lock(%s) AS locked"


async def open_storage(
    settings: Settings, stack: AsyncExitStack
) -> tuple[BaseCheckpointSaver[Any], RunRecords]:
    """The configured saver and run records; ``stack`` closes them on exit."""
    url = settings.database_url
    if settings.checkpoint_in_memory:
        return InMemorySaver(), NoRecords()
    if url.startswith(POSTGRES_SCHEMES):
        return await _postgres(url, settings.database_pool_size, settings.storage_wait, stack)
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    saver = await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(str(path)))
    return saver, NoRecords()


async def _postgres(
    url: str, pool_size: int, wait: float, stack: AsyncExitStack
) -> tuple[BaseCheckpointSaver[Any], RunRecords]:
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    from agent_server.storage import RetryingPostgresSaver, StorageRetry

    # A pool, not one connection: concurrent runs would queue on a single connection's
    # lock. The connection options are the ones the saver requires. Outages: see
    # agent_server/storage.py (a checked connection per call; waits bounded by ``wait``).
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=pool_size,
        open=False,
        timeout=wait,
        check=AsyncConnectionPool.check_connection,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    await pool.open(wait=True, timeout=10)
    stack.push_async_callback(pool.close)
    retry = StorageRetry(pool, wait)
    saver = RetryingPostgresSaver(pool, retry)
    # Workers starting together would race on the saver's migrations (a unique
    # violation): one at a time, under a session advisory lock. Polled with the try-form,
    # not waited for: the migrations' CREATE INDEX CONCURRENTLY waits for every running
    # statement, a blocked lock request included, which would deadlock.
    async with pool.connection() as lock:
        while not (await (await lock.execute(TRY_LOCK, (SETUP_LOCK,))).fetchone() or {}).get(
            "locked"
        ):
            await asyncio.sleep(0.1)
        try:
            await saver.setup()
            for statement in (*RECORDS_SCHEMA, *PostgresThreads.SCHEMA, *PostgresCrons.SCHEMA):
                await lock.execute(statement)
        finally:
            await lock.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))
    return saver, PostgresRecords(pool, retry)
