"""One heartbeat loop for every socket: pings when due, idle sockets expired, a
failing or slow socket never stops the others (agent_server/heartbeats.py)."""

from __future__ import annotations

import asyncio
import time

from agent_server.heartbeats import Heartbeats


class FakeSession:
    def __init__(self, *, fails: bool = False) -> None:
        self.last_heard = time.monotonic()
        self.pings = 0
        self.expired = False
        self.fails = fails

    async def ping(self) -> None:
        self.pings += 1
        if self.fails:
            raise ConnectionResetError("gone")

    def expire(self) -> None:
        self.expired = True


async def test_pings_every_socket_on_one_task_and_expires_the_silent() -> None:
    heartbeats = Heartbeats(interval=0.05, idle=0.3)
    talking, silent, broken = FakeSession(), FakeSession(), FakeSession(fails=True)
    tasks_before = len(asyncio.all_tasks())
    for session in (talking, silent, broken):
        heartbeats.add(session)
    assert len(asyncio.all_tasks()) == tasks_before + 1  # one loop, not one per socket
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        talking.last_heard = time.monotonic()  # it answers its pings
        await asyncio.sleep(0.02)
    assert talking.pings >= 4 and not talking.expired
    assert broken.pings >= 4  # its errors never stopped the loop ...
    assert silent.expired and silent not in heartbeats.due  # ... silent past 0.3 s: closed
    assert 4 <= silent.pings <= 7  # pinged until then, not after
    heartbeats.discard(talking)
    heartbeats.discard(broken)
    await asyncio.sleep(0.1)
    assert heartbeats.task is not None and heartbeats.task.done()  # no sockets, no loop


async def test_a_socket_added_again_restarts_the_loop() -> None:
    heartbeats = Heartbeats(interval=0.02, idle=10)
    first = FakeSession()
    heartbeats.add(first)
    heartbeats.discard(first)
    await asyncio.sleep(0.05)
    second = FakeSession()
    heartbeats.add(second)
    await asyncio.sleep(0.1)
    assert second.pings >= 2
    await heartbeats.stop()
