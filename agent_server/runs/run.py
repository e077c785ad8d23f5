"""A run: one graph execution owned by the server, and the ordered log of its frames."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError

from agent_server.frames import (
    TERMINAL_TYPES,
    BaseFrame,
    Done,
    Emitted,
    Encoded,
    Error,
    Interrupt,
    RunStart,
)
from agent_server.graphs import AnyGraph, GraphEntry
from agent_server.protocols.langgraph.parts import PartOptions, PartTranslator
from agent_server.runs.log import Log, LogEntry, follow_log
from agent_server.sources import DRIVERS, EventSource
from agent_server.storage import StorageUnavailable
from agent_server.translate import EventTranslator, FrameFactory

logger = logging.getLogger("agent_server.runs")


# The run whose task is executing, for log records (see agent_server.logs).
current_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "agent_server_current_run", default=None
)


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
    # Where the frames come from (agent_server/sources.py); the manager sets it.
    source: EventSource = "callbacks"
    subscribers: int = 0
    log: Log = field(default_factory=Log)
    task: asyncio.Task[None] | None = None
    # With a shared broker: how much of the log is in the broker, and so may be sent
    # (None: all of it). See follow().
    shared: int | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.ended = asyncio.Event()  # set with its terminal frame (one wake-up per run)
        self.announced = asyncio.Event()  # set once its record is in a shared broker
        self.published = asyncio.Event()  # set once its whole log and status are there
        self.make = FrameFactory(self.run_id)
        self.translator: EventTranslator | None = None  # while it runs
        self.values: Any = None  # the root graph's last state, once it has run
        self.interrupts: list[Interrupt] = []
        self.final: BaseFrame | None = None  # its terminal frame
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

    def append(self, frame: Emitted) -> None:
        kind = frame.type
        if kind == "token":
            if self.first_token_at is None:
                self.first_token_at = time.time()
        elif kind == "interrupt":
            model = frame.frame if isinstance(frame, Encoded) else frame
            assert isinstance(model, Interrupt)
            self.interrupts.append(model)
        elif kind in TERMINAL_TYPES:
            self.final = frame.frame if isinstance(frame, Encoded) else frame
            self.ended.set()  # (after the append below: waiters run later)
        self.log.append(frame if isinstance(frame, Encoded) else Encoded.of(frame))
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
        await self.ended.wait()

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
        translator = EventTranslator(
            make, resumable=graph.checkpointer is not None, lazy_tokens=self.parts is not None
        )
        self.translator = translator
        config: RunnableConfig = {**self.config}
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
        # LangGraph's "events" stream mode is astream_events' own output.
        source = "events" if self.parts and "events" in self.parts.modes else self.source
        drive = DRIVERS[source]
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                await drive(
                    graph, self.input, config, translator, parts, self.append, self.stream_kwargs
                )
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
        self.values = translator.values
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
        if self.translator is not None:
            self.values = self.translator.values
            self.translator = None  # what it tracked while running is not needed any more
        self.append(frame)

    def cancel(self, code: str = "cancelled", message: str = "run cancelled") -> bool:
        """Cancel the run's task; its log ends with ``error(code, message)``."""
        if self.task is None or self.task.done() or self.finished:
            return False
        self._cancel_code, self._cancel_message = code, message
        return self.task.cancel()

    def result(self) -> dict[str, Any]:
        """The finished run as one JSON-able document (``POST /runs/wait``)."""
        last = self.final
        return {
            **self.describe(),
            "values": self.values,
            "interrupts": [
                {"value": f.value, "interrupt_id": f.interrupt_id} for f in self.interrupts
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
