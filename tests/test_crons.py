"""Crons of the LangGraph API, judged by langgraph-sdk's ``client.crons``.

Like tests/test_langgraph_api.py, these run against LangGraph's own dev server too when
``LANGGRAPH_API_URL`` names one (``make test-langgraph-dev``); tests marked ``ours``
check what only agent-server does (ownership, the claim on PostgreSQL, catch-up after a
restart). The two-worker test is tests/test_crons_workers.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import (
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableEntityError,
)

from agent_server.app import create_app
from agent_server.crons import PostgresCrons, fire_due, next_run
from agent_server.sql import PostgresDatabase
from tests.conftest import test_settings
from tests.live import live_server
from tests.services import postgres_schema
from tests.test_langgraph_api import GRAPHS, human, langgraph_url, ours


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with langgraph_url(GRAPHS) as found:
        yield found


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def once_at(due: datetime) -> str:
    """A schedule whose only due time this year is ``due`` (croniter's sixth field:
    seconds): a test can wait for it without waiting for a minute to turn."""
    return f"{due.minute} {due.hour} {due.day} {due.month} * {due.second}"


async def runs_of(client: Any, thread_id: str, at_least: int = 1) -> list[dict[str, Any]]:
    """The thread's runs once it has ``at_least`` (generous bound: LangGraph's scheduler
    looks every 5 s)."""
    for _ in range(120):
        runs = await client.runs.list(thread_id)
        if len(runs) >= at_least:
            return list(runs)
        await asyncio.sleep(0.25)
    raise AssertionError(f"thread {thread_id} has fewer than {at_least} runs")


async def test_cron_round_trip(client: Any) -> None:
    thread = await client.threads.create()
    end = datetime.now(UTC) + timedelta(days=30)
    cron = await client.crons.create_for_thread(
        thread["thread_id"],
        "agent",
        schedule="0 9 * * *",
        timezone="Europe/Paris",
        end_time=end,
        input=human("good morning"),
        metadata={"team": "crons", "kind": "daily"},
    )
    assert cron["thread_id"] == thread["thread_id"] and cron["schedule"] == "0 9 * * *"
    assert cron["timezone"] == "Europe/Paris" and cron["enabled"] is True
    assert cron["metadata"] == {"team": "crons", "kind": "daily"}
    due = when(cron["next_run_date"]).astimezone(ZoneInfo("Europe/Paris"))
    assert (due.hour, due.minute) == (9, 0) and due > datetime.now(UTC)
    assert abs((when(cron["end_time"]) - end).total_seconds()) < 0.001

    stateless = await client.crons.create(
        "agent", schedule="*/10 * * * *", metadata={"team": "crons"}, on_run_completed="keep"
    )
    assert stateless["thread_id"] is None and stateless["on_run_completed"] == "keep"
    ours_only = {"team": "crons"}
    found = await client.crons.search(metadata=ours_only, limit=100)
    assert {c["cron_id"] for c in found} >= {cron["cron_id"], stateless["cron_id"]}
    by_thread = await client.crons.search(thread_id=thread["thread_id"])
    assert [c["cron_id"] for c in by_thread] == [cron["cron_id"]]
    assert await client.crons.count(thread_id=thread["thread_id"]) == 1
    ordered = await client.crons.search(
        metadata=ours_only, sort_by="next_run_date", sort_order="asc", limit=100
    )
    dates = [when(c["next_run_date"]) for c in ordered if c["next_run_date"]]
    assert dates == sorted(dates)

    updated = await client.crons.update(
        cron["cron_id"], schedule="30 18 * * 1-5", end_time=None, metadata={"kind": "weekday"}
    )
    assert updated["schedule"] == "30 18 * * 1-5" and updated["end_time"] is None
    assert updated["metadata"] == {"team": "crons", "kind": "weekday"}
    due = when(updated["next_run_date"]).astimezone(ZoneInfo("Europe/Paris"))
    assert (due.hour, due.minute) == (18, 30) and due.weekday() < 5
    disabled = await client.crons.update(cron["cron_id"], enabled=False)
    assert disabled["enabled"] is False
    off = await client.crons.search(thread_id=thread["thread_id"], enabled=False)
    assert [c["cron_id"] for c in off] == [cron["cron_id"]]
    assert await client.crons.search(thread_id=thread["thread_id"], enabled=True) == []

    got = await client.http.get(f"/runs/crons/{cron['cron_id']}")
    assert got["cron_id"] == cron["cron_id"] and got["enabled"] is False
    for made in (cron, stateless):
        await client.crons.delete(made["cron_id"])
    with pytest.raises(NotFoundError):
        await client.http.get(f"/runs/crons/{cron['cron_id']}")
    assert await client.crons.count(thread_id=thread["thread_id"]) == 0


async def test_bad_crons_are_refused(client: Any) -> None:
    thread = await client.threads.create()
    with pytest.raises(UnprocessableEntityError):
        await client.crons.create_for_thread(thread["thread_id"], "agent", schedule="every day")
    with pytest.raises(UnprocessableEntityError):
        await client.crons.create("agent", schedule="0 9 * * *", timezone="Mars/Olympus_Mons")
    with pytest.raises(NotFoundError):
        await client.crons.create_for_thread(
            "00000000-0000-4000-8000-000000000000", "agent", schedule="0 9 * * *"
        )
    with pytest.raises(NotFoundError):
        await client.crons.create("00000000-0000-4000-8000-000000000001", schedule="0 9 * * *")
    cron = await client.crons.create("agent", schedule="0 9 * * *")
    with pytest.raises(BadRequestError):
        await client.crons.update(cron["cron_id"])  # nothing to change
    with pytest.raises(UnprocessableEntityError):
        await client.crons.update(cron["cron_id"], schedule="61 * * * *")
    await client.crons.delete(cron["cron_id"])
    with pytest.raises(NotFoundError):
        await client.crons.delete(cron["cron_id"])


async def test_a_due_cron_runs_once_with_its_input_and_metadata(client: Any) -> None:
    thread = await client.threads.create()
    due = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    cron = await client.crons.create_for_thread(
        thread["thread_id"],
        "agent",
        schedule=once_at(due),
        input=human("scheduled hello"),
        metadata={"origin": "cron"},
    )
    assert when(cron["next_run_date"]) == due
    [run] = await runs_of(client, thread["thread_id"])
    await client.runs.join(thread["thread_id"], run["run_id"])
    run = await client.runs.get(thread["thread_id"], run["run_id"])
    assert run["status"] == "success" and run["metadata"]["origin"] == "cron"
    assert when(run["created_at"]) >= due
    state = await client.threads.get_state(thread["thread_id"])
    assert state["values"]["messages"][0]["content"] == "scheduled hello"
    [after] = await client.crons.search(thread_id=thread["thread_id"])
    assert after["next_run_date"] is None or when(after["next_run_date"]) > due
    assert len(await client.runs.list(thread["thread_id"])) == 1  # fired once
    await client.crons.delete(cron["cron_id"])


# -- agent-server only ------------------------------------------------------------------


@ours
def test_crons_belong_to_their_user() -> None:
    settings = test_settings(graphs=GRAPHS, auth="api_keys", api_keys={"ann": "ka", "bob": "kb"})
    with live_server(create_app(settings)) as base:
        url = f"{base}/langgraph"

        async def check() -> None:
            ann = get_client(url=url, api_key="ka")
            bob = get_client(url=url, api_key="kb")
            cron = await ann.crons.create("agent", schedule="0 9 * * *")
            assert cron["user_id"] == "ann"
            assert await bob.crons.search() == [] and await bob.crons.count() == 0
            for call in (
                bob.http.get(f"/runs/crons/{cron['cron_id']}"),
                bob.crons.update(cron["cron_id"], enabled=False),
                bob.crons.delete(cron["cron_id"]),
            ):
                with pytest.raises(NotFoundError):
                    await call
            thread = await ann.threads.create()
            with pytest.raises(PermissionDeniedError):
                await bob.crons.create_for_thread(
                    thread["thread_id"], "agent", schedule="0 9 * * *"
                )
            assert [c["cron_id"] for c in await ann.crons.search()] == [cron["cron_id"]]
            await ann.aclose()
            await bob.aclose()

        asyncio.run(check())


@ours
def test_a_restarted_server_catches_up_with_one_run(tmp_path: Path) -> None:
    """Every due time passes while the server is down: it fires once when back."""
    settings = test_settings(graphs=GRAPHS, database_url=str(tmp_path / "threads.sqlite"))
    first = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    seconds = ",".join(str((first + timedelta(seconds=i)).second) for i in range(3))
    with live_server(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        thread = http.post("/langgraph/threads", json={}).json()["thread_id"]
        cron = http.post(
            f"/langgraph/threads/{thread}/runs/crons",
            json={"assistant_id": "agent", "schedule": f"* * * * * {seconds}", "input": {}},
        ).json()
    while datetime.now(UTC) < first + timedelta(seconds=3):  # all three due times pass
        time.sleep(0.2)
    with live_server(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        for _ in range(80):
            runs = http.get(f"/langgraph/threads/{thread}/runs").json()
            if runs:
                break
            time.sleep(0.1)
        time.sleep(1.5)  # longer than a look for due crons: a burst would show now
        runs = http.get(f"/langgraph/threads/{thread}/runs").json()
        after = http.get(f"/langgraph/runs/crons/{cron['cron_id']}").json()
    assert len(runs) == 1
    assert when(after["next_run_date"]) > datetime.now(UTC)  # back on its schedule


@ours
async def test_two_workers_claiming_one_due_time_fire_once() -> None:
    """The claim itself, on PostgreSQL: workers racing for the same due cron."""
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    from agent_server.storage import StorageRetry

    with postgres_schema() as database:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database, open=False, kwargs={"autocommit": True, "row_factory": dict_row}
        )
        await pool.open()
        try:
            crons = PostgresCrons(PostgresDatabase(pool, StorageRetry(pool, 5)))
            async with pool.connection() as connection:
                for statement in PostgresCrons.SCHEMA:
                    await connection.execute(statement)
            now = time.time()
            await crons.create(
                {
                    "cron_id": "c1", "owner": None, "assistant_id": "a", "graph": "agent",
                    "thread_id": None, "schedule": "*/5 * * * *", "timezone": None,
                    "end_time": None, "payload": {}, "metadata": {}, "enabled": True,
                    "on_run_completed": "delete", "created_at": now, "updated_at": now,
                    "next_run_at": now - 3600,  # an hour of due times missed
                }
            )  # fmt: skip
            fired: list[str] = []

            async def fire(cron: dict[str, Any]) -> None:
                fired.append(cron["cron_id"])

            counts = await asyncio.gather(*(fire_due(crons, fire, now) for _ in range(8)))
            assert sorted(counts) == [0] * 7 + [1] and fired == ["c1"]
            record = await crons.get("c1")
            assert record is not None
            assert record["next_run_at"] == next_run("*/5 * * * *", None, None, now)
            assert await fire_due(crons, fire, now) == 0
        finally:
            await pool.close()
