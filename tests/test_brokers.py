"""The broker contract, run against every backend (memory and a real Redis)."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from agent_server.brokers import LOST_AFTER, Broker, BrokerUnavailable, open_broker, worker_lost
from agent_server.brokers import redis as redis_broker
from agent_server.brokers.redis import RedisBroker
from tests.faults.cluster import RedisServer
from tests.relay import Relay
from tests.services import REDIS, redis_prefix


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "memory":
        broker = open_broker("memory://")
        yield broker
        await broker.close()
        return
    with redis_prefix() as (url, prefix):
        broker = open_broker(url, prefix=prefix)
        yield broker
        await broker.close()


async def test_log_reads_after_a_seq(broker: Broker) -> None:
    await broker.publish("r1", [(1, "run_start", b"{1}"), (2, "token", b"{2}")])
    await broker.publish("r1", [(3, "done", b"{3}")])
    assert await broker.read("r1", 0, None) == [
        (1, "run_start", b"{1}"),
        (2, "token", b"{2}"),
        (3, "done", b"{3}"),
    ]
    assert await broker.read("r1", 2, None) == [(3, "done", b"{3}")]
    assert await broker.read("r1", 3, 0.05) == []
    assert await broker.read("other", 0, 0.05) == []


async def test_a_repeated_publish_appends_only_what_is_new(broker: Broker) -> None:
    """A publish retried after its answer was lost (Redis had run it) repeats entries."""
    await broker.publish("rp", [(1, "run_start", b"1"), (2, "token", b"2"), (3, "token", b"3")])
    await broker.publish("rp", [(2, "token", b"2"), (3, "token", b"3"), (4, "token", b"4")])
    await broker.publish("rp", [(3, "token", b"3")])
    assert [seq for seq, _, _ in await broker.read("rp", 0, None)] == [1, 2, 3, 4]
    assert await broker.last_seq("rp") == 4


async def test_blocking_read_wakes_on_publish(broker: Broker) -> None:
    reader = asyncio.create_task(broker.read("r2", 0, 5))
    await asyncio.sleep(0.1)
    assert not reader.done()
    await broker.publish("r2", [(1, "run_start", b"x")])
    assert await asyncio.wait_for(reader, 2) == [(1, "run_start", b"x")]


async def test_records_and_expiry(broker: Broker) -> None:
    assert await broker.get_record("r3") is None
    await broker.put_record("r3", {"status": "running", "graph": "agent"})
    await broker.put_record("r3", {"status": "success"})
    await broker.publish("r3", [(1, "done", b"x")])
    record = await broker.get_record("r3")
    assert record is not None
    assert record["status"] == "success" and record["graph"] == "agent"
    await broker.expire("r3", 1, 3)
    await asyncio.sleep(1.3)
    assert await broker.read("r3", 0, None) == []  # the log went first
    assert (await broker.get_record("r3") or {}).get("status") == "success"


async def test_cancel_requests_reach_listeners(broker: Broker) -> None:
    received: list[str] = []

    async def listen() -> None:
        async for run_id in broker.cancel_requests():
            received.append(run_id)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.1)  # subscribed
    await broker.request_cancel("r4")
    for _ in range(40):
        if received:
            break
        await asyncio.sleep(0.05)
    listener.cancel()
    assert received == ["r4"]


def test_unknown_broker_url() -> None:
    with pytest.raises(ValueError, match="unknown broker URL"):
        open_broker("kafka://x")


async def test_thread_claims(broker: Broker) -> None:
    assert await broker.claim_thread("t", "r1") == "r1"
    assert await broker.claim_thread("t", "r2") == "r1"  # held
    await broker.release_thread("t", "r2")  # not the holder: no effect
    assert await broker.claim_thread("t", "r3") == "r1"
    assert await broker.claim_thread("t", "r4", force=True) == "r4"
    await broker.release_thread("t", "r4")
    assert await broker.claim_thread("t", "r5") == "r5"


async def test_job_queue(broker: Broker) -> None:
    assert await broker.pop_job(0.05) is None
    for job in (b"j1", b"j2", b"j3"):
        await broker.push_job(job)
    assert await broker.queue_length() == 3
    assert await broker.remove_job(b"j2")
    assert not await broker.remove_job(b"j2")
    assert await broker.pop_job(1) == b"j1"  # first in, first out
    assert await broker.pop_job(1) == b"j3"
    assert await broker.queue_length() == 0


async def test_last_seq_is_the_logs_top(broker: Broker) -> None:
    assert await broker.last_seq("r-top") == 0
    await broker.publish("r-top", [(1, "run_start", b"a"), (2, "token", b"b")])
    assert await broker.last_seq("r-top") == 2
    assert await broker.append_next("r-top", (3, "error", b"c"))
    assert await broker.last_seq("r-top") == 3


async def received_once_subscribed(
    listen: Callable[..., AsyncIterator[Any]], publish: Callable[[], Awaitable[None]]
) -> list[Any]:
    """What a listener receives of what ``publish`` sends from its ``subscribed``
    callback: anything published from there on must arrive (this is where a listener
    that resubscribed looks for what it missed)."""
    received: list[Any] = []
    subscribed = asyncio.Event()

    async def on_subscribed() -> None:
        await publish()
        subscribed.set()

    async def drain() -> None:
        async for message in listen(on_subscribed):
            received.append(message)

    listener = asyncio.create_task(drain())
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        for _ in range(40):
            if received:
                break
            await asyncio.sleep(0.05)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    return received


async def test_cancel_listeners_are_told_once_subscribed(broker: Broker) -> None:
    publish = functools.partial(broker.request_cancel, "r-after")
    assert await received_once_subscribed(broker.cancel_requests, publish) == ["r-after"]


async def test_delayed_jobs_join_the_queue_when_due(broker: Broker) -> None:
    await broker.schedule_job(b"later", 60)
    await broker.schedule_job(b"soon", 0.5)
    await broker.push_job(b"now")
    assert await broker.queue_length() == 1  # delayed jobs are not waiting for a worker
    assert await broker.pop_job(0.05) == b"now"
    assert await broker.pop_job(5) == b"soon"  # a pop waits for it to become due
    assert await broker.remove_job(b"later")  # taken back before it is due
    assert not await broker.remove_job(b"later")
    assert await broker.pop_job(0.05) is None


async def test_a_due_delayed_job_is_popped_once(broker: Broker) -> None:
    await broker.schedule_job(b"once", 0.2)
    # Two workers (with Redis, two clients of it) popping at once.
    second = open_broker(REDIS, prefix=broker.prefix) if isinstance(broker, RedisBroker) else broker
    popped = await asyncio.gather(*(b.pop_job(1) for b in (broker, second, second)))
    assert sorted(popped, key=lambda p: p or b"") == [None, None, b"once"]
    if second is not broker:
        await second.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once closed


async def test_an_unreachable_redis_raises_broker_unavailable_and_marks_health() -> None:
    broker = open_broker(f"redis://127.0.0.1:{closed_port()}/0", prefix="nowhere")
    assert broker.health.up
    calls = [
        broker.get_record("r"),
        broker.publish("r", [(1, "run_start", b"x")]),
        broker.read("r", 0, 0.1),
        broker.last_seq("r"),
        broker.heartbeat("w", 6),
        broker.pop_job(0.1),
    ]
    for call in calls:
        with pytest.raises(BrokerUnavailable, match="Redis is unreachable"):
            await call
    assert not broker.health.up
    assert broker.health.errors == len(calls) and broker.health.outages == 1
    assert broker.health.error is not None and "Connect" in broker.health.error
    with pytest.raises(BrokerUnavailable):
        async for _ in broker.cancel_requests():
            pass
    await broker.close()


async def test_health_comes_back_with_the_first_call_that_succeeds() -> None:
    with redis_prefix() as (url, prefix):
        broker = open_broker(url, prefix=prefix)
        broker.health.failed(ConnectionError("down"))
        assert not broker.health.up and not broker.health.steady(0)
        await broker.put_record("r-up", {"status": "running"})
        assert broker.health.up and broker.health.steady(0)
        assert not broker.health.steady(5)  # up again only just now
        await broker.close()


async def test_after_a_failover_writes_go_to_the_new_primary(tmp_path: Path) -> None:
    """A managed Redis fails over by moving its endpoint's name to the promoted replica;
    connections already open still reach the old primary, now a read-only replica. The
    broker's writes must reach the new primary, not fail with READONLY for ever."""
    with RedisServer(tmp_path / "one") as one, RedisServer(tmp_path / "two") as two:
        one.start()
        two.start()
        primary, replica = redis.Redis(port=one.port), redis.Redis(port=two.port)
        relay = Relay(one.url)
        broker = RedisBroker(await relay.start(), prefix="failover")
        try:
            await primary.config_set("repl-diskless-sync-delay", "0")  # no 5 s wait
            await replica.replicaof("127.0.0.1", one.port)
            await broker.publish("r", [(1, "run_start", b"1")])
            await broker.heartbeat("w", 6)
            async with asyncio.timeout(10):  # the replica has caught up
                while await replica.xlen("failover:run:r:log") != 1:
                    await asyncio.sleep(0.05)

            await replica.replicaof("NO", "ONE")  # promoted
            await primary.replicaof("127.0.0.1", two.port)  # demoted: read-only now
            relay.retarget(two.url)
            await broker.publish("r", [(2, "token", b"2")])
            await broker.heartbeat("w", 6)
            assert broker.health.up
            assert [seq for seq, _, _ in await broker.read("r", 0, None)] == [1, 2]
            assert await replica.xlen("failover:run:r:log") == 2  # on the new primary
        finally:
            await broker.close()
            await relay.close()
            await primary.aclose()
            await replica.aclose()


async def test_rooms_and_presence(broker: Broker) -> None:
    await broker.room_join("t", {"a": '{"user":"alice"}', "b": '{"user":"bob"}'})
    await broker.room_join("t", {"c": '{"user":"carol"}'})
    await broker.room_leave("t", "b")
    await broker.room_leave("t", "nobody")
    assert await broker.room_members("t") == {"a": '{"user":"alice"}', "c": '{"user":"carol"}'}
    assert await broker.room_members("empty") == {}

    publish = functools.partial(broker.publish_presence, b'{"event":"join"}')
    assert await received_once_subscribed(broker.presence, publish) == [b'{"event":"join"}']


@pytest.mark.parametrize("listen", ["presence", "cancel_requests"])
async def test_a_listener_that_reconnects_by_itself_is_told_it_subscribed_again(
    listen: str,
) -> None:
    """redis-py reconnects and resubscribes a dropped pub/sub connection within its own
    retries, raising nothing: ``subscribed`` must run again, for what was published
    meanwhile (or lost by a restart) is for the listener to find."""
    with redis_prefix() as (url, prefix):
        relay = Relay(url)
        broker = open_broker(await relay.start(), prefix=prefix)
        calls = 0

        async def subscribed() -> None:
            nonlocal calls
            calls += 1

        async def drain() -> None:
            async for _ in getattr(broker, listen)(subscribed):
                pass

        listener = asyncio.create_task(drain())
        try:
            async with asyncio.timeout(5):
                while calls < 1:
                    await asyncio.sleep(0.02)
            relay.cut()  # the connection drops; the relay takes the next one at once
            async with asyncio.timeout(5):
                while calls < 2:
                    await asyncio.sleep(0.02)
            assert not listener.done()  # it went on: the reconnection raised nothing
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await relay.close()
            await broker.close()


async def test_heartbeats_are_judged_only_once_redis_has_held_them_a_lifetime() -> None:
    """A Redis restarted empty holds nobody's heartbeat until each worker's next beat, and
    a restart within redis-py's retries breaks no call: a worker must not be judged lost
    until Redis has held heartbeats for longer than one lives (LOST_AFTER)."""
    with redis_prefix() as (url, prefix):
        broker = open_broker(url, prefix=prefix)
        direct = redis.Redis.from_url(url)
        try:
            assert await broker.is_alive("never-beat")  # no heartbeat held: nobody is judged
            await broker.heartbeat("w", 6)
            assert await broker.is_alive("w") and await broker.is_alive("never-beat")
            # As if the first beat had come 10 s ago (the key it writes, at Redis's time):
            seconds, _ = await direct.time()
            await direct.set(f"{prefix}:heartbeats-since", seconds - 10)
            assert await broker.is_alive("w") and not await broker.is_alive("never-beat")
            await direct.delete(f"{prefix}:heartbeats-since", f"{prefix}:worker:w")  # emptied
            assert await broker.is_alive("w")
            await broker.heartbeat("w", 6)  # the first beat after it starts the clock again
            assert await broker.is_alive("never-beat")
        finally:
            await direct.aclose()
            await broker.close()


async def test_a_judgement_made_across_a_redis_hang_finds_nobody_lost(tmp_path: Path) -> None:
    """Redis hangs for less than a command may wait (no call fails, so ``health`` sees no
    outage) but longer than is left of a worker's heartbeat: the worker's next beat waits
    in Redis's queue beside the judge's question, in no set order. A judgement that took
    that long is no judgement; one made once Redis answers promptly again is."""
    with RedisServer(tmp_path / "redis") as server:
        server.start()
        judge, worker = RedisBroker(server.url, prefix="j"), RedisBroker(server.url, prefix="j")
        direct = redis.Redis(port=server.port)
        try:
            await worker.heartbeat("w", 1)
            seconds, _ = await direct.time()
            await direct.set("j:heartbeats-since", seconds - 10)  # held heartbeats long since
            judge.health.since -= LOST_AFTER  # and the judge has reached Redis as long
            assert not await worker_lost(judge, "w")
            server.freeze()
            try:
                judging = asyncio.create_task(worker_lost(judge, "w"))
                await asyncio.sleep(1.5)  # the heartbeat expires meanwhile
            finally:
                server.thaw()
            assert not await judging
            assert await worker_lost(judge, "w")  # it did not beat again: gone
        finally:
            await direct.aclose()
            for broker in (judge, worker):
                await broker.close()


async def test_a_listener_whose_connection_went_silent_subscribes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A NAT or load balancer between a worker and Redis forgets an idle connection: it
    stays open, and nothing sent on it arrives any more, a cancel request included.
    The listener pings an idle subscription, ends as an outage when nothing answers,
    and the listener that replaces it (the supervisor's) hears the next request."""
    monkeypatch.setattr(redis_broker, "LISTEN_PING", 0.3)
    monkeypatch.setattr(redis_broker, "PONG_WAIT", 0.5)
    with redis_prefix() as (url, prefix):
        relay = Relay(url)
        broker = RedisBroker(await relay.start(), prefix=prefix)
        direct = RedisBroker(url, prefix=prefix)
        try:
            heard: list[str] = []
            ready = asyncio.Event()

            async def listen() -> None:
                async for run_id in broker.cancel_requests(subscribed=ready_now):
                    heard.append(run_id)

            async def ready_now() -> None:
                ready.set()

            listener = asyncio.create_task(listen())
            await asyncio.wait_for(ready.wait(), 5)
            await asyncio.sleep(1.0)  # idle past LISTEN_PING: pinged, and answered
            assert not listener.done()
            relay.stall()
            await direct.request_cancel("lost-in-the-silence")
            with pytest.raises(BrokerUnavailable, match="no answer to a ping"):
                await asyncio.wait_for(listener, 5)
            assert heard == []

            ready.clear()
            listener = asyncio.create_task(listen())
            await asyncio.wait_for(ready.wait(), 5)
            await direct.request_cancel("r2")
            async with asyncio.timeout(5):
                while heard != ["r2"]:
                    await asyncio.sleep(0.02)
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        finally:
            await relay.close()
            for each in (broker, direct):
                await each.close()
