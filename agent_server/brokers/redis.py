"""The Redis broker: runs shared by every worker (redis-py's asyncio client).

- A run's log is a Redis Stream, ``<prefix>:run:<id>:log``, one entry per frame with the
  explicit id ``0-<seq>``: ``XREAD BLOCK`` from ``0-<after>`` is exactly "the frames after
  this seq", which is what resume needs, and the ids refuse a duplicate or out-of-order
  append. It is capped (``MAXLEN ~``) so a runaway run cannot fill Redis.
- Its record is a hash, ``<prefix>:run:<id>``.
- Cancel requests go through pub/sub on ``<prefix>:cancel``; only the worker executing
  the run acts on them. New runs are announced on ``<prefix>:runs``.
- Background runs wait in the list ``<prefix>:queue`` (``LPUSH``/``BRPOP``) until a
  worker with a free slot takes them.
- A thread's active run is ``<prefix>:thread:<id>:active`` (``SET NX``), so a second run
  on a busy thread is refused (409) whichever worker is asked.
- Room members are a hash per thread, ``<prefix>:room:<thread>``; presence messages go
  through pub/sub on ``<prefix>:presence``, so every worker tells its own members.
- Each worker refreshes ``<prefix>:worker:<id>`` (a key with a TTL): when it is gone,
  the worker is, and its unfinished runs are ended as ``worker_lost``.
- After a run ends its log expires after the retention time and its record a day later,
  so that asking for a dropped log is "gone" (410), not "never existed" (404).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as redis

from agent_server.brokers import Entry

LOG_CAP = 100_000  # frames kept per run, approximately
MAX_CONNECTIONS = 256  # per worker
# Delete the thread's active-run key only if it still names this run (atomically).
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisBroker:
    shared = True

    def __init__(self, url: str, *, prefix: str = "agent-server") -> None:
        # A blocking pool: a burst of requests (a thousand subscribers arriving at once)
        # waits for a free connection instead of failing with "Too many connections".
        # Each followed run holds one connection while its reader blocks (XREAD BLOCK).
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=30
        )
        self.client: redis.Redis = redis.Redis(connection_pool=pool)
        self.prefix = prefix

    def _log(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:log"

    def _record(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    @property
    def _cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    async def publish(self, run_id: str, entries: Sequence[Entry]) -> None:
        key = self._log(run_id)
        async with self.client.pipeline(transaction=False) as pipe:
            for seq, kind, data in entries:
                pipe.xadd(
                    key, {"t": kind, "d": data}, id=f"0-{seq}", maxlen=LOG_CAP, approximate=True
                )
            await pipe.execute()

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

    async def put_record(self, run_id: str, record: dict[str, str]) -> None:
        await self.client.hset(self._record(run_id), mapping=dict(record))  # type: ignore[arg-type]

    async def get_record(self, run_id: str) -> dict[str, str] | None:
        raw: Any = await self.client.hgetall(self._record(run_id))
        if not raw:
            return None
        record = {k.decode(): v.decode() for k, v in raw.items()}
        record["log_exists"] = "1" if await self.client.exists(self._log(run_id)) else "0"
        return record

    async def expire(self, run_id: str, log_seconds: float, record_seconds: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.expire(self._log(run_id), max(1, int(log_seconds)))
            pipe.expire(self._record(run_id), max(1, int(record_seconds)))
            await pipe.execute()

    async def append_next(self, run_id: str, entry: Entry) -> bool:
        seq, kind, data = entry
        try:
            await self.client.xadd(self._log(run_id), {"t": kind, "d": data}, id=f"0-{seq}")
        except redis.ResponseError:  # "equal or smaller than the target stream top item"
            return False
        return True

    async def announce(self, run_id: str, thread_id: str, worker: str) -> None:
        message = json.dumps([run_id, thread_id, worker])
        await self.client.publish(f"{self.prefix}:runs", message)

    async def announcements(self) -> AsyncIterator[tuple[str, str, str]]:
        pubsub = self.client.pubsub()
        await pubsub.subscribe(f"{self.prefix}:runs")
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    run_id, thread_id, worker = json.loads(message["data"])
                    yield run_id, thread_id, worker
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def heartbeat(self, worker: str, ttl: float) -> None:
        await self.client.set(f"{self.prefix}:worker:{worker}", b"1", px=int(ttl * 1000))

    async def is_alive(self, worker: str) -> bool:
        return bool(await self.client.exists(f"{self.prefix}:worker:{worker}"))

    async def push_job(self, job: bytes) -> None:
        await self.client.lpush(f"{self.prefix}:queue", job)

    async def pop_job(self, timeout: float) -> bytes | None:
        popped: Any = await self.client.brpop([f"{self.prefix}:queue"], timeout=max(timeout, 0.01))
        return popped[1] if popped else None

    async def remove_job(self, job: bytes) -> bool:
        removed: Any = await self.client.lrem(f"{self.prefix}:queue", 1, job)  # type: ignore[arg-type]
        return bool(removed)

    async def queue_length(self) -> int:
        return int(await self.client.llen(f"{self.prefix}:queue"))

    async def claim_thread(self, thread_id: str, run_id: str, *, force: bool = False) -> str:
        key = f"{self.prefix}:thread:{thread_id}:active"
        if force:
            await self.client.set(key, run_id)
            return run_id
        await self.client.set(key, run_id, nx=True)
        holder: Any = await self.client.get(key)
        return holder.decode() if holder else run_id

    async def release_thread(self, thread_id: str, run_id: str) -> None:
        key = f"{self.prefix}:thread:{thread_id}:active"
        await self.client.eval(RELEASE, 1, key, run_id)

    async def room_join(self, thread_id: str, member: str, info: str) -> None:
        await self.client.hset(f"{self.prefix}:room:{thread_id}", member, info)

    async def room_leave(self, thread_id: str, member: str) -> None:
        await self.client.hdel(f"{self.prefix}:room:{thread_id}", member)

    async def room_members(self, thread_id: str) -> dict[str, str]:
        raw: Any = await self.client.hgetall(f"{self.prefix}:room:{thread_id}")
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def publish_presence(self, message: bytes) -> None:
        await self.client.publish(f"{self.prefix}:presence", message)

    async def presence(self) -> AsyncIterator[bytes]:
        pubsub = self.client.pubsub()
        await pubsub.subscribe(f"{self.prefix}:presence")
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield bytes(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def request_cancel(self, run_id: str) -> None:
        await self.client.publish(self._cancel_channel, run_id)

    async def cancel_requests(self) -> AsyncIterator[str]:
        pubsub = self.client.pubsub()
        await pubsub.subscribe(self._cancel_channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield message["data"].decode()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self.client.aclose()
