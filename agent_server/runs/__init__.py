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

from agent_server.runs.log import Log, LogEntry, RemoteEntry, SubscriberTooSlow, follow_log
from agent_server.runs.manager import (
    UNKNOWN_OWNER,
    Forbidden,
    MultitaskStrategy,
    RunLimits,
    RunManager,
    RunRejected,
)
from agent_server.runs.remote import Mirror, Mirrors, RemoteRun, ShuttingDown
from agent_server.runs.run import FINISHED, Run, RunStatus, current_run, error_code

__all__ = [
    "FINISHED",
    "UNKNOWN_OWNER",
    "Forbidden",
    "Log",
    "LogEntry",
    "Mirror",
    "Mirrors",
    "MultitaskStrategy",
    "RemoteEntry",
    "RemoteRun",
    "Run",
    "RunLimits",
    "RunManager",
    "RunRejected",
    "RunStatus",
    "ShuttingDown",
    "SubscriberTooSlow",
    "current_run",
    "error_code",
    "follow_log",
]
