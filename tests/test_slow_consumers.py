"""Slow consumers over real sockets: a stalled client is dropped, nobody else waits for it.

The run under test (``flood``) writes custom frames of 32 KB every 5 ms, about 6 MB/s: a
client that stops reading fills the kernel's buffers (a couple of MB on loopback) within
half a second, and then the server's ``send`` blocks.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx_sse
import pytest
import uvicorn

from agent_server.app import create_app
from agent_server.server import Server
from tests.conftest import test_settings
from tests.helpers import dispatched
from tests.live import live_server

SEND_TIMEOUT = 2.0
MAX_LAG = 50
GRAPHS = {"flood": "tests.sample_graphs:flood"}
FLOOD = {"count": 400, "size": 32_000, "interval": 0.005}  # about 2 s, 13 MB
SMALL = {"count": 400, "size": 100, "interval": 0.005}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    settings = test_settings(graphs=GRAPHS, subscriber_max_lag=MAX_LAG, send_timeout=SEND_TIMEOUT)
    with live_server(create_app(settings)) as url:
        yield url


def start(url: str, configurable: dict[str, Any]) -> str:
    body = {"graph": "flood", "message": "x", "config": {"configurable": configurable}}
    response = httpx.post(f"{url}/runs", json=body, timeout=10)
    assert response.status_code == 202
    run_id: str = response.json()["run_id"]
    return run_id


def complete_frames(raw: bytes) -> list[dict[str, Any]]:
    """The frames of complete SSE events in ``raw`` (a cut-off last event is left out)."""
    frames = []
    for block in raw.split(b"\n\n")[:-1]:
        for line in block.split(b"\n"):
            if line.startswith(b"data: {"):
                frames.append(json.loads(line[6:]))
    return frames


def dechunk(raw: bytes) -> bytes:
    """An HTTP/1.1 chunked body, as far as it goes (the last chunk may be cut off)."""
    out = []
    while raw:
        size_line, sep, raw = raw.partition(b"\r\n")
        if not sep or not size_line:
            break
        size = int(size_line, 16)
        if size == 0:
            break
        out.append(raw[:size])
        raw = raw[size + 2 :]
    return b"".join(out)


def stalled_client(url: str, path: str) -> socket.socket:
    """Sends a GET with a tiny receive buffer, reads the response headers, then stops."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: not one body byte is consumed
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    raw = b""
    while chunk := sock.recv(1 << 20):
        raw += chunk
    return raw


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


class Subscriber(threading.Thread):
    """A well-behaved client (httpx-sse) following a run to its end."""

    def __init__(self, url: str, run_id: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.run_id, self.headers = url, run_id, headers or {}
        self.frames: list[dict[str, Any]] = []
        self.done = False
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        with (
            httpx.Client(timeout=30) as client,
            httpx_sse.connect_sse(
                client, "GET", f"{self.url}/runs/{self.run_id}/stream", headers=self.headers
            ) as source,
        ):
            for event in dispatched(source):
                if event.data == "[DONE]":
                    self.done = True
                else:
                    self.frames.append(json.loads(event.data))
        self.seconds = time.monotonic() - started


def follow_all(url: str, run_ids: list[str]) -> list[Subscriber]:
    subscribers = [Subscriber(url, run_id) for run_id in run_ids]
    for subscriber in subscribers:
        subscriber.start()
    for subscriber in subscribers:
        subscriber.join(timeout=30)
    return subscribers


def assert_complete(subscriber: Subscriber) -> None:
    seqs = [frame["seq"] for frame in subscriber.frames]
    assert seqs == list(range(1, len(seqs) + 1))
    assert subscriber.frames[-1]["type"] == "done" and subscriber.done
    assert len(seqs) == FLOOD["count"] + 2  # run_start, the chunks, done


def test_a_stalled_client_is_dropped_and_nobody_waits_for_it(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_server.sse")
    # Baseline: two subscribers of one run and one of another, nobody stalled.
    first = start(server, FLOOD)
    baseline = follow_all(server, [first, first, start(server, SMALL)])
    for subscriber in baseline:
        assert_complete(subscriber)

    dropped_before = metric(server, "agent_server_subscribers_dropped_slow_total")
    run_id = start(server, FLOOD)
    stalled = stalled_client(server, f"/runs/{run_id}/stream")
    try:
        others = follow_all(server, [run_id, run_id, start(server, SMALL)])
        for subscriber in others:
            assert_complete(subscriber)
        # Loosely: the stalled client did not hold anyone up (each run takes about 2 s).
        slowest = max(s.seconds for s in baseline)
        assert max(s.seconds for s in others) < slowest * 1.5 + 1.0

        deadline = time.monotonic() + SEND_TIMEOUT + 5
        while metric(server, "agent_server_subscribers_dropped_slow_total") == dropped_before:
            assert time.monotonic() < deadline, "the stalled client was never dropped"
            time.sleep(0.1)
        assert metric(server, "agent_server_subscribers") == 0
        assert f"subscriber of run {run_id}: it stopped reading" in caplog.text
        assert not [r for r in caplog.records if r.exc_info]  # dropped quietly

        # What it was sent before it was dropped; the server closes once that is read.
        received = dechunk(read_to_end(stalled))
    finally:
        stalled.close()
    assert not received.endswith(b"data: [DONE]\n\n")
    got = complete_frames(received)
    last = got[-1]["seq"]
    assert [f["seq"] for f in got] == list(range(1, last + 1))
    assert last < FLOOD["count"] + 2

    rest = Subscriber(server, run_id, headers={"Last-Event-ID": str(last)})
    rest.run()
    assert [f["seq"] for f in rest.frames] == list(range(last + 1, FLOOD["count"] + 3))
    assert rest.frames[-1]["type"] == "done" and rest.done


def test_a_lagging_reader_is_told_and_resumes_mid_run(server: str) -> None:
    run_id = start(server, {**FLOOD, "count": 800})  # 4 s: still running when it resumes
    small_buffer = httpx.HTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]
    )
    raw = b""
    with (
        httpx.Client(transport=small_buffer, timeout=30) as client,
        client.stream("GET", f"{server}/runs/{run_id}/stream") as response,
    ):
        chunks = response.iter_raw()
        raw += next(chunks)
        # Stop reading for a while, less than send_timeout: the buffers fill within about
        # 0.5 s, then the server's send blocks while the run goes on, so this reader
        # falls more than MAX_LAG frames (0.25 s) behind.
        time.sleep(SEND_TIMEOUT * 0.75)
        for chunk in chunks:
            raw += chunk
    assert re.search(rb"\n: too slow \(\d+ frames behind\); reconnect", raw), raw[-300:]
    assert b"[DONE]" not in raw
    got = complete_frames(raw)
    last = got[-1]["seq"]
    assert [f["seq"] for f in got] == list(range(1, last + 1))

    assert httpx.get(f"{server}/runs/{run_id}").json()["status"] == "running"
    # Resumed while the run still goes on, from more than MAX_LAG behind. On a loaded
    # machine this reader may fall behind again: it resumes again, as EventSource would.
    rest: list[dict[str, Any]] = []
    for _ in range(10):
        resumed = Subscriber(server, run_id, headers={"Last-Event-ID": str(last)})
        resumed.run()
        rest += resumed.frames
        if resumed.done:
            break
        assert resumed.frames, "a resumed reader made no progress"
        last = resumed.frames[-1]["seq"]
    assert [f["seq"] for f in rest] == list(range(got[-1]["seq"] + 1, 800 + 3))
    assert rest[-1]["type"] == "done" and resumed.done


def server_side_state(port: int, client_port: int) -> str | None:
    """The TCP state (``/proc/net/tcp``, hex) of the server's end of one connection."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        if (local, remote) == (port, client_port):
            return fields[3]
    return None


@contextmanager
def agent_server(settings: Any) -> Iterator[str]:
    """Our own ``Server`` (what ``agent-server serve`` runs), in a thread."""
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning")
    server = Server(config, app, grace=0.5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


ESTABLISHED = "01"


def test_the_server_closes_a_dropped_clients_socket() -> None:
    """uvicorn's close of a dropped client waits for it to read; our server aborts it."""
    send_timeout = 1.0
    settings = test_settings(graphs=GRAPHS, send_timeout=send_timeout)
    with agent_server(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        stalled = stalled_client(url, f"/runs/{start(url, FLOOD)}/stream")
        try:
            client_port = stalled.getsockname()[1]
            assert server_side_state(port, client_port) == ESTABLISHED
            # blocked send (about 0.5 s), send_timeout, then send_timeout without progress
            deadline = time.monotonic() + 0.5 + 2 * send_timeout + 3
            while server_side_state(port, client_port) == ESTABLISHED:
                assert time.monotonic() < deadline, "the stalled connection was never closed"
                time.sleep(0.1)
        finally:
            stalled.close()
