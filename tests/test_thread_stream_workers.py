"""Thread streams across workers: two servers sharing Redis and PostgreSQL. A run on one
is followed from the other, a stream is resumed on the other exactly where it stopped
(seq and event ids are the same on both), and the official client reconnects to the
other worker mid-run without losing or repeating a token."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from langgraph_sdk import get_client

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server
from tests.services import postgres_schema, redis_prefix
from tests.test_thread_stream import GRAPHS, WORDS, Relay, human, run_start, sse_events, text

ALL = ["values", "updates", "messages", "tools", "lifecycle", "input", "tasks", "checkpoints"]


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        database = stack.enter_context(postgres_schema())
        redis_url, prefix = stack.enter_context(redis_prefix())
        urls = []
        for _ in range(2):
            settings = test_settings(
                graphs=GRAPHS, database_url=database, broker_url=redis_url, broker_prefix=prefix
            )
            urls.append(stack.enter_context(live_server(create_app(settings))) + "/langgraph")
        yield urls[0], urls[1]


async def test_resumed_on_another_worker_exactly(workers: tuple[str, str]) -> None:
    one, two = (httpx.AsyncClient(base_url=url, timeout=30) for url in workers)
    async with one, two:
        thread_id = str(uuid.uuid4())
        started = await run_start(one, thread_id, "slow", WORDS)
        applied = started["meta"]["applied_through_seq"]
        live_elsewhere = asyncio.create_task(sse_events(two, thread_id, {"channels": ALL}))
        first = await sse_events(one, thread_id, {"channels": ALL, "since": applied}, limit=12)
        rest = await sse_events(two, thread_id, {"channels": ALL, "since": first[-1]["seq"]})
        assert first + rest == await live_elsewhere  # a subscriber on the other worker
        assert first + rest == await sse_events(one, thread_id, {"channels": ALL})
        assert sum(e["method"] == "messages" for e in rest) > 10
        # A second run: the same seq space on both workers.
        again = await run_start(two, thread_id, "agent", "2+2")
        assert again["meta"]["applied_through_seq"] >= rest[-1]["seq"]
        after = {"channels": ["lifecycle"], "since": again["meta"]["applied_through_seq"]}
        assert await sse_events(one, thread_id, after) == await sse_events(two, thread_id, after)


async def test_official_client_reconnects_to_the_other_worker(workers: tuple[str, str]) -> None:
    relay = Relay(workers[0])
    client = get_client(url=await relay.start(), api_key=None)
    try:
        async with client.threads.stream(assistant_id="slow") as thread:
            await thread.run.start(input=human(WORDS))
            deltas: list[str] = []
            async for event in thread.subscribe(["messages"]):
                data = event["params"]["data"]
                if data["event"] == "content-block-delta":
                    deltas.append(data["delta"]["text"])
                    if len(deltas) == 8:
                        relay.target = httpx.URL(workers[1])
                        relay.cut()
            state = await client.threads.get_state(thread.thread_id)
    finally:
        await client.aclose()
        await relay.close()
    assert "".join(deltas) == text(state["values"]["messages"][-1])
