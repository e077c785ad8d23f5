"""The Redis broker: runs shared by every worker (redis-py's asyncio client).

- A run's log is a Redis Stream, ``<prefix>:run:<id>:log``, one entry per frame with the
  explicit id ``0-<seq>``: ``XREAD BLOCK`` from ``0-<after>`` is exactly "the frames after
  this seq", which is what resume needs, and the ids refuse a duplicate or out-of-order
  append (``publish`` skips what the log already holds: a command's answer can be lost
  after Redis ran it). It is capped (``MAXLEN ~``) so a runaway run cannot fill Redis.
- Its record is a hash, ``<prefix>:run:<id>``.
- Cancel requests go through pub/sub on ``<prefix>:cancel``; only the worker executing
  the run acts on them. New runs are announced on ``<prefix>:runs``.
- Background runs wait in the list ``<prefix>:queue`` (``LPUSH``/``BRPOP``) until a
  worker with a free slot takes them. Delayed ones (``after_seconds``) wait first in the
  sorted set ``<prefix>:delayed``, scored by when they are due on Redis's own clock (no
  skew between workers); every ``pop_job`` moves the due ones to the queue in one Lua
  script, so each moves once, whichever worker pops, and they outlive any worker.
- A thread's active run is ``<prefix>:thread:<id>:active`` (``SET NX``), so a second run
  on a busy thread is refused (409) whichever worker is asked.
- Room members are a hash per thread, ``<prefix>:room:<thread>``; presence messages go
  through pub/sub on ``<prefix>:presence``, so every worker tells its own members.
- Each worker refreshes ``<prefix>:worker:<id>`` (a key with a TTL): when it is gone,
  the worker is, and its unfinished runs are ended as ``worker_lost``.
- After a run ends its log expires after the retention time and its record a day later,
  so that asking for a dropped log is "gone" (410), not "never existed" (404).
- Outages: redis-py retries a failed command a few times within about half a second
  (a reset connection, a restart's first refused connects); past that every method
  raises :class:`~agent_server.brokers.BrokerUnavailable` and marks the broker down in
  ``health``, and the next call that succeeds marks it up. So does a command Redis does
  not answer within ``COMMAND_TIMEOUT`` (a hung or unreachable Redis that drops packets
  rather than refusing). Longer outages are for the callers to ride out (they resume;
  see the package docstring).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from agent_server.brokers import LOST_AFTER, BrokerHealth, BrokerUnavailable, Entry

LOG_CAP = 100_000  # frames kept per run, approximately
MAX_CONNECTIONS = 256  # per worker
# Delete the thread's active-run key only if it still names this run (atomically).
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# A heartbeat; the first one after Redis (re)started empty also notes when (Redis's time).
HEARTBEAT = """
redis.call('set', KEYS[1], '1', 'PX', ARGV[1])
if redis.call('exists', KEYS[2]) == 0 then
  local now = redis.call('time')
  redis.call('set', KEYS[2], now[1] + now[2] / 1e6)
end
"""
# Alive: its heartbeat is there, or Redis has held heartbeats for less than a heartbeat
# lives (restarted empty, it knows nobody's yet: see RedisBroker.is_alive).
ALIVE = """
if redis.call('exists', KEYS[1]) == 1 then return 1 end
local since = redis.call('get', KEYS[2])
if not since then return 1 end
local now = redis.call('time')
if now[1] + now[2] / 1e6 - tonumber(since) < tonumber(ARGV[1]) then return 1 end
return 0
"""
# Delayed jobs: added at Redis's time + delay; moved to the queue once due (atomically,
# so exactly once), answering the seconds until the next one (a pop waits no longer).
SCHEDULE = """
local now = redis.call('time')
redis.call('zadd', KEYS[1], now[1] + now[2] / 1e6 + tonumber(ARGV[1]), ARGV[2])
"""
RELEASE_DUE = """
local now = redis.call('time')
local t = now[1] + now[2] / 1e6
for _, job in ipairs(redis.call('zrangebyscore', KEYS[1], '-inf', t, 'LIMIT', 0, 100)) do
  redis.call('zrem', KEYS[1], job)
  redis.call('lpush', KEYS[2], job)
end
local next = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then return tostring(tonumber(next[2]) - t) end
return false
"""
# What "cannot use Redis" looks like (BusyLoadingError, a restart replaying its data,
# and MaxConnectionsError are ConnectionErrors too). A Redis at ``maxmemory`` that
# refuses writes (OOM) is as unusable, for as long: heartbeats cannot be written either;
# so is a replica still answering for a failover's old primary (READONLY).
UNREACHABLE = (
    redis.ConnectionError, redis.TimeoutError, OSError, OutOfMemoryError, ReadOnlyError
)  # fmt: skip
# redis-py's own retries of a command whose connection failed: short, so an outage
# surfaces quickly. Not of one that timed out: Redis did not answer for COMMAND_TIMEOUT,
# which is an outage to report (and heartbeats are missed meanwhile), not to wait out.
# A write refused as READONLY reached a primary demoted by a failover (a managed Redis
# moves its endpoint's name to the new one): each retry connects afresh, to the new one.
RETRY = Retry(
    ExponentialWithJitterBackoff(base=0.02, cap=0.25),
    retries=3,
    supported_errors=(redis.ConnectionError, ReadOnlyError),
)
CONNECT_TIMEOUT = 2.0
# Seconds a command may wait for its answer: a hung or blackholed Redis must not hang the
# worker with it. Above the longest blocking command (XREAD BLOCK 2 s, BRPOP 1 s).
COMMAND_TIMEOUT = 5.0
# What Redis answers an XADD whose id the stream already holds.
DUPLICATE = "equal or smaller than the target stream top item"

# Seconds a listener waits for a message before it looks whether it reconnected.
RECONNECT_CHECK = 1.0
# A listener that heard nothing for LISTEN_PING seconds pings; with no answer within
# PONG_WAIT its connection is dead though open (a NAT or load balancer that forgot an
# idle connection, a partition that drops packets): redis-py would wait on it for ever.
LISTEN_PING = 10.0
PONG_WAIT = COMMAND_TIMEOUT

P = ParamSpec("P")
T = TypeVar("T")


def _guarded(
    method: Callable[Concatenate[RedisBroker, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisBroker, P], Coroutine[Any, Any, T]]:
    """Redis's connection errors as :class:`BrokerUnavailable`, recorded in ``health``."""

    @functools.wraps(method)
    async def call(self: RedisBroker, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            result = await method(self, *args, **kwargs)
        except UNREACHABLE as exc:
            raise self._unavailable(exc) from exc
        self.health.ok()
        return result

    return call


class Connects:
    """Counts a pub/sub connection's (re)connections: redis-py keeps its connect
    callbacks as weak methods."""

    def __init__(self) -> None:
        self.count = 0

    def connected(self, connection: object) -> None:
        self.count += 1


class RedisBroker:
    shared = True

    def __init__(self, url: str, *, prefix: str = "agent-server") -> None:
        # A blocking pool: a burst of requests (a thousand subscribers arriving at once)
        # waits for a free connection instead of failing with "Too many connections".
        # Each followed run holds one connection while its reader blocks (XREAD BLOCK).
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=30,
            retry=RETRY,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
        )
        self.client: redis.Redis = redis.Redis(connection_pool=pool)
        self.prefix = prefix
        self.health = BrokerHealth()

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        self.health.failed(exc)
        refused = isinstance(exc, OutOfMemoryError | ReadOnlyError)
        state = "refuses writes" if refused else "is unreachable"
        return BrokerUnavailable(f"Redis {state} ({type(exc).__name__}: {exc})")

    def _log(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:log"

    def _record(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    @property
    def _cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    @_guarded
    async def publish(self, run_id: str, entries: Sequence[Entry]) -> None:
        """Appends ``entries``; those the log already holds are skipped, not an error."""
        key = self._log(run_id)
        try:
            await self._append(key, entries)
        except redis.ResponseError as exc:
            if DUPLICATE not in str(exc):
                raise
            # Some were appended already, by a command whose answer was lost: a
            # connection that timed out or dropped after Redis had read it (redis-py
            # retries it; a hung Redis runs it when it wakes, after our next attempt).
            top = await self.last_seq(run_id)
            await self._append(key, [entry for entry in entries if entry[0] > top])

    async def _append(self, key: str, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for seq, kind, data in entries:
                pipe.xadd(
                    key, {"t": kind, "d": data}, id=f"0-{seq}", maxlen=LOG_CAP, approximate=True
                )
            await pipe.execute()

    @_guarded
    async def read(self, run_id: str, after: int, block: float | None) -> list[Entry]:
        key = self._log(run_id)
        block_ms = int(block * 1000) if block else None
        response: Any = await self.client.xread({key: f"0-{after}"}, block=block_ms)
        entries: list[Entry] = []
        for _, messages in response or ():
            for message_id, fields in messages:
                seq = int(message_id.split(b"-")[1])
                entries.append((seq, fields[b"t"].decode(), fields[b"d"]))
        return entries

    @_guarded
    async def last_seq(self, run_id: str) -> int:
        last: Any = await self.client.xrevrange(self._log(run_id), count=1)
        return int(last[0][0].split(b"-")[1]) if last else 0

    @_guarded
    async def put_record(self, run_id: str, record: dict[str, str]) -> None:
        await self.client.hset(self._record(run_id), mapping=dict(record))  # type: ignore[arg-type]

    @_guarded
    async def get_record(self, run_id: str) -> dict[str, str] | None:
        raw: Any = await self.client.hgetall(self._record(run_id))
        if not raw:
            return None
        record = {k.decode(): v.decode() for k, v in raw.items()}
        record["log_exists"] = "1" if await self.client.exists(self._log(run_id)) else "0"
        return record

    @_guarded
    async def expire(self, run_id: str, log_seconds: float, record_seconds: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.expire(self._log(run_id), max(1, int(log_seconds)))
            pipe.expire(self._record(run_id), max(1, int(record_seconds)))
            await pipe.execute()

    @_guarded
    async def append_next(self, run_id: str, entry: Entry) -> bool:
        seq, kind, data = entry
        try:
            await self.client.xadd(self._log(run_id), {"t": kind, "d": data}, id=f"0-{seq}")
        except redis.ResponseError:  # "equal or smaller than the target stream top item"
            return False
        return True

    @_guarded
    async def announce(self, run_id: str, thread_id: str, worker: str) -> None:
        message = json.dumps([run_id, thread_id, worker])
        await self.client.publish(f"{self.prefix}:runs", message)

    async def announcements(self) -> AsyncIterator[tuple[str, str, str]]:
        async for data in self._messages(f"{self.prefix}:runs"):
            run_id, thread_id, worker = json.loads(data)
            yield run_id, thread_id, worker

    async def _messages(
        self, channel: str, subscribed: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[bytes]:
        """The messages published on ``channel``; ``subscribed`` is awaited once the
        subscription is in place (anything published from then on is received), and
        again after each reconnection: redis-py reconnects and resubscribes by itself
        within its retries, so a quick Redis restart raised nothing, and what was
        published meanwhile, or what the restart lost, went unnoticed. An idle
        subscription is pinged (see ``LISTEN_PING``): one whose connection went silent
        raises :class:`BrokerUnavailable`, and its caller subscribes again."""
        pubsub = self.client.pubsub()
        connects = Connects()
        try:
            try:
                await pubsub.subscribe(channel)
            except UNREACHABLE as exc:
                raise self._unavailable(exc) from exc
            assert pubsub.connection is not None
            pubsub.connection.register_connect_callback(connects.connected)
            self.health.ok()
            seen = connects.count
            if subscribed is not None:
                await subscribed()
            heard, pinged = time.monotonic(), 0.0
            while True:
                try:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=RECONNECT_CHECK
                    )
                    now = time.monotonic()
                    if message is not None:  # a message or a pong: the connection lives
                        heard, pinged = now, 0.0
                    elif pinged and now - pinged > PONG_WAIT:
                        raise redis.TimeoutError("no answer to a ping on a pub/sub connection")
                    elif not pinged and now - heard > LISTEN_PING:
                        await pubsub.ping()
                        pinged = now
                except UNREACHABLE as exc:
                    raise self._unavailable(exc) from exc
                if connects.count != seen:  # resubscribed (redis-py's on_connect ran first)
                    seen = connects.count
                    if subscribed is not None:
                        await subscribed()
                if message is not None and message.get("type") == "message":
                    yield bytes(message["data"])
        finally:
            if pubsub.connection is not None:  # the pool hands it out again
                pubsub.connection.deregister_connect_callback(connects.connected)
            await pubsub.aclose()

    def _heartbeat_keys(self, worker: str) -> tuple[str, str]:
        """The worker's heartbeat, and since when Redis has held heartbeats."""
        return f"{self.prefix}:worker:{worker}", f"{self.prefix}:heartbeats-since"

    @_guarded
    async def heartbeat(self, worker: str, ttl: float) -> None:
        await self.client.eval(HEARTBEAT, 2, *self._heartbeat_keys(worker), int(ttl * 1000))

    @_guarded
    async def is_alive(self, worker: str) -> bool:
        """A Redis that restarted empty holds no heartbeat until each worker's next beat,
        and a restart quick enough for redis-py's retries breaks no call, so the caller's
        ``health`` saw no outage: nobody is judged until Redis has held heartbeats for
        longer than one lives."""
        keys = self._heartbeat_keys(worker)
        return bool(await self.client.eval(ALIVE, 2, *keys, repr(LOST_AFTER)))

    @_guarded
    async def push_job(self, job: bytes) -> None:
        await self.client.lpush(f"{self.prefix}:queue", job)

    @_guarded
    async def schedule_job(self, job: bytes, delay: float) -> None:
        await self.client.eval(SCHEDULE, 1, f"{self.prefix}:delayed", repr(delay), job)

    @_guarded
    async def pop_job(self, timeout: float) -> bytes | None:
        queue, delayed = f"{self.prefix}:queue", f"{self.prefix}:delayed"
        deadline = time.monotonic() + timeout
        while True:
            next_due: Any = await self.client.eval(RELEASE_DUE, 2, delayed, queue)
            wait = deadline - time.monotonic()
            if next_due is not None:
                wait = min(wait, float(next_due))
            popped: Any = await self.client.brpop([queue], timeout=max(wait, 0.01))
            if popped:
                return bytes(popped[1])
            if time.monotonic() >= deadline:
                return None

    @_guarded
    async def remove_job(self, job: bytes) -> bool:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lrem(f"{self.prefix}:queue", 1, job)  # type: ignore[arg-type]
            pipe.zrem(f"{self.prefix}:delayed", job)
            removed: Any = await pipe.execute()
        return any(removed)

    @_guarded
    async def queue_length(self) -> int:
        return int(await self.client.llen(f"{self.prefix}:queue"))

    @_guarded
    async def claim_thread(self, thread_id: str, run_id: str, *, force: bool = False) -> str:
        key = f"{self.prefix}:thread:{thread_id}:active"
        if force:
            await self.client.set(key, run_id)
            return run_id
        await self.client.set(key, run_id, nx=True)
        holder: Any = await self.client.get(key)
        return holder.decode() if holder else run_id

    @_guarded
    async def release_thread(self, thread_id: str, run_id: str) -> None:
        key = f"{self.prefix}:thread:{thread_id}:active"
        await self.client.eval(RELEASE, 1, key, run_id)

    @_guarded
    async def room_join(self, thread_id: str, members: Mapping[str, str]) -> None:
        fields: dict[Any, Any] = dict(members)  # redis-py's Mapping is invariant in its keys
        await self.client.hset(f"{self.prefix}:room:{thread_id}", mapping=fields)

    @_guarded
    async def room_leave(self, thread_id: str, member: str) -> None:
        await self.client.hdel(f"{self.prefix}:room:{thread_id}", member)

    @_guarded
    async def room_members(self, thread_id: str) -> dict[str, str]:
        raw: Any = await self.client.hgetall(f"{self.prefix}:room:{thread_id}")
        return {k.decode(): v.decode() for k, v in raw.items()}

    @_guarded
    async def publish_presence(self, message: bytes) -> None:
        await self.client.publish(f"{self.prefix}:presence", message)

    async def presence(
        self, subscribed: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[bytes]:
        async for data in self._messages(f"{self.prefix}:presence", subscribed):
            yield data

    @_guarded
    async def request_cancel(self, run_id: str) -> None:
        await self.client.publish(self._cancel_channel, run_id)

    async def cancel_requests(
        self, subscribed: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[str]:
        async for data in self._messages(self._cancel_channel, subscribed):
            yield data.decode()

    async def close(self) -> None:
        await self.client.aclose()
