"""SIGTERM against a real ``agent-server serve`` process: runs drain, streams end cleanly.

What a client sees, in order (agent_server/server.py): the listening socket closes at
once, so a new connection is refused; an open keep-alive connection still gets answers,
503 ``shutting_down``; a run that ends within the grace period ends normally; the others
end with ``error`` (code ``shutdown``) and ``[DONE]``; a client that stopped reading is
aborted a second later instead of holding up the exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT

GRACE = 1.5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(port: int, stderr: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENT_SERVER_DATABASE_URL": "memory://",
        "AGENT_SERVER_SHUTDOWN_GRACE": str(GRACE),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "agent_server.cli", "serve", "--port", str(port)]
    for name in ("ticker", "quiet", "flood"):
        command += ["--graph", f"{name}=tests.sample_graphs:{name}"]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*command, *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start:\n{stderr.read_text()}")
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    stderr = tmp_path / "stderr.log"
    proc = serve(port, stderr)
    try:
        yield f"http://127.0.0.1:{port}", proc, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Stream(threading.Thread):
    """``POST /runs/stream`` read to its end; ``started`` is set once its first frame came."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.raw = b""
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", f"{self.url}/runs/stream", json=self.body) as response,
            ):
                for chunk in response.iter_raw():
                    self.raw += chunk
                    self.started.set()
        except BaseException as exc:
            self.error = exc
            self.started.set()

    def frames(self) -> list[dict[str, Any]]:
        return [
            json.loads(line[6:])
            for block in self.raw.split(b"\n\n")
            for line in block.split(b"\n")
            if line.startswith(b"data: {")
        ]


class Socket(threading.Thread):
    """A WebSocket client running one long run; keeps every message and the close."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url.replace("http://", "ws://") + "/ws"
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.started = threading.Event()

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        with connect(self.url) as ws:
            ws.send(json.dumps({"type": "run", "graph": "ticker", "message": "x"}))
            try:
                while True:
                    data = json.loads(ws.recv(timeout=30))
                    for message in data if isinstance(data, list) else [data]:
                        self.messages.append(message)
                        if message.get("type") == "custom":
                            self.started.set()
            except ConnectionClosed as closed:
                self.close_code = closed.rcvd.code if closed.rcvd else None


def stalled_stream(url: str, body: dict[str, Any]) -> socket.socket:
    """Sends ``POST /runs/stream`` with a small receive buffer and never reads the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect((host, int(port)))
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /runs/stream HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (host.encode(), len(payload), payload)
    )
    return sock


def unsent_bytes(port: int, client_port: int) -> int:
    """Bytes the server's kernel holds for one connection (``/proc/net/tcp`` tx_queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        if (local, remote) == (port, client_port):
            return int(fields[4].split(":")[0], 16)
    return 0


def test_sigterm_drains_runs_and_exits_within_the_grace(
    server: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, proc, stderr = server
    port = int(url.rsplit(":", 1)[1])
    flood = {"count": 2000, "size": 32_000, "interval": 0.005}  # 10 s, about 6 MB/s
    stalled = stalled_stream(
        url, {"graph": "flood", "message": "x", "config": {"configurable": flood}}
    )
    long_runs = [Stream(url, {"graph": "ticker", "message": "x"}) for _ in range(3)]
    long_runs.append(
        Stream(url, {"graph": "flood", "message": "x", "config": {"configurable": flood}})
    )
    keep_alive = httpx.Client(timeout=10)  # one connection, opened before the signal
    websocket = Socket(url)
    try:
        assert keep_alive.get(f"{url}/healthz").status_code == 200
        websocket.start()
        for stream in long_runs:
            stream.start()
        for stream in long_runs:
            assert stream.started.wait(10) and stream.error is None
        assert websocket.started.wait(10)
        # the stalled client really stalls the server's writes
        deadline = time.monotonic() + 10
        while unsent_bytes(port, stalled.getsockname()[1]) < 1_000_000:
            assert time.monotonic() < deadline, "the stalled client's socket never filled"
            time.sleep(0.05)
        short = Stream(url, {"graph": "quiet", "message": "x"})  # 0.5 s, within the grace
        short.start()
        assert short.started.wait(10)

        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # An open keep-alive connection is still answered while runs drain...
        deadline = time.monotonic() + 5
        while (health := keep_alive.get(f"{url}/healthz")).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health.status_code == 503 and health.json()["status"] == "shutting_down"
        refused = keep_alive.post(f"{url}/runs", json={"graph": "quiet", "message": "x"})
        assert refused.status_code == 503
        assert refused.json()["code"] == "shutting_down" and "retry-after" in refused.headers
        # ...while the listening socket is already closed: a new connection is refused.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=5)

        for stream in [*long_runs, short]:
            stream.join(timeout=GRACE + 10)
            assert not stream.is_alive() and stream.error is None

        websocket.join(timeout=GRACE + 10)
        proc.wait(timeout=GRACE + 10)
        exited = time.monotonic() - signalled
    finally:
        keep_alive.close()
        stalled.close()

    done = short.frames()
    assert [f["type"] for f in done] == ["run_start", "done"]
    assert short.raw.endswith(b"\n\ndata: [DONE]\n\n")
    for stream in long_runs:
        frames = stream.frames()
        assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "shutdown"
        assert stream.raw.endswith(b"\n\ndata: [DONE]\n\n")

    # the WebSocket got the same final frame, then uvicorn's 1012 (service restart)
    frames = [m for m in websocket.messages if "seq" in m]
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "shutdown"
    assert websocket.close_code == 1012

    # uvicorn re-raises the signal once it has shut down gracefully
    assert proc.returncode in (0, -signal.SIGTERM)
    assert exited < GRACE + 5, f"exited {exited:.1f} s after SIGTERM"
    log = stderr.read_text()
    assert "Traceback" not in log
    assert "timeout graceful shutdown exceeded" not in log  # the stalled client was cut
    assert "cancelling 6 runs at shutdown" in log  # 4 streams, the stalled one, the socket
