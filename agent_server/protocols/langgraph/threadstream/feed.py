"""Following a thread: its runs one after another, as encoded events after a seq.

Both transports read this, once per event stream (an SSE request, a WebSocket
subscription). Decisions (read before changing):

- It never ends by itself: after a run's last event it waits for the thread's next run
  (the SDKs keep one stream per thread and end on the root ``lifecycle`` event).
- Each run is read from its first log entry, whatever the cursor: the translator needs
  the run's state (open messages, subgraphs) to number and shape later events, and
  sends only those above the cursor. A run entirely at or below the cursor is skipped
  unread. Runs are read with their LangGraph parts, from this worker's log or from the
  broker's copy of another worker's (``Run.follow`` / ``RemoteRun.follow``), so the
  bounds of every stream hold: a follower too far behind gets
  :class:`~agent_server.runs.SubscriberTooSlow`, a broker outage past its bound a
  :class:`~agent_server.streams.StreamError`; the transport then ends the stream so
  that the client reconnects and resumes.
- Pacing is the native streams' (:mod:`agent_server.streams`): after each batch of a
  live run, a short window lets the next batch gather.
- An empty batch means "nothing for a ping interval": the SSE transport sends a comment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agent_server.protocols.langgraph.threadstream.events import EventFilter, K, RunTranslator
from agent_server.protocols.langgraph.threadstream.history import ThreadRuns
from agent_server.runs import Forbidden, RemoteRun, Run
from agent_server.state import AppState


async def thread_events(
    state: AppState,
    history: ThreadRuns,
    thread_id: str,
    after: int,
    wanted: EventFilter,
    user: str | None,
) -> AsyncIterator[list[bytes]]:
    """Batches of the thread's encoded events with ``seq > after`` that ``wanted``
    matches, live, for ever; an empty batch when idle for a ping interval."""
    streams = state.streams
    position = after
    while True:
        changed = history.watch(thread_id)
        slot = next(
            (
                s
                for s in await history.slots(thread_id)
                if s.base is not None and (s.end is None or s.end > position)
            ),
            None,
        )
        if slot is None:
            try:
                async with asyncio.timeout(streams.ping_interval):
                    await changed.wait()
            except TimeoutError:
                yield []
            continue
        run = await history.find(slot)
        assert slot.base is not None
        if run is None:  # its log was dropped (retention): nothing left to send of it
            history.ended(thread_id, slot, slot.length if slot.length is not None else slot.hint)
            position = max(position, slot.base + K * (slot.length or 0))
            continue
        if run.owner is not None and run.owner != user:
            raise Forbidden(f"thread {thread_id!r} belongs to another user")
        last = 0
        async for batch in _follow(state, run, RunTranslator(slot.base, position, wanted)):
            if isinstance(batch, int):
                last = batch
            else:
                yield batch
        history.ended(thread_id, slot, last or run.last_seq)
        position = max(position, slot.base + K * (slot.length or 0))


async def _follow(
    state: AppState, run: Run | RemoteRun, translator: RunTranslator
) -> AsyncIterator[list[bytes] | int]:
    """The run's events; its last entry's seq (an int) at the end."""
    streams = state.streams
    last = 0
    run.subscribers += 1
    try:
        with streams.stream():
            async for entries in run.follow(
                0,
                heartbeat=streams.ping_interval,
                max_lag=streams.max_lag,
                max_batch=streams.max_batch,
                parts=True,
            ):
                if not entries:
                    yield []
                    continue
                last = entries[-1].seq
                events = translator.feed(entries)
                if events:
                    streams.frames_sent += len(events)
                    yield events
                    if not run.finished:
                        await asyncio.sleep(streams.window())
    finally:
        run.subscribers -= 1
    yield last
