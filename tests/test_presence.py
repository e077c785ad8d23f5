"""Presence in rooms: a storm of joins told in few messages, large rooms without a
member list in every event, and presence across workers through a real Redis
(agent_server/connections.py, ``ConnectionManager.announce``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_server.auth import User
from agent_server.brokers import Broker, BrokerUnavailable, open_broker
from agent_server.connections import Connection, ConnectionManager
from agent_server.fanout import Hubs
from agent_server.streams import Streams
from tests.relay import Relay
from tests.services import redis_prefix
from tests.test_connections import client


def manager(
    broker: Broker | None = None, worker: str = "w", slice: int = 64, **options: Any
) -> ConnectionManager:
    """``slice``: members written to between two yields to the loop (a small one lets
    the joins of a small room arrive during a delivery, as a thousand's do)."""
    hubs = Hubs(Streams(fanout_slice=slice))
    return ConnectionManager(broker, worker, hubs=hubs, **options)


async def settled(*managers: ConnectionManager) -> None:
    """Until no room has presence waiting to be told."""
    async with asyncio.timeout(10):
        while any(m.announcing for m in managers):
            await asyncio.sleep(0.01)


async def test_a_storm_of_joins_reaches_every_member_in_order_in_few_messages() -> None:
    rooms = manager(slice=4)
    members = [client(rooms, f"user{i}") for i in range(60)]
    await asyncio.gather(*(rooms.join(connection, "t") for connection, _ in members))
    await settled(rooms)
    order = [e["client_id"] for e in members[0][1].events if e["event"] == "join"]
    assert sorted(order) == sorted(c.client_id for c, _ in members)  # every join, once
    for connection, inbox in members:
        joins = [e["client_id"] for e in inbox.events if e["event"] == "join"]
        # Each member hears the joins from (at the latest) its own to the last, in the
        # same order as everyone (one told with its own may have come just before it).
        assert connection.client_id in joins and joins == order[order.index(joins[0]) :]
        assert inbox.events[-1]["count"] == 60 and len(inbox.events[-1]["members"]) == 60
    # Joins that came while a delivery was under way went out together.
    assert len(members[0][1].messages) < len(members[0][1].events)
    assert rooms.announcing == {}


async def test_a_large_room_lists_its_members_only_to_each_joiner() -> None:
    rooms = manager(presence_members_max=3)
    members = [client(rooms, f"user{i}") for i in range(5)]
    for connection, _ in members:
        await rooms.join(connection, "t")
    first, last = members[0][1].events, members[4][1].events
    # While the room has at most 3 members every event lists them; then only the count.
    assert [len(e.get("members", ())) for e in first] == [1, 2, 3, 0, 0]
    assert [e["count"] for e in first] == [1, 2, 3, 4, 5]
    # A joiner's own join lists the room as it found it: its starting point.
    assert len(last) == 1 and last[0]["count"] == 5
    assert {m["client_id"] for m in last[0]["members"]} == {c.client_id for c, _ in members}
    await rooms.remove(members[0][0])
    left = members[4][1].events[-1]
    assert (left["event"], left["count"], "members" in left) == ("leave", 4, False)


async def test_a_member_that_cannot_take_presence_delays_no_other() -> None:
    """A socket that cannot take a message now gets it from a task of its own: the
    others have theirs while its send still waits, and it gets its messages in order
    once it reads again."""
    rooms = manager()
    reading = asyncio.Event()
    got: list[Any] = []

    async def stuck(text: str) -> None:
        await reading.wait()
        got.append(json.loads(text))

    slow = Connection(send_text=stuck, user=User("slow"))
    rooms.add(slow)
    await rooms.join(slow, "t")
    fine, inbox = client(rooms, "fine")
    await rooms.join(fine, "t")
    other, _ = client(rooms, "other")
    await rooms.join(other, "t")
    # Told to everyone, without waiting for the slow socket: its messages wait for it.
    assert [e["count"] for e in inbox.events] == [2, 3]
    assert slow.backlog is not None and not got
    reading.set()
    async with asyncio.timeout(5):
        while slow.backlog is not None:
            await asyncio.sleep(0.01)
    assert [m["count"] for m in got] == [1, 2, 3]


@pytest.fixture
async def shared() -> AsyncIterator[tuple[Broker, Broker]]:
    with redis_prefix() as (url, prefix):
        brokers = (open_broker(url, prefix=prefix), open_broker(url, prefix=prefix))
        yield brokers
        for broker in brokers:
            await broker.close()


async def test_a_storm_of_joins_over_two_workers_through_redis(
    shared: tuple[Broker, Broker],
) -> None:
    managers = [manager(broker, worker=f"w{i}", slice=4) for i, broker in enumerate(shared)]
    relays = [asyncio.create_task(m.relay_presence()) for m in managers]
    try:
        await asyncio.sleep(0.2)  # both subscribed to the presence channel
        members = [client(managers[i % 2], f"user{i}") for i in range(40)]
        await asyncio.gather(
            *(managers[i % 2].join(connection, "t") for i, (connection, _) in enumerate(members))
        )
        everyone = {c.client_id for c, _ in members}
        async with asyncio.timeout(10):  # every member hears the last join
            while not all(inbox.events and inbox.events[-1]["count"] == 40 for _, inbox in members):
                await asyncio.sleep(0.02)
        await settled(*managers)
        # The relay coalesced: joins that came during a delivery went out together.
        messages = sum(len(inbox.messages) for _, inbox in members)
        assert messages < sum(len(inbox.events) for _, inbox in members)
        for connection, inbox in members:
            joins = [e["client_id"] for e in inbox.events]
            assert len(joins) == len(set(joins)) and connection.client_id in joins
            assert {m["client_id"] for m in inbox.events[-1]["members"]} == everyone
    finally:
        for relay in relays:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay


async def test_presence_still_being_told_stops_with_the_manager() -> None:
    rooms = manager(slice=1)
    members = [client(rooms, f"user{i}") for i in range(10)]
    await asyncio.gather(*(rooms.join(connection, "t") for connection, _ in members))
    assert rooms.tasks  # a storm's presence is still being told
    await rooms.close()
    assert not rooms.tasks and rooms.announcing == {}


async def test_a_broker_outage_breaks_no_cleanup_and_leaves_no_member_behind() -> None:
    """A socket that goes while the broker is unreachable is cleaned up all the same; the
    broker, which missed its leave, is told once it is back (``keep_rooms``, and
    ``record_rooms`` when the presence relay subscribes again). A join meanwhile fails
    whole; a member's repeated join fails and leaves it a member."""
    with redis_prefix() as (url, prefix):
        relay = Relay(url)
        broker = open_broker(await relay.start(), prefix=prefix)
        direct = open_broker(url, prefix=prefix)  # what Redis holds
        rooms = manager(broker)
        try:
            (stay, _), (go, _) = client(rooms, "stay"), client(rooms, "go")
            await rooms.join(stay, "t")
            await rooms.join(go, "t")
            go.spawn(asyncio.sleep(60), "idle")
            idle = list(go.tasks)

            relay.refuse()
            await rooms.remove(go)  # raised on the broker's error, leaving its tasks running
            assert idle and all(task.cancelled() for task in idle)
            assert rooms.rooms == {"t": {stay.client_id}} and go.client_id not in rooms.clients
            late, _ = client(rooms, "late")
            with pytest.raises(BrokerUnavailable):
                await rooms.join(late, "t")
            assert not late.rooms and rooms.rooms == {"t": {stay.client_id}}
            with pytest.raises(BrokerUnavailable):  # joined before: still a member
                await rooms.join(stay, "t")
            assert stay.rooms == {"t"} and rooms.rooms == {"t": {stay.client_id}}
            assert set(await direct.room_members("t")) == {stay.client_id, go.client_id}

            relay.accept()
            keeping = asyncio.create_task(rooms.keep_rooms(interval=0.05))
            try:
                async with asyncio.timeout(5):
                    while set(await direct.room_members("t")) != {stay.client_id}:
                        await asyncio.sleep(0.05)
            finally:
                keeping.cancel()
            assert not rooms.unrecorded
        finally:
            await relay.close()
            for each in (broker, direct):
                await each.close()
