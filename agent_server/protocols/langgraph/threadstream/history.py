"""A thread's runs in order, and where each one's events sit in the thread's seq space.

The protocol numbers a thread's events with one ``seq`` that a client sends back to
resume (``since``), on another connection or another worker. Our runs number their
own frames; this module places each run of a thread in one seq space: run ``r`` gets
``base(r)``, and its log entry ``s`` owns the seqs ``base(r) + K*(s-1) + 1`` to
``base(r) + K*s`` (:mod:`.events`).

Decisions (read before changing):

- Order: a thread's runs by ``created_at`` (then run id). A thread runs one run at a
  time, in the order they were accepted, which is their creation order but for two
  requests racing on one thread within milliseconds; then the later-created run's
  events wait for the earlier's end, delayed, never lost or repeated.
- ``base(first run) = 0`` and ``base(next) = base(prev) + K * len(prev's log)``: a run's
  base is known once the runs before it have ended, which is also when its events are
  due (a thread's runs stream one after another).
- Every worker must compute the same bases. With PostgreSQL (several workers) the runs
  are the thread's records there, which every worker reads alike, finished lengths
  included, for ever (log retention does not matter). Without it (one process) this
  worker's :class:`Ledger` remembers each thread's runs and lengths from the first time
  the thread is streamed, and hears of new and finished runs from the run manager, so a
  run dropped by retention still holds its place.
- A thread older than this process, without PostgreSQL, had runs this process never
  saw (a SQLite file from before a restart): its first known run is based at
  ``K * (milliseconds since 2025)``, above anything an earlier process numbered for it,
  so a client that kept its cursor (or the JS SDK its seen event ids) across the restart
  neither skips nor drops new events. Fresh threads start at 0: small seqs, lean events.
- New runs are heard of at once: this worker's through the run manager's ``on_submit``
  and ``on_finish``, other workers' through its ``on_remote_submit`` (the broker's
  announcements); followers of a thread wait on :meth:`ThreadRuns.watch`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_server.protocols.langgraph.threadstream.events import K
from agent_server.runs import FINISHED, RemoteRun, Run, RunManager
from agent_server.state import AppState

if TYPE_CHECKING:
    from agent_server.protocols.langgraph.threadstream.feed import RunFeed

EPOCH = 1_735_689_600.0  # 2025-01-01T00:00:00Z: the anchor of threads older than us


@dataclass
class Slot:
    """A run's place in its thread: ``base`` once the runs before it have ended,
    ``length`` (its log's) once it has."""

    run_id: str
    created_at: float
    length: int | None = None
    base: int | None = None
    hint: int = 0  # the last seq a record reported, for a run whose log is gone

    @property
    def end(self) -> int | None:
        """The last seq this run may use."""
        if self.base is None or self.length is None:
            return None
        return self.base + K * self.length


@dataclass
class Ledger:
    """What this worker knows of one thread's runs."""

    slots: dict[str, Slot] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)  # other workers' runs, to look up
    anchored: bool | None = None


class ThreadRuns:
    """One app's ledgers and followers (one per run manager: :func:`thread_runs`)."""

    MAX_THREADS = 10_000

    def __init__(self, state: AppState) -> None:
        # Weakly: the run manager holds this object (its hooks), and the registry maps
        # the run manager to it; a strong reference back would keep both for ever.
        self._state = weakref.ref(state)
        self.ledgers: OrderedDict[str, Ledger] = OrderedDict()
        # Bounded: an event whose followers left stays until its thread changes; past
        # the bound the oldest goes, and a follower still on it wakes at its next ping.
        self._changed: OrderedDict[str, asyncio.Event] = OrderedDict()
        # lookups in flight, shared by the streams that need them at the same time
        self._looking: dict[str, tuple[asyncio.Event, asyncio.Future[list[Slot]]]] = {}
        self._finding: dict[str, asyncio.Future[Run | RemoteRun | None]] = {}
        # runs being translated, for every stream that wants the same events (feed.py)
        self.feeds: dict[tuple[Any, ...], RunFeed] = {}
        runs = state.runs
        runs.on_submit.append(self._on_submit)
        runs.on_finish.append(self._on_finish)
        runs.on_remote_submit.append(self._on_remote_submit)

    @property
    def state(self) -> AppState:
        state = self._state()
        assert state is not None, "the app is gone"
        return state

    # -- what the run manager tells ------------------------------------------------------

    def _on_submit(self, run: Run) -> None:
        ledger = self.ledgers.get(run.thread_id)
        if ledger is not None:
            self._note(ledger, run.run_id, run.created_at)
        self._wake(run.thread_id)

    def _on_finish(self, run: Run) -> None:
        ledger = self.ledgers.get(run.thread_id)
        if ledger is not None:
            self._note(ledger, run.run_id, run.created_at, run.last_seq)
        self._wake(run.thread_id)

    def _on_remote_submit(self, run_id: str, thread_id: str) -> None:
        ledger = self.ledgers.get(thread_id)
        if ledger is not None:
            ledger.announced.add(run_id)
        self._wake(thread_id)

    def _wake(self, thread_id: str) -> None:
        changed = self._changed.pop(thread_id, None)
        if changed is not None:
            changed.set()

    def watch(self, thread_id: str) -> asyncio.Event:
        """Set at the thread's next new or finished run. Take it *before* looking at
        the runs: a change in between then still wakes the caller."""
        changed = self._changed.get(thread_id)
        if changed is None:
            changed = self._changed[thread_id] = asyncio.Event()
            if len(self._changed) > self.MAX_THREADS:
                self._changed.popitem(last=False)
        return changed

    # -- the thread's runs ---------------------------------------------------------------

    def _ledger(self, thread_id: str) -> Ledger:
        ledger = self.ledgers.get(thread_id)
        if ledger is None:
            ledger = self.ledgers[thread_id] = Ledger()
            if len(self.ledgers) > self.MAX_THREADS:
                self.ledgers.popitem(last=False)
        else:
            self.ledgers.move_to_end(thread_id)
        return ledger

    @staticmethod
    def _note(
        ledger: Ledger, run_id: str, created_at: float, length: int | None = None, hint: int = 0
    ) -> Slot:
        slot = ledger.slots.get(run_id)
        if slot is None:
            slot = ledger.slots[run_id] = Slot(run_id, created_at)
        if length is not None and slot.length is None:
            slot.length = length
        slot.hint = max(slot.hint, hint)
        return slot

    async def slots(self, thread_id: str) -> list[Slot]:
        """The thread's runs in order, each with its base where it is known yet. A
        thousand streams woken by the thread's new run share one look (a lookup in the
        broker, a query), unless the thread changed after that look began."""
        generation = self.watch(thread_id)  # replaced at the thread's next change
        pending = self._looking.get(thread_id)
        if pending is None or pending[0] is not generation:
            looking = pending = (generation, asyncio.ensure_future(self._slots(thread_id)))
            self._looking[thread_id] = looking

            def forget(_: object) -> None:
                if self._looking.get(thread_id) is looking:
                    del self._looking[thread_id]

            looking[1].add_done_callback(forget)
        return await asyncio.shield(pending[1])

    async def _slots(self, thread_id: str) -> list[Slot]:
        ledger = self._ledger(thread_id)
        runs = self.state.runs
        for run in runs.thread_runs(thread_id):
            self._note(ledger, run.run_id, run.created_at, run.last_seq if run.finished else None)
        for run_id in list(ledger.announced):
            found = await runs.find(run_id)
            if found is None or found.finished:
                ledger.announced.discard(run_id)
            if found is not None:
                created = found.describe()["created_at"] or 0.0
                self._note(ledger, run_id, created, found.last_seq if found.finished else None)
        if runs.records.durable:
            for record in await runs.records.thread_runs(thread_id):
                finished = record.get("status") in FINISHED
                last = int(record.get("last_seq") or 0)
                self._note(
                    ledger,
                    record["run_id"],
                    float(record.get("created_at") or 0.0),
                    last if finished else None,
                    last,
                )
        ordered = sorted(ledger.slots.values(), key=lambda s: (s.created_at, s.run_id))
        if ordered and ordered[0].base is None and ledger.anchored is None:
            ledger.anchored = await self._predates(thread_id)
        end: int | None = None
        for index, slot in enumerate(ordered):
            if slot.base is None:
                if index == 0:
                    slot.base = anchor(slot.created_at) if ledger.anchored else 0
                elif end is not None:
                    slot.base = end
            end = slot.end
        return ordered

    async def _predates(self, thread_id: str) -> bool:
        """Whether the thread may have had runs this process never saw (see above)."""
        if self.state.runs.records.durable:
            return False
        record: dict[str, Any] | None = await self.state.threads.get(thread_id)
        if record is None:
            return True  # a thread of the native routes, of unknown age
        return float(record.get("created_at") or 0.0) < self.state.started_at

    async def find(self, slot: Slot) -> Run | RemoteRun | None:
        """The slot's run; concurrent lookups of another worker's run share one."""
        runs = self.state.runs
        run = runs.get(slot.run_id)
        if run is not None:
            return run
        finding = self._finding.get(slot.run_id)
        if finding is None:
            finding = self._finding[slot.run_id] = asyncio.ensure_future(runs.find(slot.run_id))
            finding.add_done_callback(lambda _: self._finding.pop(slot.run_id, None))
        return await asyncio.shield(finding)

    def ended(self, thread_id: str, slot: Slot, length: int) -> None:
        """A follower saw the run's last entry (``length`` is its seq)."""
        if slot.length is None:
            slot.length = length
        ledger = self.ledgers.get(thread_id)
        if ledger is not None:
            self._note(ledger, slot.run_id, slot.created_at, length)

    async def head(self, thread_id: str, before: str | None = None) -> int:
        """The seq up to which the thread's events are decided (the ``applied_through_seq``
        of a command): the end of its last finished run, or how far its active run has
        got. ``before``: only the runs before that one (a run just started)."""
        position = 0
        for slot in await self.slots(thread_id):
            if slot.run_id == before:
                return slot.base if slot.base is not None else position
            if slot.base is None:
                break
            if slot.end is not None:
                position = slot.end
                continue
            run = await self.find(slot)
            position = slot.base + K * (run.last_seq if run is not None else slot.hint)
            break
        return position


def anchor(created_at: float) -> int:
    return K * max(0, int((created_at - EPOCH) * 1000))


_REGISTRIES: weakref.WeakKeyDictionary[RunManager, ThreadRuns] = weakref.WeakKeyDictionary()


def thread_runs(state: AppState) -> ThreadRuns:
    """The app's :class:`ThreadRuns`, made (and hooked to its run manager) on first use."""
    found = _REGISTRIES.get(state.runs)
    if found is None:
        found = _REGISTRIES[state.runs] = ThreadRuns(state)
    return found
