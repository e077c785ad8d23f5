"""Brokers: how runs are shared between worker processes, chosen by URL.

``AGENT_SERVER_BROKER_URL`` picks one: ``memory://`` (the default: one process, nothing
shared) or ``redis://host:port/db``. Each implements :class:`Broker`, one small async
interface, and the same contract tests run against both (``tests/test_brokers.py``).

What a broker holds for a run: its *record* (graph, thread, owner, status, worker,
timings), so any worker can answer for it; its *log* (the encoded frames, in order), so
any worker can replay and follow it; *cancel requests*, so a cancel on worker B stops the
run executing on worker A; *announcements* of new runs, so rooms span workers; and each
worker's *heartbeat*, so a run whose worker died is ended (``worker_lost``) by whoever
notices first.

Outages. A broker that cannot be reached raises :class:`BrokerUnavailable` (never its
client library's own errors) and records it in its :class:`BrokerHealth`, which
``/healthz`` and ``/metrics`` report. Callers do not give up for good on it: the
lifespan's loops are supervised (:mod:`agent_server.supervise`) and resume, publishers
and followers retry and resume from the log's last seq (see ``agent_server/runs.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from agent_server.streams import StreamError

# (seq, frame type, the frame's JSON)
Entry = tuple[int, str, bytes]


class BrokerUnavailable(StreamError):
    """The shared broker cannot be reached now (connection refused, reset, loading...)."""

    code = "broker_unavailable"


class BrokerHealth:
    """Whether this worker reaches its broker, and since when.

    ``since`` matters to judging other workers: a worker whose heartbeat is missing is
    only declared lost once this worker itself has reached the broker for longer than
    the heartbeat's lifetime (:meth:`steady`), so a broker outage that both survived,
    during which nobody could beat, never makes a healthy worker look dead.
    """

    def __init__(self) -> None:
        self.up = True
        self.since = time.monotonic()
        self.error: str | None = None
        self.errors = 0  # failed calls, for /metrics
        self.outages = 0

    def failed(self, error: BaseException) -> None:
        self.errors += 1
        self.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if self.up:
            self.up = False
            self.outages += 1
            self.since = time.monotonic()

    def ok(self) -> None:
        if not self.up:
            self.up = True
            self.since = time.monotonic()

    def steady(self, seconds: float) -> bool:
        """Reachable without a break for at least ``seconds``."""
        return self.up and time.monotonic() - self.since >= seconds


# Seconds after its last heartbeat that a worker counts as gone (it beats every 2 s).
LOST_AFTER = 6.0


# A judgement slower than this was made by a broker that hung meanwhile.
PROMPT = 1.0


async def worker_lost(broker: Broker, worker: str) -> bool:
    """Has ``worker`` stopped? Only judged once this worker has reached the broker for
    longer than a heartbeat lives (see :class:`BrokerHealth`); until then, no.

    Nor by a question the broker took longer than ``PROMPT`` to answer: it hung for
    that long, maybe too briefly for any call to fail (so ``health`` saw nothing), and
    the worker's next beat then waited in its queue beside the question, in no set
    order. The next prompt answer judges."""
    if not broker.health.steady(LOST_AFTER):
        return False
    asked = time.monotonic()
    alive = await broker.is_alive(worker)
    return not alive and time.monotonic() - asked < PROMPT


class Broker(Protocol):
    shared: bool  # False for memory://: every run is local, nothing to publish
    health: BrokerHealth

    async def publish(self, run_id: str, entries: Sequence[Entry]) -> None:
        """Appends ``entries`` (ascending seqs) to the run's log, skipping those with a seq
        it already holds: a publish retried after an answer was lost repeats some."""
        ...

    async def read(self, run_id: str, after: int, block: float | None) -> list[Entry]:
        """Entries with seq > ``after``; waits up to ``block`` seconds for some."""
        ...

    async def last_seq(self, run_id: str) -> int:
        """The seq of the log's last entry (0 for no log): where a publisher that lost
        the broker resumes, and what a lost run's final frame must follow."""
        ...

    async def put_record(self, run_id: str, record: dict[str, str]) -> None: ...

    async def get_record(self, run_id: str) -> dict[str, str] | None: ...

    async def expire(self, run_id: str, log_seconds: float, record_seconds: float) -> None:
        """After a run ends: keep its log and record this long (record outlives log)."""
        ...

    async def append_next(self, run_id: str, entry: Entry) -> bool:
        """Append only if ``entry`` comes after the log's last seq; False if not (so of
        two workers ending a lost run, exactly one writes the final frame)."""
        ...

    async def announce(self, run_id: str, thread_id: str, worker: str) -> None:
        """Tell every worker a run started (rooms on other workers follow it)."""
        ...

    def announcements(self) -> AsyncIterator[tuple[str, str, str]]:
        """(run id, thread id, worker) of every announced run."""
        ...

    async def heartbeat(self, worker: str, ttl: float) -> None:
        """This worker is alive for ``ttl`` more seconds."""
        ...

    async def is_alive(self, worker: str) -> bool:
        """Whether ``worker`` beat within its heartbeat's lifetime, or the broker has not
        held heartbeats that long (a broker restarted empty knows nobody's yet)."""
        ...

    async def request_cancel(self, run_id: str) -> None: ...

    async def push_job(self, job: bytes) -> None:
        """Queue a background run for whichever worker has room first."""
        ...

    async def schedule_job(self, job: bytes, delay: float) -> None:
        """Queue a job ``delay`` seconds from now (``after_seconds``), by the broker's
        clock: until then it waits apart, kept as long as the broker keeps data."""
        ...

    async def pop_job(self, timeout: float) -> bytes | None:
        """The oldest queued job, waiting up to ``timeout`` seconds for one. Delayed jobs
        that are due join the queue first, each exactly once whichever worker pops."""
        ...

    async def remove_job(self, job: bytes) -> bool:
        """Take a job back out of the queue (or out of the delayed jobs); False if a
        worker has taken it already."""
        ...

    async def queue_length(self) -> int:
        """Jobs waiting for a worker (delayed jobs not yet due are not counted)."""
        ...

    async def claim_thread(self, thread_id: str, run_id: str, *, force: bool = False) -> str:
        """Mark ``run_id`` as the thread's active run unless another holds it (``force``
        takes it anyway); returns the holder afterwards."""
        ...

    async def release_thread(self, thread_id: str, run_id: str) -> None:
        """Clear the thread's active run, if it is still ``run_id``."""
        ...

    async def room_join(self, thread_id: str, members: Mapping[str, str]) -> None:
        """Record room members: client id -> its JSON description, with its worker."""
        ...

    async def room_leave(self, thread_id: str, member: str) -> None: ...

    async def room_members(self, thread_id: str) -> dict[str, str]: ...

    async def publish_presence(self, message: bytes) -> None: ...

    def presence(
        self, subscribed: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[bytes]:
        """Every presence message published by any worker (this one included).
        ``subscribed`` is awaited once messages are being received: a listener that
        (re)subscribes records there what the broker may have lost meanwhile."""
        ...

    def cancel_requests(
        self, subscribed: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[str]:
        """Run ids whose cancellation any worker requested (for the executing worker).
        ``subscribed`` is awaited once requests are being received: a listener that
        (re)subscribes looks there for requests it may have missed meanwhile."""
        ...

    async def close(self) -> None: ...


def open_broker(url: str, *, prefix: str = "agent-server") -> Broker:
    if url.startswith("memory://"):
        from agent_server.brokers.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from agent_server.brokers.redis import RedisBroker

        return RedisBroker(url, prefix=prefix)
    raise ValueError(f"unknown broker URL {url!r}: expected 'memory://' or 'redis://...'")
