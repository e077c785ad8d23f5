"""Thread records: the same contract on every store (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from agent_server.checkpoints import open_storage
from agent_server.settings import Settings
from agent_server.threads import (
    MemoryThreads,
    PostgresThreads,
    SqliteThreads,
    ThreadRecords,
    open_thread_records,
)
from tests.services import postgres_schema


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ThreadRecords]:
    if request.param == "memory":
        yield MemoryThreads()
        return
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = str(tmp_path / "threads.sqlite")
        else:
            url = stack.enter_context(postgres_schema())
        saver, _ = await open_storage(Settings(database_url=url), stack)
        threads = await open_thread_records(saver)
        expected = SqliteThreads if request.param == "sqlite" else PostgresThreads
        assert isinstance(threads, expected)
        yield threads


async def test_create_get_touch_delete(store: ThreadRecords) -> None:
    created = await store.create("t1", "alice", {"topic": "x"}, None)
    assert created is not None and created["metadata"] == {"topic": "x"}
    assert await store.create("t1", "bob", {}, None) is None  # exists: untouched
    await asyncio.sleep(0.01)
    await store.touch("t1", graph="agent", metadata={"graph_id": "agent"})
    got = await store.get("t1")
    assert got is not None
    assert got["owner"] == "alice" and got["graph"] == "agent"
    assert got["metadata"] == {"topic": "x", "graph_id": "agent"}
    assert got["updated_at"] > got["created_at"]
    assert await store.delete("t1") is True
    assert await store.delete("t1") is False
    assert await store.get("t1") is None


async def test_search_filters_sorts_and_pages(store: ThreadRecords) -> None:
    for i, owner in enumerate(["alice", "bob", "alice", "alice"]):
        await store.create(f"t{i}", owner, {"n": i, "kind": "even" if i % 2 == 0 else "odd"}, None)
        await asyncio.sleep(0.005)

    async def ids(owner: str | None, **query: Any) -> list[str]:
        options: dict[str, Any] = {
            "metadata": {},
            "ids": None,
            "limit": 10,
            "offset": 0,
            "sort_by": "created_at",
            "sort_order": "desc",
        }
        options.update(query)
        return [r["thread_id"] for r in await store.search(owner, **options)]

    assert await ids("alice") == ["t3", "t2", "t0"]
    assert await ids(None, sort_order="asc") == ["t0", "t1", "t2", "t3"]
    assert await ids("alice", metadata={"kind": "even"}) == ["t2", "t0"]
    assert await ids(None, metadata={"n": 1}) == ["t1"]
    assert await ids("bob", metadata={"n": 0}) == []
    assert await ids(None, ids=["t1", "t3", "nope"], sort_by="thread_id") == ["t3", "t1"]
    assert await ids(None, limit=2, offset=1, sort_order="asc") == ["t1", "t2"]
