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
- A run is translated once per worker for every stream that wants the same events
  (:class:`RunFeed`: same run, channels, namespaces and depth; a dashboard's thousand
  watchers of one thread), from its first entry; each stream takes the events above
  its own cursor from the feed's list, so a late joiner or a resume shares it too. The
  feed holds the run's events while a stream reads them and goes with its last reader.
- Pacing is the native streams' (:mod:`agent_server.streams`), done by the feed: after
  each batch of a live run, a short window lets the next batch gather, and its streams
  are woken once per batch.
- An empty batch means "nothing for a ping interval": the SSE transport sends a comment.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent_server.protocols.langgraph.threadstream.events import EventFilter, K, RunTranslator
from agent_server.protocols.langgraph.threadstream.history import ThreadRuns
from agent_server.runs import Forbidden, RemoteRun, Run, SubscriberTooSlow
from agent_server.state import AppState
from agent_server.streams import StreamError, Streams
from agent_server.ws_protocol import SharedFrames

logger = logging.getLogger("agent_server.threadstream")


async def thread_events(
    state: AppState,
    history: ThreadRuns,
    thread_id: str,
    after: int,
    wanted: EventFilter,
    user: str | None,
    sink: Sink | None = None,
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
        async for batch in _follow(history, streams, run, slot.base, position, wanted, sink):
            if isinstance(batch, int):
                last = batch
            else:
                yield batch
        history.ended(thread_id, slot, last or run.last_seq)
        position = max(position, slot.base + K * (slot.length or 0))


class Batch(list[bytes]):
    """Encoded events handed to several streams: framed once for all their WebSockets
    (agent_server/ws_protocol.py) when first asked."""

    framed: SharedFrames | None = None

    def frames(self) -> SharedFrames:
        if self.framed is None:
            self.framed = SharedFrames(self)
        return self.framed


class Reader:
    """A stream's place in a feed: the index of the next event it has not had."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = 0


# Takes a feed's batch for a stream if it can write it at once; False if not.
Sink = Callable[[Batch], bool]


class RunFeed:
    """One run's events, translated once for the streams that want them (see the module
    docstring); kept in the thread's :class:`ThreadRuns` while a stream reads them."""

    def __init__(
        self,
        feeds: dict[tuple[Any, ...], RunFeed],
        key: tuple[Any, ...],
        streams: Streams,
        run: Run | RemoteRun,
        translator: RunTranslator,
    ) -> None:
        self.feeds = feeds
        self.key = key
        self.run = run
        self.events: list[bytes] = []
        self.seqs: list[int] = []  # each event's seq
        self.last = 0  # the seq of the last log entry read
        self.error: BaseException | None = None
        self.done = False
        self.complete = False  # the run was read to its end
        self.stopping = False  # its last reader left before the end: cancelled
        self.readers = 0
        self.changed = asyncio.Event()
        # readers level with the feed that it hands new events to itself: reader -> its
        # sink and what wakes it when the sink refuses a batch (see read())
        self.direct: dict[Reader, tuple[Sink, asyncio.Future[None]]] = {}
        # the slices handed out lately, shared by the readers level with each other
        self.batches: OrderedDict[tuple[int, int], Batch] = OrderedDict()
        self.task = asyncio.create_task(self.pump(streams, translator), name=f"feed-{key[0]}")

    async def pump(self, streams: Streams, translator: RunTranslator) -> None:
        run = self.run
        pace = streams.fanout_pace()
        try:
            with streams.stream():
                async for entries in run.follow(0, max_batch=streams.max_batch, parts=True):
                    self.last = entries[-1].seq
                    events = translator.feed(entries)
                    if events:
                        start = len(self.events)
                        self.events += events
                        self.seqs += translator.seqs
                        cost = await self.hand_over(start, streams) if self.direct else 0.0
                        self.wake()
                        if not run.finished:  # a fan-out: paced by what handing over took
                            await pace.wait(cost)
                    if not self.readers:
                        return
            self.complete = True
        except asyncio.CancelledError:
            # Its last reader left (read()). Ending quietly keeps no exception, whose
            # traceback would hold this feed's events until a full collection.
            pass
        except Exception as exc:  # each reader raises it
            self.error = exc
        finally:
            self.done = True
            self.wake()
            self.close()

    def slice(self, start: int, end: int) -> Batch:
        batch = self.batches.get((start, end))
        if batch is None:
            batch = self.batches[(start, end)] = Batch(self.events[start:end])
            if len(self.batches) > 8:
                self.batches.popitem(last=False)
        return batch

    async def hand_over(self, start: int, streams: Streams) -> float:
        """The events from ``start`` to every direct reader level with it; one whose
        sink refuses them (or fails) is woken to read them the usual way. It yields to
        the loop every ``Streams.fanout_slice`` readers, as a hub does, and
        returns the seconds of the loop it took."""
        batch = self.slice(start, len(self.events))
        handed = 0
        delivery = streams.delivery()
        for reader, (sink, waiter) in list(self.direct.items()):
            if await delivery.step() and reader not in self.direct:  # it left meanwhile
                continue
            try:
                taken = reader.index == start and sink(batch)
            except Exception:  # the usual path will meet the error and end the stream
                logger.debug("a direct sink failed", exc_info=True)
                taken = False
            if taken:
                reader.index = len(self.events)
                handed += len(batch)
            else:
                del self.direct[reader]
                if not waiter.done():
                    waiter.set_result(None)
        streams.frames_sent += handed
        return delivery.busy

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
        if self.done:  # direct readers take the end the usual way
            for _, waiter in self.direct.values():
                if not waiter.done():
                    waiter.set_result(None)
            self.direct.clear()

    def close(self) -> None:
        """Out of the registry once nobody reads the feed and it is done or stopping."""
        finished = self.done or self.stopping
        if finished and not self.readers and self.feeds.get(self.key) is self:
            del self.feeds[self.key]

    async def read(
        self, after: int, streams: Streams, sink: Sink | None = None
    ) -> AsyncIterator[list[bytes] | int]:
        """The events above ``after``, as they come; an empty batch when idle for a ping
        interval; the run's last entry seq (an int) at the end. With a ``sink``, a
        reader level with the feed is handed new events by the feed itself, without
        waking its task, for as long as the sink takes them (a WebSocket that can
        write at once); what it refuses comes the usual way."""
        reader = Reader()
        self.readers += 1
        self.run.subscribers += 1
        try:
            with streams.stream():
                while True:
                    index = reader.index
                    available = len(self.events)
                    if index < available and self.seqs[index] <= after:  # not there yet
                        index = reader.index = bisect.bisect_right(self.seqs, after, index)
                    if index < available:
                        if available - index > streams.max_lag:
                            raise SubscriberTooSlow(f"{available - index} events behind")
                        batch = self.slice(index, min(available, index + streams.max_batch))
                        reader.index += len(batch)
                        streams.frames_sent += len(batch)
                        yield batch
                        continue
                    if self.done:
                        if self.error is not None:
                            raise self.error
                        if not self.complete:  # stopped when its last reader left
                            raise StreamError("the run's feed stopped; resume from the cursor")
                        break
                    if sink is not None and (self.seqs[-1] if self.seqs else 0) >= after:
                        # level, and every event to come is above the cursor
                        waiter = asyncio.get_running_loop().create_future()
                        self.direct[reader] = (sink, waiter)
                        try:
                            await waiter
                        finally:
                            self.direct.pop(reader, None)
                        continue
                    changed = self.changed
                    try:
                        async with asyncio.timeout(streams.ping_interval):
                            await changed.wait()
                    except TimeoutError:
                        yield []
        finally:
            self.readers -= 1
            self.run.subscribers -= 1
            if not self.readers and not self.done:
                # Nobody left to read what it translates: it stops, and the next stream
                # of this run starts a feed of its own (this one will not finish).
                self.task.cancel()
                self.stopping = True
            self.close()
        yield self.last


async def _follow(
    history: ThreadRuns,
    streams: Streams,
    run: Run | RemoteRun,
    base: int,
    after: int,
    wanted: EventFilter,
    sink: Sink | None,
) -> AsyncIterator[list[bytes] | int]:
    """The run's events above ``after`` from its shared feed; its last entry's seq (an
    int) at the end."""
    key = (run.run_id, base, wanted.key)
    feed = history.feeds.get(key)
    if feed is None or feed.stopping or (feed.done and not feed.complete):
        feed = history.feeds[key] = RunFeed(
            history.feeds, key, streams, run, RunTranslator(base, 0, wanted)
        )
    async for batch in feed.read(after, streams, sink):
        yield batch
