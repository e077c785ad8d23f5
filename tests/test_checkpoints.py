"""Threads kept by each backend; PostgreSQL shared by two servers, for real."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent_server.app import create_app
from agent_server.checkpoints import open_storage
from tests.conftest import test_settings
from tests.live import live_server
from tests.services import postgres_schema


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


def turn(url: str, thread: str, text: str) -> dict:  # type: ignore[type-arg]
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{url}/runs/wait", json={"graph": "agent", "message": text, "thread_id": thread}
        )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_backends_by_url(tmp_path: Path, postgres_url: str) -> None:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    cases = [
        ("memory://", InMemorySaver),
        (str(tmp_path / "a" / "threads.sqlite"), AsyncSqliteSaver),
        (f"sqlite:///{tmp_path / 'b.sqlite'}", AsyncSqliteSaver),
        (postgres_url, AsyncPostgresSaver),
    ]
    for url, kind in cases:
        async with AsyncExitStack() as stack:
            saver, _ = await open_storage(test_settings(database_url=url), stack)
            assert isinstance(saver, kind)
    assert (tmp_path / "a" / "threads.sqlite").exists()


def test_sqlite_threads_survive_a_restart(tmp_path: Path) -> None:
    settings = test_settings(database_url=str(tmp_path / "threads.sqlite"))
    with live_server(create_app(settings)) as url:
        turn(url, "kept", "first")
    with live_server(create_app(settings)) as url:
        result = turn(url, "kept", "second")
    assert [m["content"] for m in result["values"]["messages"] if m["type"] == "human"] == [
        "first",
        "second",
    ]


def test_postgres_thread_shared_by_two_servers(postgres_url: str) -> None:
    """Two server processes' worth of apps on one database: one conversation."""
    settings = test_settings(database_url=postgres_url)
    with live_server(create_app(settings)) as a, live_server(create_app(settings)) as b:
        turn(a, "shared", "hello from A")
        turn(b, "shared", "hello from B")
        result = turn(a, "shared", "2+2")
        with httpx.Client(timeout=30) as client:
            state = client.get(f"{b}/threads/shared/state", params={"graph": "agent"}).json()
    humans = [m["content"] for m in result["values"]["messages"] if m["type"] == "human"]
    assert humans == ["hello from A", "hello from B", "2+2"]
    assert len(state["values"]["messages"]) == len(result["values"]["messages"])
    assert state["checkpoint_id"]
