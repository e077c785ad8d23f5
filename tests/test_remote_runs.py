"""A run executing on another worker, seen through a real Redis: how its record is
repaired when its worker died after its last frame, and how its followers end when this
worker shuts down (agent_server/runs/remote.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from agent_server.brokers import Broker, open_broker
from agent_server.runs.remote import Mirrors, RemoteRun, ShuttingDown
from tests.helpers import entry
from tests.sample_graphs import ticker
from tests.services import redis_prefix


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    with redis_prefix() as (url, prefix):
        broker = open_broker(url, prefix=prefix)
        yield broker
        await broker.close()


def frame(seq: int, kind: str, **fields: object) -> tuple[int, str, bytes]:
    return seq, kind, orjson.dumps({"type": kind, "run_id": "r", "seq": seq, "ts": 1, **fields})


async def remote(broker: Broker, mirrors: Mirrors, last_seq: int) -> RemoteRun:
    record = {"thread_id": "t", "status": "running", "last_seq": str(last_seq), "worker": "w0"}
    await broker.put_record("r", record)
    return RemoteRun(broker, "r", record, entry(ticker, "ticker"), mirrors)


@pytest.mark.parametrize(
    ("final", "status"),
    [
        (frame(3, "done", duration_ms=1), "success"),
        (frame(3, "error", code="timeout", message="late"), "timeout"),
        (frame(3, "error", code="cancelled", message="asked"), "cancelled"),
        (frame(3, "error", code="tool_error", message="boom"), "error"),
    ],
)
async def test_a_run_whose_worker_died_after_its_last_frame_gets_its_record(
    broker: Broker, final: tuple[int, str, bytes], status: str
) -> None:
    """The worker published the terminal frame, then died before the record: the run
    ended as that frame says (not ``worker_lost``, and not "running" until it expires)."""
    await broker.publish("r", [frame(1, "run_start"), frame(2, "token", content="a"), final])
    run = await remote(broker, Mirrors(set()), last_seq=2)
    await run._end_lost("w0")
    assert (run.status.value, run.last_seq, run.lost) == (status, 3, False)
    assert run.describe()["last_seq"] == 3
    assert [kind for _, kind, _ in await broker.read("r", 0, None)][-1] == final[1]


async def test_an_interrupted_run_whose_worker_died_after_its_end_is_interrupted(
    broker: Broker,
) -> None:
    entries = [
        frame(1, "run_start"),
        frame(2, "interrupt", value={}),
        frame(3, "done", duration_ms=1),
    ]
    await broker.publish("r", entries)
    run = await remote(broker, Mirrors(set()), last_seq=1)
    await run._end_lost("w0")
    assert (run.status.value, run.last_seq) == ("interrupted", 3)


async def test_followers_stop_at_shutdown_whatever_the_mirror_still_holds(
    broker: Broker,
) -> None:
    """Once this worker's mirrors are closed, a follower of a remote run ends with
    ``shutting_down`` at its next batch, even with frames in the mirror it has not read:
    its client resumes on another worker, and this worker's exit waits for nobody."""
    await broker.publish("r", [frame(seq, "token", content="x") for seq in range(1, 4)])
    mirrors = Mirrors(set())
    run = await remote(broker, mirrors, last_seq=3)
    follower = run.follow(0, max_batch=1)
    first = await anext(follower)
    assert [entry.seq for entry in first] == [1]
    mirrors.close(ShuttingDown("this worker is shutting down; resume elsewhere"))
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(anext(follower), 5)
