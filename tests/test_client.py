"""The Python client against a live server, including resume after a dropped connection."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from agent_server import client as client_module
from agent_server.app import create_app
from agent_server.client import AgentClient, AgentServerError, SyncAgentClient
from tests.conftest import test_settings
from tests.live import live_server
from tests.test_slow_consumers import metric, start


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server(create_app(test_settings())) as url:
        yield url


def test_sync_client(server: str) -> None:
    with SyncAgentClient(server) as client:
        frames = list(client.stream("agent", "what is 6*7?", thread_id="cl-1"))
        assert frames[0].type == "run_start" and frames[-1].type == "done"
        assert any(f.type == "tool_end" and f.output == "42" for f in frames)
        result = client.wait("agent", "again", thread_id="cl-1")
        assert result["status"] == "success"
        assert len(client.threads.state("cl-1")["values"]["messages"]) == 6
        assert "agent" in [g["name"] for g in client.graphs()]
        assert "calculator" in [t["name"] for t in client.tools()]
        run = client.runs.get(frames[0].run_id)
        assert run["status"] == "success"
        joined = list(client.runs.join(frames[0].run_id, after=2))
        assert [f.seq for f in joined] == [f.seq for f in frames[2:]]
        with pytest.raises(AgentServerError) as error:
            list(client.stream("nope", "x"))
        assert error.value.status == 404 and error.value.code == "graph_not_found"


async def test_async_client(server: str) -> None:
    async with AgentClient(server) as client:
        frames = [f async for f in client.stream("agent", "2+2")]
        assert frames[-1].type == "done"
        with pytest.raises(AgentServerError) as error:
            await client.runs.cancel(frames[0].run_id)
        assert error.value.code == "run_finished"


async def test_stream_resumes_after_a_dropped_connection(server: str) -> None:
    """A proxy cuts the first connection mid-stream; the client resumes, nothing lost."""
    host, port = server.removeprefix("http://").split(":")
    cuts = {"left": 1}

    async def relay(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None
    ) -> None:
        sent = 0
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
                sent += len(data)
                if limit is not None and sent > limit:
                    break
        finally:
            writer.close()

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        limit = 1500 if cuts["left"] else None
        cuts["left"] = 0
        await asyncio.gather(
            relay(client_reader, upstream_writer, None),
            relay(upstream_reader, client_writer, limit),
            return_exceptions=True,
        )

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    try:
        async with AgentClient(f"http://127.0.0.1:{proxy_port}") as client:
            frames = [
                f async for f in client.stream("agent", '/long_task {"steps": 8, "delay": 0.05}')
            ]
    finally:
        proxy.close()
    assert cuts["left"] == 0  # the cut happened
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1].type == "done"


@pytest.fixture(scope="module")
def strict_server() -> Iterator[str]:
    """Drops a reader 20 frames behind: what a slow consumer of a fast run meets."""
    settings = test_settings(
        graphs={"flood": "tests.sample_graphs:flood"}, subscriber_max_lag=20, send_timeout=5.0
    )
    with live_server(create_app(settings)) as url:
        yield url


FLOOD = {"count": 400, "size": 32_000, "interval": 0.005}  # 2 s, 13 MB
DROPPED = "agent_server_subscribers_dropped_slow_total"
SMALL_BUFFER = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]  # a stall soon blocks the server


async def test_join_resumes_after_a_slow_consumer_is_dropped(strict_server: str) -> None:
    """A consumer stalls: the server drops it as too slow, the client resumes, nothing lost."""
    dropped = metric(strict_server, DROPPED)
    run_id = start(strict_server, FLOOD)
    seqs = []
    transport = httpx.AsyncHTTPTransport(socket_options=SMALL_BUFFER)
    async with AgentClient(strict_server, transport=transport) as client:
        async for frame in client.runs.join(run_id):
            seqs.append(frame.seq)
            if len(seqs) == 1:
                await asyncio.sleep(1.0)  # the run writes 200 frames meanwhile
    assert metric(strict_server, DROPPED) > dropped  # more than once on a loaded machine
    assert seqs == list(range(1, FLOOD["count"] + 3))  # run_start, the chunks, done


def test_sync_join_resumes_after_a_slow_consumer_is_dropped(strict_server: str) -> None:
    dropped = metric(strict_server, DROPPED)
    run_id = start(strict_server, FLOOD)
    seqs = []
    transport = httpx.HTTPTransport(socket_options=SMALL_BUFFER)
    with SyncAgentClient(strict_server, transport=transport) as client:
        for frame in client.runs.join(run_id):
            seqs.append(frame.seq)
            if len(seqs) == 1:
                time.sleep(1.0)
    assert metric(strict_server, DROPPED) > dropped  # more than once on a loaded machine
    assert seqs == list(range(1, FLOOD["count"] + 3))


def test_join_gives_up_after_resume_for_without_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "RESUME_FOR", 0.5)
    with socket.socket() as closed:  # a port nobody listens on: every connect is refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        started = time.monotonic()
        with SyncAgentClient(url) as client, pytest.raises(AgentServerError) as error:
            list(client.runs.join("some-run"))
    assert error.value.code == "unreachable" and "some-run" in error.value.message
    assert time.monotonic() - started < 5
