"""Running the record tables' SQL where the checkpoints are (SQLite or PostgreSQL).

The records added for LangGraph's platform API (assistants and their versions, thread
TTLs: :mod:`agent_server.assistants`, :mod:`agent_server.thread_ttl`) live beside the
checkpoints, as the thread records of :mod:`agent_server.threads` do. A :class:`Database`
runs one statement and returns its rows as tuples, whichever the database:

- SQLite: on the saver's own connection and under its lock (one writer; a second
  connection would only wait for the first).
- PostgreSQL: on the saver's pool, every call under its :class:`StorageRetry` (the
  statements are upserts and deletes by key: safe to repeat). Tables are created under
  the start-up advisory lock of :mod:`agent_server.checkpoints`, so workers that start
  together do not race.

Statements are written with ``?`` placeholders; PostgreSQL's ``%s`` is substituted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from agent_server.storage import StorageRetry

Dialect = Literal["sqlite", "postgres"]


class Database:
    dialect: Dialect

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def setup(self, statements: Sequence[str]) -> None:
        for statement in statements:
            await self.run(statement)


class SqliteDatabase(Database):
    dialect: Dialect = "sqlite"

    def __init__(self, conn: Any, lock: asyncio.Lock) -> None:
        self.conn = conn
        self.lock = lock

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.lock:
            cursor = await self.conn.execute(sql, tuple(params))
            rows = [tuple(row) for row in await cursor.fetchall()]
            await self.conn.commit()
            return rows


class PostgresDatabase(Database):
    dialect: Dialect = "postgres"

    def __init__(self, pool: Any, retry: StorageRetry) -> None:
        self.pool = pool
        self.retry = retry

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        statement = sql.replace("?", "%s")

        async def run() -> list[tuple[Any, ...]]:
            async with self.pool.connection() as connection:
                cursor = await connection.execute(statement, tuple(params))
                if cursor.description is None:
                    return []
                return [
                    tuple(row.values()) if isinstance(row, dict) else tuple(row)
                    for row in await cursor.fetchall()
                ]

        return await self.retry(run)

    async def setup(self, statements: Sequence[str]) -> None:
        await setup_lock(self.pool, lambda connection: _execute_all(connection, statements))


async def _execute_all(connection: Any, statements: Sequence[str]) -> None:
    for statement in statements:
        await connection.execute(statement)


async def setup_lock(pool: Any, setup: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``setup(connection)`` under the start-up advisory lock that the checkpoint
    tables are created under (polled: see :func:`agent_server.checkpoints._postgres`)."""
    from agent_server.checkpoints import SETUP_LOCK, TRY_LOCK

    async with pool.connection() as connection:
        while True:
            row = await (await connection.execute(TRY_LOCK, (SETUP_LOCK,))).fetchone()
            locked = row.get("locked") if isinstance(row, dict) else (row or [False])[0]
            if locked:
                break
            await asyncio.sleep(0.1)
        try:
            await setup(connection)
        finally:
            await connection.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))


def open_database(checkpointer: Any) -> Database | None:
    """The database the saver keeps its checkpoints in; ``None`` for memory."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from agent_server.storage import RetryingPostgresSaver

    if isinstance(checkpointer, RetryingPostgresSaver):
        return PostgresDatabase(checkpointer.conn, checkpointer.retry)
    if isinstance(checkpointer, AsyncSqliteSaver):
        return SqliteDatabase(checkpointer.conn, checkpointer.lock)
    return None
