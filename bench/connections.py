"""10,000 idle connections against one ``agent-server serve`` process: what each costs.

The server runs as deployed (``agent-server serve``: uvloop, httptools, its own
shutdown), started afresh for each kind of connection, with the repository's ``agent``
graph and ``bench/quiet_graph.py``. A separate client process (this script with
``--client``; its file-descriptor limit raised to the hard limit) opens ``--sockets``
connections of one kind, in batches, and keeps them idle:

- ``ws``: WebSockets on ``/ws`` that answer the server's application ``ping`` with
  ``pong`` and send nothing else (a browser tab with nothing to do). They offer
  permessage-deflate, as browsers do, unless ``--no-deflate``.
- ``sse``: ``GET /runs/{id}/stream`` on ONE run of the quiet graph, which says nothing
  after its first frames (a page watching a long run).

Per kind it prints, from this process:

- before the sockets (after a warm-up of a few sockets of the same kind, opened and
  closed), while they are all open and each has had at least one ping from the server
  (``ping`` messages on ``/ws``, ``: ping`` comments on SSE), and after they are gone:
  the server's RSS and open file descriptors, ``/healthz`` latency (``--probes``
  requests, each on a new connection, p50/p99/max) and a normal run's time to first
  token (``POST /runs/stream`` of ``agent``, 20 runs, p50/p99/max);
- RSS per socket: (RSS while open - RSS before) / N, and the server's CPU while idle;
- for ``ws``, a round of client pings (``{"type": "ping", "id": n}`` on every socket at
  once): how many were answered by their ``pong``, and the round trip p50/p99;
- the server's SIGTERM with everything open: how long it took to exit and what each
  client saw (close code 1012 on ``/ws``; the ``shutdown`` error frame and ``[DONE]``
  on SSE; resets). Then the "after" figures are not taken (the server is gone).

``--breakdown`` runs the server under ``tracemalloc`` (slower, more memory: use it for
what the socket is made of, not for the RSS figure) and prints the allocation sites and
object types that grew per socket between "before" and "while open".

The machine is shared and noisy: compare the figures of one run with each other, and
note the load average printed at the start and the end.

    python bench/connections.py [--sockets 10000] [--kinds ws,sse] [--no-deflate]
                                [--probes 200] [--breakdown] [--server-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.concurrency import cpu_seconds, free_port, rss_kb  # noqa: E402
from bench.slow_clients import healthz_latency, open_fds, time_to_first_token  # noqa: E402

GRAPHS = ["agent=graphs/agent.py:make_graph", "quiet=bench/quiet_graph.py:make_graph"]
BATCH = 250  # connections opened at once: well inside the listen backlog (2048)
DONE = b"data: [DONE]"
SHUTDOWN = b'"code":"shutdown"'


# -- the client process -------------------------------------------------------------------


class Stats:
    """What every socket of the client saw, summed."""

    def __init__(self) -> None:
        self.pinged: set[int] = set()  # sockets that received at least one server ping
        self.pings = 0
        self.pongs: dict[tuple[int, int], float] = {}  # (socket, id) -> round trip
        self.closes: Counter[str] = Counter()
        self.resets = 0
        self.done = 0  # SSE: [DONE] received
        self.shutdown_frames = 0  # SSE: the error frame of code "shutdown"
        self.failed: Counter[str] = Counter()  # could not open, and why


class WsClient(asyncio.BaseProtocol):
    """An idle ``/ws`` socket on the websockets library's sans-I/O protocol (cheap enough
    for 10,000 in one process): answers ``ping`` with ``pong``, records its close.

    A ``BaseProtocol`` with ``data_received`` rather than an ``asyncio.Protocol``: uvloop
    takes a subclass that is an ``asyncio.Protocol`` for a plain one even when it reads
    into buffers of its own (bench/fanout.py's ``SubscriberSocket``)."""

    def __init__(self, number: int, uri: str, deflate: bool, stats: Stats) -> None:
        extensions = [ClientPerMessageDeflateFactory(compress_settings={"memLevel": 5})]
        self.conn = ClientProtocol(parse_uri(uri), extensions=extensions if deflate else None)
        self.number = number
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent: dict[int, float] = {}  # our ping id -> when
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.send_request(self.conn.connect())
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for data in self.conn.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.lost:
            self.conn.send_text(json.dumps(message).encode())
            self.flush()

    def eof_received(self) -> bool | None:  # as asyncio.Protocol's: the transport closes
        return None

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Response):
                if not self.opened.done():
                    if event.status_code == 101 and self.conn.handshake_exc is None:
                        self.opened.set_result(None)
                    else:
                        self.opened.set_exception(RuntimeError(f"handshake {event.status_code}"))
            elif event.opcode is Opcode.TEXT:
                self.on_text(json.loads(event.data))
            elif event.opcode is Opcode.CLOSE and self.conn.close_rcvd is not None:
                self.stats.closes[str(self.conn.close_rcvd.code)] += 1
        self.flush()

    def on_text(self, data: Any) -> None:
        for message in data if isinstance(data, list) else [data]:
            if message.get("type") == "ping":
                self.stats.pings += 1
                self.stats.pinged.add(self.number)
                self.send({"type": "pong"})
            elif message.get("type") == "pong" and message.get("id") in self.sent:
                rtt = time.perf_counter() - self.sent.pop(message["id"])
                self.stats.pongs[(self.number, message["id"])] = rtt

    def ping(self, number: int) -> None:
        self.sent[number] = time.perf_counter()
        self.send({"type": "ping", "id": number})

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None or self.conn.close_rcvd is None:
            self.stats.resets += 1  # no close frame: a reset or a bare TCP close
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost during the handshake: {exc}"))


class SseClient(asyncio.Protocol):
    """An idle SSE subscriber: counts pings, notices ``[DONE]`` and how it ended."""

    def __init__(self, number: int, request: bytes, stats: Stats) -> None:
        self.number = number
        self.request = request
        self.stats = stats
        self.head = b""
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            status = self.head.split(b"\r\n", 1)[0]
            if b" 200 " not in status:
                self.opened.set_exception(RuntimeError(status.decode("latin-1")))
                return
            self.opened.set_result(None)
            data, self.head = self.head, b""
        seen, tail = self.tail + data, self.tail  # a marker may straddle two reads
        if pings := seen.count(b": ping\n") - tail.count(b": ping\n"):
            self.stats.pings += pings
            self.stats.pinged.add(self.number)
        self.stats.shutdown_frames += seen.count(SHUTDOWN) - tail.count(SHUTDOWN)
        self.stats.done += seen.count(DONE) - tail.count(DONE)
        self.tail = seen[-32:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:
            self.stats.resets += 1
        else:
            self.stats.closes["eof"] += 1
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost before the response: {exc}"))


async def open_sockets(
    kind: str, port: int, count: int, stats: Stats, *, deflate: bool, run_id: str
) -> list[Any]:
    loop = asyncio.get_running_loop()
    sockets: list[Any] = []
    request = (
        f"GET /runs/{run_id}/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()

    def make(number: int) -> Any:
        if kind == "ws":
            return WsClient(number, f"ws://127.0.0.1:{port}/ws", deflate, stats)
        return SseClient(number, request, stats)

    async def one(number: int) -> None:
        client = make(number)
        try:
            await loop.create_connection(lambda: client, "127.0.0.1", port)
            await asyncio.wait_for(client.opened, 30)
        except Exception as exc:
            stats.failed[type(exc).__name__ + ": " + str(exc)[:80]] += 1
            if client.transport is not None:
                client.transport.abort()
            return
        sockets.append(client)

    for start in range(0, count, BATCH):
        await asyncio.gather(*(one(n) for n in range(start, min(start + BATCH, count))))
    return sockets


async def ping_round(sockets: list[Any], stats: Stats, timeout: float = 30) -> dict[str, Any]:
    """A ``ping`` with an id on every socket at once; waits for every ``pong``."""
    number = len(stats.pongs) + 1
    before = len(stats.pongs)
    for client in sockets:
        client.ping(number)
    deadline = time.monotonic() + timeout
    while len(stats.pongs) - before < len(sockets) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    rtts = [rtt for (_, n), rtt in stats.pongs.items() if n == number]
    return {"sent": len(sockets), "answered": len(rtts), "rtt": quantiles(rtts)}


def summary(sockets: list[Any], stats: Stats) -> dict[str, Any]:
    return {
        "open": sum(not client.lost for client in sockets),
        "pinged": len(stats.pinged),
        "pings": stats.pings,
        "closes": dict(stats.closes),
        "resets": stats.resets,
        "done": stats.done,
        "shutdown_frames": stats.shutdown_frames,
        "failed": dict(stats.failed),
    }


async def client(args: argparse.Namespace) -> None:
    """Opens the sockets, prints a summary, then obeys commands from stdin (one a line):
    ``stats``, ``ping`` (a ping round), ``finish SECONDS`` (wait until the server has
    closed every socket, report, exit)."""
    stats = Stats()
    started = time.monotonic()
    sockets = await open_sockets(
        args.client, args.port, args.sockets, stats, deflate=args.deflate, run_id=args.run_id
    )
    print(json.dumps({**summary(sockets, stats), "seconds": time.monotonic() - started}))
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        command, *rest = line
        if command == "stats":
            print(json.dumps(summary(sockets, stats)))
        elif command == "ping":
            print(json.dumps(await ping_round(sockets, stats)))
        elif command == "finish":
            deadline = time.monotonic() + float(rest[0])
            while any(not s.lost for s in sockets) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            print(json.dumps(summary(sockets, stats)))
            sys.stdout.flush()
            break
        sys.stdout.flush()
    for s in sockets:
        if s.transport is not None and not s.lost:
            s.transport.abort()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the server, optionally traced ------------------------------------------------------


def traced_serve(directory: str, argv: list[str]) -> None:
    """``agent-server serve`` under tracemalloc: SIGUSR1 writes a snapshot and the live
    objects counted by type to ``directory`` (``N.snapshot``, ``N.json``)."""
    import tracemalloc

    from agent_server.cli import main as cli_main

    tracemalloc.start(10)
    taken = 0

    def dump(signum: int, frame: Any) -> None:
        nonlocal taken
        gc.collect()
        types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        tasks = Counter(t.get_coro().__qualname__ for t in asyncio.all_tasks())  # type: ignore[union-attr]
        tracemalloc.take_snapshot().dump(f"{directory}/{taken}.snapshot")
        Path(f"{directory}/{taken}.json").write_text(json.dumps({"types": types, "tasks": tasks}))
        taken += 1

    signal.signal(signal.SIGUSR1, dump)
    sys.exit(cli_main(argv))


class Server:
    def __init__(self, args: argparse.Namespace, log: IO[str], traced: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.traced = traced
        self.taken = 0
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AGENT_SERVER_DATABASE_URL": "memory://",
            # Room for the idle sockets and the probes: the default cap is 10,000.
            "AGENT_SERVER_MAX_CONNECTIONS": str(args.sockets + 1000),
            "AGENT_SERVER_SHUTDOWN_GRACE": "1",
            **dict(item.split("=", 1) for item in args.server_env),
        }
        serve = ["serve", "--port", str(self.port), "--log-level", "warning"]
        for graph in GRAPHS:
            serve += ["--graph", graph]
        if traced is None:
            command = [sys.executable, "-m", "agent_server.cli", *serve]
        else:
            command = [sys.executable, __file__, "--traced-serve", traced, "--", *serve]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the server did not start")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def snapshot(self) -> int:
        """Tell the traced server to dump a snapshot; returns its number once written."""
        assert self.traced is not None
        number, self.taken = self.taken, self.taken + 1
        os.kill(self.pid, signal.SIGUSR1)
        marker = Path(self.traced) / f"{number}.json"
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        return number

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the measuring process ----------------------------------------------------------------


def quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    if len(ordered) == 1:
        return {"p50": ordered[0], "p99": ordered[0], "max": ordered[0]}
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cuts[49], "p99": cuts[98], "max": ordered[-1]}


def ms(values: Sequence[float]) -> str:
    q = quantiles(values)
    return f"p50 {q['p50'] * 1000:5.1f}  p99 {q['p99'] * 1000:5.1f}  max {q['max'] * 1000:5.1f} ms"


def measure(server: Server, label: str, probes: int) -> dict[str, Any]:
    """Open fds and RSS first (the moment matters), then the probes."""
    fds, rss = open_fds(server.pid), rss_kb(server.pid)
    health = healthz_latency(server.url, probes)
    ttft = [time_to_first_token(server.url) for _ in range(20)]
    print(f"  {label:<28} fds {fds:6d}  RSS {rss / 1024:7.1f} MB")
    print(f"  {'':<28} /healthz            {ms(health)}")
    print(f"  {'':<28} time to first token {ms(ttft)}")
    return {"fds": fds, "rss": rss, "healthz": quantiles(health), "ttft": quantiles(ttft)}


def start_quiet_run(url: str) -> str:
    body = {"graph": "quiet", "input": {"messages": []}, "config": {"configurable": {}}}
    response = httpx.post(f"{url}/runs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    with httpx.stream("GET", f"{url}/runs/{run_id}/stream", timeout=30) as stream:
        for line in stream.iter_lines():  # until the run is under way
            if line.startswith("data: {"):
                break
    return run_id


class ClientProcess:
    def __init__(self, kind: str, server: Server, count: int, deflate: bool, run_id: str) -> None:
        command = [sys.executable, __file__, "--client", kind, "--port", str(server.port)]
        command += ["--sockets", str(count), "--run-id", run_id]
        if not deflate:
            command.append("--no-deflate")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def read(self) -> dict[str, Any]:
        out: IO[str] = self.process.stdout  # type: ignore[assignment]
        line = out.readline()
        if not line:
            raise SystemExit("the client process ended early")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, command: str) -> dict[str, Any]:
        stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
        stdin.write(command + "\n")
        stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def warm_up(kind: str, server: Server, deflate: bool, run_id: str) -> None:
    """A few sockets of the kind, opened and closed: imports and first-use caches."""

    async def go() -> None:
        stats = Stats()
        sockets = await open_sockets(kind, server.port, 50, stats, deflate=deflate, run_id=run_id)
        for s in sockets:
            if s.transport is not None:
                s.transport.close()
        await asyncio.sleep(0.5)

    asyncio.run(go())
    time_to_first_token(server.url)


def bench_kind(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    deflate = args.deflate and kind == "ws"
    what = {
        "ws": f"idle /ws sockets answering pings (permessage-deflate {'on' if deflate else 'off'})",
        "sse": "idle SSE streams on one quiet run",
    }[kind]
    print(f"\n{args.sockets} {what}")
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(tempfile.TemporaryFile("w+"))
        traced = stack.enter_context(tempfile.TemporaryDirectory()) if args.breakdown else None
        server = Server(args, log, traced)
        stack.callback(server.stop)
        run_id = start_quiet_run(server.url)
        warm_up(kind, server, deflate, run_id)
        before = measure(server, "before", args.probes)
        if traced:
            server.snapshot()
        started, cpu_start = time.monotonic(), cpu_seconds(server.pid)
        clients = ClientProcess(kind, server, args.sockets, deflate, run_id)
        stack.callback(clients.stop)
        opened = clients.read()
        took = time.monotonic() - started
        print(
            f"  {opened['open']} opened in {took:.1f} s"
            + (f"; FAILED: {opened['failed']}" if opened["failed"] else "")
        )
        # Until every socket has had a ping from the server (the heartbeat's work counts).
        deadline = time.monotonic() + 120
        while (stats := clients.ask("stats"))["pinged"] < opened["open"]:
            if time.monotonic() > deadline:
                print(f"  only {stats['pinged']} of {opened['open']} sockets were pinged in 120 s")
                break
            time.sleep(1)
        idle_from, idle_cpu = time.monotonic(), cpu_seconds(server.pid)
        time.sleep(5)
        idle = (cpu_seconds(server.pid) - idle_cpu) / (time.monotonic() - idle_from)
        during = measure(server, f"while {opened['open']} are open", args.probes)
        per_socket = (during["rss"] - before["rss"]) / max(opened["open"], 1)
        print(
            f"  RSS per socket: {per_socket:.1f} KB "
            f"({before['rss'] / 1024:.1f} -> {during['rss'] / 1024:.1f} MB); "
            f"fds per socket {(during['fds'] - before['fds']) / max(opened['open'], 1):.2f}"
        )
        print(
            f"  server CPU while they idle: {idle * 100:.1f} % of a core; "
            f"{stats['pings']} pings received by the clients so far; "
            f"total CPU since opening {cpu_seconds(server.pid) - cpu_start:.1f} s"
        )
        result: dict[str, Any] = {"before": before, "during": during, "per_socket_kb": per_socket}
        if kind == "ws":
            round_ = clients.ask("ping")
            rtt = round_["rtt"]
            print(
                f"  ping round: {round_['answered']}/{round_['sent']} answered by pong; rtt "
                f"p50 {rtt.get('p50', 0) * 1000:.1f}  p99 {rtt.get('p99', 0) * 1000:.1f}  "
                f"max {rtt.get('max', 0) * 1000:.1f} ms"
            )
            result["ping_round"] = round_
        if traced:
            server.snapshot()
            breakdown(traced, opened["open"])
        # SIGTERM with everything open.
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        stdin: IO[str] = clients.process.stdin  # type: ignore[assignment]
        stdin.write("finish 60\n")
        stdin.flush()
        try:
            server.process.wait(60)
            exited = f"{time.monotonic() - stopped:.1f} s"
        except subprocess.TimeoutExpired:
            exited = "not within 60 s"
        final = clients.read()
        print(
            f"  SIGTERM: the server exited in {exited} (code {server.process.returncode}); "
            f"clients saw closes {final['closes']}, resets {final['resets']}"
            + (
                f", [DONE] {final['done']}, shutdown frames {final['shutdown_frames']}"
                if kind == "sse"
                else ""
            )
        )
        result["shutdown"] = {"exited": exited, **final}
        return result


def breakdown(directory: str, count: int) -> None:
    """What grew between the two snapshots, per socket."""
    import tracemalloc

    before = tracemalloc.Snapshot.load(f"{directory}/0.snapshot")
    during = tracemalloc.Snapshot.load(f"{directory}/1.snapshot")
    types_before = json.loads(Path(f"{directory}/0.json").read_text())
    types_during = json.loads(Path(f"{directory}/1.json").read_text())
    total = sum(stat.size_diff for stat in during.compare_to(before, "filename"))
    print(f"  traced Python allocations: {total / count / 1024:.1f} KB per socket")
    print("  by allocation site (bytes per socket, objects per socket):")
    for stat in during.compare_to(before, "lineno")[:25]:
        if stat.size_diff / count < 40:
            break
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"    {stat.size_diff / count:8.0f}  {stat.count_diff / count:5.2f}  {where}")
    for key in ("types", "tasks"):
        grown = Counter(types_during[key])
        grown.subtract(Counter(types_before[key]))
        print(f"  live {key} per socket (gc-tracked objects):")
        for name, diff in grown.most_common(20):
            if diff / count < 0.5:
                break
            print(f"    {diff / count:6.2f}  {name}")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--kinds", default="ws,sse", help="ws, sse or both (comma-separated)")
    parser.add_argument("--no-deflate", dest="deflate", action="store_false")
    parser.add_argument("--probes", type=int, default=200, help="/healthz requests per phase")
    parser.add_argument("--breakdown", action="store_true", help="trace the server's memory")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--client", choices=["ws", "sse"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default="", help=argparse.SUPPRESS)
    parser.add_argument("--traced-serve", metavar="DIR", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.traced_serve:
        traced_serve(args.traced_serve, [arg for arg in rest if arg != "--"])
        return
    raise_fd_limit()
    if args.client:
        asyncio.run(client(args))
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load_average()}; "
        f"{os.cpu_count()} cores; client fd limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
    )
    for kind in args.kinds.split(","):
        bench_kind(kind.strip(), args)
    print(f"\nload average at the end {load_average()}")


if __name__ == "__main__":
    main()
