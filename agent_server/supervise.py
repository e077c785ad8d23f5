"""Long-lived background tasks that never end silently.

A worker's loops (taking queued runs, listening for cancels and announcements, its
heartbeat, presence, the retention janitor) live as long as the app. Before, each ended
on the first error (a Redis restart) and nothing started it again: the worker looked
alive and did nothing. A :class:`Supervisor` runs each as a *job*: when the job raises,
or returns although it should not, the error is logged, the supervisor waits a backoff
that doubles from ``base`` up to the job's ``cap`` (with jitter, so that workers that
lost the broker together do not return in step) and starts it again. A job that ran for
a while before failing starts again from ``base``.

The supervisor belongs to the app's lifespan (``agent_server/app.py``), which cancels its
jobs at shutdown; ``restarts`` counts restarts per job for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from agent_server.brokers import BrokerUnavailable

logger = logging.getLogger("agent_server.supervise")

Job = Callable[[], Awaitable[None]]


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks not done yet and wait for them to end (an owner going away)."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures: full jitter over an
    exponential bound (the upper half of it, so a retry is never immediate)."""
    bound = min(cap, base * 2 ** max(0, failures - 1))
    return random.uniform(bound / 2, bound)


class Supervisor:
    """Starts jobs as tasks and restarts them when they fail; see the module docstring."""

    # A job that ran this long before it failed is not failing repeatedly.
    HEALTHY_AFTER = 30.0

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, job: Job, *, base: float = 0.1, cap: float = 5.0) -> None:
        self.restarts[name] = 0
        self.tasks[name] = asyncio.create_task(
            self._keep(name, job, base, cap), name=f"agent-server-{name}"
        )

    async def _keep(self, name: str, job: Job, base: float, cap: float) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await job()
                logger.error("background job %s ended; starting it again", name)
            except asyncio.CancelledError:
                raise
            except BrokerUnavailable as exc:
                # One line per failure, no traceback: an outage is expected, not a bug.
                logger.warning("background job %s: %s; retrying", name, exc)
            except Exception:
                logger.exception("background job %s failed; starting it again", name)
            if time.monotonic() - started >= self.HEALTHY_AFTER:
                failures = 0
            failures += 1
            self.restarts[name] += 1
            await asyncio.sleep(backoff(failures, base, cap))

    async def close(self) -> None:
        await cancel_all(self.tasks.values())
        self.tasks.clear()
