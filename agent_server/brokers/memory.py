"""The in-process broker: the default, for one worker. Runs are all local, so the server
never publishes to it (``shared = False``); it implements the contract fully anyway, so
the broker tests hold it to the same behaviour as Redis."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

from agent_server.brokers import BrokerHealth, Entry


class MemoryBroker:
    shared = False

    def __init__(self) -> None:
        self.health = BrokerHealth()  # always up: it is this process
        self.logs: dict[str, list[Entry]] = {}
        self.records: dict[str, dict[str, str]] = {}
        self._changed = asyncio.Condition()
        self._cancels: asyncio.Queue[str] = asyncio.Queue()
        self._announcements: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        self._alive_until: dict[str, float] = {}
        self._jobs: asyncio.Queue[bytes] = asyncio.Queue()
        self._delayed: list[tuple[float, bytes]] = []  # (due, monotonic clock), sorted
        self._rooms: dict[str, dict[str, str]] = {}
        self._active: dict[str, str] = {}
        self._presence: asyncio.Queue[bytes] = asyncio.Queue()

    async def publish(self, run_id: str, entries: Sequence[Entry]) -> None:
        async with self._changed:
            log = self.logs.setdefault(run_id, [])
            top = log[-1][0] if log else 0
            log.extend(entry for entry in entries if entry[0] > top)
            self._changed.notify_all()

    async def read(self, run_id: str, after: int, block: float | None) -> list[Entry]:
        def newer() -> list[Entry]:
            return [e for e in self.logs.get(run_id, ()) if e[0] > after]

        async with self._changed:
            if not (found := newer()) and block:
                try:
                    async with asyncio.timeout(block):
                        await self._changed.wait_for(lambda: bool(newer()))
                except TimeoutError:
                    pass
                found = newer()
        return found

    async def last_seq(self, run_id: str) -> int:
        log = self.logs.get(run_id)
        return log[-1][0] if log else 0

    async def put_record(self, run_id: str, record: dict[str, str]) -> None:
        self.records.setdefault(run_id, {}).update(record)

    async def get_record(self, run_id: str) -> dict[str, str] | None:
        record = self.records.get(run_id)
        return dict(record) if record is not None else None

    async def expire(self, run_id: str, log_seconds: float, record_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(log_seconds, self.logs.pop, run_id, None)
        loop.call_later(record_seconds, self.records.pop, run_id, None)

    async def append_next(self, run_id: str, entry: Entry) -> bool:
        log = self.logs.get(run_id, [])
        if log and log[-1][0] >= entry[0]:
            return False
        await self.publish(run_id, [entry])
        return True

    async def announce(self, run_id: str, thread_id: str, worker: str) -> None:
        await self._announcements.put((run_id, thread_id, worker))

    async def announcements(self) -> AsyncIterator[tuple[str, str, str]]:
        while True:
            yield await self._announcements.get()

    async def heartbeat(self, worker: str, ttl: float) -> None:
        self._alive_until[worker] = time.monotonic() + ttl

    async def is_alive(self, worker: str) -> bool:
        return self._alive_until.get(worker, 0.0) > time.monotonic()

    async def push_job(self, job: bytes) -> None:
        await self._jobs.put(job)

    async def schedule_job(self, job: bytes, delay: float) -> None:
        bisect.insort(self._delayed, (time.monotonic() + delay, job))

    async def pop_job(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                self._jobs.put_nowait(self._delayed.pop(0)[1])
            wait = deadline - now
            if self._delayed:
                wait = min(wait, self._delayed[0][0] - now)
            try:
                async with asyncio.timeout(max(wait, 0)):
                    return await self._jobs.get()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return None

    async def remove_job(self, job: bytes) -> bool:
        pending = [self._jobs.get_nowait() for _ in range(self._jobs.qsize())]
        found = job in pending
        if found:
            pending.remove(job)
        for item in pending:
            self._jobs.put_nowait(item)
        delayed = [entry for entry in self._delayed if entry[1] != job]
        found = found or len(delayed) < len(self._delayed)
        self._delayed = delayed
        return found

    async def queue_length(self) -> int:
        return self._jobs.qsize()

    async def claim_thread(self, thread_id: str, run_id: str, *, force: bool = False) -> str:
        if force:
            self._active[thread_id] = run_id
        return self._active.setdefault(thread_id, run_id)

    async def release_thread(self, thread_id: str, run_id: str) -> None:
        if self._active.get(thread_id) == run_id:
            del self._active[thread_id]

    async def room_join(self, thread_id: str, members: Mapping[str, str]) -> None:
        self._rooms.setdefault(thread_id, {}).update(members)

    async def room_leave(self, thread_id: str, member: str) -> None:
        members = self._rooms.get(thread_id, {})
        members.pop(member, None)
        if not members:
            self._rooms.pop(thread_id, None)

    async def room_members(self, thread_id: str) -> dict[str, str]:
        return dict(self._rooms.get(thread_id, {}))

    async def publish_presence(self, message: bytes) -> None:
        await self._presence.put(message)

    async def presence(
        self, subscribed: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[bytes]:
        if subscribed is not None:
            await subscribed()
        while True:
            yield await self._presence.get()

    async def request_cancel(self, run_id: str) -> None:
        await self._cancels.put(run_id)

    async def cancel_requests(
        self, subscribed: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[str]:
        if subscribed is not None:
            await subscribed()
        while True:
            yield await self._cancels.get()

    async def close(self) -> None:
        self.logs.clear()
        self.records.clear()
