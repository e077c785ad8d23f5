"""``after_seconds``: a run that stays ``pending`` until its time, judged by langgraph-sdk
(against LangGraph's dev server too, in ``make test-langgraph-dev``). That a delayed
run outlives the worker that accepted it is tested in tests/test_crons_workers.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_langgraph_api import GRAPHS, human, langgraph_url


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with langgraph_url(GRAPHS) as found:
        yield found


async def test_a_delayed_run_is_pending_until_its_time(client: Any) -> None:
    thread = await client.threads.create()
    asked = time.monotonic()
    run = await client.runs.create(
        thread["thread_id"], "agent", input=human("later"), after_seconds=2
    )
    assert run["status"] == "pending"
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "pending"
    values = await client.runs.join(thread["thread_id"], run["run_id"])
    assert time.monotonic() - asked >= 2  # it could not have run sooner
    assert values["messages"][0]["content"] == "later"
    done = await client.runs.get(thread["thread_id"], run["run_id"])
    assert done["status"] == "success"


async def test_a_delayed_run_can_be_cancelled_before_it_starts(client: Any) -> None:
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "agent", input=human("x"), after_seconds=60)
    await client.runs.cancel(thread["thread_id"], run["run_id"])
    await client.runs.join(thread["thread_id"], run["run_id"])
    cancelled = await client.runs.get(thread["thread_id"], run["run_id"])
    assert cancelled["status"] == "interrupted"
    # The thread is free again, and the cancelled run left nothing in it.
    values = await client.runs.wait(thread["thread_id"], "agent", input=human("now"))
    assert values["messages"][0]["content"] == "now"
