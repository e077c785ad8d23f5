"""Stream pacing: the write window widens with the streams writing at once, within its
bounds; streams waiting for their run to say something do not widen it; a fan-out waits
in proportion to what its delivery took, and lets the loop run between slices of it."""

from __future__ import annotations

import asyncio
import time
import types

import pytest

from agent_server.fanout import Hub, Hubs, Member
from agent_server.frames import Encoded
from agent_server.streams import Delivery, Streams


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


def test_a_costly_fan_out_waits_in_proportion_within_its_bound() -> None:
    """A delivery to many sockets that took ``cost`` waits long enough for delivering to
    take at most ``fanout_share`` of the loop, never longer than ``fanout_wait_max``; a
    cheap one keeps the usual window."""
    streams = Streams(flush_interval=0.002, flush_interval_max=0.05)
    assert streams.window(0.0001) == 0.002  # a few sockets: microseconds
    assert abs(streams.window(0.002) - 0.018) < 1e-9  # 2 ms of writes: 10 % of 20 ms
    assert streams.window(0.01) == streams.fanout_wait_max == 0.025  # the lag it may add
    streams.pacing = 1000
    assert streams.window(0.002) == 0.05  # a wider window under load stays


def test_a_fan_out_takes_more_of_an_idle_loop() -> None:
    """While the rest of the worker leaves the loop idle (a model's pace), a fan-out may
    take up to ``fanout_share_max`` of it; as the rest's share grows, less, down to
    ``fanout_share`` when it is busy (a fast model)."""
    streams = Streams(flush_interval=0.002)
    share = streams.fanout_share_max
    assert abs(streams.window(0.002, others=0.0) - 0.002 * (1 / share - 1)) < 1e-9
    assert abs(streams.window(0.002, others=0.7) - 0.002 * (1 / 0.2 - 1)) < 1e-9
    assert abs(streams.window(0.002, others=0.95) - 0.018) < 1e-9
    assert streams.window(0.002) == streams.window(0.002, others=1.0)  # unknown: busy


async def test_a_fan_out_pace_sees_what_the_rest_of_the_worker_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """:class:`FanoutPace` takes the loop thread's CPU time besides the deliveries for
    the rest of the worker's share: a loop idle between two deliveries leaves a fan-out
    more of it than one kept busy (a clock of our own: a loaded machine's is noisy)."""
    clock = {"wall": 0.0, "cpu": 0.0}
    fake = types.SimpleNamespace(
        perf_counter=lambda: clock["wall"], thread_time=lambda: clock["cpu"]
    )
    monkeypatch.setattr("agent_server.streams.time", fake)
    streams = Streams(flush_interval=0.0)
    others: list[float] = []
    monkeypatch.setattr(streams, "pace", lambda cost, rest: others.append(rest) or asyncio.sleep(0))
    pace = streams.fanout_pace()
    clock["wall"], clock["cpu"] = 0.050, 0.002  # 2 ms of delivery in 50 ms, else idle
    await pace.wait(0.002)
    clock["wall"], clock["cpu"] = 0.100, 0.049  # 2 ms of delivery, 45 ms of a run
    await pace.wait(0.002)
    assert others == pytest.approx([0.0, 0.9])
    idle, busy = (streams.window(0.002, rest) for rest in others)
    assert busy == pytest.approx(0.018) and idle == pytest.approx(0.002 / 0.35 - 0.002)


async def test_a_hub_yields_to_the_loop_while_it_delivers() -> None:
    """A delivery to many members lets the run (any other task) go on between slices of
    members, and every member gets the whole batch once."""
    hubs = Hubs(Streams())
    members = hubs.streams.fanout_slice * 3
    hub = Hub(hubs, run=None, position=0)  # type: ignore[arg-type]
    got: dict[int, list[str]] = {}
    ran_meanwhile: list[int] = []

    class Connection:
        def __init__(self, number: int) -> None:
            self.number = number
            self.followers: dict[str, object] = {}

        def send_shared(self, shared: object) -> bool:
            got.setdefault(self.number, []).append(shared.messages[0].decode())  # type: ignore[attr-defined]
            return True

    class Session:
        def __init__(self, number: int) -> None:
            self.connection = Connection(number)

    for number in range(members):
        session = Session(number)
        hub.members[session] = Member(hub, session, 0)  # type: ignore[index, arg-type]

    async def other() -> None:
        ran_meanwhile.append(len(got))

    task = asyncio.create_task(other())
    batch = [Encoded(1, "token", b'{"seq":1}'), Encoded(2, "token", b'{"seq":2}')]
    cost = await hub.deliver(batch)
    await task
    assert cost > 0
    assert 0 < ran_meanwhile[0] < members  # it ran in the middle of the delivery
    assert all(messages == ['[{"seq":1},{"seq":2}]'] for messages in got.values())
    assert len(got) == members
    assert all(member.after == 2 for member in hub.members.values())


async def test_a_delivery_slice_ends_after_its_time_where_writes_are_slow() -> None:
    """Where each write is slow, a slice ends after ``duration`` seconds, not after
    ``size`` sockets: the run's next token waits for no more than that."""
    delivery = Delivery(size=64, duration=0.002)
    yields = []
    for _ in range(12):
        yields.append(await delivery.step())
        end = time.perf_counter() + 0.001  # a slow write
        while time.perf_counter() < end:
            pass
    assert sum(yields) >= 3  # every second or third socket (by count: never)
    assert delivery.busy >= 0.012
