"""How frames leave the server, for every transport: pacing, pings, bounds, counters.

Pacing. A write (an ASGI ``send`` down to a socket ``write``) costs about as much as
producing a frame, so one write per token would nearly halve a fast stream's rate. After
each write a stream therefore waits a short *window* while the run goes on, and
everything that arrived meanwhile leaves in the next write. The first frame after a
pause is never held: a stream waits only *after* it has written. The window widens with
the number of streams writing at once (``flush_interval * streams``, capped at
``flush_interval_max``), counted as the streams waiting out a window now: a stream
waiting for its run to say something (an idle page, a quiet run) widens nobody's
window, so ten thousand idle subscribers leave a new run's first tokens alone. Under
load each run produces frames more slowly, and a fixed window would again mean one
write per frame just when the CPU is scarce. With the defaults a lone stream waits 2 ms,
twenty streams 40 ms, never more than 50 ms: below what a reader can see, far below a
real model's time between tokens.

A fan-out (one run's batch written to every socket of a worker that watches it:
agent_server/fanout.py, the thread streams' feeds) also waits in proportion to what its
last delivery took, so that delivering takes at most ``fanout_share`` of the loop's time
and the run it delivers keeps its pace: a thousand sockets cost a thousand writes a
delivery whatever the batch holds, and at a fast model's pace a 2 ms window meant a
delivery every few tokens, the loop busy writing half the time and the run at half
speed. That share is only needed when the run keeps the loop busy: between a real
model's tokens the loop is mostly idle, and there a fan-out may take up to
``fanout_share_max`` (35 %), which cut the lag to 1,000 watchers at 200 tokens a second
from 34-41 to 19-29 ms at p99 for about 3 % more run time (:class:`FanoutPace` measures the
rest of the worker's share). The wait never exceeds ``fanout_wait_max`` (25 ms), which
bounds the lag it adds; a handful of sockets deliver in microseconds and keep the usual
window. A delivery yields to the loop every ``fanout_slice`` sockets, so the run's next
token waits for a slice of the writes, not for all of them.

Bounds. A subscriber is a position in its run's log, so it buffers nothing of its own;
one that falls more than ``max_lag`` frames behind, or whose ``send`` does not complete
within ``send_timeout`` (a client that stopped reading), is dropped and resumes from the
log when it reconnects. The run and every other subscriber carry on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class StreamError(Exception):
    """Ends one client's stream of a run, not the run: the client is told with an
    ``error`` frame of ``seq`` 0 and this ``code`` (docs/protocol.md, "Stream errors")
    and resumes from the last seq it received, here or on another worker."""

    code = "stream_error"


@dataclass
class Streams:
    """Shared by every stream of one app (created in the lifespan, not global)."""

    ping_interval: float = 15.0
    flush_interval: float = 0.002
    flush_interval_max: float = 0.05
    fanout_share: float = 0.1  # of the loop, when the rest of the worker keeps it busy
    fanout_share_max: float = 0.35  # of the loop, when the rest of the worker is idle
    fanout_wait_max: float = 0.025
    fanout_slice: int = 64  # sockets written to between two yields to the loop
    fanout_slice_time: float = 0.0005  # or seconds of writes, if that comes first
    max_lag: int = 10_000
    max_batch: int = 512
    send_timeout: float = 10.0
    retry_ms: int = 1000
    # live counters, read by /metrics
    active: int = 0
    frames_sent: int = 0
    dropped_slow: int = 0
    pacing: int = 0  # streams waiting out a window now (see the module docstring)

    def window(self, cost: float = 0.0, others: float = 1.0) -> float:
        window = min(self.flush_interval_max, self.flush_interval * (self.pacing + 1))
        if cost > 0.0:
            share = min(self.fanout_share_max, max(self.fanout_share, 0.9 - others))
            spread = min(cost * (1.0 / share - 1.0), self.fanout_wait_max)
            window = max(window, spread)
        return window

    async def pace(self, cost: float = 0.0, others: float = 1.0) -> None:
        """Wait the window after a write, counted as a stream writing meanwhile.

        ``cost``: the seconds a fan-out's delivery took; ``others``: the share of the
        loop the rest of the worker used meanwhile (see :class:`FanoutPace`)."""
        window = self.window(cost, others)
        self.pacing += 1
        try:
            await asyncio.sleep(window)
        finally:
            self.pacing -= 1

    @contextmanager
    def stream(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def delivery(self) -> Delivery:
        """The bookkeeping of one fan-out delivery (see :class:`Delivery`)."""
        return Delivery(self.fanout_slice, self.fanout_slice_time)

    def fanout_pace(self) -> FanoutPace:
        """The waits between one fan-out's deliveries (see :class:`FanoutPace`)."""
        return FanoutPace(self)


class FanoutPace:
    """The waits between one fan-out's deliveries: :meth:`wait` after each, given what
    it took. The loop thread's CPU time since the last wait, less the delivery's, is
    what the rest of the worker (the run being delivered, above all) used meanwhile: a
    worker idle between a model's tokens lets its fan-outs take up to
    ``fanout_share_max`` of the loop, one busy running a fast model leaves them
    ``fanout_share`` (see the module docstring)."""

    __slots__ = ("_cpu", "_streams", "_wall")

    def __init__(self, streams: Streams) -> None:
        self._streams = streams
        self._cpu = time.thread_time()
        self._wall = time.perf_counter()

    async def wait(self, cost: float) -> None:
        cpu, wall = time.thread_time(), time.perf_counter()
        elapsed = wall - self._wall
        others = (cpu - self._cpu - cost) / elapsed if elapsed > 0.0 else 1.0
        self._cpu, self._wall = cpu, wall
        await self._streams.pace(cost, others)


class Delivery:
    """One fan-out delivery's slices and loop time: :meth:`step` before each socket
    yields to the loop every ``size`` sockets, or sooner once a slice has taken
    ``duration`` seconds (where writes are slow, a run's next token waits for no more
    than that), and :attr:`busy` is the time the delivery itself took, the yields left
    out (what :meth:`Streams.pace` is given)."""

    __slots__ = ("_count", "_duration", "_size", "_spent", "_started")

    def __init__(self, size: int, duration: float = float("inf")) -> None:
        self._size = size
        self._duration = duration
        self._count = 0
        self._spent = 0.0
        self._started = time.perf_counter()

    async def step(self) -> bool:
        """Count one socket; True if the loop ran meanwhile (a socket may have gone)."""
        self._count += 1
        now = time.perf_counter()
        if self._count < self._size and (
            self._count == 1 or now - self._started < self._duration
        ):  # a slice writes to one socket at least, whatever the clock says
            return False
        self._count = 0
        self._spent += now - self._started
        await asyncio.sleep(0)
        self._started = time.perf_counter()
        return True

    @property
    def busy(self) -> float:
        return self._spent + time.perf_counter() - self._started
