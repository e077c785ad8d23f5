"""Slow clients and the connection cap against a real ``agent-server serve`` process.

The production path (the CLI's Server and HttpProtocol, agent_server/http_protocol.py),
with 1 s bounds on headers and bodies: trickled headers or bodies get 408 (or a reset)
and are closed; normal requests, keep-alive reuse, SSE streams and WebSocket sessions
longer than the bounds are not touched; past ``max_connections`` a new connection is
refused with 503 until others close. Times are asserted only as generous upper bounds
(the sweep runs once a second; the machine is shared) and as the bound itself from below.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ROOT

BOUND = 1.0  # AGENT_SERVER_HEADER_TIMEOUT and AGENT_SERVER_BODY_TIMEOUT
CLOSED_WITHIN = 15.0  # generous: bound + sweep interval + a loaded machine
CAP = 4


@dataclass
class Served:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Runs the rest of its command line with RLIMIT_NOFILE (soft, hard) = argv[1:3], in the
# same process (preexec_fn would do it too, but is unsafe in a process with threads).
WITH_FD_LIMIT = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
)


def serve(log: Path, fd_limit: tuple[int, int] | None = None, **env: str) -> Served:
    port = free_port()
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("AGENT_SERVER_")},
        "AGENT_SERVER_DATABASE_URL": "memory://",
        "AGENT_SERVER_HEADER_TIMEOUT": str(BOUND),
        "AGENT_SERVER_BODY_TIMEOUT": str(BOUND),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    command = [sys.executable, "-m", "agent_server.cli", "serve", "--port", str(port)]
    if fd_limit is not None:
        command[1:1] = ["-c", WITH_FD_LIMIT, *map(str, fd_limit)]
    for name in ("ticker", "flood"):
        command += ["--graph", f"{name}=tests.sample_graphs:{name}"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    served = Served(f"http://127.0.0.1:{port}", port, process, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"server did not start:\n{served.output()}")
        time.sleep(0.05)


def stop(served: Served) -> None:
    served.process.terminate()
    try:
        served.process.wait(15)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("limits") / "server.log")
    yield served
    stop(served)


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[Served]:
    served = serve(tmp_path / "server.log", AGENT_SERVER_MAX_CONNECTIONS=str(CAP))
    yield served
    stop(served)


def read_to_close(sock: socket.socket, drip: bytes = b"") -> tuple[bytes, bool]:
    """What the server sends until it ends the connection, and whether it reset it; sends
    ``drip`` a byte every 0.1 s meanwhile (nothing if empty)."""
    sock.settimeout(0.1)
    received = b""
    for index in range(int(CLOSED_WITHIN * 10)):
        try:
            if drip:
                sock.send(drip[index % len(drip) : index % len(drip) + 1])
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return received, True
        if not chunk:
            return received, False
        received += chunk
    raise AssertionError(f"still open after {CLOSED_WITHIN} s; received {received!r}")


def trickle(served: Served, head: bytes, drip: bytes) -> tuple[bytes, float, bool]:
    """Sends ``head``, then ``drip`` a byte every 0.1 s until the server ends the
    connection; returns what the server sent, when it ended it, and whether by reset."""
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        started = time.monotonic()
        sock.sendall(head)
        received, reset = read_to_close(sock, drip)
        return received, time.monotonic() - started, reset


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


def assert_request_timeout(received: bytes, reset: bool, what: str) -> None:
    if reset and not received:
        return  # allowed: the 408 could not be written
    status, headers, body = parse_response(received)
    assert status == 408, received
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == "request_timeout"
    assert what in error["message"]


@pytest.mark.parametrize(
    "head", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "partial"]
)
def test_headers_slower_than_the_bound_get_408_and_a_close(server: Served, head: bytes) -> None:
    drip = b"X-Slow: 1\r\n" if head else b""  # a silent client sends nothing at all
    received, elapsed, reset = trickle(server, head, drip)
    assert_request_timeout(received, reset, "headers")
    assert elapsed >= BOUND * 0.9


def test_a_body_slower_than_the_bound_gets_408_json(server: Served) -> None:
    body = json.dumps({"graph": "ticker", "message": "x" * 200}).encode()
    head = (
        b"POST /runs/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    received, elapsed, reset = trickle(server, head, body)
    assert_request_timeout(received, reset, "body")
    assert elapsed >= BOUND * 0.9
    # The route waiting for the body ends quietly, not as an unhandled error.
    deadline = time.monotonic() + CLOSED_WITHIN
    while "request body came too slowly" not in server.output():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)
    assert "Traceback" not in server.output()
    assert "unhandled error" not in server.output()


def test_a_body_after_the_response_is_cut_off(server: Served) -> None:
    """A route that answers without reading its body: the trickled rest is not kept."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    received, _, _ = trickle(server, head, b"x")
    status, _, _ = parse_response(received)
    assert status == 200  # the answer came; then the connection was closed


def request(sock: socket.socket, path: str) -> bytes:
    """One ``GET`` on an open connection, read to the end of its (Content-Length) body."""
    sock.sendall(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    received = b""
    while True:
        _, sep, body = received.partition(b"\r\n\r\n")
        if sep and len(body) >= int(parse_response(received)[1]["content-length"]):
            return received
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received!r}"
        received += chunk


def test_keep_alive_connections_idle_past_the_bound_are_reused(server: Served) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert parse_response(request(sock, "/healthz"))[0] == 200
        # Idle for longer than the header bound and its sweep, less than keep-alive (5 s).
        time.sleep(BOUND + 1.5)
        assert parse_response(request(sock, "/healthz"))[0] == 200


def test_sse_streams_longer_than_the_bounds_end_normally(server: Served) -> None:
    flood = {"count": 30, "size": 10, "interval": 0.1}  # about 3 s
    body = {"graph": "flood", "message": "x", "config": {"configurable": flood}}
    with httpx.stream("POST", f"{server.url}/runs/stream", json=body, timeout=30) as response:
        assert response.status_code == 200
        text = response.read().decode()
    frames = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert sum(frame["type"] == "custom" for frame in frames) == 30
    assert frames[-1]["type"] == "done"
    assert text.rstrip().endswith("[DONE]")


def ws_url(served: Served) -> str:
    return served.url.replace("http://", "ws://") + "/ws"


def ws_until(ws: ClientConnection, wanted: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while not any(message.get("type") == wanted for message in seen):
        data = json.loads(ws.recv(timeout=30))
        seen += data if isinstance(data, list) else [data]
    return seen


def test_websocket_sessions_longer_than_the_bounds_are_untouched(server: Served) -> None:
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "run", "graph": "ticker", "message": "x"}))  # about 4 s
        messages = ws_until(ws, "done")
        assert sum(message.get("type") == "custom" for message in messages) == 200


def test_past_the_cap_new_connections_get_503_until_others_close(capped: Served) -> None:
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(connect(ws_url(capped))) for _ in range(CAP)]
        response = httpx.get(f"{capped.url}/healthz", timeout=10)
        assert response.status_code == 503
        assert response.json()["code"] == "too_many_connections"
        assert response.headers["retry-after"] == "1"
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(capped))
        assert refused.value.response.status_code == 503
        # Those already connected are still served.
        sessions[0].send(json.dumps({"type": "ping", "id": 1}))
        assert ws_until(sessions[0], "pong")
        for ws in sessions[:2]:
            ws.close()
        deadline = time.monotonic() + CLOSED_WITHIN
        while httpx.get(f"{capped.url}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "still refused after connections closed"
            time.sleep(0.1)
    assert re.search(r"refusing new connections: \d+ open, max_connections is 4", capped.output())


def test_serve_raises_the_fd_limit_and_warns_below_the_cap(tmp_path: Path) -> None:
    served = serve(tmp_path / "server.log", (256, 512))
    try:
        limits = Path(f"/proc/{served.process.pid}/limits").read_text()
        assert re.search(r"Max open files\s+512\s+512", limits), limits
    finally:
        stop(served)
    assert "file-descriptor limit raised from 256 to 512" in served.output()
    assert "room for only about 462 connections" in served.output()
