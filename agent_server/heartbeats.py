"""Every WebSocket's ping and idle time-out on one timer.

A socket used to carry a heartbeat task of its own: a sleeping coroutine, its frame and
its timer for every open tab, a few KB each and ten thousand tasks for ten thousand
idle sockets. :class:`Heartbeats` keeps one loop for all of them instead: every
``tick`` (a tenth of the shorter of the two periods, at most a second) it walks the
sockets, pings those whose ping is due and closes those silent past the idle timeout.
A walk over 10,000 sockets costs about a millisecond; the loop runs only while sockets
are open.

Decisions (read before changing):

- A ping never waits on a socket (:func:`~agent_server.connections.try_send`): a socket
  whose client stopped reading has frames waiting already, and the send time-out of its
  streams deals with it. One slow socket never delays another's ping.
- Closing an idle socket may wait (its close frame), so it runs in a task of the socket's
  own, spawned only then.
- The walk's precision is its tick: a socket is pinged, or closed, up to a tick late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

logger = logging.getLogger("agent_server.heartbeats")


class Beating(Protocol):
    """What the heartbeat needs of a socket's session (agent_server/ws.py)."""

    last_heard: float  # time.monotonic() of the last message or pong received

    async def ping(self) -> None: ...

    def expire(self) -> None: ...


class Heartbeats:
    """The pings and idle time-outs of one app's sockets (owned by its connection manager)."""

    def __init__(self, interval: float, idle: float) -> None:
        self.interval = interval
        self.idle = idle
        self.tick = min(1.0, max(0.01, min(interval, idle) / 10))
        self.due: dict[Beating, float] = {}  # socket -> time.monotonic() of its next ping
        self.task: asyncio.Task[None] | None = None

    def add(self, session: Beating) -> None:
        self.due[session] = time.monotonic() + self.interval
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name="ws-heartbeats")

    def discard(self, session: Beating) -> None:
        self.due.pop(session, None)

    async def run(self) -> None:
        while self.due:
            await asyncio.sleep(self.tick)
            try:
                await self.beat(time.monotonic())
            except Exception:  # never end silently: the next tick tries again
                logger.exception("heartbeat walk failed")

    async def beat(self, now: float) -> None:
        for session, due in list(self.due.items()):
            if session not in self.due:  # gone during an earlier ping of this walk
                continue
            if now - session.last_heard >= self.idle:
                del self.due[session]
                session.expire()
            elif now >= due:
                self.due[session] = now + self.interval
                with contextlib.suppress(Exception):  # the socket is going: its end() cleans up
                    await session.ping()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
