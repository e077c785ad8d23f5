"""Runs watched by many clients, shared by the fault tests."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from tests.faults.checks import ranges
from tests.faults.clients import Follower, Reconnect, SseFollower, WsFollower
from tests.faults.cluster import Cluster, Worker


def body(**configurable: float) -> dict[str, Any]:
    return {
        "graph": "tokens",
        "message": "go",
        "on_disconnect": "continue",
        "config": {"configurable": configurable},
    }


@dataclass
class Watched:
    """One run and every client following it."""

    label: str
    starter: Follower
    watchers: list[Follower] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        assert self.starter.run_id is not None, f"{self.label}: the run did not start"
        return self.starter.run_id

    @property
    def followers(self) -> list[Follower]:
        return [self.starter, *self.watchers]

    def on(self, worker: Worker) -> list[Follower]:
        return [f for f in self.followers if f.url == worker.url]

    def watch(
        self, worker: Worker, *, sse: int, ws: int, reconnect: Reconnect | None = None
    ) -> None:
        for kind, count in ((SseFollower, sse), (WsFollower, ws)):
            for _ in range(count):
                name = f"{self.label}: {kind.transport}#{len(self.watchers)}@{worker.name}"
                follower = kind(name, worker.url, self.run_id, reconnect=reconnect)
                follower.start()
                self.watchers.append(follower)


def starter(
    label: str, worker: Worker, *, ws: bool, reconnect: Reconnect | None, **config: float
) -> Watched:
    """A run that a client of ``worker`` starts (SSE ``POST /runs/stream`` or a WebSocket
    ``run``) and keeps following, so the run executes on ``worker``."""
    name = f"{label}: starter-{'ws' if ws else 'sse'}@{worker.name}"
    follower: Follower
    if ws:
        message = {k: v for k, v in body(**config).items() if k != "on_disconnect"}
        follower = WsFollower(name, worker.url, message=message, reconnect=reconnect)
    else:
        follower = SseFollower(name, worker.url, body=body(**config), reconnect=reconnect)
    follower.start()
    return Watched(label, follower)


async def start_run(
    label: str,
    worker: Worker,
    *,
    ws: bool = False,
    reconnect: Reconnect | None = None,
    **config: float,
) -> Watched:
    """:func:`starter`, once its first frame came."""
    run = starter(label, worker, ws=ws, reconnect=reconnect, **config)
    await asyncio.wait_for(run.starter.started.wait(), 15)
    assert run.starter.recording.frames, run.starter.recording.describe()
    return run


async def seq_reached(follower: Follower, seq: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while follower.recording.last_seq < seq:
        assert time.monotonic() < deadline, f"no seq {seq}: {follower.recording.describe()}"
        await asyncio.sleep(0.005)


def same_frames(followers: Sequence[Follower]) -> None:
    """These clients of one run saw the very same frames (the final one included)."""
    first = followers[0].recording
    for follower in followers[1:]:
        other = follower.recording
        assert other.frames == first.frames, (
            f"{other.name} saw {ranges(other.seqs)} ({other.outcome}), "
            f"{first.name} saw {ranges(first.seqs)} ({first.outcome})"
        )


def shared_last_seq(cluster: Cluster, run_id: str) -> int:
    """The seq of the last frame of the run's log in Redis (0: none)."""
    with redis.Redis.from_url(cluster.redis.url) as client:
        last = client.xrevrange(f"{cluster.prefix}:run:{run_id}:log", count=1)
    return int(last[0][0].split(b"-")[1]) if last else 0


def spread(values: Sequence[float]) -> str:
    if not values:
        return "none"
    return (
        f"min {min(values):.2f} s, median {statistics.median(values):.2f} s, "
        f"max {max(values):.2f} s (n={len(values)})"
    )
