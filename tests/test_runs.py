"""The run manager: ownership, limits, per-thread strategies, retention, resume."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langgraph.graph import START, MessagesState, StateGraph

from agent_server.chat_model import ScriptedChatModel
from agent_server.frames import Error, RunStart, Token
from agent_server.runs import Run, RunLimits, RunManager, RunRejected, RunStatus, SubscriberTooSlow
from agent_server.tools import ToolRegistry
from graphs.agent import make_graph
from tests.conftest import ROOT
from tests.helpers import entry, user
from tests.sample_graphs import ticker

AGENT = entry(make_graph(ToolRegistry.from_sources(ROOT / "tools"), ScriptedChatModel()), "agent")
TICKER = entry(ticker, "ticker")


async def _sleepy(state: MessagesState) -> dict[str, list[str]]:
    await asyncio.sleep(10)
    return {"messages": []}


SLEEPY = entry(StateGraph(MessagesState).add_node("s", _sleepy).add_edge(START, "s").compile(), "s")


def new_run(graph=AGENT, text: str = "what is 2+3?", thread: str = "t", **kw) -> Run:  # type: ignore[no-untyped-def]
    return Run(graph=graph, input=user(text), thread_id=thread, **kw)


async def test_run_log_starts_with_run_start_and_ends_once() -> None:
    manager = RunManager()
    run = manager.submit(new_run())
    await run.wait()
    frames = [e.frame for e in run.log]
    assert isinstance(frames[0], RunStart) and frames[0].queue_position == 0
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    assert run.status is RunStatus.SUCCESS and frames[-1].type == "done"
    assert run.started_at and run.ended_at and run.first_token_at
    await manager.shutdown()


async def test_many_subscribers_see_the_same_frames() -> None:
    manager = RunManager()
    run = manager.submit(new_run(text="hello " * 50))

    async def collect(after: int = 0) -> list[bytes]:
        return [e.data async for batch in run.follow(after) for e in batch]

    results = await asyncio.gather(collect(), collect(), collect(3))
    assert results[0] == results[1] == [e.data for e in run.log]
    assert results[2] == results[0][3:]
    await manager.shutdown()


async def test_cancel_stops_the_graph_promptly() -> None:
    manager = RunManager()
    run = manager.submit(new_run(SLEEPY))
    await asyncio.sleep(0.05)
    assert run.status is RunStatus.RUNNING
    assert run.cancel()
    await asyncio.wait_for(run.wait(), 1)
    last = run.log[-1].frame
    assert isinstance(last, Error) and last.code == "cancelled"
    assert run.status is RunStatus.CANCELLED
    await manager.shutdown()


async def test_timeout_ends_with_timeout_frame() -> None:
    manager = RunManager()
    run = manager.submit(new_run(SLEEPY, timeout=0.1))
    await asyncio.wait_for(run.wait(), 2)
    last = run.log[-1].frame
    assert isinstance(last, Error) and last.code == "timeout" and "0.1" in last.message
    assert run.status is RunStatus.TIMEOUT
    await manager.shutdown()


async def test_default_timeout_comes_from_limits() -> None:
    manager = RunManager(RunLimits(timeout=0.1))
    run = manager.submit(new_run(SLEEPY))
    await asyncio.wait_for(run.wait(), 2)
    assert run.status is RunStatus.TIMEOUT
    await manager.shutdown()


async def test_concurrency_limit_queues_then_rejects() -> None:
    manager = RunManager(RunLimits(max_concurrent=1, max_queued=1))
    first = manager.submit(new_run(SLEEPY, thread="a"))
    second = manager.submit(new_run(AGENT, thread="b"))
    assert second.log[0].frame.queue_position == 1
    with pytest.raises(RunRejected) as rejected:
        manager.submit(new_run(AGENT, thread="c"))
    assert rejected.value.status == 429 and rejected.value.retry_after
    await asyncio.sleep(0.05)
    assert manager.active == 1 and manager.queued == 1
    assert second.status is RunStatus.PENDING
    first.cancel()
    await asyncio.wait_for(second.wait(), 5)
    assert second.status is RunStatus.SUCCESS
    await manager.shutdown()


async def test_cancelling_a_queued_run_ends_its_log() -> None:
    manager = RunManager(RunLimits(max_concurrent=1))
    manager.submit(new_run(SLEEPY, thread="a"))
    queued = manager.submit(new_run(AGENT, thread="b"))
    await asyncio.sleep(0.01)
    queued.cancel()
    await asyncio.wait_for(queued.wait(), 1)
    assert [e.frame.type for e in queued.log] == ["run_start", "error"]
    await manager.shutdown()


async def test_thread_strategies() -> None:
    manager = RunManager()
    first = manager.submit(new_run(SLEEPY, thread="x"))
    with pytest.raises(RunRejected) as busy:
        manager.submit(new_run(AGENT, thread="x"), "reject")
    assert busy.value.status == 409
    queued = manager.submit(new_run(AGENT, thread="x"), "enqueue")
    await asyncio.sleep(0.05)
    assert queued.status is RunStatus.PENDING
    interrupting = manager.submit(new_run(AGENT, thread="x"), "interrupt")
    await asyncio.wait_for(interrupting.wait(), 5)
    # interrupt cancelled the active run (the enqueued one is the active one by then, or
    # the first); the runs executed one after another, never two at once on a thread
    assert first.status is RunStatus.CANCELLED
    assert interrupting.status is RunStatus.SUCCESS
    assert queued.finished
    assert queued.ended_at <= interrupting.started_at  # type: ignore[operator]
    await manager.shutdown()


async def test_enqueue_runs_in_order_on_one_thread() -> None:
    manager = RunManager()
    runs = [
        manager.submit(new_run(AGENT, text=f"msg {i}", thread="q"), "enqueue") for i in range(4)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in runs)), 10)
    assert all(r.status is RunStatus.SUCCESS for r in runs)
    for earlier, later in itertools.pairwise(runs):
        assert earlier.ended_at <= later.started_at  # type: ignore[operator]
    await manager.shutdown()


async def test_retention_drops_old_runs_and_leaves_tombstones() -> None:
    manager = RunManager(RunLimits(retention_runs=2, retention_seconds=60))
    runs = [manager.submit(new_run(thread=f"r{i}")) for i in range(4)]
    await asyncio.gather(*(r.wait() for r in runs))
    await asyncio.sleep(0)
    kept = [r.run_id for r in runs if manager.get(r.run_id)]
    assert len(kept) == 2
    dropped = [r.run_id for r in runs if r.run_id not in kept]
    assert all([await manager.is_gone(d) for d in dropped])
    manager.prune(now=10**9)  # far in the future: past retention_seconds
    assert not any(manager.get(r.run_id) for r in runs)
    assert manager.thread_runs("r0") == []
    await manager.shutdown()


async def compacted(run: Run) -> None:
    """Until the run's log is compact (it is packed on a thread once the run ends)."""
    for _ in range(200):
        if run.log.compacted:
            await asyncio.sleep(0)  # the manager counts its bytes right after
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the log was never compacted")


async def test_finished_logs_are_compact_and_retention_counts_their_bytes() -> None:
    manager = RunManager(RunLimits(retention_runs=100, retention_seconds=60))
    first = manager.submit(new_run(thread="b0"))
    await first.wait()
    await compacted(first)
    assert first.log.compacted and first.translator is None and first.values is not None
    size = first.log.nbytes
    assert manager.retained_bytes == size
    # Room for two more of the same size: the oldest goes first, and is gone (410).
    room = size * 5 // 2
    manager.limits = RunLimits(retention_runs=100, retention_seconds=60, retention_bytes=room)
    later = [manager.submit(new_run(thread=f"b{i}")) for i in (1, 2)]
    await asyncio.gather(*(r.wait() for r in later))
    for run in later:
        await compacted(run)
    assert manager.get(first.run_id) is None and await manager.is_gone(first.run_id)
    assert all(manager.get(r.run_id) for r in later)
    assert manager.retained_bytes <= room
    frames = [e.frame async for batch in later[0].follow() for e in batch]  # a late joiner
    assert frames[0].type == "run_start" and frames[-1].type == "done"
    assert later[0].result()["status"] == "success"
    await manager.shutdown()


async def test_slow_subscriber_is_dropped_run_carries_on() -> None:
    manager = RunManager()
    run = manager.submit(new_run(TICKER))
    follower = run.follow(0, max_lag=5)
    await anext(follower)  # reads once, then stops reading while the run streams on
    await asyncio.sleep(0.3)
    with pytest.raises(SubscriberTooSlow):
        await anext(follower)
    assert run.status is RunStatus.RUNNING  # the run did not wait for anyone
    async for batch in run.follow(run.last_seq, max_lag=5):  # a fresh subscriber keeps up
        assert batch
        break
    run.cancel()
    await run.wait()
    await manager.shutdown()


async def test_drain_lets_short_runs_finish_and_cancels_the_rest() -> None:
    manager = RunManager()
    quick = manager.submit(new_run(AGENT, thread="quick"))
    slow = manager.submit(new_run(SLEEPY, thread="slow"))
    await manager.drain(0.5)
    assert quick.status is RunStatus.SUCCESS
    last = slow.log[-1].frame
    assert isinstance(last, Error) and last.code == "shutdown"
    with pytest.raises(RunRejected) as closed:
        manager.submit(new_run(thread="late"))
    assert closed.value.status == 503


# -- resume: any disconnect points, any reconnect positions, the exact sequence ----------


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=25), min_size=0, max_size=8))
def test_reconnecting_anywhere_reassembles_the_exact_log(cuts: list[int]) -> None:
    """A client reads some frames, drops, resumes after its last seq; repeat. Live run."""

    async def scenario() -> None:
        manager = RunManager()
        run = manager.submit(new_run(TICKER_FAST, thread="h"))
        received: list[int] = []
        for cut in [*cuts, 10**9]:
            taken = 0
            follower = run.follow(received[-1] if received else 0)
            async for batch in follower:
                for item in batch:
                    if taken == cut:
                        break
                    received.append(item.frame.seq)
                    taken += 1
                if taken == cut:
                    await follower.aclose()  # the connection drops mid-batch
                    break
        await run.wait()
        assert received == [e.frame.seq for e in run.log]
        assert run.log[-1].frame.type == "done"
        await manager.shutdown()

    asyncio.run(scenario())


async def _fast_ticks(state: MessagesState) -> dict[str, list[str]]:
    from langgraph.config import get_stream_writer

    writer = get_stream_writer()
    for step in range(30):
        await asyncio.sleep(0.001 * (step % 3))
        writer({"name": "tick", "data": step})
    return {"messages": []}


TICKER_FAST = entry(
    StateGraph(MessagesState).add_node("t", _fast_ticks).add_edge(START, "t").compile(), "fast"
)


async def test_follow_after_the_end_of_a_finished_run_yields_nothing() -> None:
    manager = RunManager()
    run = manager.submit(new_run())
    await run.wait()
    assert [b async for b in run.follow(run.last_seq)] == []
    tail = [e.frame.seq async for b in run.follow(run.last_seq - 2) for e in b]
    assert tail == [run.last_seq - 1, run.last_seq]
    await manager.shutdown()


async def test_tokens_reach_followers_while_running() -> None:
    manager = RunManager()
    run = manager.submit(new_run(TICKER))
    seen = []
    async for batch in run.follow(0):
        seen.extend(e.frame for e in batch)
        if any(f.type == "custom" for f in seen):
            break
    assert run.status is RunStatus.RUNNING
    assert not any(isinstance(f, Token) for f in seen)
    run.cancel()
    await run.wait()
    await manager.shutdown()


async def test_a_run_cancelled_before_it_starts_still_ends() -> None:
    """interrupt right after submit: the first task is cancelled before it ever runs."""
    manager = RunManager()
    first = manager.submit(new_run(AGENT, thread="race"))
    second = manager.submit(new_run(AGENT, thread="race"), "interrupt")
    await asyncio.wait_for(second.wait(), 5)
    assert first.status is RunStatus.CANCELLED
    assert [e.frame.type for e in first.log] == ["run_start", "error"]
    assert second.status is RunStatus.SUCCESS
    await asyncio.sleep(0)
    assert manager.queued == 0 and manager.active == 0
    await manager.shutdown()


async def test_a_timeout_raised_by_the_graph_is_a_failure_not_the_run_timeout() -> None:
    async def node(state: MessagesState) -> dict[str, list[str]]:
        await asyncio.wait_for(asyncio.sleep(1), 0.01)
        return {"messages": []}

    graph = entry(StateGraph(MessagesState).add_node("n", node).add_edge(START, "n").compile())
    manager = RunManager()
    run = manager.submit(new_run(graph, thread="own-timeout"))
    await run.wait()
    last = run.log[-1].frame
    assert run.status is RunStatus.ERROR and isinstance(last, Error) and last.code == "run_error"
    await manager.shutdown()


async def test_thread_owner_is_read_back_from_the_checkpoints() -> None:
    from agent_server.runs import Forbidden

    first = RunManager()
    run = first.submit(new_run(AGENT, thread="owned", owner="alice"))
    await run.wait()
    await first.shutdown()
    restarted = RunManager()  # knows nothing: a restart, or another worker
    await restarted.load_thread_owner("owned", AGENT)
    restarted.check_thread("owned", "alice")
    with pytest.raises(Forbidden):
        restarted.check_thread("owned", "mallory")
    # a thread with checkpoints but no owner record is refused to authenticated users
    anonymous = RunManager()
    unowned = anonymous.submit(new_run(AGENT, thread="unowned"))
    await unowned.wait()
    fresh = RunManager()
    await fresh.load_thread_owner("unowned", AGENT)
    with pytest.raises(Forbidden):
        fresh.check_thread("unowned", "alice")
    fresh.check_thread("unowned", None)  # auth off: allowed
    await anonymous.shutdown()


async def test_with_a_shared_broker_followers_get_only_what_is_shared() -> None:
    """``Run.share``: a follower never gets a frame the shared broker does not hold yet
    (however many are in the log, batch size aside); ``share(None)`` lifts the bound."""
    run = new_run(graph=TICKER, text="x")
    run.shared = 0
    for seq in range(1, 6):
        run.append(Token(run_id=run.run_id, seq=seq, ts=0, content=f"t{seq}"))
    received: list[int] = []

    async def follow() -> None:
        async for batch in run.follow(max_batch=512):
            received.extend(entry.seq for entry in batch)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.01)
    assert received == []
    run.share(2)
    await asyncio.sleep(0.01)
    assert received == [1, 2]
    run.share(None)
    await asyncio.sleep(0.01)
    assert received == [1, 2, 3, 4, 5]
    run.status = RunStatus.ERROR
    run.shared = 5
    run.append(Error(run_id=run.run_id, seq=6, ts=0, code="x", message="x"))
    await asyncio.sleep(0.01)
    assert received == [1, 2, 3, 4, 5] and not follower.done()  # finished, not shared
    run.share(6)
    await asyncio.wait_for(follower, 1)
    assert received == [1, 2, 3, 4, 5, 6]
    whole = [e.seq async for b in run.follow(unshared=True) for e in b]
    assert whole == [1, 2, 3, 4, 5, 6]
