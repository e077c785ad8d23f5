"""Run records kept in the database, so every worker (and a restarted one) can list a
thread's runs: ``GET /threads/{id}/runs`` reads them besides the runs in memory.

With PostgreSQL (``AGENT_SERVER_DATABASE_URL=postgresql://...``) each run is written
when it is accepted and when it ends (two statements a run, off the frame path); the
table is created at start-up. Otherwise (SQLite, memory) nothing is written: one process
knows all its runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent_server.storage import StorageRetry

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS agent_server_runs (
    run_id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    graph TEXT NOT NULL,
    owner TEXT,
    status TEXT NOT NULL,
    created_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    first_token_at DOUBLE PRECISION,
    last_seq INTEGER,
    worker TEXT
)""",
    """
CREATE INDEX IF NOT EXISTS agent_server_runs_thread
    ON agent_server_runs (thread_id, created_at)""",
)

UPSERT = """
INSERT INTO agent_server_runs (run_id, thread_id, graph, owner, status, created_at,
    started_at, ended_at, first_token_at, last_seq, worker)
VALUES (%(run_id)s, %(thread_id)s, %(graph)s, %(owner)s, %(status)s, %(created_at)s,
    %(started_at)s, %(ended_at)s, %(first_token_at)s, %(last_seq)s, %(worker)s)
ON CONFLICT (run_id) DO UPDATE SET status = EXCLUDED.status,
    started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at,
    first_token_at = EXCLUDED.first_token_at, last_seq = EXCLUDED.last_seq,
    worker = EXCLUDED.worker
"""

COLUMNS = (
    "run_id", "thread_id", "graph", "status", "created_at", "started_at", "ended_at",
    "first_token_at", "last_seq",
)  # fmt: skip


class RunRecords(Protocol):
    durable: bool

    async def save(self, record: dict[str, Any]) -> None: ...

    async def thread_runs(self, thread_id: str) -> list[dict[str, Any]]: ...

    async def delete(self, run_id: str) -> None: ...


class NoRecords:
    durable = False

    async def save(self, record: dict[str, Any]) -> None:
        return None

    async def thread_runs(self, thread_id: str) -> list[dict[str, Any]]:
        return []

    async def delete(self, run_id: str) -> None:
        return None


class PostgresRecords:
    durable = True

    def __init__(self, pool: Any, retry: StorageRetry) -> None:
        self.pool = pool
        self.retry = retry

    async def _run(self, sql: str, params: Any) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            async with self.pool.connection() as connection:
                cursor = await connection.execute(sql, params)
                return [dict(row) for row in await cursor.fetchall()] if cursor.description else []

        return await self.retry(run)

    async def save(self, record: dict[str, Any]) -> None:
        await self._run(UPSERT, record)

    async def thread_runs(self, thread_id: str) -> list[dict[str, Any]]:
        return await self._run(
            f"SELECT {', '.join(COLUMNS)}, owner FROM agent_server_runs "
            "WHERE thread_id = %s ORDER BY created_at",
            (thread_id,),
        )

    async def delete(self, run_id: str) -> None:
        await self._run("DELETE FROM agent_server_runs WHERE run_id = %s", (run_id,))
