"""The run manager: limits, per-thread order, ownership, retention, sharing runs with
other workers, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command

from agent_server.brokers import LOST_AFTER, Broker, BrokerUnavailable
from agent_server.brokers.memory import MemoryBroker
from agent_server.frames import (
    Error,
    dumps,
)
from agent_server.graphs import GraphEntry, GraphRegistry
from agent_server.protocols.langgraph.parts import PartOptions
from agent_server.records import NoRecords, RunRecords
from agent_server.runs.remote import Mirrors, RemoteRun, ShuttingDown
from agent_server.runs.run import FINISHED, Run, RunStatus
from agent_server.sources import EventSource
from agent_server.supervise import backoff, cancel_all

logger = logging.getLogger("agent_server.runs")

MultitaskStrategy = Literal["reject", "enqueue", "interrupt"]
# The owner of a thread that exists but whose creator is not recorded.
UNKNOWN_OWNER = "\x00unknown"


class RunRejected(Exception):
    """A run that cannot be accepted now; routes answer with ``status`` and ``code``."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Forbidden(Exception):
    """The caller does not own the thread (or run) it names."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class RunLimits:
    """What the manager enforces; built from the settings by the app."""

    max_concurrent: int = 32
    max_queued: int = 1000
    timeout: float = 600.0
    retention_seconds: float = 600.0
    retention_runs: int = 1000
    retention_bytes: int = 256 * 2**20  # the finished logs kept, compressed
    # How long a follower of another worker's run waits for an unreachable broker
    # before it is told ``broker_unavailable`` (and resumes later from its last seq).
    broker_wait: float = 10.0


class RunManager:
    """Owns every run's task: limits, per-thread order, retention, shutdown."""

    TOMBSTONES = 100_000
    OWNER_CACHE = 100_000

    def __init__(
        self,
        limits: RunLimits | None = None,
        broker: Broker | None = None,
        records: RunRecords | None = None,
        *,
        event_source: EventSource = "callbacks",
    ) -> None:
        self.limits = limits or RunLimits()
        self.event_source = event_source  # for every run (agent_server/sources.py)
        self.broker: Broker = broker or MemoryBroker()
        self.records: RunRecords = records or NoRecords()
        self.runs: dict[str, Run] = {}
        self.accepting = True
        self.on_finish: list[Callable[[Run], None]] = []  # e.g. metrics
        self.on_submit: list[Callable[[Run], None]] = []  # e.g. room fan-out
        self._thread_owners: OrderedDict[str, str | None] = OrderedDict()
        self.graphs: GraphRegistry | None = None  # to rebuild runs of other workers
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # (run id, thread id) of runs that started on other workers, e.g. room fan-out
        self.on_remote_submit: list[Callable[[str, str], None]] = []
        self._slots = asyncio.Semaphore(self.limits.max_concurrent)
        self._unfinished = 0  # accepted and not finished: running or waiting
        self._running = 0  # holding a slot
        self._threads: dict[str, list[str]] = {}
        self._finished: deque[tuple[float, str]] = deque()
        self._retained_bytes = 0  # of the finished runs' logs kept
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.mirrors = Mirrors(self._tasks, self.limits.broker_wait)
        self._early_cancels: OrderedDict[str, None] = OrderedDict()
        # The URL told of a run's end, by run id (agent_server/webhooks.py); a queued
        # run's travels in its job to the worker that takes it.
        self.webhooks: dict[str, str] = {}

    # -- queries ---------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._unfinished - self._running

    @property
    def active(self) -> int:
        return self._running

    @property
    def retained_bytes(self) -> int:
        """Bytes of the finished runs' logs kept for late joiners (for /metrics)."""
        return self._retained_bytes

    def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    async def find(self, run_id: str) -> Run | RemoteRun | None:
        """A run of this worker, or, with a shared broker, of any worker."""
        run = self.runs.get(run_id)
        if run is not None or not self.broker.shared or run_id in self._tombstones:
            return run
        record = await self.broker.get_record(run_id)
        if record is None or _log_dropped(record) or self.graphs is None:
            return None
        if record.get("graph") not in self.graphs:
            return None
        graph = self.graphs.get(record["graph"])
        return RemoteRun(self.broker, run_id, record, graph, self.mirrors)

    async def is_gone(self, run_id: str) -> bool:
        """Was this run known, its log since dropped (410 rather than 404)?"""
        if run_id in self._tombstones:
            return True
        if not self.broker.shared:
            return False
        record = await self.broker.get_record(run_id)
        return record is not None and _log_dropped(record)

    async def accepted(self, run: Run) -> None:
        """Until every worker can find the run (its record is in the shared broker)."""
        if self.broker.shared:
            await run.announced.wait()

    async def settled(self, run: Run | RemoteRun) -> None:
        """Until a finished run's final status is what every worker reads."""
        await run.wait()
        if self.broker.shared and isinstance(run, Run):
            # Bounded: with the broker down, the local status is the best answer there is.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.broker_wait):
                    await run.published.wait()

    def thread_runs(self, thread_id: str) -> list[Run]:
        return [self.runs[r] for r in self._threads.get(thread_id, ()) if r in self.runs]

    def latest_on_thread(self, thread_id: str) -> Run | None:
        runs = self.thread_runs(thread_id)
        return runs[-1] if runs else None

    def check_thread(self, thread_id: str, user: str | None) -> None:
        """Threads belong to the user whose run created them; raise :class:`Forbidden`.

        Call :meth:`load_thread_owner` first for a thread this worker may not know.
        """
        owner = self._thread_owners.get(thread_id)
        if owner is None or owner == user:
            return
        if owner == UNKNOWN_OWNER and user is None:
            return  # authentication is off
        raise Forbidden(f"thread {thread_id!r} belongs to another user")

    async def load_thread_owner(self, thread_id: str, graph: GraphEntry | None) -> None:
        """Learn a thread's owner from its checkpoints (after a restart, on another
        worker). A thread that exists without an owner record is refused to every
        authenticated user (:data:`UNKNOWN_OWNER`)."""
        if thread_id in self._thread_owners or graph is None:
            return
        checkpointer = graph.graph.checkpointer
        if not isinstance(checkpointer, BaseCheckpointSaver):
            return
        found = await checkpointer.aget_tuple({"configurable": {"thread_id": thread_id}})
        if found is not None:
            owner = (found.metadata or {}).get("owner")
            self._remember_owner(thread_id, str(owner) if owner else UNKNOWN_OWNER)

    def _remember_owner(self, thread_id: str, owner: str | None) -> None:
        owners = self._thread_owners
        if thread_id in owners:
            owners.move_to_end(thread_id)
            return
        owners[thread_id] = owner
        if len(owners) > self.OWNER_CACHE:
            # The oldest entry: reloaded from the checkpoints when it is asked for again.
            owners.popitem(last=False)

    def check_run(self, run: Run | RemoteRun, user: str | None) -> None:
        if run.owner is not None and run.owner != user:
            raise Forbidden(f"run {run.run_id} belongs to another user")

    def owned_thread(self, thread_id: str, user: str | None) -> bool:
        try:
            self.check_thread(thread_id, user)
        except Forbidden:
            return False
        return True

    # -- starting --------------------------------------------------------------------

    def submit(
        self,
        run: Run,
        strategy: MultitaskStrategy = "reject",
        *,
        queue_position: int | None = None,
        delay: float = 0.0,
        webhook: str | None = None,
    ) -> Run:
        """Accept a run (or raise :class:`RunRejected`) and schedule it; it starts no
        sooner than ``delay`` seconds from now (``pending`` meanwhile, holding no slot)."""
        if not self.accepting:
            raise RunRejected(503, "shutting_down", "the server is shutting down", retry_after=5)
        self.check_thread(run.thread_id, run.owner)
        before = [r for r in self.thread_runs(run.thread_id) if not r.finished]
        if before and strategy == "reject":
            raise RunRejected(
                409,
                "thread_busy",
                f"thread {run.thread_id!r} has an active run ({before[-1].run_id}); "
                "use multitask_strategy 'enqueue' or 'interrupt'",
            )
        # Runs beyond the slots wait; so does a run behind a busy thread's active run.
        ahead = max(0, self._unfinished - self.limits.max_concurrent)
        must_wait = bool(before) or self._unfinished >= self.limits.max_concurrent
        if must_wait and ahead >= self.limits.max_queued:
            raise RunRejected(429, "queue_full", f"{ahead} runs are already waiting", retry_after=1)
        if strategy == "interrupt":
            for active in before:
                active.cancel(
                    "cancelled", f"interrupted by run {run.run_id} (multitask_strategy=interrupt)"
                )
        if run.timeout is None:
            run.timeout = self.limits.timeout
        run.source = self.event_source
        run.multitask_strategy = strategy
        self.runs[run.run_id] = run
        self._threads.setdefault(run.thread_id, []).append(run.run_id)
        self._remember_owner(run.thread_id, run.owner)
        if queue_position is None:
            queue_position = ahead + 1 if must_wait else 0
        if self.broker.shared:
            run.shared = 0  # followers get what the publisher has copied (Run.follow)
        run.start_frame(queue_position=queue_position)
        self._unfinished += 1
        if webhook:
            self.webhooks[run.run_id] = webhook
        run.task = asyncio.create_task(self._drive(run, before, delay), name=f"run-{run.run_id}")
        self._tasks.add(run.task)
        run.task.add_done_callback(self._tasks.discard)
        # In a done callback, not the coroutine's ``finally``: a task cancelled before it
        # first runs never enters its body, and its run must still end.
        run.task.add_done_callback(lambda _: self._finished_run(run))
        if self.broker.shared:
            publisher = asyncio.create_task(self._publish(run), name=f"publish-{run.run_id}")
            self._tasks.add(publisher)
            publisher.add_done_callback(self._tasks.discard)
        for callback in self.on_submit:
            callback(run)
        self._save(run)
        return run

    def _save(self, run: Run) -> None:
        """Write the run's record to the database (when it keeps them), off the hot path."""
        if not self.records.durable:
            return
        record = {**run.describe(), "owner": run.owner, "worker": self.worker}
        task = asyncio.create_task(self._write(record), name=f"record-{run.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, record: dict[str, Any]) -> None:
        try:
            await self.records.save(record)
        except Exception:
            logger.exception("could not save the record of run %s", record["run_id"])

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` in the background, owned (and cancelled at shutdown) by the manager."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def forget(self, run: Run | RemoteRun) -> None:
        """Delete a finished run: from memory, the database and the shared broker. Unlike
        a run dropped by retention it leaves no tombstone: it is unknown (404), not gone."""
        if self.runs.pop(run.run_id, None) is not None:
            ids = self._threads.get(run.thread_id)
            if ids is not None and run.run_id in ids:
                ids.remove(run.run_id)
                if not ids:
                    del self._threads[run.thread_id]
        await self.records.delete(run.run_id)
        if self.broker.shared:
            await self.broker.expire(run.run_id, 0, 0)

    async def all_thread_runs(self, thread_id: str) -> list[dict[str, Any]]:
        """A thread's runs from every worker and from before a restart (newest status
        from memory where this worker has the run)."""
        found = {r["run_id"]: r for r in await self.records.thread_runs(thread_id)}
        for record in found.values():
            record.pop("owner", None)
        for run in self.thread_runs(thread_id):
            found[run.run_id] = run.describe()
        return sorted(found.values(), key=lambda r: r.get("created_at") or 0)

    async def _drive(self, run: Run, before: list[Run], delay: float = 0.0) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        for earlier in before:  # one run at a time per thread, in order
            await earlier.wait()
        async with self._slots:
            self._running += 1
            try:
                await run.execute()
            finally:
                self._running -= 1

    def _finished_run(self, run: Run) -> None:
        run.end_cancelled()  # a no-op unless it was cancelled before or while waiting
        run.task = None  # no run -> task -> run cycle for the collector to find later
        self._save(run)
        self._unfinished -= 1
        for callback in self.on_finish:
            callback(run)
        self._finished.append((time.monotonic(), run.run_id))
        self.spawn(self._compact(run), f"compact-{run.run_id}")
        self.prune()

    async def _compact(self, run: Run) -> None:
        """Bytes only from now on (agent_server/runs/log.py), compressed on a thread: a
        LangGraph API run's log is megabytes, and the loop serves other streams meanwhile."""
        chunks = await asyncio.to_thread(run.log.pack)
        run.log.install(chunks)
        if run.run_id in self.runs:  # not dropped meanwhile
            self._retained_bytes += run.log.nbytes
            self.prune()

    # -- sharing with other workers ------------------------------------------------------

    async def _publish(self, run: Run) -> None:
        """Copy the run's log and status to the shared broker, batch by batch.

        An unreachable broker does not end it: it retries (backing off) and resumes after
        the last seq the broker holds, so a restart that kept the log loses nothing and
        one that lost it gets the whole log again. So does any other error: a run that
        stopped being published would leave its watchers on other workers waiting with
        no word. It gives up only on a finished run that has been dropped here
        meanwhile, or when the server shuts down."""
        failures = 0
        try:
            while True:
                try:
                    await self._publish_log(run)
                    return
                except Exception as exc:
                    run.announced.set()  # the run goes on here; others see it once back
                    run.share(None)  # and its clients here get its frames meanwhile
                    if run.finished and (run.run_id not in self.runs or not self.accepting):
                        logger.warning("gave up publishing run %s: %s", run.run_id, exc)
                        return
                    failures += 1
                    if failures == 1 and isinstance(exc, BrokerUnavailable):
                        logger.warning("publishing run %s: %s; retrying", run.run_id, exc)
                    elif failures == 1:
                        logger.exception("publishing run %s failed; retrying", run.run_id)
                    await asyncio.sleep(backoff(failures, 0.1, 2.0))
        finally:
            run.announced.set()  # never leave a route waiting
            run.share(None)
            run.published.set()

    async def _publish_log(self, run: Run) -> None:
        broker = self.broker
        published = await broker.last_seq(run.run_id)
        if run.shared is None:  # back after an outage: clients here may be further on
            run.share(published)
        await broker.put_record(
            run.run_id, {**published_record(run, published), "worker": self.worker}
        )
        run.announced.set()
        await broker.claim_thread(run.thread_id, run.run_id, force=True)
        # Again after an outage: rooms on other workers may have missed it.
        await broker.announce(run.run_id, run.thread_id, self.worker)
        async for batch in run.follow(published, parts=True, unshared=True):
            await broker.publish(run.run_id, [(e.seq, e.type, e.wire) for e in batch])
            run.share(batch[-1].seq)
            await broker.put_record(run.run_id, published_record(run, batch[-1].seq))
        await run.wait()
        await broker.put_record(run.run_id, run.record())
        await broker.release_thread(run.thread_id, run.run_id)
        limits = self.limits
        await broker.expire(run.run_id, limits.retention_seconds, limits.retention_seconds + 86_400)

    async def enqueue(
        self,
        run: Run,
        strategy: MultitaskStrategy,
        *,
        delay: float = 0.0,
        webhook: str | None = None,
    ) -> RemoteRun:
        """A background run for any worker: its record now (so every worker can find
        it), its job on the shared queue (after ``delay`` seconds: the broker's delayed
        jobs, which outlive this worker); the first worker with a free slot runs it."""
        if not self.accepting:
            raise RunRejected(503, "shutting_down", "the server is shutting down", retry_after=5)
        self.check_thread(run.thread_id, run.owner)
        holder = await self.broker.claim_thread(
            run.thread_id, run.run_id, force=strategy != "reject"
        )
        if holder != run.run_id:
            record = await self.broker.get_record(holder)
            if record is not None and record.get("status") not in FINISHED:
                raise RunRejected(
                    409,
                    "thread_busy",
                    f"thread {run.thread_id!r} has an active run ({holder}); "
                    "use multitask_strategy 'enqueue' or 'interrupt'",
                )
            await self.broker.claim_thread(run.thread_id, run.run_id, force=True)  # stale
        waiting = await self.broker.queue_length()
        if waiting >= self.limits.max_queued:
            raise RunRejected(
                429, "queue_full", f"{waiting} runs are already waiting", retry_after=1
            )
        record = {**run.record(), "worker": ""}
        await self.broker.put_record(run.run_id, record)
        job = {
            "run_id": run.run_id,
            "graph": run.graph.name,
            "input": None if isinstance(run.input, Command) else run.input,
            "command": _command_json(run.input) if isinstance(run.input, Command) else None,
            "parts": run.parts.to_json() if run.parts else None,
            "stream_kwargs": run.stream_kwargs,
            "thread_id": run.thread_id,
            "config": run.config,
            "timeout": run.timeout,
            "owner": run.owner,
            "strategy": strategy,
            "created_at": run.created_at,
            "queue_position": waiting + 1,
            "webhook": webhook,
        }
        encoded = dumps(job)
        await self.broker.put_record(run.run_id, {"job": encoded.decode()})
        if delay > 0:
            await self.broker.schedule_job(encoded, delay)
        else:
            await self.broker.push_job(encoded)
        return RemoteRun(
            self.broker, run.run_id, {**record, "job": encoded.decode()}, run.graph, self.mirrors
        )

    async def pull_jobs(self) -> None:
        """Take queued background runs while this worker has a free slot (a supervised
        lifespan job, like the loops below: a broker error ends it, and it restarts)."""
        while True:
            while self._unfinished >= self.limits.max_concurrent or not self.accepting:
                await asyncio.sleep(0.05)
            raw = await self.broker.pop_job(1.0)
            if raw is None:
                continue
            try:
                job = orjson.loads(raw)
                record = await self.broker.get_record(job["run_id"]) or {}
                if record.get("status") in FINISHED:
                    continue  # cancelled while it waited: its log is complete already
                self._start_job(job, cancelled=record.get("cancel_requested") == "1")
            except Exception:
                logger.exception("could not start a queued run")

    def _start_job(self, job: dict[str, Any], *, cancelled: bool = False) -> None:
        assert self.graphs is not None
        command = job.get("command")
        parts = job.get("parts")
        run = Run(
            graph=self.graphs.get(job["graph"]),
            input=Command(**command) if command is not None else job["input"],
            parts=PartOptions.from_json(parts) if parts is not None else None,
            stream_kwargs=job.get("stream_kwargs") or {},
            thread_id=job["thread_id"],
            config=job["config"],
            run_id=job["run_id"],
            timeout=job["timeout"],
            owner=job["owner"],
            created_at=job["created_at"],
        )
        try:
            if cancelled or self._early_cancels.pop(run.run_id, 1) is None:
                raise RunRejected(499, "cancelled", "cancelled by request before it started")
            self.submit(
                run,
                job["strategy"],
                queue_position=job.get("queue_position"),
                webhook=job.get("webhook"),
            )
        except (RunRejected, Forbidden) as exc:
            # Refused here (busy thread, another owner, cancelled): it ends at once, visibly.
            code = exc.code if isinstance(exc, RunRejected) else "forbidden"
            status = RunStatus.CANCELLED if code == "cancelled" else RunStatus.ERROR
            run.start_frame(0)
            run._end(status, run.make(Error, code=code, message=exc.message))
            task = asyncio.create_task(self._publish(run), name=f"publish-{run.run_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def keep_alive(self, interval: float = 2.0) -> None:
        """This worker's heartbeat in the broker; its runs are declared lost
        ``LOST_AFTER`` seconds after the last beat (see :func:`worker_lost`)."""
        while True:
            await self.broker.heartbeat(self.worker, LOST_AFTER)
            await asyncio.sleep(interval)

    async def listen_for_announcements(self) -> None:
        """Runs started on other workers, for the callbacks."""
        async for run_id, thread_id, worker in self.broker.announcements():
            if worker != self.worker:
                for callback in self.on_remote_submit:
                    callback(run_id, thread_id)

    async def listen_for_cancels(self) -> None:
        """Cancel requests from any worker, for the runs executing here. Requests sent
        while it was not subscribed (a broker outage) are found in the runs' records."""
        async for run_id in self.broker.cancel_requests(self._missed_cancels):
            run = self.runs.get(run_id)
            if run is not None:
                run.cancel("cancelled", "cancelled by request")
            else:  # perhaps a job this worker is taking right now: see _start_job
                self._early_cancels[run_id] = None
                if len(self._early_cancels) > 1000:
                    self._early_cancels.popitem(last=False)

    async def _missed_cancels(self) -> None:
        for run in [run for run in self.runs.values() if not run.finished]:
            record = await self.broker.get_record(run.run_id)
            if record is not None and record.get("cancel_requested") == "1":
                run.cancel("cancelled", "cancelled by request")

    # -- retention -------------------------------------------------------------------

    def prune(self, now: float | None = None) -> None:
        """Drop finished runs past the retention time, count or bytes (the oldest first);
        leave tombstones."""
        now = time.monotonic() if now is None else now
        limits = self.limits
        while self._finished and (
            len(self._finished) > limits.retention_runs
            or now - self._finished[0][0] > limits.retention_seconds
            or self._retained_bytes > limits.retention_bytes
        ):
            _, run_id = self._finished.popleft()
            run = self.runs.pop(run_id, None)
            if run is not None:
                if run.log.compacted:  # counted once compact (see _compact)
                    self._retained_bytes -= run.log.nbytes
                ids = self._threads.get(run.thread_id)
                if ids is not None:
                    ids.remove(run_id)
                    if not ids:
                        del self._threads[run.thread_id]
            self._tombstones[run_id] = None
            if len(self._tombstones) > self.TOMBSTONES:
                self._tombstones.popitem(last=False)

    async def janitor(self, interval: float = 1.0) -> None:
        """Prune by time even when no run finishes (a lifespan job)."""
        while True:
            await asyncio.sleep(interval)
            self.prune()

    # -- stopping --------------------------------------------------------------------

    # At shutdown, how long the runs' last frames may take to reach the shared broker.
    PUBLISH_FLUSH = 2.0

    def _run_tasks(self) -> set[asyncio.Task[None]]:
        return {run.task for run in self.runs.values() if run.task and not run.task.done()}

    async def drain(self, grace: float) -> None:
        """Stop accepting runs, let running ones finish for ``grace`` s, cancel the rest.
        (Only this worker's runs are waited for, not streams of other workers' runs.)"""
        self.accepting = False
        pending = self._run_tasks()
        if pending and grace > 0:
            logger.info("waiting up to %g s for %d runs to finish", grace, len(pending))
            await asyncio.wait(pending, timeout=grace)
        left = sum(not run.finished for run in self.runs.values())
        if left:
            logger.info("cancelling %d runs at shutdown", left)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Cancel what runs (each log ends with ``error`` code ``shutdown``), give the
        publishers ``PUBLISH_FLUSH`` s to copy those last frames to the shared broker (or
        other workers' followers would see ``worker_lost`` instead), end this worker's
        streams of other workers' runs with :class:`ShuttingDown` (their clients resume
        elsewhere), then stop every task left."""
        self.accepting = False
        for run in list(self.runs.values()):
            run.cancel("shutdown", "the server is shutting down")
        if running := self._run_tasks():
            await asyncio.wait(running, timeout=self.PUBLISH_FLUSH)
        if self.broker.shared:
            unpublished = [run.published.wait() for run in self.runs.values()]
            if unpublished:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.PUBLISH_FLUSH):
                        await asyncio.gather(*unpublished)
        self.mirrors.close(ShuttingDown("this worker is shutting down; resume elsewhere"))
        await cancel_all(self._tasks)


def published_record(run: Run, published: int) -> dict[str, str]:
    """The run's record as of its log published up to seq ``published``: the local log
    may be further on, and a reader must never see a finished status or a ``last_seq``
    whose frames are not in the shared log yet (the terminal frame is always last)."""
    record = run.record()
    record["last_seq"] = str(published)
    if run.finished and published < run.last_seq:
        record["status"] = RunStatus.RUNNING.value
    return record


def _command_json(command: Command[Any]) -> dict[str, Any]:
    """A Command as a queued job keeps it (its fields as given)."""
    fields = {"resume": command.resume, "update": command.update, "goto": command.goto}
    return {key: value for key, value in fields.items() if value not in (None, ())}


def _log_dropped(record: dict[str, str]) -> bool:
    """A finished run whose log expired (a queued run has no log yet: not dropped)."""
    return record.get("log_exists") == "0" and record.get("status") in FINISHED
