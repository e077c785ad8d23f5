"""How often a stream writes: coalescing bursts of frames into fewer, larger writes.

A write (an ASGI ``send`` down to a socket ``write``) costs about as much as producing a
frame, so one write per token would nearly halve a fast stream's rate. After each write
a stream therefore waits a short *window* while the run goes on, and everything that
arrived meanwhile leaves in the next write. The first frame after a pause is never held:
a stream waits only *after* it has written.

The window widens with the number of streams writing at once (``base * streams``, capped
at ``ceiling``): under load each run produces frames more slowly, and a fixed window
would again mean one write per frame just when the CPU is scarce. With the defaults a
lone stream waits 2 ms, twenty streams 40 ms, never more than 50 ms: below what a reader
can see, far below a real model's time between tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Pacer:
    """Shared by every stream of one app (created in the lifespan, not global)."""

    def __init__(self, base: float = 0.002, ceiling: float = 0.05) -> None:
        self.base = base
        self.ceiling = ceiling
        self.streams = 0

    def window(self) -> float:
        return min(self.ceiling, self.base * max(1, self.streams))

    @contextmanager
    def stream(self) -> Iterator[None]:
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1
