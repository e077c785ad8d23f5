"""Stream pacing: the write window widens with concurrent streams, within its bounds."""

from __future__ import annotations

from agent_server.streams import Streams


def test_window_widens_with_streams_and_is_capped() -> None:
    streams = Streams(flush_interval=0.002, flush_interval_max=0.05)
    assert streams.window() == 0.002  # a lone (or no) stream
    with streams.stream(), streams.stream(), streams.stream():
        assert streams.active == 3
        assert abs(streams.window() - 0.006) < 1e-9
    assert streams.active == 0
    streams.active = 1000
    assert streams.window() == 0.05


def test_zero_interval_writes_at_once() -> None:
    streams = Streams(flush_interval=0.0)
    with streams.stream():
        assert streams.window() == 0.0
