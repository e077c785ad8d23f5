"""Runs executing on another worker, seen through the shared broker, and this worker's
mirrors of their logs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson

from agent_server.brokers import Broker, BrokerUnavailable, worker_lost
from agent_server.frames import (
    TERMINAL_TYPES,
    Error,
    RunStart,
    dumps,
    encode,
    now_ms,
)
from agent_server.graphs import GraphEntry
from agent_server.runs.log import RemoteEntry, follow_log
from agent_server.runs.run import FINISHED, RunStatus
from agent_server.streams import StreamError
from agent_server.supervise import backoff

logger = logging.getLogger("agent_server.runs")


# A run's status by the code of the error frame that ended it (Run._end's callers).
ENDED_BY = {
    "cancelled": RunStatus.CANCELLED,
    "shutdown": RunStatus.CANCELLED,
    "timeout": RunStatus.TIMEOUT,
}


class ShuttingDown(StreamError):
    """This worker stops while another worker's run it streams goes on elsewhere."""

    code = "shutting_down"


class RemoteRun:
    """A run executing on another worker, seen through the shared broker.

    It offers what routes and transports use of a :class:`Run`: its identity and owner,
    ``describe()``, ``follow()`` (reading the broker's copy of the log), ``cancel()`` (a
    request the executing worker acts on) and ``wait()``.
    """

    on_disconnect: Literal["cancel", "continue"] = "continue"

    def __init__(
        self,
        broker: Broker,
        run_id: str,
        record: dict[str, str],
        graph: GraphEntry,
        mirrors: Mirrors,
    ) -> None:
        self.broker = broker
        self.mirrors = mirrors
        self.tasks = mirrors.tasks  # the manager's: a request outlives this object
        self.run_id = run_id
        self.record = record
        self.graph = graph
        self.thread_id = record["thread_id"]
        self.owner = record.get("owner") or None
        self.subscribers = 0

    @property
    def status(self) -> RunStatus:
        return RunStatus(self.record["status"])

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def last_seq(self) -> int:
        return int(self.record.get("last_seq", "0"))

    @property
    def lost(self) -> bool:
        """Ended ``worker_lost``: clients of the dead worker may hold frames past the
        shared log's end (it served them from its own log first); see :meth:`follow`."""
        return self.record.get("lost") == "1"

    async def refresh(self, known: int = 0) -> None:
        """Read the record again; end the run if its worker is lost. ``known``: the last
        seq this worker holds of the log (see :meth:`_end_lost`)."""
        record = await self.broker.get_record(self.run_id)
        if record is not None:
            self.record = record
        worker = self.record.get("worker")
        if not self.finished and worker and await worker_lost(self.broker, worker):
            await self._end_lost(worker, known)

    async def _end_lost(self, worker: str, known: int = 0) -> None:
        """The executing worker died: end the run for everyone, once. The final frame
        follows the last one in the shared log, whatever the record says: the record can
        be ahead of the log (a worker killed between the two writes), and a frame after
        the record's seq would leave a gap every follower sees. ``known``: how much of
        the log this worker's mirror holds."""
        seq = await self.broker.last_seq(self.run_id)
        last = await self.broker.read(self.run_id, seq - 1, None) if seq else []
        if last and last[-1][1] in TERMINAL_TYPES:
            # It ended after all, and died before its record said so: the record is
            # written from the log, or it would say "running" until it expires.
            await self.broker.put_record(self.run_id, await self._ended(last[-1]))
            await self.refresh_record()
            return
        # A broker that restarted empty holds less than this worker has read: follow that.
        seq = max(seq, known)
        frame = Error(
            run_id=self.run_id,
            seq=seq + 1,
            ts=now_ms(),
            code="worker_lost",
            message=f"the worker executing this run stopped ({worker})",
        )
        if await self.broker.append_next(self.run_id, (frame.seq, frame.type, encode(frame))):
            logger.warning("run %s lost its worker %s", self.run_id, worker)
            await self.broker.put_record(
                self.run_id,
                {"status": RunStatus.ERROR.value, "last_seq": str(frame.seq),
                 "ended_at": repr(time.time()), "lost": "1"},
            )  # fmt: skip
        await self.refresh_record()

    async def _ended(self, final: tuple[int, str, bytes]) -> dict[str, str]:
        """The record of a run whose shared log ends with ``final``, as its worker would
        have written it (agent_server/runs/run.py: ``Run._end``)."""
        seq, kind, data = final
        if kind == "done":
            log = await self.broker.read(self.run_id, 0, None)
            interrupted = any(entry[1] == "interrupt" for entry in log)
            status = RunStatus.INTERRUPTED if interrupted else RunStatus.SUCCESS
        else:
            code = orjson.loads(RemoteEntry.unwire(seq, kind, data).data).get("code")
            status = ENDED_BY.get(code, RunStatus.ERROR)
        return {"status": status.value, "last_seq": str(seq), "ended_at": repr(time.time())}

    async def refresh_record(self) -> None:
        record = await self.broker.get_record(self.run_id)
        if record is not None:
            self.record = record

    async def follow(
        self,
        after: int = 0,
        *,
        heartbeat: float | None = None,
        max_lag: int | None = None,
        max_batch: int = 512,
        parts: bool = False,
    ) -> AsyncIterator[list[RemoteEntry]]:
        """Like :meth:`Run.follow`, over this worker's one mirror of the run's log.

        A lost run's final frame (``worker_lost``) follows the last frame in the shared
        log. A client of the worker that died may already hold frames beyond it (that
        worker served its own clients from its own log, ahead of the copy in the
        broker): resuming from there, it gets that final frame numbered after its own
        position, so its seqs stay without gap or repeat and its stream ends."""
        mirror = self.mirrors.acquire(self)
        try:
            async for batch in follow_log(
                mirror.entries,
                lambda: mirror.done,
                mirror.changed,
                after,
                heartbeat=heartbeat,
                max_lag=max_lag,
                max_batch=max_batch,
                skip_parts=not parts,
            ):
                if self.mirrors.closed is not None:
                    # Shutting down: what the mirror holds beyond is not sent from here
                    # (the client resumes elsewhere), whatever its pump still appends.
                    raise self.mirrors.closed
                yield batch
                if batch and batch[-1].type in TERMINAL_TYPES:
                    return
            if mirror.error is not None:
                raise mirror.error
            final = mirror.entries[-1] if mirror.entries else None
            if final is not None and final.type == "error" and final.seq <= after:
                await self.refresh_record()
                if self.lost:
                    frame = orjson.loads(final.data)
                    frame["seq"] = after + 1
                    yield [RemoteEntry(after + 1, "error", dumps(frame))]
        finally:
            self.mirrors.release(self.run_id)

    def cancel(self, code: str = "cancelled", message: str = "run cancelled") -> bool:
        if self.finished:
            return False
        task = asyncio.get_running_loop().create_task(self._request_cancel())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _request_cancel(self) -> None:
        outage = Outage(self.mirrors.broker_wait)
        while True:
            try:
                await self._send_cancel()
                return
            except BrokerUnavailable as exc:
                try:
                    await outage.wait(exc)
                except BrokerUnavailable:
                    logger.warning("could not request the cancel of run %s: %s", self.run_id, exc)
                    return

    async def _send_cancel(self) -> None:
        # A run still in the queue is taken back out of it (atomically: then no worker
        # will ever start it) and ended here. Otherwise a worker has it: the flag covers
        # the moment between its taking the job and starting the run, the message the
        # rest (and a listener that missed the message finds the flag, see
        # ``RunManager._missed_cancels``).
        job = self.record.get("job")
        if job and await self.broker.remove_job(job.encode()):
            await self._end_queued()
            return
        await self.broker.put_record(self.run_id, {"cancel_requested": "1"})
        await self.broker.request_cancel(self.run_id)

    async def _end_queued(self) -> None:
        """End a run taken back out of the queue: its whole log, written here."""
        frames = [
            RunStart(
                run_id=self.run_id, seq=1, ts=now_ms(), graph=self.graph.name,
                thread_id=self.thread_id,
            ),
            Error(
                run_id=self.run_id, seq=2, ts=now_ms(), code="cancelled",
                message="cancelled by request before it started",
            ),
        ]  # fmt: skip
        await self.broker.publish(self.run_id, [(f.seq, f.type, encode(f)) for f in frames])
        await self.broker.put_record(
            self.run_id,
            {"status": RunStatus.CANCELLED.value, "last_seq": "2", "ended_at": repr(time.time())},
        )
        await self.refresh_record()

    async def wait(self) -> None:
        """Until it has finished; an unreachable broker is waited for ``broker_wait``
        seconds at most, then :class:`BrokerUnavailable` is raised."""
        outage = Outage(self.mirrors.broker_wait)
        while not self.finished:
            await asyncio.sleep(0.05)
            try:
                await self.refresh()
            except BrokerUnavailable as exc:
                await outage.wait(exc)
            else:
                outage.over()

    def describe(self) -> dict[str, Any]:
        def number(key: str) -> float | None:
            value = self.record.get(key, "")
            return float(value) if value not in ("", "''") else None

        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "graph": self.graph.name,
            "status": self.status.value,
            "created_at": number("created_at"),
            "started_at": number("started_at"),
            "ended_at": number("ended_at"),
            "first_token_at": number("first_token_at"),
            "last_seq": self.last_seq,
        }


class Mirror:
    """This worker's copy of a remote run's log, read from the broker by one task and
    shared by every local subscriber: one Redis connection per run, not per subscriber."""

    def __init__(self) -> None:
        self.entries: list[RemoteEntry] = []
        self.changed = asyncio.Event()
        self.done = False
        self.error: BaseException | None = None
        self.followers = 0
        self.task: asyncio.Task[None] | None = None

    def _wake(self) -> None:
        self.changed.set()
        self.changed.clear()

    async def pump(self, run: RemoteRun, wait: float) -> None:
        outage = Outage(wait)
        try:
            while True:
                try:
                    # Short reads, so that a lost worker is noticed within seconds.
                    found = await run.broker.read(run.run_id, len(self.entries), 2.0)
                    if self.error is not None:  # closed meanwhile (Mirrors.close)
                        return
                    if found:
                        self.entries.extend(RemoteEntry.unwire(*entry) for entry in found)
                        self._wake()
                        if self.entries[-1].type in TERMINAL_TYPES:
                            return
                    else:
                        await run.refresh(len(self.entries))  # a dead worker: worker_lost
                        if run.finished and run.last_seq <= len(self.entries):
                            return
                except BrokerUnavailable as exc:
                    # Followers keep waiting (with their position) until the broker is
                    # back, then go on from it; past the bound they are told.
                    await outage.wait(exc)
                else:
                    outage.over()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("stopped following run %s: %s", run.run_id, exc)
            self.error = exc
        finally:
            self.done = True
            self._wake()


class Outage:
    """A broker outage as a caller rides it out: :meth:`wait` backs off after each
    failure and raises the failure once the outage has lasted ``limit`` seconds."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.started: float | None = None
        self.failures = 0

    async def wait(self, error: BrokerUnavailable) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if now - self.started >= self.limit:
            raise error
        self.failures += 1
        await asyncio.sleep(backoff(self.failures, 0.1, 1.0))

    def over(self) -> None:
        self.started = None
        self.failures = 0


class Mirrors:
    """The mirrors of one worker, by run id; a mirror goes when its last follower does."""

    def __init__(self, tasks: set[asyncio.Task[None]], broker_wait: float = 10.0) -> None:
        self.tasks = tasks
        self.broker_wait = broker_wait
        self.by_run: dict[str, Mirror] = {}
        self.closed: BaseException | None = None

    def close(self, error: BaseException) -> None:
        """End every mirror with ``error`` (their followers raise it), and every mirror
        asked for from now on (at shutdown). The followers are told here, not only by the
        pump as it ends: once, under load, a remote run's followers on a worker shutting
        down streamed on to the run's end and held the worker's exit (the SIGTERM case
        in tests/faults/test_worker_faults.py). Once closed, a follower raises at its
        next batch, not after reading what the mirror still holds, and a pump whose
        cancellation has not taken effect appends nothing more."""
        self.closed = error
        for mirror in self.by_run.values():
            mirror.error = error
            mirror.done = True
            mirror._wake()
            if mirror.task is not None:
                mirror.task.cancel()

    def acquire(self, run: RemoteRun) -> Mirror:
        if self.closed is not None:
            ended = Mirror()
            ended.done, ended.error = True, self.closed
            return ended
        mirror = self.by_run.get(run.run_id)
        if mirror is None or (mirror.done and mirror.error is not None):
            mirror = self.by_run[run.run_id] = Mirror()
            mirror.task = asyncio.create_task(
                mirror.pump(run, self.broker_wait), name=f"mirror-{run.run_id}"
            )
            self.tasks.add(mirror.task)
            mirror.task.add_done_callback(self.tasks.discard)
        mirror.followers += 1
        return mirror

    def release(self, run_id: str) -> None:
        mirror = self.by_run.get(run_id)
        if mirror is None or self.closed is not None:
            return
        mirror.followers -= 1
        if mirror.followers <= 0:
            del self.by_run[run_id]
            if mirror.task is not None and not mirror.task.done():
                mirror.task.cancel()
