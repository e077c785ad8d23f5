"""Live WebSocket connections and rooms.

The :class:`ConnectionManager` (one per app, created in the lifespan) keeps every open
socket by client id and every room (a room is a thread) by member. It is the one place
that knows who is connected, so it is also where cleanup happens: :meth:`remove` drops a
client from every table and cancels its tasks, whatever way the socket ended. Tests
assert the tables are empty after many sockets come and go.

Presence (docs/protocol.md, "Presence"), decided for rooms of a thousand members:

- A room's events are told one delivery at a time. Those that arrive while one is under
  way wait for the next and go out together, as one message framed once for every
  member, paced like a run's fan-out (agent_server/fanout.py). The first event after a
  quiet spell goes out at once.
- Every event carries the room's ``count``; the member list only while the room has at
  most ``presence_members_max`` members, and else only in a joiner's own ``join``. A
  list in every event to every member is O(N^2) bytes a join.
- A socket that cannot take a message now gets it, and those after it, in order from a
  task of its own (:meth:`Connection.later`): it delays no other member.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from agent_server.auth import User
from agent_server.brokers import Broker, BrokerUnavailable, worker_lost
from agent_server.frames import dumps
from agent_server.supervise import cancel_all
from agent_server.ws_protocol import SharedFrames

if TYPE_CHECKING:
    from agent_server.fanout import Hubs
    from agent_server.heartbeats import Heartbeats
    from agent_server.ws_protocol import SendShared

SendText = Callable[[str], Awaitable[None]]
logger = logging.getLogger("agent_server.connections")


class Follower(Protocol):
    """How a socket follows one run: a task of its own, or a hub membership."""

    def cancel(self) -> bool: ...

    def done(self) -> bool: ...


def presence_message(thread_id: str, connection: Connection, event: str) -> dict[str, Any]:
    """A ``presence`` message without ``count`` and ``members`` (see :func:`presence_texts`)."""
    return {
        "type": "presence",
        "thread_id": thread_id,
        "event": event,
        "client_id": connection.client_id,
        "user": connection.user_id,
    }


def presence_texts(
    events: list[dict[str, Any]],
    members: list[dict[str, Any]],
    members_max: int,
    joiners: Container[str] = (),
) -> tuple[str, dict[str, str]]:
    """The message telling a room's members ``events``, and the copy of it for each
    joiner among ``joiners`` (client ids) whose own ``join`` is in it: each event says
    how many members the room has (``count``) and, while they are at most
    ``members_max``, lists them (``members``). In a larger room only a joiner's own
    ``join`` lists them, in its copy: its starting point, which the events after keep
    current."""
    count = len(members)
    listed = count <= members_max
    told = [{**event, "count": count} for event in events]
    if listed:
        for event in told:
            event["members"] = members
    encoded = [dumps(event) for event in told]
    own: dict[str, str] = {}
    if not listed:
        for index, event in enumerate(told):
            if event["event"] == "join" and event["client_id"] in joiners:
                copy = list(encoded)
                copy[index] = dumps({**event, "members": members})
                own[event["client_id"]] = frames_message(copy)
    return frames_message(encoded), own


def member_info(connection: Connection) -> dict[str, Any]:
    return {"client_id": connection.client_id, "user": connection.user_id}


def frames_message(datas: list[bytes]) -> str:
    """One frame as an object, several ready at once as an array: one message either way."""
    if len(datas) == 1:
        return datas[0].decode()
    return (b"[" + b",".join(datas) + b"]").decode()


def spawn_into(
    tasks: set[asyncio.Task[Any]], coroutine: Awaitable[None], name: str
) -> asyncio.Task[None]:
    """A task kept in ``tasks`` until it ends (cancelled with the set's owner)."""
    task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
    task.set_name(name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


def share(send_shared: SendShared, shared: SharedFrames) -> bool:
    """Write a message framed once for many sockets, if this one can take it now; False
    (nothing written, the caller sends it the usual way) if not, or if that failed."""
    try:
        return send_shared(shared)
    except Exception:  # not written: the usual send says why
        logger.debug("shared frame refused", exc_info=True)
        return False


async def try_send(send_text: SendText, text: str) -> bool:
    """Send ``text`` if that completes without waiting; False, with nothing sent, if it
    would wait. uvicorn's WebSocket ``send`` waits for the transport to be writable
    *before* writing anything (a paused transport: the client stopped reading), so an
    abandoned send has written nothing."""
    try:
        async with asyncio.timeout(0):
            await send_text(text)
    except TimeoutError:
        return False
    return True


@dataclass(eq=False)
class Connection:
    """One socket: its sender, its user, what it watches, and the tasks doing it."""

    send_text: SendText
    user: User | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    rooms: set[str] = field(default_factory=set)
    threads: set[str] = field(default_factory=set)  # subscribed without presence
    # run id -> its follower task, or the socket's membership of the run's hub
    followers: dict[str, Follower] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    send_timeout: float = 10.0
    # writes a fan-out's ready-framed message without waiting (agent_server/ws_protocol.py),
    # where the server offers it
    send_shared: SendShared | None = None
    # messages waiting for this socket to take them, sent in order by a task (later())
    backlog: list[str] | None = None

    @property
    def user_id(self) -> str | None:
        return self.user.id if self.user is not None else None

    async def send(self, message: dict[str, Any] | bytes | str) -> None:
        """Send one JSON message (a dict, or its JSON already); raises ``TimeoutError``
        if the peer stops reading."""
        if isinstance(message, dict):
            message = dumps(message)
        text = message.decode() if isinstance(message, bytes) else message
        async with asyncio.timeout(self.send_timeout):
            await self.send_text(text)

    async def send_frames(self, datas: list[bytes]) -> None:
        """One batch of encoded frames as one message (see :func:`frames_message`)."""
        async with asyncio.timeout(self.send_timeout):
            await self.send_text(frames_message(datas))

    def spawn(self, coroutine: Awaitable[None], name: str) -> asyncio.Task[None]:
        return spawn_into(self.tasks, coroutine, f"{name} [{self.client_id}]")

    def later(self, text: str) -> None:
        """Send ``text`` after the messages already waiting, from a task of this socket:
        one that cannot take a message now delays no other socket. If a send fails or
        times out (``send_timeout``), what waits is dropped: the socket is gone or too
        slow, and its own handler deals with it."""
        if self.backlog is None:
            self.backlog = []
            self.spawn(self._send_backlog(), "backlog")
        self.backlog.append(text)

    async def _send_backlog(self) -> None:
        try:
            while self.backlog:
                await self.send(self.backlog.pop(0))
        except Exception:
            logger.debug("dropped what waited for client %s", self.client_id, exc_info=True)
        finally:
            self.backlog = None


class ConnectionManager:
    """With a shared broker, room membership and presence span workers: members are kept
    in the broker and presence is published there, and each worker tells its own."""

    def __init__(
        self,
        broker: Broker | None = None,
        worker: str = "",
        *,
        hubs: Hubs | None = None,
        heartbeats: Heartbeats | None = None,
        presence_members_max: int = 100,
    ) -> None:
        self.broker = broker if broker is not None and broker.shared else None
        self.worker = worker
        self.clients: dict[str, Connection] = {}
        self.rooms: dict[str, set[str]] = {}  # thread id -> client ids (members)
        self.watchers: dict[str, set[str]] = {}  # thread id -> client ids (rooms + subscribers)
        self.hubs = hubs  # one per run followed by sockets here (agent_server/fanout.py)
        self.tasks: set[asyncio.Task[None]] = set()  # work for many sockets at once
        self.heartbeats = heartbeats  # every socket's ping and idle time-out, one timer
        self.presence_members_max = presence_members_max
        # thread id -> presence waiting for the room's delivery under way (see announce)
        self.announcing: dict[str, list[dict[str, Any]]] = {}
        # thread id -> client ids whose leave the broker missed (see record_rooms)
        self.unrecorded: dict[str, set[str]] = {}

    def spawn(self, coroutine: Awaitable[None], name: str) -> asyncio.Task[None]:
        return spawn_into(self.tasks, coroutine, name)

    async def close(self) -> None:
        """Stop the work done for many sockets at once (at the app's end: presence still
        being told, other workers' runs still being followed)."""
        await cancel_all(self.tasks)

    def add(self, connection: Connection) -> None:
        self.clients[connection.client_id] = connection

    async def remove(self, connection: Connection) -> None:
        """Forget a client everywhere and stop its tasks (every kind of disconnect)."""
        self.clients.pop(connection.client_id, None)
        for thread_id in list(connection.rooms):
            await self.leave(connection, thread_id)
        for thread_id in list(connection.threads):
            self.unwatch(connection, thread_id)
        for follower in connection.followers.values():
            follower.cancel()  # a task, or a membership of a run's hub
        await cancel_all(connection.tasks)
        connection.followers.clear()

    async def settle(self, timeout: float) -> None:
        """Let sockets deliver what their runs still have (e.g. ``shutdown`` frames)."""
        followers: set[asyncio.Task[None]] = set()
        for connection in self.clients.values():
            for follower in connection.followers.values():
                task = getattr(follower, "task", follower)  # a hub member: its hub's
                if isinstance(task, asyncio.Task) and not task.done():
                    followers.add(task)
        if followers:
            await asyncio.wait(followers, timeout=timeout)

    # -- rooms -----------------------------------------------------------------------

    def members(self, thread_id: str) -> list[Connection]:
        return [self.clients[c] for c in self.rooms.get(thread_id, ()) if c in self.clients]

    async def join(self, connection: Connection, thread_id: str) -> None:
        await self.enter(connection, thread_id)
        self.watch(connection, thread_id)
        await self.presence(thread_id, connection, "join")

    async def leave(self, connection: Connection, thread_id: str) -> None:
        if await self.exit(connection, thread_id):
            if thread_id not in connection.threads:
                self._unwatch(connection.client_id, thread_id)
            await self.presence(thread_id, connection, "leave")

    async def enter(self, connection: Connection, thread_id: str) -> None:
        """Membership only (here and, when shared, in the broker); no presence, no runs.

        :meth:`join` adds those; a transport with its own fan-out (the Channels
        consumer's groups) uses this and announces presence itself.
        """
        already = thread_id in connection.rooms
        self.rooms.setdefault(thread_id, set()).add(connection.client_id)
        connection.rooms.add(thread_id)
        if self.broker is not None:
            left = self.unrecorded.get(thread_id)
            if left is not None:
                left.discard(connection.client_id)
            try:
                await self.broker.room_join(
                    thread_id, {connection.client_id: self._record(connection)}
                )
            except BrokerUnavailable:
                if not already:  # a member nowhere, as the error tells the client
                    self._forget(connection, thread_id)
                    self._unrecorded_leave(thread_id, connection.client_id)  # if written
                raise

    async def exit(self, connection: Connection, thread_id: str) -> bool:
        """The opposite of :meth:`enter`; False if it was not a member. A leave the broker
        cannot record now (an outage) is recorded once it is back (:meth:`record_rooms`):
        a socket's cleanup never fails on it."""
        if not self._forget(connection, thread_id):
            return False
        if self.broker is not None:
            try:
                await self.broker.room_leave(thread_id, connection.client_id)
            except Exception as exc:  # unreachable, out of connections, read-only...
                logger.warning("a leave of thread %s waits for the broker: %s", thread_id, exc)
                self._unrecorded_leave(thread_id, connection.client_id)
        return True

    def _forget(self, connection: Connection, thread_id: str) -> bool:
        members = self.rooms.get(thread_id)
        if members is not None:
            members.discard(connection.client_id)
            if not members:
                del self.rooms[thread_id]
        if thread_id not in connection.rooms:
            return False
        connection.rooms.discard(thread_id)
        return True

    def _record(self, connection: Connection) -> str:
        """A member as the broker keeps it: who, and on which worker."""
        return dumps({**member_info(connection), "worker": self.worker}).decode()

    def _unrecorded_leave(self, thread_id: str, client_id: str) -> None:
        self.unrecorded.setdefault(thread_id, set()).add(client_id)

    async def record_rooms(self) -> None:
        """Record this worker's rooms in the broker again, and the leaves it missed:
        awaited each time the presence relay (re)subscribes, for a broker that restarted
        empty holds no member."""
        assert self.broker is not None
        await self.record_leaves()
        for thread_id, client_ids in list(self.rooms.items()):
            members = {c: self._record(self.clients[c]) for c in client_ids if c in self.clients}
            if members:
                await self.broker.room_join(thread_id, members)
                # A member that left meanwhile: its leave may have reached the broker first.
                for client_id in members.keys() - self.rooms.get(thread_id, set()):
                    await self.broker.room_leave(thread_id, client_id)

    async def record_leaves(self) -> None:
        """Record the leaves the broker missed (see :meth:`exit`)."""
        assert self.broker is not None
        for thread_id, left in list(self.unrecorded.items()):
            for client_id in list(left):
                await self.broker.room_leave(thread_id, client_id)
                left.discard(client_id)
            if not left and self.unrecorded.get(thread_id) is left:
                del self.unrecorded[thread_id]

    async def keep_rooms(self, interval: float = 2.0) -> None:
        """Record missed leaves once the broker takes them (a lifespan job): a leave can
        fail while the presence relay stays subscribed (no free connection, say), and a
        departed member would stay listed for as long as this worker lives."""
        while True:
            await asyncio.sleep(interval)
            if self.unrecorded:
                await self.record_leaves()

    async def presence(self, thread_id: str, connection: Connection, event: str) -> None:
        message = presence_message(thread_id, connection, event)
        if self.broker is not None:
            try:
                await self.broker.publish_presence(dumps(message))  # see relay_presence
            except Exception as exc:  # told to nobody, as anything published meanwhile
                logger.warning("presence on thread %s was not told: %s", thread_id, exc)
            return
        await self.announce(message)

    async def announce(self, message: dict[str, Any]) -> None:
        """Tell this worker's members of a room one presence event (see the module
        docstring): at once, before this returns, if the room has no delivery under
        way; else with the next one."""
        thread_id = message["thread_id"]
        waiting = self.announcing.get(thread_id)
        if waiting is not None:
            waiting.append(message)
            return
        waiting = self.announcing[thread_id] = []
        cost = 0.0
        try:
            cost = await self._tell(thread_id, [message])
        finally:
            if waiting:
                self._drain(thread_id, waiting, cost)
            else:
                del self.announcing[thread_id]

    def relay(self, message: dict[str, Any]) -> None:
        """:meth:`announce` for the presence relay, which must not wait for a delivery:
        the events that arrive meanwhile are the ones to coalesce."""
        thread_id = message["thread_id"]
        waiting = self.announcing.get(thread_id)
        if waiting is not None:
            waiting.append(message)
        else:
            waiting = self.announcing[thread_id] = [message]
            self._drain(thread_id, waiting, None)

    def _drain(self, thread_id: str, waiting: list[dict[str, Any]], cost: float | None) -> None:
        task = self.spawn(self._tell_waiting(thread_id, waiting, cost), f"presence-{thread_id}")

        def forget(_: asyncio.Task[None]) -> None:  # cancelled before it ran (shutdown)
            if self.announcing.get(thread_id) is waiting:
                del self.announcing[thread_id]

        task.add_done_callback(forget)

    async def _tell_waiting(
        self, thread_id: str, waiting: list[dict[str, Any]], cost: float | None
    ) -> None:
        """Tell what waits, a delivery at a time, until nothing does (``cost``: what
        the delivery before took; None: there was none, tell at once)."""
        pace = self.hubs.streams.fanout_pace() if self.hubs is not None else None
        try:
            while waiting:
                if pace is not None and cost is not None:
                    await pace.wait(cost)
                events = list(waiting)
                waiting.clear()
                try:
                    cost = await self._tell(thread_id, events)
                except Exception:  # the broker's member list failed: go on with the next
                    logger.exception("presence on thread %s was not told", thread_id)
                    cost = 0.0
        finally:
            if self.announcing.get(thread_id) is waiting:
                del self.announcing[thread_id]

    async def _tell(self, thread_id: str, events: list[dict[str, Any]]) -> float:
        """One delivery of presence events to the room's members here (as
        :func:`presence_texts` words them); the seconds of the loop it took."""
        local = self.members(thread_id)
        if not local:
            return 0.0
        members = await self.member_list(thread_id)
        here = {connection.client_id for connection in local}
        text, own = presence_texts(events, members, self.presence_members_max, here)
        return await self.tell(local, text, own)

    async def tell(
        self, connections: list[Connection], text: str, own: dict[str, str] | None = None
    ) -> float:
        """Send ``text`` to every connection (or its own text from ``own``, by client id),
        the shared text framed once for all (agent_server/ws_protocol.py); the seconds
        of the loop that took. A socket that cannot take it now gets it from a task of
        its own (:meth:`Connection.later`), so that it delays no other."""
        delivery = self.hubs.streams.delivery() if self.hubs is not None else None
        shared: SharedFrames | None = None
        for connection in connections:
            if delivery is not None:
                await delivery.step()
            message = own.get(connection.client_id, text) if own else text
            if connection.backlog is None:  # nothing of its own waits: now, if it can
                if message is text and connection.send_shared is not None:
                    shared = shared or SharedFrames([text.encode()])
                    if share(connection.send_shared, shared):
                        continue
                else:
                    try:
                        if await try_send(connection.send_text, message):
                            continue
                    except Exception:  # the socket is going: its handler cleans up
                        continue
            connection.later(message)
        return delivery.busy if delivery is not None else 0.0

    async def member_list(self, thread_id: str) -> list[dict[str, Any]]:
        """``[{client_id, user}]`` of a room: this worker's members, or, with a shared
        broker, every live worker's (members of a worker that died are dropped)."""
        if self.broker is None:
            return [member_info(member) for member in self.members(thread_id)]
        members = []
        alive: dict[str, bool] = {}
        for member, info in (await self.broker.room_members(thread_id)).items():
            entry = orjson.loads(info)
            worker = entry.pop("worker", "")
            if worker not in alive:
                alive[worker] = worker == self.worker or not await worker_lost(self.broker, worker)
            if alive[worker]:
                members.append(entry)
            else:  # its worker died without saying goodbye
                await self.broker.room_leave(thread_id, member)
        return members

    async def relay_presence(self) -> None:
        """Presence from every worker to this worker's members (lifespan task)."""
        assert self.broker is not None
        async for raw in self.broker.presence(self.record_rooms):
            message = orjson.loads(raw)
            if message["thread_id"] in self.rooms:  # it has members here
                self.relay(message)

    # -- thread watchers (rooms and plain subscriptions) -----------------------------------

    def watch(self, connection: Connection, thread_id: str) -> None:
        self.watchers.setdefault(thread_id, set()).add(connection.client_id)

    def unwatch(self, connection: Connection, thread_id: str) -> None:
        connection.threads.discard(thread_id)
        if thread_id not in connection.rooms:
            self._unwatch(connection.client_id, thread_id)

    def _unwatch(self, client_id: str, thread_id: str) -> None:
        watchers = self.watchers.get(thread_id)
        if watchers is not None:
            watchers.discard(client_id)
            if not watchers:
                del self.watchers[thread_id]

    def watching(self, thread_id: str) -> list[Connection]:
        return [self.clients[c] for c in self.watchers.get(thread_id, ()) if c in self.clients]
