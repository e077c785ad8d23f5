"""Stream pacing: the write window widens with the streams writing at once, within its
bounds; streams waiting for their run to say something do not widen it."""

from __future__ import annotations

import asyncio

from agent_server.streams import Streams


def test_window_widens_with_streams_pacing_and_is_capped() -> None:
    streams = Streams(flush_interval=0.002, flush_interval_max=0.05)
    assert streams.window() == 0.002  # a lone (or no) stream
    streams.pacing = 2
    assert abs(streams.window() - 0.006) < 1e-9
    streams.pacing = 1000
    assert streams.window() == 0.05


def test_idle_streams_do_not_widen_the_window() -> None:
    streams = Streams(flush_interval=0.002, flush_interval_max=0.05)
    with streams.stream(), streams.stream(), streams.stream():
        assert streams.active == 3  # open (the /metrics gauge) ...
        assert streams.window() == 0.002  # ... but none is writing
    assert streams.active == 0


async def test_pace_counts_the_streams_waiting_out_a_window() -> None:
    streams = Streams(flush_interval=0.01, flush_interval_max=0.05)
    seen: list[float] = []

    async def write_then_pace() -> None:
        seen.append(streams.window())
        await streams.pace()

    first = asyncio.create_task(streams.pace())
    await asyncio.sleep(0)
    await write_then_pace()  # one other stream is pacing
    await first
    assert abs(seen[0] - 0.02) < 1e-9
    assert streams.pacing == 0


def test_zero_interval_writes_at_once() -> None:
    streams = Streams(flush_interval=0.0)
    streams.pacing = 5
    assert streams.window() == 0.0
