"""Crons: schedules that start runs (LangGraph's ``/runs/crons``), where they are kept,
and how each due time becomes exactly one run however many workers there are.

Decisions (read before changing):

- A schedule is a cron expression as croniter reads it (five fields; a sixth gives
  seconds), in the cron's IANA timezone (UTC when it has none), until its end time.
- A cron's record holds ``next_run_at``, its next due time (epoch seconds; None when it
  has none before its end time). Every worker looks for due crons every
  ``cron_interval`` seconds; before it fires one it *claims* that due time, a
  compare-and-set of ``next_run_at`` from the due time it read to the following one
  (``UPDATE ... WHERE cron_id = ? AND next_run_at = ?``). Exactly one worker's update
  matches, in PostgreSQL as in SQLite or memory, and only that worker starts the run: no
  timer per process, no lock to hold or lose.
- Catch-up: the following due time is the first one after *now*, not after the time
  claimed, so a cron whose workers were all down across several due times fires once
  when one is back, then keeps to its schedule: one run, never a burst.
- The claim comes before the run: a worker that dies between the two loses that due time
  (at most once, never twice). With a shared broker the run is a queued job at once, so
  the gap is a round trip.
- Changing a cron's schedule, timezone or end time, or enabling it, sets its next due
  time from now: what a disabled cron missed never fires.
- A cron belongs to the user who created it (``owner``; None without authentication).
  Searches see only the caller's crons; the routes answer 404 for another user's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import CroniterError, croniter

from agent_server.sql import Database, PostgresDatabase, SqliteDatabase

logger = logging.getLogger("agent_server.crons")

CronSortBy = Literal[
    "cron_id", "assistant_id", "thread_id", "created_at", "updated_at", "next_run_date",
    "end_time",
]  # fmt: skip
SortOrder = Literal["asc", "desc"]
COLUMNS = (
    "cron_id", "owner", "assistant_id", "graph", "thread_id", "schedule", "timezone",
    "end_time", "payload", "metadata", "enabled", "on_run_completed", "created_at",
    "updated_at", "next_run_at",
)  # fmt: skip
JSON_COLUMNS = ("payload", "metadata")
SORT_COLUMNS = {"next_run_date": "next_run_at"}  # the API's name -> ours


def zone(name: str | None) -> ZoneInfo:
    """An IANA timezone; ValueError if there is no such zone."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"Invalid timezone: {name!r} (an IANA name, e.g. 'Europe/Paris')") from exc


def next_run(
    schedule: str, timezone: str | None, end_time: float | None, after: float
) -> float | None:
    """The first due time of ``schedule`` after ``after`` (epoch seconds), None past
    ``end_time``; ValueError for an expression that is not a schedule or never falls."""
    if not croniter.is_valid(schedule):
        raise ValueError(
            f"Invalid cron schedule: {schedule!r} (minute hour day-of-month month "
            "day-of-week, e.g. '*/5 * * * *')"
        )
    try:
        due = float(
            croniter(schedule, datetime.fromtimestamp(after, zone(timezone)))
            .get_next(datetime)
            .timestamp()
        )
    except CroniterError as exc:
        raise ValueError(f"Invalid cron schedule: {schedule!r} ({exc})") from exc
    return None if end_time is not None and due > end_time else due


class CronRecords(Protocol):
    async def create(self, cron: dict[str, Any]) -> None: ...

    async def get(self, cron_id: str) -> dict[str, Any] | None: ...

    async def update(self, cron_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Set the columns in ``changes``; the record afterwards (None: no such cron)."""

    async def delete(self, cron_id: str) -> bool: ...

    async def search(
        self,
        owner: str | None,
        filters: dict[str, Any],
        *,
        limit: int | None = None,
        offset: int = 0,
        sort_by: CronSortBy = "created_at",
        sort_order: SortOrder = "desc",
    ) -> list[dict[str, Any]]:
        """The owner's crons (every cron for None) whose ``assistant_id``, ``thread_id``,
        ``enabled`` equal the filters given, and whose metadata holds ``metadata``."""

    async def due(self, now: float, limit: int) -> list[dict[str, Any]]:
        """Enabled crons whose next due time is at or before ``now``."""

    async def claim(self, cron_id: str, due: float, following: float | None) -> bool:
        """Move the cron's due time from ``due`` to ``following``; False if another
        worker did first (or the cron changed meanwhile)."""


def _matches(record: dict[str, Any], owner: str | None, filters: dict[str, Any]) -> bool:
    if owner is not None and record["owner"] != owner:
        return False
    for key in ("assistant_id", "thread_id", "enabled"):
        if key in filters and record[key] != filters[key]:
            return False
    metadata = record["metadata"]
    wanted = filters.get("metadata") or {}
    return all(key in metadata and metadata[key] == value for key, value in wanted.items())


def _select(
    records: Iterable[dict[str, Any]],
    owner: str | None,
    filters: dict[str, Any],
    limit: int | None,
    offset: int,
    sort_by: CronSortBy,
    sort_order: SortOrder,
) -> list[dict[str, Any]]:
    """A search done in Python: the matching records, sorted (None last), one page."""
    column = SORT_COLUMNS.get(sort_by, sort_by)
    found = [dict(record) for record in records if _matches(record, owner, filters)]
    present = [r for r in found if r[column] is not None]
    present.sort(key=lambda r: r[column], reverse=sort_order == "desc")
    ordered = present + [r for r in found if r[column] is None]
    return ordered[offset : None if limit is None else offset + limit]


class MemoryCrons:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    async def create(self, cron: dict[str, Any]) -> None:
        self.records[cron["cron_id"]] = dict(cron)

    async def get(self, cron_id: str) -> dict[str, Any] | None:
        record = self.records.get(cron_id)
        return None if record is None else dict(record)

    async def update(self, cron_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        record = self.records.get(cron_id)
        if record is None:
            return None
        record.update(changes)
        return dict(record)

    async def delete(self, cron_id: str) -> bool:
        return self.records.pop(cron_id, None) is not None

    async def search(
        self,
        owner: str | None,
        filters: dict[str, Any],
        *,
        limit: int | None = None,
        offset: int = 0,
        sort_by: CronSortBy = "created_at",
        sort_order: SortOrder = "desc",
    ) -> list[dict[str, Any]]:
        return _select(self.records.values(), owner, filters, limit, offset, sort_by, sort_order)

    async def due(self, now: float, limit: int) -> list[dict[str, Any]]:
        due = [
            dict(r)
            for r in self.records.values()
            if r["enabled"] and r["next_run_at"] is not None and r["next_run_at"] <= now
        ]
        return due[:limit]

    async def claim(self, cron_id: str, due: float, following: float | None) -> bool:
        record = self.records.get(cron_id)
        if record is None or record["next_run_at"] != due:
            return False
        record["next_run_at"] = following
        return True


def _row(row: Any) -> dict[str, Any]:
    values = list(row) if isinstance(row, tuple | list) else [row[k] for k in COLUMNS]
    record = dict(zip(COLUMNS, values, strict=True))
    for key in JSON_COLUMNS:
        if isinstance(record[key], str | bytes):
            record[key] = orjson.loads(record[key])
    record["enabled"] = bool(record["enabled"])
    return record


class SqlCrons:
    """The statements both databases share; each subclass runs them in its dialect."""

    PARAM = "?"
    JSON = "?"

    def __init__(self, database: Database) -> None:
        self.database = database

    async def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return await self.database.run(sql, params)

    def _values(self, record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            orjson.dumps(record[c]).decode() if c in JSON_COLUMNS else record[c] for c in record
        )

    async def create(self, cron: dict[str, Any]) -> None:
        marks = ", ".join(self.JSON if c in JSON_COLUMNS else self.PARAM for c in COLUMNS)
        ordered = {c: cron[c] for c in COLUMNS}
        await self._run(
            f"INSERT INTO agent_server_crons ({', '.join(COLUMNS)}) VALUES ({marks})",
            self._values(ordered),
        )

    async def get(self, cron_id: str) -> dict[str, Any] | None:
        rows = await self._run(
            f"SELECT {', '.join(COLUMNS)} FROM agent_server_crons WHERE cron_id = {self.PARAM}",
            (cron_id,),
        )
        return _row(rows[0]) if rows else None

    async def update(self, cron_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        changes = {c: changes[c] for c in COLUMNS if c in changes}  # known columns only
        sets = ", ".join(f"{c} = {self.JSON if c in JSON_COLUMNS else self.PARAM}" for c in changes)
        rows = await self._run(
            f"UPDATE agent_server_crons SET {sets} WHERE cron_id = {self.PARAM} "
            f"RETURNING {', '.join(COLUMNS)}",
            (*self._values(changes), cron_id),
        )
        return _row(rows[0]) if rows else None

    async def delete(self, cron_id: str) -> bool:
        rows = await self._run(
            f"DELETE FROM agent_server_crons WHERE cron_id = {self.PARAM} RETURNING cron_id",
            (cron_id,),
        )
        return bool(rows)

    async def due(self, now: float, limit: int) -> list[dict[str, Any]]:
        p = self.PARAM
        rows = await self._run(
            f"SELECT {', '.join(COLUMNS)} FROM agent_server_crons WHERE enabled "
            f"AND next_run_at <= {p} ORDER BY next_run_at LIMIT {p}",
            (now, limit),
        )
        return [_row(row) for row in rows]

    async def claim(self, cron_id: str, due: float, following: float | None) -> bool:
        p = self.PARAM
        rows = await self._run(
            f"UPDATE agent_server_crons SET next_run_at = {p} "
            f"WHERE cron_id = {p} AND next_run_at = {p} RETURNING cron_id",
            (following, cron_id, due),
        )
        return bool(rows)


class SqliteCrons(SqlCrons):
    """In the SQLite checkpoint file, on the saver's connection (and under its lock)."""

    SCHEMA = """CREATE TABLE IF NOT EXISTS agent_server_crons (
        cron_id TEXT PRIMARY KEY, owner TEXT, assistant_id TEXT NOT NULL,
        graph TEXT NOT NULL, thread_id TEXT, schedule TEXT NOT NULL, timezone TEXT,
        end_time REAL, payload TEXT NOT NULL, metadata TEXT NOT NULL,
        enabled INTEGER NOT NULL, on_run_completed TEXT, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, next_run_at REAL)"""

    async def setup(self) -> None:
        await self._run(self.SCHEMA)

    async def search(
        self,
        owner: str | None,
        filters: dict[str, Any],
        *,
        limit: int | None = None,
        offset: int = 0,
        sort_by: CronSortBy = "created_at",
        sort_order: SortOrder = "desc",
    ) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM agent_server_crons"
        params: tuple[Any, ...] = ()
        if owner is not None:
            sql, params = sql + " WHERE owner = ?", (owner,)
        rows = [_row(row) for row in await self._run(sql, params)]
        return _select(rows, owner, filters, limit, offset, sort_by, sort_order)


class PostgresCrons(SqlCrons):
    """Beside the checkpoints in PostgreSQL, shared by every worker."""

    PARAM = "%s"
    JSON = "%s::jsonb"
    SCHEMA = (
        """CREATE TABLE IF NOT EXISTS agent_server_crons (
        cron_id TEXT PRIMARY KEY, owner TEXT, assistant_id TEXT NOT NULL,
        graph TEXT NOT NULL, thread_id TEXT, schedule TEXT NOT NULL, timezone TEXT,
        end_time DOUBLE PRECISION, payload JSONB NOT NULL, metadata JSONB NOT NULL,
        enabled BOOLEAN NOT NULL, on_run_completed TEXT,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        next_run_at DOUBLE PRECISION)""",
        """CREATE INDEX IF NOT EXISTS agent_server_crons_due
        ON agent_server_crons (next_run_at) WHERE enabled""",
    )

    async def search(
        self,
        owner: str | None,
        filters: dict[str, Any],
        *,
        limit: int | None = None,
        offset: int = 0,
        sort_by: CronSortBy = "created_at",
        sort_order: SortOrder = "desc",
    ) -> list[dict[str, Any]]:
        clauses = ["metadata @> %s::jsonb"]
        params: list[Any] = [orjson.dumps(filters.get("metadata") or {}).decode()]
        if owner is not None:
            clauses.append("owner = %s")
            params.append(owner)
        for key in ("assistant_id", "thread_id", "enabled"):
            if key in filters:
                clauses.append(f"{key} = %s")
                params.append(filters[key])
        # sort_by and sort_order are validated literals, never user text
        column = SORT_COLUMNS.get(sort_by, sort_by)
        order = "DESC" if sort_order == "desc" else "ASC"
        rows = await self._run(
            f"SELECT {', '.join(COLUMNS)} FROM agent_server_crons "
            f"WHERE {' AND '.join(clauses)} ORDER BY {column} {order} NULLS LAST "
            "LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return [_row(row) for row in rows]


async def open_cron_records(checkpointer: Any) -> CronRecords:
    """The cron records that go with the configured saver, as thread records do
    (PostgreSQL's table is created with the saver's; SQLite's here)."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from agent_server.storage import RetryingPostgresSaver

    if isinstance(checkpointer, RetryingPostgresSaver):
        return PostgresCrons(PostgresDatabase(checkpointer.conn, checkpointer.retry))
    if isinstance(checkpointer, AsyncSqliteSaver):
        crons = SqliteCrons(SqliteDatabase(checkpointer.conn, checkpointer.lock))
        await crons.setup()
        return crons
    return MemoryCrons()


Fire = Callable[[dict[str, Any]], Awaitable[None]]


async def fire_due(records: CronRecords, fire: Fire, now: float | None = None) -> int:
    """Claim and fire every cron due at ``now``; how many this worker fired."""
    now = time.time() if now is None else now
    fired = 0
    for cron in await records.due(now, 100):
        try:
            following = next_run(cron["schedule"], cron["timezone"], cron["end_time"], now)
        except ValueError:
            following = None  # cannot happen for a cron the routes accepted
        if not await records.claim(cron["cron_id"], cron["next_run_at"], following):
            continue  # another worker has this due time
        fired += 1
        try:
            await fire(cron)
        except Exception:
            logger.exception("cron %s: could not start its run", cron["cron_id"])
    return fired


async def schedule(records: CronRecords, fire: Fire, interval: float) -> None:
    """Fire due crons forever: a supervised lifespan job on every worker. The look is
    jittered so that workers started together do not all ask at the same instant."""
    while True:
        await fire_due(records, fire)
        await asyncio.sleep(random.uniform(interval / 2, interval))
