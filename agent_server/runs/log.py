"""A run's log as subscribers read it: its entries, and following a live log from a
seq (see the package docstring for the decisions)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from agent_server.frames import (
    TERMINAL_TYPES,
    BaseFrame,
)

logger = logging.getLogger("agent_server.runs")


class SubscriberTooSlow(Exception):
    """The subscriber fell too far behind the run; it should reconnect and resume."""


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
