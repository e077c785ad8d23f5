"""Two thousand idle WebSockets on one ``agent-server serve`` process: each is pinged
by the server's one heartbeat loop, each answers a client ``ping``, and SIGTERM closes
every one with 1012 and a complete closing handshake (agent_server/heartbeats.py,
agent_server/server.py). What each socket costs is measured by bench/connections.py."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.test_shutdown import free_port, serve

SOCKETS = 2000
BATCH = 200  # connections opened at once


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed, "raise ulimit -Hn"


async def first_ping(ws: ClientConnection) -> None:
    """Wait for the server's heartbeat ``ping`` and answer it, as a page does."""
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
            return


async def ping_pong(ws: ClientConnection, number: int) -> None:
    await ws.send(json.dumps({"type": "ping", "id": number}))
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "pong" and message.get("id") == number:
            return


async def closed_by_server(ws: ClientConnection) -> tuple[int | None, bool]:
    """The close code the server sent, and whether the socket then ended cleanly: the
    closing handshake complete and the TCP connection closed without a reset."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        await ws.wait_closed()
        code = closed.rcvd.code if closed.rcvd is not None else None
        return code, closed.sent is not None and ws.connection_exc is None


async def in_batches(coroutines: list, size: int = BATCH) -> list:  # type: ignore[type-arg]
    results = []
    for start in range(0, len(coroutines), size):
        results += await asyncio.gather(*coroutines[start : start + size])
    return results


def test_two_thousand_idle_sockets_are_pinged_answered_and_closed_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raise_fd_limit(SOCKETS + 200)
    monkeypatch.setenv("AGENT_SERVER_WS_PING_INTERVAL", "1")
    proc = serve(free_port(), tmp_path / "stderr.log")
    port = proc.args[proc.args.index("--port") + 1]  # type: ignore[union-attr]
    url = f"ws://127.0.0.1:{port}/ws"

    async def scenario() -> tuple[list[tuple[int | None, bool]], int]:
        sockets = await in_batches(
            [connect(url, open_timeout=30, ping_interval=None) for _ in range(SOCKETS)]
        )
        # every socket hears the heartbeat (one loop for all of them) ...
        await asyncio.wait_for(in_batches([first_ping(ws) for ws in sockets]), 60)
        # ... and answers a ping of its own
        await asyncio.wait_for(in_batches([ping_pong(ws, n) for n, ws in enumerate(sockets)]), 60)
        closes = [asyncio.ensure_future(closed_by_server(ws)) for ws in sockets]
        proc.send_signal(signal.SIGTERM)
        done = await asyncio.wait_for(asyncio.gather(*closes), 30)
        code = await asyncio.to_thread(proc.wait, 30)
        return done, code

    try:
        closes, code = asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert closes == [(1012, True)] * SOCKETS
    assert code in (0, -signal.SIGTERM), (tmp_path / "stderr.log").read_text()[-3000:]
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()
