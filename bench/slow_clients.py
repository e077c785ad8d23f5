"""2,000 slow-header sockets against one ``agent-server serve`` process.

The server runs as deployed (``agent-server serve``: uvloop, agent_server/http_protocol.py,
default bounds unless ``--server-env`` says otherwise). A separate client process (this
script with ``--client``) opens ``--sockets`` connections in batches, each starting a
``GET`` and then trickling its headers one byte a second, and records for each when the
server ended it (EOF or reset) and what it answered. Meanwhile this process measures,
against the same server:

- ``/healthz`` latency (sequential requests, each on a new connection), and the time to
  first token of a normal run (``POST /runs/stream``, graph ``agent``), first with no slow
  sockets open (baseline), then while all of them are;
- the server's open file descriptors (``/proc/PID/fd``) and RSS: before, while the slow
  sockets are open, and after the server closed them.

It prints how many sockets the server closed, when (p50/p99/max seconds after each was
opened) and with which status line. The machine is shared and noisy: compare the figures
of one run with each other. The default run takes about half a minute.

    python bench/slow_clients.py [--sockets 2000] [--server-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.concurrency import cpu_seconds, free_port, rss_kb, start_server, stop_server  # noqa: E402

HEAD = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: "
BATCH = 200  # connections opened at once: stays well inside the listen backlog (2048)


# -- the client process -------------------------------------------------------------------


class Slow(asyncio.Protocol):
    """One slow-header socket: when it opened, when the server ended it, what it said."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.opened = 0.0
        self.closed: float | None = None
        self.received = b""
        self.reset = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.opened = transport, time.monotonic()
        transport.write(HEAD[:1])

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.reset = time.monotonic(), exc is not None
        self.transport = None


async def client(port: int, sockets: int, hold: float) -> None:
    """Opens the sockets, says ``open`` on stdout, trickles, then reports as JSON."""
    loop = asyncio.get_running_loop()
    slow: list[Slow] = []
    for start in range(0, sockets, BATCH):
        batch = [Slow() for _ in range(min(BATCH, sockets - start))]
        await asyncio.gather(
            *(loop.create_connection(lambda s=s: s, "127.0.0.1", port) for s in batch)
        )
        slow += batch
    print("open", flush=True)
    drip = HEAD + b"a" * 1000
    deadline = time.monotonic() + hold
    sent = 1
    while time.monotonic() < deadline and any(s.transport for s in slow):
        await asyncio.sleep(1.0)
        for s in slow:
            if s.transport is not None and not s.transport.is_closing():
                s.transport.write(drip[sent : sent + 1])
        sent += 1
    report = [
        {
            "opened": s.opened,
            "closed": s.closed,
            "status": s.received.split(b"\r\n", 1)[0].decode("latin-1"),
            "reset": s.reset,
        }
        for s in slow
    ]
    for s in slow:
        if s.transport is not None:
            s.transport.abort()
    print(json.dumps(report), flush=True)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


# -- the measuring process ----------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: Sequence[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def new_connections() -> httpx.Client:
    """Every request on a new connection (as a health check's), without httpx's per-client
    set-up (about 20 ms) in the figures."""
    return httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


def healthz_latency(url: str, count: int = 50) -> list[float]:
    times = []
    with new_connections() as http:
        for _ in range(count):
            started = time.perf_counter()
            response = http.get(f"{url}/healthz")
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return times


def time_to_first_token(url: str) -> float:
    body = {"graph": "agent", "message": "tell me about slow clients"}
    with new_connections() as http:
        started = time.perf_counter()
        with http.stream("POST", f"{url}/runs/stream", json=body) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {") and json.loads(line[6:])["type"] == "token":
                    elapsed = time.perf_counter() - started
                    for _ in lines:  # let the run finish
                        pass
                    return elapsed
    raise RuntimeError("the run streamed no token")


def ms(values: Sequence[float]) -> str:
    return f"p50 {percentile(values, 50) * 1000:6.1f} ms  max {max(values) * 1000:6.1f} ms"


def measure(url: str, pid: int, label: str) -> dict[str, Any]:
    """Open fds and RSS first (the moment matters), then the latencies."""
    fds, rss = open_fds(pid), rss_kb(pid)
    health = healthz_latency(url)
    ttft = [time_to_first_token(url) for _ in range(10)]
    print(f"  {label:<26} fds {fds:5d}  RSS {rss / 1024:6.1f} MB")
    print(f"  {'':<26} /healthz {ms(health)};  time to first token {ms(ttft)}")
    return {"fds": fds, "rss": rss, "ended": time.monotonic()}


def report(sockets: list[dict[str, Any]], during: dict[str, Any]) -> None:
    closed = [s["closed"] - s["opened"] for s in sockets if s["closed"] is not None]
    statuses: dict[str, int] = {}
    for s in sockets:
        key = s["status"] or ("reset" if s["reset"] else "closed without an answer")
        if s["closed"] is None:
            key = "still open"
        statuses[key] = statuses.get(key, 0) + 1
    print(f"  closed by the server: {len(closed)}/{len(sockets)}")
    if closed:
        print(
            f"  closed after opening: p50 {percentile(closed, 50):5.2f} s  "
            f"p99 {percentile(closed, 99):5.2f} s  max {max(closed):5.2f} s"
        )
    for status, count in sorted(statuses.items(), key=lambda item: -item[1]):
        print(f"    {count:5d}  {status}")
    first_open = min(s["opened"] for s in sockets)
    first_close = min((s["closed"] for s in sockets if s["closed"] is not None), default=None)
    when = "never" if first_close is None else f"{first_close - first_open:.1f} s"
    print(
        f"  'while open' was measured until {during['ended'] - first_open:.1f} s after the "
        f"first socket opened; the first close came at {when}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=60.0, help="longest a client trickles")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_fd_limit(args.sockets + 200)
    if args.client:
        asyncio.run(client(args.client, args.sockets, args.hold))
        return

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(item.split("=", 1) for item in args.server_env)
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(port, env, [], log, level="info")
        try:
            run(url, server.pid, args)
        finally:
            stop_server(server)


def run(url: str, pid: int, args: argparse.Namespace) -> None:
    print(f"{args.sockets} sockets trickling one header byte a second; server {args.server_env}")
    time_to_first_token(url)  # warm-up: the first run imports and compiles
    before = measure(url, pid, "before")
    command = [sys.executable, __file__, "--client", str(url.rsplit(":", 1)[1])]
    command += ["--sockets", str(args.sockets), "--hold", str(args.hold)]
    started, cpu = time.monotonic(), cpu_seconds(pid)
    clients = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out: IO[str] = clients.stdout  # type: ignore[assignment]
    try:
        assert out.readline().strip() == "open", "the client failed to open its sockets"
        # Connected on the client's side may still be in the server's accept queue ("before"
        # counted a few transient fds, hence the slack).
        deadline, accepted = time.monotonic() + 5, before["fds"] + args.sockets - 10
        while open_fds(pid) < accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"  {args.sockets} opened and accepted in {time.monotonic() - started:.1f} s")
        during = measure(url, pid, f"while {args.sockets} are open")
        sockets = json.loads(out.readline())
        clients.wait(30)
    finally:
        if clients.poll() is None:
            clients.kill()
    held = time.monotonic() - started
    time.sleep(1.0)  # the server's side of the last closes
    cpu = cpu_seconds(pid) - cpu
    after = measure(url, pid, "after they were closed")
    report(sockets, during)
    per_socket = (during["rss"] - before["rss"]) / args.sockets
    print(f"  RSS while open: {per_socket:.1f} KB per slow socket over 'before'")
    print(f"  fds after - before: {after['fds'] - before['fds']}")
    print(f"  server CPU over those {held:.0f} s (measurements included): {cpu:.2f} s")


if __name__ == "__main__":
    main()
