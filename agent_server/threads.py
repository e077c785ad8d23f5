"""Thread records: what the LangGraph API says of a thread besides its checkpoints.

A thread's state lives in the checkpointer; this keeps the rest of what LangGraph's
``/threads`` routes return and filter on: creation and update times, user metadata,
its owner and the graph that runs on it. One record per thread, written when a thread
is created (``POST /threads`` or a run's ``if_not_exists="create"``), touched when a run
on it starts, deleted with it. Kept where the checkpoints are:

- ``memory://``: a dict in the process.
- SQLite: a table in the same file, through the saver's own connection.
- PostgreSQL: a table beside the saver's, so every worker sees every thread.

Metadata filters are exact matches on top-level keys (LangGraph's ``@>`` containment);
SQLite filters them in Python after selecting the owner's threads, which is fine on the
single machine it serves.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Literal, Protocol

import orjson

from agent_server.sql import Database, PostgresDatabase, SqliteDatabase

SortBy = Literal["thread_id", "created_at", "updated_at"]
SortOrder = Literal["asc", "desc"]


class ThreadRecords(Protocol):
    async def create(
        self, thread_id: str, owner: str | None, metadata: dict[str, Any], graph: str | None
    ) -> dict[str, Any] | None:
        """The new record, or ``None`` if the thread has one already."""

    async def get(self, thread_id: str) -> dict[str, Any] | None: ...

    async def touch(
        self, thread_id: str, *, graph: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        """Mark an update; merge ``metadata`` into the record's."""

    async def delete(self, thread_id: str) -> bool: ...

    async def search(
        self,
        owner: str | None,
        *,
        metadata: dict[str, Any],
        ids: list[str] | None,
        limit: int,
        offset: int,
        sort_by: SortBy,
        sort_order: SortOrder,
    ) -> list[dict[str, Any]]: ...


def _select(
    records: Iterable[dict[str, Any]],
    owner: str | None,
    metadata: dict[str, Any],
    ids: list[str] | None,
    sort_by: SortBy,
    sort_order: SortOrder,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """A search done in Python: the records that match, sorted, one page of them."""
    wanted = None if ids is None else set(ids)

    def matches(record: dict[str, Any]) -> bool:
        found = record["metadata"]
        return (
            (owner is None or record["owner"] == owner)
            and (wanted is None or record["thread_id"] in wanted)
            and all(key in found and found[key] == value for key, value in metadata.items())
        )

    selected = [dict(record) for record in records if matches(record)]
    selected.sort(key=lambda r: r[sort_by], reverse=sort_order == "desc")
    return selected[offset : offset + limit]


class MemoryThreads:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    async def create(
        self, thread_id: str, owner: str | None, metadata: dict[str, Any], graph: str | None
    ) -> dict[str, Any] | None:
        if thread_id in self.records:
            return None
        now = time.time()
        record = {
            "thread_id": thread_id,
            "owner": owner,
            "metadata": dict(metadata),
            "graph": graph,
            "created_at": now,
            "updated_at": now,
        }
        self.records[thread_id] = record
        return dict(record)

    async def get(self, thread_id: str) -> dict[str, Any] | None:
        record = self.records.get(thread_id)
        return None if record is None else {**record, "metadata": dict(record["metadata"])}

    async def touch(
        self, thread_id: str, *, graph: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        record = self.records.get(thread_id)
        if record is None:
            return
        record["updated_at"] = time.time()
        if graph is not None:
            record["graph"] = graph
        if metadata:
            record["metadata"].update(metadata)

    async def delete(self, thread_id: str) -> bool:
        return self.records.pop(thread_id, None) is not None

    async def search(
        self,
        owner: str | None,
        *,
        metadata: dict[str, Any],
        ids: list[str] | None,
        limit: int,
        offset: int,
        sort_by: SortBy,
        sort_order: SortOrder,
    ) -> list[dict[str, Any]]:
        return _select(
            self.records.values(), owner, metadata, ids, sort_by, sort_order, limit, offset
        )


SQL_COLUMNS = "thread_id, owner, metadata, graph, created_at, updated_at"


def _row(row: Any) -> dict[str, Any]:
    thread_id, owner, metadata, graph, created_at, updated_at = (
        row if isinstance(row, tuple | list) else [row[k] for k in SQL_COLUMNS.split(", ")]
    )
    if isinstance(metadata, str | bytes):
        metadata = orjson.loads(metadata)
    return {
        "thread_id": thread_id,
        "owner": owner,
        "metadata": metadata or {},
        "graph": graph,
        "created_at": created_at,
        "updated_at": updated_at,
    }


class SqlThreads:
    """The statements both databases share; each subclass says how it runs them and how
    its dialect spells parameters, JSON and a metadata merge."""

    PARAM = "?"
    JSON = "?"  # a JSON text parameter
    MERGE = "json_patch(metadata, ?)"  # metadata merged with a JSON text parameter

    def __init__(self, database: Database) -> None:
        self.database = database

    async def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return await self.database.run(sql, params)

    def _sql(self, sql: str) -> str:
        return sql.replace("{p}", self.PARAM).replace("{json}", self.JSON)

    async def create(
        self, thread_id: str, owner: str | None, metadata: dict[str, Any], graph: str | None
    ) -> dict[str, Any] | None:
        now = time.time()
        rows = await self._run(
            self._sql(
                "INSERT INTO agent_server_threads VALUES ({p}, {p}, {json}, {p}, {p}, {p}) "
                f"ON CONFLICT (thread_id) DO NOTHING RETURNING {SQL_COLUMNS}"
            ),
            (thread_id, owner, orjson.dumps(metadata).decode(), graph, now, now),
        )
        return _row(rows[0]) if rows else None

    async def get(self, thread_id: str) -> dict[str, Any] | None:
        rows = await self._run(
            self._sql(f"SELECT {SQL_COLUMNS} FROM agent_server_threads WHERE thread_id = {{p}}"),
            (thread_id,),
        )
        return _row(rows[0]) if rows else None

    async def touch(
        self, thread_id: str, *, graph: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        await self._run(
            self._sql(
                "UPDATE agent_server_threads SET updated_at = {p}, graph = COALESCE({p}, graph), "
                f"metadata = {self.MERGE} WHERE thread_id = {{p}}"
            ),
            (time.time(), graph, orjson.dumps(metadata or {}).decode(), thread_id),
        )

    async def delete(self, thread_id: str) -> bool:
        rows = await self._run(
            self._sql("DELETE FROM agent_server_threads WHERE thread_id = {p} RETURNING thread_id"),
            (thread_id,),
        )
        return bool(rows)


class SqliteThreads(SqlThreads):
    """In the SQLite checkpoint file, on the saver's connection (and under its lock)."""

    SCHEMA = """CREATE TABLE IF NOT EXISTS agent_server_threads (
        thread_id TEXT PRIMARY KEY, owner TEXT, metadata TEXT NOT NULL, graph TEXT,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)"""

    async def setup(self) -> None:
        await self._run(self.SCHEMA)

    async def search(
        self,
        owner: str | None,
        *,
        metadata: dict[str, Any],
        ids: list[str] | None,
        limit: int,
        offset: int,
        sort_by: SortBy,
        sort_order: SortOrder,
    ) -> list[dict[str, Any]]:
        sql = f"SELECT {SQL_COLUMNS} FROM agent_server_threads"
        params: tuple[Any, ...] = ()
        if owner is not None:
            sql += " WHERE owner = ?"
            params = (owner,)
        rows = [_row(row) for row in await self._run(sql, params)]
        return _select(rows, owner, metadata, ids, sort_by, sort_order, limit, offset)


class PostgresThreads(SqlThreads):
    """Beside the checkpoints in PostgreSQL, shared by every worker."""

    PARAM = "%s"
    JSON = "%s::jsonb"
    MERGE = "metadata || %s::jsonb"
    SCHEMA = (
        """CREATE TABLE IF NOT EXISTS agent_server_threads (
        thread_id TEXT PRIMARY KEY, owner TEXT, metadata JSONB NOT NULL DEFAULT '{}',
        graph TEXT, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
        """CREATE INDEX IF NOT EXISTS agent_server_threads_metadata
        ON agent_server_threads USING GIN (metadata)""",
    )

    async def search(
        self,
        owner: str | None,
        *,
        metadata: dict[str, Any],
        ids: list[str] | None,
        limit: int,
        offset: int,
        sort_by: SortBy,
        sort_order: SortOrder,
    ) -> list[dict[str, Any]]:
        clauses = ["metadata @> %s::jsonb"]
        params: list[Any] = [orjson.dumps(metadata).decode()]
        if owner is not None:
            clauses.append("owner = %s")
            params.append(owner)
        if ids is not None:
            clauses.append("thread_id = ANY(%s)")
            params.append(ids)
        # sort_by and sort_order are validated literals, never user text
        order = "DESC" if sort_order == "desc" else "ASC"
        rows = await self._run(
            f"SELECT {SQL_COLUMNS} FROM agent_server_threads WHERE {' AND '.join(clauses)} "
            f"ORDER BY {sort_by} {order} LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return [_row(row) for row in rows]


async def open_thread_records(checkpointer: Any) -> ThreadRecords:
    """The thread records that go with the configured saver (see the module docstring).

    PostgreSQL's table is created with the saver's, under its start-up lock
    (:mod:`agent_server.checkpoints`); SQLite's here.
    """
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from agent_server.storage import RetryingPostgresSaver

    if isinstance(checkpointer, RetryingPostgresSaver):
        return PostgresThreads(PostgresDatabase(checkpointer.conn, checkpointer.retry))
    if isinstance(checkpointer, AsyncSqliteSaver):
        threads = SqliteThreads(SqliteDatabase(checkpointer.conn, checkpointer.lock))
        await threads.setup()
        return threads
    return MemoryThreads()
