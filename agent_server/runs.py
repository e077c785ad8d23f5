"""Runs: graph executions owned by the server, each with an ordered log of its frames.

A run executes as an asyncio task owned by the :class:`RunManager` (which lives in the
app's lifespan), never by the connection that started it. Routes *follow* a run: they
read its log from a position and then wait for more, so many subscribers can watch one
run, a subscriber can leave and come back (resume from a ``seq``), and a slow subscriber
never slows the graph.

Decisions (read before changing):

- Frames are encoded once, when appended to the log; every subscriber sends those bytes.
- The log is the only buffer. A subscriber is a position in it, so a slow subscriber
  costs no memory of its own; it is dropped when it falls more than ``max_lag`` frames
  behind (it can resume from the log), and the run never waits for anyone.
- :meth:`Run.follow` hands out *batches* (at most ``max_batch`` frames): everything
  appended since the subscriber last looked, so a burst leaves in one write.
- Wake-ups use one ``asyncio.Event`` per run, set and cleared on every append: waking N
  subscribers costs one ``set()``, and nothing is allocated per frame.
- ``run_start`` is appended when the run is accepted, before it waits for a slot, and
  carries its ``queue_position``; every run's log therefore starts the same way and ends
  with exactly one terminal frame (``done`` or ``error``), whatever happened.
- Finished runs are kept for ``retention_seconds`` and at most ``retention_runs`` of
  them; a dropped run leaves a tombstone so that asking for it is "gone" (410), never a
  partial replay.
- Threads belong to the user whose run created them (``owner``; ``None`` without
  auth): another user's run on it, or any look at it, raises :class:`Forbidden`.
- Per thread, runs are serialised: a run on a busy thread is rejected, waits for the
  active one (``enqueue``), or cancels it first (``interrupt``), as LangGraph's server
  does with the same strategy names.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeVar

import orjson
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphRecursionError
from langgraph.types import Command

from agent_server.brokers import LOST_AFTER, Broker, BrokerUnavailable, worker_lost
from agent_server.brokers.memory import MemoryBroker
from agent_server.frames import (
    TERMINAL_TYPES,
    BaseFrame,
    Done,
    Error,
    Interrupt,
    RunStart,
    dumps,
    encode,
    now_ms,
)
from agent_server.graphs import AnyGraph, GraphEntry, GraphRegistry
from agent_server.langgraph_api.parts import PartOptions, PartTranslator
from agent_server.records import NoRecords, RunRecords
from agent_server.storage import StorageUnavailable
from agent_server.streams import StreamError
from agent_server.supervise import backoff
from agent_server.translate import STREAM_MODE, EventTranslator, FrameFactory

logger = logging.getLogger("agent_server.runs")

# The run whose task is executing, for log records (see agent_server.logs).
current_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "agent_server_current_run", default=None
)

MultitaskStrategy = Literal["reject", "enqueue", "interrupt"]
# The owner of a thread that exists but whose creator is not recorded.
UNKNOWN_OWNER = "\x00unknown"


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    TIMEOUT = "timeout"


FINISHED = frozenset(
    {
        RunStatus.SUCCESS,
        RunStatus.ERROR,
        RunStatus.CANCELLED,
        RunStatus.INTERRUPTED,
        RunStatus.TIMEOUT,
    }
)


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


class SubscriberTooSlow(Exception):
    """The subscriber fell too far behind the run; it should reconnect and resume."""


class ShuttingDown(StreamError):
    """This worker stops while another worker's run it streams goes on elsewhere."""

    code = "shutting_down"


@dataclass(frozen=True, slots=True)
class LogEntry:
    frame: BaseFrame
    data: bytes  # the frame's JSON, shared by every consumer

    @property
    def seq(self) -> int:
        return self.frame.seq

    @property
    def type(self) -> str:
        return self.frame.type


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """A frame read back from the broker: what a transport needs, without the model."""

    seq: int
    type: str
    data: bytes


@dataclass(frozen=True)
class RunLimits:
    """What the manager enforces; built from the settings by the app."""

    max_concurrent: int = 32
    max_queued: int = 1000
    timeout: float = 600.0
    retention_seconds: float = 600.0
    retention_runs: int = 1000
    # How long a follower of another worker's run waits for an unreachable broker
    # before it is told ``broker_unavailable`` (and resumes later from its last seq).
    broker_wait: float = 10.0


Entry = TypeVar("Entry", "LogEntry", "RemoteEntry")


async def follow_log(
    log: list[Entry],
    finished: Callable[[], bool],
    changed: asyncio.Event,
    after: int = 0,
    *,
    heartbeat: float | None = None,
    max_lag: int | None = None,
    max_batch: int = 512,
    skip_parts: bool = False,
    visible: Callable[[], int] | None = None,
) -> AsyncIterator[list[Entry]]:
    """Batches of ``log`` after seq ``after``, live, until the terminal frame or until
    ``finished()`` with nothing left; ``changed`` is set on every append. ``visible()``,
    when given, is how much of the log may be read yet (see :meth:`Run.follow`).

    With ``skip_parts``, LangGraph API parts (frames of type ``part``) are left out, for
    the native transports: a run started through that API then shows gaps in ``seq``.

    With ``heartbeat``, an empty batch is yielded after that many idle seconds, so a
    transport can keep the connection alive. With ``max_lag``, a subscriber that falls
    that many frames further behind a live log than where it joined gets
    :class:`SubscriberTooSlow`: its starting backlog is not lag, or a subscriber that
    resumes far back would be dropped before its first frame, again and again.
    """
    position = max(after, 0)  # seq n sits at index n - 1
    if max_lag is not None:
        max_lag += max(0, len(log) - position)
    while True:
        available = len(log) if visible is None else visible()
        if position < available:
            if max_lag is not None and not finished() and available - position > max_lag:
                raise SubscriberTooSlow(f"{available - position} frames behind")
            batch = log[position : min(available, position + max_batch)]
            position += len(batch)
            terminal = batch[-1].type in TERMINAL_TYPES
            if skip_parts:
                batch = [entry for entry in batch if entry.type != "part"]
            if batch:
                yield batch
            if terminal:
                return
        elif finished():
            return
        else:
            try:
                async with asyncio.timeout(heartbeat):
                    await changed.wait()
            except TimeoutError:
                yield []


def error_code(exc: BaseException) -> str:
    if isinstance(exc, GraphRecursionError):
        return "recursion_limit"
    if isinstance(exc, StorageUnavailable):
        return "storage_unavailable"
    return "run_error"


@dataclass(eq=False)
class Run:
    graph: GraphEntry
    input: Any
    thread_id: str
    config: RunnableConfig = field(default_factory=lambda: RunnableConfig())
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout: float | None = None
    status: RunStatus = RunStatus.PENDING
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    first_token_at: float | None = None
    on_disconnect: Literal["cancel", "continue"] = "continue"
    owner: str | None = None  # the user id that started it (None without auth)
    # LangGraph API runs: the stream parts to produce besides the frames, and extra
    # arguments for the graph's stream (context, interrupt_before, ...).
    parts: PartOptions | None = None
    multitask_strategy: str = "reject"  # as the client asked (shown by the LangGraph API)
    stream_kwargs: dict[str, Any] = field(default_factory=dict)
    # Awaited when the run gets its turn, before the graph starts (e.g. a rollback of
    # the run it replaces); it may change ``config``. Not kept with queued jobs.
    prepare: Callable[[Run], Awaitable[None]] | None = None
    subscribers: int = 0
    log: list[LogEntry] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    # With a shared broker: how much of the log is in the broker, and so may be sent
    # (None: all of it). See follow().
    shared: int | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.announced = asyncio.Event()  # set once its record is in a shared broker
        self.published = asyncio.Event()  # set once its whole log and status are there
        self.make = FrameFactory(self.run_id)
        self.translator: EventTranslator | None = None
        self._cancel_code = "cancelled"
        self._cancel_message = "run cancelled"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def last_seq(self) -> int:
        return len(self.log)

    # A run executing here is never lost (see RemoteRun.lost).
    lost = False

    def append(self, frame: BaseFrame) -> None:
        if self.first_token_at is None and frame.type == "token":
            self.first_token_at = time.time()
        self.log.append(LogEntry(frame, encode(frame)))
        self._wake()

    def _wake(self) -> None:
        # Wakes every waiting follower; later waiters wait for the next change.
        self._changed.set()
        self._changed.clear()

    def share(self, upto: int | None) -> None:
        """The shared broker holds the log up to seq ``upto`` (None: send everything)."""
        self.shared = upto
        self._wake()

    def _visible(self) -> int:
        return len(self.log) if self.shared is None else self.shared

    async def follow(
        self,
        after: int = 0,
        *,
        heartbeat: float | None = None,
        max_lag: int | None = None,
        max_batch: int = 512,
        parts: bool = False,
        unshared: bool = False,
    ) -> AsyncIterator[list[LogEntry]]:
        """Batches of log entries with ``seq > after``, live (see :func:`follow_log`);
        LangGraph API parts only with ``parts``.

        With a shared broker, a follower gets only frames already copied there: then
        every frame any client saw is in the shared log, and should this worker die, the
        clients resuming on another worker find exactly what they had, followed by
        ``worker_lost``. It costs a client here the broker's round trip per batch. While
        the broker is unreachable, the publisher lifts that bound (``share(None)``): the
        run's own clients are served meanwhile. ``unshared``: the whole log (for the
        publisher itself)."""
        visible = None if unshared else self._visible
        async for batch in follow_log(
            self.log,
            lambda: self.finished and (unshared or self._visible() >= len(self.log)),
            self._changed,
            after,
            heartbeat=heartbeat,
            max_lag=max_lag,
            max_batch=max_batch,
            skip_parts=not parts and self.parts is not None,
            visible=visible,
        ):
            yield batch

    async def wait(self) -> None:
        """Until the run has finished (its terminal frame is in the log)."""
        while not self.finished:
            await self._changed.wait()

    def start_frame(self, queue_position: int) -> None:
        self.append(
            self.make(
                RunStart,
                graph=self.graph.name,
                thread_id=self.thread_id,
                queue_position=queue_position,
            )
        )

    async def execute(self) -> None:
        """Drive the graph and append its frames; always ends the log with done or error."""
        if not self.log:
            self.start_frame(0)
        if self.prepare is not None:
            try:
                await self.prepare(self)
            except Exception as exc:
                self._fail(exc)
                return
        make = self.make
        graph = self.graph.graph
        translator = EventTranslator(make, resumable=graph.checkpointer is not None)
        self.translator = translator
        config: RunnableConfig = {**self.config}
        config["callbacks"] = [translator.tool_call_ids]
        configurable = dict(config.get("configurable") or {})
        configurable["thread_id"] = self.thread_id
        config["configurable"] = configurable
        config.setdefault("run_id", uuid.UUID(self.run_id))
        if self.owner is not None:  # kept in the thread's checkpoints: see load_thread_owner
            config["metadata"] = {**(config.get("metadata") or {}), "owner": self.owner}

        self.status = RunStatus.RUNNING
        self.started_at = time.time()
        started = time.perf_counter()
        context = current_run.set(self)
        try:
            await self._stream(graph, config, translator, started)
        finally:
            # The task's context would otherwise keep the run alive in a cycle
            # (run -> task -> context -> run) that only a full collection frees.
            current_run.reset(context)

    async def _stream(
        self,
        graph: AnyGraph,
        config: RunnableConfig,
        translator: EventTranslator,
        started: float,
    ) -> None:
        make = self.make
        parts = PartTranslator(make, self.parts) if self.parts is not None else None
        stream_mode = STREAM_MODE + (self.parts.graph_modes() if self.parts else [])
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                events = graph.astream_events(
                    self.input,
                    config,
                    version="v2",
                    stream_mode=stream_mode,
                    subgraphs=True,
                    **self.stream_kwargs,
                )
                if parts is None:
                    async for event in events:
                        for frame in translator.translate(event):
                            self.append(frame)
                else:
                    async for event in events:
                        for frame in translator.translate(event):
                            self.append(frame)
                        for frame in parts.translate(event):
                            self.append(frame)
        except TimeoutError as exc:
            if not deadline.expired():  # a TimeoutError of the graph's own: a failure
                self._fail(exc)
                return
            message = f"run exceeded its timeout of {self.timeout:g} s"
            self._end(RunStatus.TIMEOUT, make(Error, code="timeout", message=message))
            return
        except asyncio.CancelledError:
            self.end_cancelled()
            raise
        except Exception as exc:
            self._fail(exc)
            return
        duration = round((time.perf_counter() - started) * 1e3, 3)
        status = RunStatus.INTERRUPTED if translator.interrupted else RunStatus.SUCCESS
        self._end(status, make(Done, usage=translator.usage, duration_ms=duration))

    def _fail(self, exc: Exception) -> None:
        logger.error("run %s (graph %s) failed", self.run_id, self.graph.name, exc_info=exc)
        message = str(exc) or type(exc).__name__
        self._end(RunStatus.ERROR, self.make(Error, code=error_code(exc), message=message))

    def end_cancelled(self) -> None:
        if not self.finished:
            frame = self.make(Error, code=self._cancel_code, message=self._cancel_message)
            self._end(RunStatus.CANCELLED, frame)

    def _end(self, status: RunStatus, frame: BaseFrame) -> None:
        self.status = status
        self.ended_at = time.time()
        self.append(frame)

    def cancel(self, code: str = "cancelled", message: str = "run cancelled") -> bool:
        """Cancel the run's task; its log ends with ``error(code, message)``."""
        if self.task is None or self.task.done() or self.finished:
            return False
        self._cancel_code, self._cancel_message = code, message
        return self.task.cancel()

    def result(self) -> dict[str, Any]:
        """The finished run as one JSON-able document (``POST /runs/wait``)."""
        frames = [entry.frame for entry in self.log]
        last = frames[-1] if frames else None
        return {
            **self.describe(),
            "values": self.translator.values if self.translator else None,
            "interrupts": [
                {"value": f.value, "interrupt_id": f.interrupt_id}
                for f in frames
                if isinstance(f, Interrupt)
            ],
            "error": {"code": last.code, "message": last.message}
            if isinstance(last, Error)
            else None,
            "usage": last.usage if isinstance(last, Done) else None,
        }

    def record(self) -> dict[str, str]:
        """What a shared broker keeps of the run, so other workers can answer for it."""
        return {
            "graph": self.graph.name,
            "thread_id": self.thread_id,
            "owner": self.owner or "",
            "status": self.status.value,
            "created_at": repr(self.created_at),
            "started_at": repr(self.started_at or ""),
            "ended_at": repr(self.ended_at or ""),
            "first_token_at": repr(self.first_token_at or ""),
            "last_seq": str(self.last_seq),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "graph": self.graph.name,
            "status": self.status.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "first_token_at": self.first_token_at,
            "last_seq": self.last_seq,
        }


class RunManager:
    """Owns every run's task: limits, per-thread order, retention, shutdown."""

    TOMBSTONES = 100_000
    OWNER_CACHE = 100_000

    def __init__(
        self,
        limits: RunLimits | None = None,
        broker: Broker | None = None,
        records: RunRecords | None = None,
    ) -> None:
        self.limits = limits or RunLimits()
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
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.mirrors = Mirrors(self._tasks, self.limits.broker_wait)
        self._early_cancels: OrderedDict[str, None] = OrderedDict()

    # -- queries ---------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._unfinished - self._running

    @property
    def active(self) -> int:
        return self._running

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
    ) -> Run:
        """Accept a run (or raise :class:`RunRejected`) and schedule it."""
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
        run.task = asyncio.create_task(self._drive(run, before), name=f"run-{run.run_id}")
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

    async def _drive(self, run: Run, before: list[Run]) -> None:
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
        self._finished.append((time.monotonic(), run.run_id))
        for callback in self.on_finish:
            callback(run)
        self.prune()

    # -- sharing with other workers ------------------------------------------------------

    async def _publish(self, run: Run) -> None:
        """Copy the run's log and status to the shared broker, batch by batch.

        An unreachable broker does not end it: it retries (backing off) and resumes after
        the last seq the broker holds, so a restart that kept the log loses nothing and
        one that lost it gets the whole log again. It gives up only on a finished run
        that has been dropped here meanwhile, or when the server shuts down."""
        failures = 0
        try:
            while True:
                try:
                    await self._publish_log(run)
                    return
                except BrokerUnavailable as exc:
                    run.announced.set()  # the run goes on here; others see it once back
                    run.share(None)  # and its clients here get its frames meanwhile
                    if run.finished and (run.run_id not in self.runs or not self.accepting):
                        logger.warning("gave up publishing run %s: %s", run.run_id, exc)
                        return
                    failures += 1
                    if failures == 1:
                        logger.warning("publishing run %s: %s; retrying", run.run_id, exc)
                    await asyncio.sleep(backoff(failures, 0.1, 2.0))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("could not publish run %s to the broker", run.run_id)
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
            await broker.publish(run.run_id, [(e.seq, e.type, e.data) for e in batch])
            run.share(batch[-1].seq)
            await broker.put_record(run.run_id, published_record(run, batch[-1].seq))
        await run.wait()
        await broker.put_record(run.run_id, run.record())
        await broker.release_thread(run.thread_id, run.run_id)
        limits = self.limits
        await broker.expire(run.run_id, limits.retention_seconds, limits.retention_seconds + 86_400)

    async def enqueue(self, run: Run, strategy: MultitaskStrategy) -> RemoteRun:
        """A background run for any worker: its record now (so every worker can find
        it), its job on the shared queue; the first worker with a free slot runs it."""
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
        }
        encoded = dumps(job)
        await self.broker.put_record(run.run_id, {"job": encoded.decode()})
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
            self.submit(run, job["strategy"], queue_position=job.get("queue_position"))
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
        """Drop finished runs past the retention time or count; leave tombstones."""
        now = time.monotonic() if now is None else now
        limits = self.limits
        while self._finished and (
            len(self._finished) > limits.retention_runs
            or now - self._finished[0][0] > limits.retention_seconds
        ):
            _, run_id = self._finished.popleft()
            run = self.runs.pop(run_id, None)
            if run is not None:
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
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


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
            return  # it ended after all; the record was just behind
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
                    if found:
                        self.entries.extend(RemoteEntry(*entry) for entry in found)
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
        asked for from now on (at shutdown)."""
        self.closed = error
        for mirror in self.by_run.values():
            mirror.error = error
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
