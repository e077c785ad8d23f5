"""Workers killed (SIGKILL) and stopped (SIGTERM) under load, with real processes.

Two workers share a private Redis and PostgreSQL (see cluster.py). Every client's
recording is checked: seqs 1..N with no gap and no duplicate, then one final frame.
Each test prints its figures (run with ``-s`` to see them). A test leaves the worker it
killed or stopped down: ``running`` starts it again for the next one.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.faults.checks import assert_complete, assert_in_order
from tests.faults.clients import Reconnect, gather
from tests.faults.cluster import Cluster, tail
from tests.faults.scenarios import (
    Watched,
    same_frames,
    seq_reached,
    shared_last_seq,
    spread,
    start_run,
)

pytestmark = pytest.mark.slow


# Where a run stands when its worker is SIGKILLed; all are killed at one moment.
KILL_POINTS: dict[str, dict[str, float]] = {
    "finished": {"tokens": 20, "pause": 0.002},
    "before first token": {"delay": 60, "tokens": 5},
    "mid-stream, slow": {"tokens": 3000, "pause": 0.01},
    "mid-stream, fast": {"tokens": 100_000, "pause": 0.0005},
    "mid-stream, flat out": {"tokens": 100_000, "pause": 0.0},
    "right at the end": {"tokens": 120, "pause": 0.01},
    "just started": {"tokens": 500, "pause": 0.002},
}


@pytest.mark.parametrize("round_", [1, 2])
async def test_sigkill_at_many_points_no_watcher_sees_a_gap(running: Cluster, round_: int) -> None:
    """Runs on A at different points are cut by one SIGKILL of A. Every watcher on B (SSE
    and WebSocket, some joining after the kill) gets seqs 1..N then ``worker_lost``
    (``done`` if the run had finished), all the same frames; A's own clients got their
    frames in order until the cut. Round 1 starts the runs over SSE and kills A a few ms
    after a run's first frame (the run "at the end" has just ended); round 2 starts them
    over WebSocket and kills A a few tokens before the end of the run "at the end"."""
    a, b = running.workers
    runs: dict[str, Watched] = {}
    for label, config in KILL_POINTS.items():
        if label == "just started":
            continue
        ws = round_ == 2 and label != "right at the end"
        run = await start_run(label, a, ws=ws, **config)
        run.watch(b, sse=2, ws=2)
        run.watch(a, sse=1, ws=1)
        runs[label] = run
    finished = runs["finished"].starter.task
    assert finished is not None
    await asyncio.wait_for(finished, 15)
    for label in ("mid-stream, fast", "mid-stream, flat out"):
        await seq_reached(runs[label].starter, 200)
    # The run "at the end" has seqs run_start, 120 tokens, done. Its client's view lags
    # the run a little (writes are batched, up to 50 ms apart under load).
    await seq_reached(runs["right at the end"].starter, 118 if round_ == 1 else 116)
    if round_ == 1:
        runs["just started"] = await start_run("just started", a, **KILL_POINTS["just started"])
        runs["just started"].watch(b, sse=1, ws=1)

    a.kill()
    killed_at = time.monotonic()
    progress = {label: run.starter.recording.last_seq for label, run in runs.items()}
    # Clients that arrive after the worker died: B replays the log, then the final frame.
    for label in ("mid-stream, slow", "just started", "before first token"):
        if label in runs:
            runs[label].watch(b, sse=1, ws=1)

    followers = [f for run in runs.values() for f in run.followers]
    recordings = await gather(followers, timeout=25)

    lost_after: list[float] = []
    on_b = 0
    for run in runs.values():
        for follower in run.on(b):
            on_b += 1
            final = assert_complete(follower.recording, ends={"done", "worker_lost"})
            if final["type"] == "error" and follower.recording.final_at is not None:
                lost_after.append(follower.recording.final_at - killed_at)
        same_frames(run.on(b))
        for follower in run.on(a):  # cut by the kill (or ended before it)
            assert_in_order(follower.recording)
    outcomes = {label: run.on(b)[0].recording.outcome for label, run in runs.items()}
    assert outcomes["finished"] == "done"
    for label, outcome in outcomes.items():
        if label not in ("finished", "right at the end"):
            assert outcome == "worker_lost", (label, outcomes)
    assert runs["before first token"].on(b)[0].recording.seqs == [1, 2]
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as client:
        for run in runs.values():
            described = (await client.get(f"/runs/{run.run_id}")).json()
            final = run.on(b)[0].recording.frames[-1]
            assert described["last_seq"] == final["seq"], (run.label, described)
            assert described["status"] == ("success" if final["type"] == "done" else "error")

    frames = sum(len(r.frames) for r in recordings)
    print(
        f"\nSIGKILL round {round_}: {len(recordings)} clients ({on_b} on B), {frames} frames "
        f"checked; seq reached on A at the kill: {progress}; outcomes on B: {outcomes}; "
        f"worker_lost on B after the kill: {spread(lost_after)}"
    )


async def test_sigkill_clients_of_the_killed_worker_resume_elsewhere(running: Cluster) -> None:
    """Four runs stream on A; Redis hangs for 0.4 s (A's publishing stalls) and A is killed
    meanwhile. A's own clients were never sent a frame that Redis had not got (see
    ``Run.follow``), so, resuming on B (``Last-Event-ID`` / ``after``), each gets one
    final frame and the very same frames as a client of B."""
    a, b = running.workers
    to_b = Reconnect([b.url], attempts=4)
    runs = [
        await start_run(f"r{i}", a, ws=i % 2 == 1, reconnect=to_b, tokens=3000, pause=0.005)
        for i in range(4)
    ]
    for run in runs:
        run.watch(a, sse=0, ws=1, reconnect=to_b)
        await seq_reached(run.starter, 20)
    running.redis.freeze()
    try:
        await asyncio.sleep(0.4)
        a.kill()
    finally:
        running.redis.thaw()
    await asyncio.sleep(0.2)  # Redis takes what A had sent before it died
    ahead = {
        run.label: (run.starter.recording.last_seq, shared)
        for run in runs
        if run.starter.recording.last_seq > (shared := shared_last_seq(running, run.run_id))
    }
    for run in runs:
        run.watch(b, sse=1, ws=0)
    recordings = await gather([f for run in runs for f in run.followers], timeout=10)

    assert not ahead, f"clients ahead of the shared log at the kill (seen, shared): {ahead}"
    for run in runs:
        for follower in run.followers:
            assert_complete(follower.recording, ends={"done", "worker_lost"})
        same_frames(run.followers)
    assert len(recordings) == 12


async def test_sigterm_under_load_ends_that_workers_streams_only(running: Cluster) -> None:
    """SIGTERM to A with 37 open streams, 21 of them on A (SSE and WebSocket): the clients
    of A's runs get their frames in order, then ``done`` (runs that end within the 1 s
    grace) or ``shutdown``, then ``[DONE]``; the clients of B's runs go on undisturbed."""
    a, b = running.workers
    on_a: list[Watched] = []
    on_b: list[Watched] = []
    # Runs on A: three end within the grace period (1 s), four outlive it.
    for i in range(7):
        config = {"tokens": 60, "pause": 0.01} if i < 3 else {"tokens": 2000, "pause": 0.01}
        run = await start_run(f"a{i}", a, ws=i % 2 == 1, **config)
        run.watch(a, sse=1, ws=1)
        on_a.append(run)
    # Runs on B outlast A's shutdown.
    for i in range(4):
        run = await start_run(f"b{i}", b, ws=i % 2 == 1, tokens=250, pause=0.02)
        run.watch(b, sse=2, ws=1)
        on_b.append(run)
    for run in on_a + on_b:
        for follower in run.followers:
            await asyncio.wait_for(follower.started.wait(), 10)
    await seq_reached(on_a[0].starter, 25)

    a.term()
    termed_at = time.monotonic()
    exit_code = await asyncio.to_thread(a.wait, 30)
    exited_after = time.monotonic() - termed_at
    a_recordings = await gather([f for run in on_a for f in run.followers], timeout=10)
    b_recordings = await gather([f for run in on_b for f in run.followers], timeout=20)

    for run in on_a:
        for follower in run.followers:
            assert_complete(follower.recording, ends={"done", "shutdown"})
        same_frames(run.followers)
    outcomes = {run.label: run.starter.recording.outcome for run in on_a}
    assert [outcomes[f"a{i}"] for i in range(3)] == ["done"] * 3, outcomes
    assert [outcomes[f"a{i}"] for i in range(3, 7)] == ["shutdown"] * 4, outcomes
    for run in on_b:  # one connection each, never disturbed
        for follower in run.followers:
            assert_complete(follower.recording, ends={"done"})
            assert len(follower.recording.attempts) == 1, follower.recording.describe()
        same_frames(run.followers)

    assert exit_code in (0, -15), f"A exited with {exit_code}:\n{tail(a.log)}"
    last_final = max(r.final_at for r in a_recordings if r.final_at is not None) - termed_at
    frames = sum(len(r.frames) for r in a_recordings + b_recordings)
    print(
        f"\nSIGTERM: {len(a_recordings) + len(b_recordings)} clients ({len(a_recordings)} "
        f"on A), {frames} frames checked; A exited {exited_after:.2f} s after SIGTERM "
        f"(code {exit_code}); last final frame of A's runs after {last_final:.2f} s; "
        f"A's runs: {outcomes}"
    )


async def test_sigterm_shutdown_frames_reach_the_other_workers(running: Cluster) -> None:
    """Runs on A watched on B; SIGTERM to A while Redis is slow (hung 0.5 s around the end
    of the 1 s grace): B's watchers get the same frames as A's clients, ``shutdown``
    last."""
    a, b = running.workers
    runs = [await start_run(f"a{i}", a, ws=i % 2 == 1, tokens=2000, pause=0.01) for i in range(3)]
    for run in runs:
        run.watch(b, sse=1, ws=1)
    for run in runs:
        for follower in run.followers:
            await asyncio.wait_for(follower.started.wait(), 10)
    a.term()
    await asyncio.sleep(0.8)
    running.redis.freeze()
    try:
        await asyncio.sleep(0.5)
    finally:
        running.redis.thaw()
    await asyncio.to_thread(a.wait, 30)
    await gather([f for run in runs for f in run.followers], timeout=12)
    for run in runs:
        for follower in run.followers:
            assert_complete(follower.recording, ends={"shutdown"})
        same_frames(run.followers)


async def test_sigterm_clients_of_another_workers_run_resume_there(running: Cluster) -> None:
    """Clients on A of runs executing on B, SIGTERM to A: A exits promptly, and each
    client's stream ends so that it resumes on B (a cut, an error frame it resumes after,
    or WebSocket close 1012) and gets the whole run; never a ``[DONE]`` before the end."""
    a, b = running.workers
    to_b = Reconnect([b.url], attempts=4)
    runs = [await start_run(f"b{i}", b, tokens=250, pause=0.02) for i in range(2)]
    for run in runs:
        run.watch(a, sse=2, ws=2, reconnect=to_b)
    for run in runs:
        for follower in run.followers:
            await asyncio.wait_for(follower.started.wait(), 10)
    a.term()
    termed_at = time.monotonic()
    await asyncio.to_thread(a.wait, 30)
    exited_at = time.monotonic()
    recordings = await gather([f for run in runs for f in run.followers], timeout=15)
    print(
        f"\nA exited after {exited_at - termed_at:.2f} s\n"
        + "\n".join(r.describe() for r in recordings)
    )
    for run in runs:
        for follower in run.followers:
            assert_complete(follower.recording, ends={"done"})
        same_frames(run.followers)
    # The runs (5 s) went on on B after A was gone: they did not hold its exit.
    ended = min(run.starter.recording.final_at or 0 for run in runs)
    assert exited_at < ended, "the remote runs held the worker's exit"
