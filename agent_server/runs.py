"""Runs: a graph execution owned by the server, with an ordered log of its frames.

A run executes as an asyncio task owned by the :class:`RunManager` (which lives in the
app's lifespan), never by the connection that started it. Routes *follow* a run: they
read its log from a position and then wait for more, so many subscribers can watch one
run and a slow subscriber never slows the graph.

Decisions:

- Frames are encoded once, when appended to the log; every subscriber sends those bytes.
- :meth:`Run.follow` hands out *batches*: everything appended since the subscriber last
  looked. Under load that coalesces many frames into one write (the dominant per-frame
  cost of a stream); when idle, a batch is a single frame, so latency is unchanged.
- Wake-ups use one ``asyncio.Event`` per run that is replaced on every append, so
  waking N subscribers costs one ``set()`` and no per-subscriber queue can overflow.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError

from agent_server.frames import (
    TERMINAL_TYPES,
    BaseFrame,
    Done,
    Error,
    Interrupt,
    RunStart,
    encode,
)
from agent_server.graphs import GraphEntry
from agent_server.translate import STREAM_MODE, EventTranslator, FrameFactory

logger = logging.getLogger("agent_server.runs")


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


@dataclass(frozen=True, slots=True)
class LogEntry:
    frame: BaseFrame
    data: bytes  # the frame's JSON, shared by every consumer


def error_code(exc: BaseException) -> str:
    if isinstance(exc, GraphRecursionError):
        return "recursion_limit"
    return "run_error"


@dataclass(eq=False)
class Run:
    graph: GraphEntry
    input: Any
    thread_id: str
    config: RunnableConfig = field(default_factory=lambda: RunnableConfig())
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: RunStatus = RunStatus.PENDING
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    log: list[LogEntry] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.make = FrameFactory(self.run_id)
        self.translator: EventTranslator | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def append(self, frame: BaseFrame) -> None:
        self.log.append(LogEntry(frame, encode(frame)))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(
        self, after: int = 0, *, heartbeat: float | None = None
    ) -> AsyncIterator[list[LogEntry]]:
        """Batches of log entries with ``seq > after``, live, until the terminal frame.

        With ``heartbeat``, an empty batch is yielded after that many idle seconds, so a
        transport can keep the connection alive.
        """
        position = max(after, 0)  # seq n sits at index n - 1
        while True:
            if position < len(self.log):
                batch = self.log[position:]
                position += len(batch)
                yield batch
                if batch[-1].frame.type in TERMINAL_TYPES:
                    return
            elif self.finished:
                return
            else:
                try:
                    async with asyncio.timeout(heartbeat):
                        await self._changed.wait()
                except TimeoutError:
                    yield []

    async def execute(self) -> None:
        """Drive the graph and append its frames; always ends the log with done or error."""
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

        self.status = RunStatus.RUNNING
        self.started_at = time.time()
        started = time.perf_counter()
        self.append(make(RunStart, graph=self.graph.name, thread_id=self.thread_id))
        try:
            async for event in graph.astream_events(
                self.input, config, version="v2", stream_mode=STREAM_MODE, subgraphs=True
            ):
                for frame in translator.translate(event):
                    self.append(frame)
        except asyncio.CancelledError:
            self.end_cancelled()
            raise
        except Exception as exc:
            logger.exception("run %s (graph %s) failed", self.run_id, self.graph.name)
            message = str(exc) or type(exc).__name__
            self._end(RunStatus.ERROR, make(Error, code=error_code(exc), message=message))
            return
        duration = round((time.perf_counter() - started) * 1e3, 3)
        status = RunStatus.INTERRUPTED if translator.interrupted else RunStatus.SUCCESS
        self._end(status, make(Done, usage=translator.usage, duration_ms=duration))

    def end_cancelled(self) -> None:
        if not self.finished:
            self._end(
                RunStatus.CANCELLED, self.make(Error, code="cancelled", message="run cancelled")
            )

    def _end(self, status: RunStatus, frame: BaseFrame) -> None:
        self.status = status
        self.ended_at = time.time()
        self.append(frame)

    def cancel(self) -> bool:
        if self.task is None or self.task.done():
            return False
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

    def describe(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "graph": self.graph.name,
            "status": self.status.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "frames": len(self.log),
        }


class RunManager:
    """Owns every run's task; created and shut down by the app's lifespan."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, run: Run) -> Run:
        self.runs[run.run_id] = run
        run.task = asyncio.create_task(self._guard(run), name=f"run-{run.run_id}")
        self._tasks.add(run.task)
        run.task.add_done_callback(self._tasks.discard)
        return run

    async def _guard(self, run: Run) -> None:
        try:
            await run.execute()
        except asyncio.CancelledError:
            run.end_cancelled()  # also when cancelled before it started
        finally:
            self.runs.pop(run.run_id, None)

    def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
