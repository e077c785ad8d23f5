"""Assistant records: a graph with its configuration, versioned (LangGraph's assistants).

An assistant names a registered graph and carries a ``config``, a ``context``, metadata,
a name and a description. Every change (``PATCH``) is a new *version*: the versions are
kept, and one of them is the assistant's current one (the newest, or the one set with
``POST /assistants/{id}/latest``); runs use the current version's config and context.

Every registered graph has a default assistant, created at start-up if missing, with
LangGraph's id for it (``uuid5`` of the graph name) and ``metadata.created_by =
"system"``; its record persists, so a default assistant patched once stays patched
across restarts.

Kept where the checkpoints are (:mod:`agent_server.sql`): in memory, in the SQLite file,
or in PostgreSQL (tables ``agent_server_assistants`` and
``agent_server_assistant_versions``, shared by every worker). A record is one JSON
document; searches filter in Python over the assistants of the registered graphs,
which suits the tens to thousands of assistants a deployment has.

Decisions:

- ``owner`` is the user who created the assistant (``None`` without auth, and for the
  default assistants): others neither see nor change it. The default assistants are
  shared; with auth on, they are read-only (a change would change them for everyone).
- A new version's number is ``max + 1`` over the assistant's versions, written first;
  then the assistant's current version moves to it, only forward, so two concurrent
  patches leave the newer one current.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from agent_server.sql import Database

# The fields a version holds (the assistant adds its id, owner, times, current version).
VERSIONED = ("graph_id", "config", "context", "metadata", "name", "description")


class AssistantRecords(Protocol):
    async def get(self, assistant_id: str) -> dict[str, Any] | None: ...

    async def create(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The new assistant (version 1), or ``None`` if the id exists."""

    async def add_version(self, assistant_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Store ``fields`` as a new version and make it current; the assistant."""

    async def set_latest(self, assistant_id: str, version: int) -> dict[str, Any] | None:
        """Make ``version`` current; ``None`` if there is no such version."""

    async def versions(self, assistant_id: str) -> list[dict[str, Any]]:
        """Every version, newest first."""

    async def delete(self, assistant_id: str) -> bool: ...

    async def all(self) -> list[dict[str, Any]]: ...


def _version_of(assistant_id: str, version: int, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "assistant_id": assistant_id,
        "version": version,
        **{k: fields.get(k) for k in VERSIONED},
        "created_at": time.time(),
    }


def _current(record: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    return {
        **record,
        **{k: version[k] for k in VERSIONED},
        "version": version["version"],
        "updated_at": time.time(),
    }


class MemoryAssistants:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}

    async def get(self, assistant_id: str) -> dict[str, Any] | None:
        record = self.records.get(assistant_id)
        return None if record is None else _copy(record)

    async def create(self, record: dict[str, Any]) -> dict[str, Any] | None:
        assistant_id = record["assistant_id"]
        if assistant_id in self.records:
            return None
        now = time.time()
        created = {**record, "version": 1, "created_at": now, "updated_at": now}
        self.records[assistant_id] = created
        self.history[assistant_id] = [_version_of(assistant_id, 1, record)]
        return _copy(created)

    async def add_version(self, assistant_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        versions = self.history[assistant_id]
        version = _version_of(assistant_id, max(v["version"] for v in versions) + 1, fields)
        versions.append(version)
        self.records[assistant_id] = _current(self.records[assistant_id], version)
        return _copy(self.records[assistant_id])

    async def set_latest(self, assistant_id: str, version: int) -> dict[str, Any] | None:
        found = [v for v in self.history.get(assistant_id, []) if v["version"] == version]
        if not found or assistant_id not in self.records:
            return None
        self.records[assistant_id] = _current(self.records[assistant_id], found[0])
        return _copy(self.records[assistant_id])

    async def versions(self, assistant_id: str) -> list[dict[str, Any]]:
        found = self.history.get(assistant_id, [])
        return [_copy(v) for v in sorted(found, key=lambda v: -v["version"])]

    async def delete(self, assistant_id: str) -> bool:
        self.history.pop(assistant_id, None)
        return self.records.pop(assistant_id, None) is not None

    async def all(self) -> list[dict[str, Any]]:
        return [_copy(r) for r in self.records.values()]


def _copy(record: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = orjson.loads(orjson.dumps(record))
    return copied


class SqlAssistants:
    """Both databases: one JSON document per assistant and per version."""

    def __init__(self, db: Database) -> None:
        self.db = db
        json = "JSONB" if db.dialect == "postgres" else "TEXT"
        self.schema = (
            f"""CREATE TABLE IF NOT EXISTS agent_server_assistants (
            assistant_id TEXT PRIMARY KEY, version INTEGER NOT NULL, body {json} NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS agent_server_assistant_versions (
            assistant_id TEXT NOT NULL, version INTEGER NOT NULL, body {json} NOT NULL,
            PRIMARY KEY (assistant_id, version))""",
        )
        self.param = "?::jsonb" if db.dialect == "postgres" else "?"

    async def setup(self) -> None:
        await self.db.setup(self.schema)

    @staticmethod
    def _load(body: Any) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(body) if isinstance(body, str | bytes) else body
        return loaded

    async def get(self, assistant_id: str) -> dict[str, Any] | None:
        rows = await self.db.run(
            "SELECT body FROM agent_server_assistants WHERE assistant_id = ?", (assistant_id,)
        )
        return self._load(rows[0][0]) if rows else None

    async def create(self, record: dict[str, Any]) -> dict[str, Any] | None:
        now = time.time()
        created = {**record, "version": 1, "created_at": now, "updated_at": now}
        assistant_id = record["assistant_id"]
        rows = await self.db.run(
            f"INSERT INTO agent_server_assistants VALUES (?, 1, {self.param}) "
            "ON CONFLICT (assistant_id) DO NOTHING RETURNING assistant_id",
            (assistant_id, orjson.dumps(created).decode()),
        )
        if not rows:
            return None
        await self._put_version(_version_of(assistant_id, 1, record))
        return created

    async def _put_version(self, version: dict[str, Any]) -> None:
        await self.db.run(
            f"INSERT INTO agent_server_assistant_versions VALUES (?, ?, {self.param}) "
            "ON CONFLICT (assistant_id, version) DO NOTHING",
            (version["assistant_id"], version["version"], orjson.dumps(version).decode()),
        )

    async def add_version(self, assistant_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        for _ in range(10):  # a concurrent patch took the number: take the next one
            rows = await self.db.run(
                "SELECT COALESCE(MAX(version), 0) FROM agent_server_assistant_versions "
                "WHERE assistant_id = ?",
                (assistant_id,),
            )
            version = _version_of(assistant_id, int(rows[0][0]) + 1, fields)
            taken = await self.db.run(
                f"INSERT INTO agent_server_assistant_versions VALUES (?, ?, {self.param}) "
                "ON CONFLICT (assistant_id, version) DO NOTHING RETURNING version",
                (assistant_id, version["version"], orjson.dumps(version).decode()),
            )
            if taken:
                break
        else:
            raise RuntimeError(f"could not add a version to assistant {assistant_id}")
        record = await self.get(assistant_id)
        assert record is not None
        current = _current(record, version)
        await self.db.run(
            f"UPDATE agent_server_assistants SET version = ?, body = {self.param} "
            "WHERE assistant_id = ? AND version < ?",
            (version["version"], orjson.dumps(current).decode(), assistant_id, version["version"]),
        )
        return current

    async def set_latest(self, assistant_id: str, version: int) -> dict[str, Any] | None:
        rows = await self.db.run(
            "SELECT body FROM agent_server_assistant_versions "
            "WHERE assistant_id = ? AND version = ?",
            (assistant_id, version),
        )
        record = await self.get(assistant_id)
        if not rows or record is None:
            return None
        current = _current(record, self._load(rows[0][0]))
        await self.db.run(
            f"UPDATE agent_server_assistants SET version = ?, body = {self.param} "
            "WHERE assistant_id = ?",
            (version, orjson.dumps(current).decode(), assistant_id),
        )
        return current

    async def versions(self, assistant_id: str) -> list[dict[str, Any]]:
        rows = await self.db.run(
            "SELECT body FROM agent_server_assistant_versions WHERE assistant_id = ? "
            "ORDER BY version DESC",
            (assistant_id,),
        )
        return [self._load(row[0]) for row in rows]

    async def delete(self, assistant_id: str) -> bool:
        await self.db.run(
            "DELETE FROM agent_server_assistant_versions WHERE assistant_id = ?", (assistant_id,)
        )
        rows = await self.db.run(
            "DELETE FROM agent_server_assistants WHERE assistant_id = ? RETURNING assistant_id",
            (assistant_id,),
        )
        return bool(rows)

    async def all(self) -> list[dict[str, Any]]:
        rows = await self.db.run("SELECT body FROM agent_server_assistants")
        return [self._load(row[0]) for row in rows]


async def open_assistant_records(db: Database | None) -> AssistantRecords:
    if db is None:
        return MemoryAssistants()
    records = SqlAssistants(db)
    await records.setup()
    return records
