"""A real uvicorn server on a free loopback port, in a background thread (or, for apps
that a user starts with the ``uvicorn`` command, in a process of its own), for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.types import ASGIApp

from agent_server.ws_protocol import WebSocketProtocol

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def live_server(app: ASGIApp, **config: object) -> Iterator[str]:
    """Serve ``app`` with uvloop + httptools (as in production); yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, object] = {
        "loop": "uvloop",
        "http": "httptools",
        "ws": WebSocketProtocol,
        "log_level": "warning",
        "lifespan": "on",
        "timeout_graceful_shutdown": 2,
    }
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server failed to start (see the log above)")
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start within 30 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@dataclass
class LiveProcess:
    """``uvicorn APP`` in a process of its own, from the repository root (as a user runs
    it), on a free loopback port; its output goes to ``log``."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, app: str, *, env: dict[str, str] | None = None, log: Path) -> LiveProcess:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        command = [
            sys.executable, "-m", "uvicorn", app, "--fd", str(sock.fileno()),
            "--log-level", "info", "--timeout-graceful-shutdown", "2",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=[sock.fileno()],
            )
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        sock.close()  # the child has its own copy
        return cls(url, process, log)

    def wait_ready(self, path: str = "/") -> None:
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"did not start within 60 s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, as a process manager stops it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def live_process(
    app: str, *, env: dict[str, str] | None = None, ready: str = "/", log: Path
) -> Iterator[LiveProcess]:
    """A started and ready :class:`LiveProcess`, stopped afterwards."""
    live = LiveProcess.start(app, env=env, log=log)
    try:
        live.wait_ready(ready)
        yield live
    finally:
        live.stop()
