"""Fan-out of one run to many WebSocket subscribers spread over two workers.

Two ``agent-server serve`` processes, A and B, share one Redis key prefix (runs) and one
PostgreSQL schema (threads), both fresh and removed at the end, also on failure. For
each N (default 1, 100, 1000) N WebSocket clients connect to ``/ws``, half to A and
half to B, and each sends ``{"type": "subscribe", "thread_id": T}`` *before* the run
exists, so that every subscriber sees the run from its ``run_start``. Then ONE run of the
``bench`` graph (bench/bench_graph.py: two tool calls, then ``--tokens`` streamed
words) is started on A with ``POST /runs`` on thread T. A executes it: its subscribers
read the run's log in A's memory; B's subscribers get it through Redis (the "farthest"
subscriber: A copies the log to a Redis Stream in batches, B reads it with ``XREAD``).

It prints, per N:

- aggregate delivery: frames received by all subscribers / the time from sending
  ``POST /runs`` to the last subscriber's ``done`` (and WebSocket messages: frames
  ready at once arrive as one JSON array);
- delivery lag, for every frame at every subscriber: the time the client parsed it
  minus the frame's ``ts`` (set by A; one machine, one clock; ``ts`` is whole ms, so a
  lag carries up to +1 ms of rounding), p50 and p99 for A's and B's subscribers apart;
- how long the run itself took on A (``done.ts - run_start.ts``), and the CPU seconds
  spent meanwhile by this client, by A, by B and by the Redis server (all of it, from
  ``INFO cpu``). All subscribers live in this one Python process: when its CPU time is
  close to the wall time, the client is the bottleneck and the figures are a lower
  bound for the server, which the output says.

N = 1 is measured twice, one subscriber on A and one on B. Every subscriber must see
the whole run (seq 1..done, no gap) or the script fails. One unreported warm-up run
comes first.

``thread`` mode (default) subscribes to the thread. ``--mode join`` joins the thread's
room instead: the same frames, plus a ``presence`` broadcast to every member on each
join, i.e. O(N^2) messages while subscribing (500 members per worker at N = 1000);
it is there to measure that, not for large N. ``--deflate`` offers permessage-deflate
as browsers do (the server then compresses every message once per socket).

Loopback only. Needs Redis and PostgreSQL (``AGENT_SERVER_TEST_REDIS``,
``AGENT_SERVER_TEST_POSTGRES``, defaults as in tests/services.py). The default run takes
about a minute on a 2-core machine, where A, B, Redis and this client share the cores,
so compare the rows of one run with each other rather than across machines.

    python bench/fanout.py [--counts 1,100,1000] [--tokens 500] [--mode thread|join]
                           [--deflate] [--timeout 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("AGENT_SERVER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("AGENT_SERVER_TEST_REDIS", "redis://127.0.0.1:6379/0")
TERMINAL = ("done", "error")
CONNECTING_AT_ONCE = 64  # handshakes in flight; the rest wait (kind to both accept queues)
CLIENT_BOUND = 0.85  # client CPU / wall above which the client is called the bottleneck


# -- services and workers ----------------------------------------------------------------


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh schema (the workers' ``search_path``), dropped with everything in it."""
    import psycopg

    schema = f"bench_fanout_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{url}?options={quote(f'-csearch_path={schema}')}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def redis_prefix(url: str) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted afterwards."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    client.ping()
    prefix = f"bench-fanout-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Any  # the temporary file holding its output

    def cpu_seconds(self) -> float:
        """utime + stime of the worker process (it runs no children)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 20) -> str:
        self.log.flush()
        self.log.seek(0)
        return "".join(self.log.read().decode(errors="replace").splitlines(True)[-lines:])


@contextlib.contextmanager
def workers(database: str, prefix: str, tokens: int) -> Iterator[tuple[Worker, Worker]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_TOKENS": str(tokens),
        "AGENT_SERVER_DATABASE_URL": database,
        "AGENT_SERVER_BROKER_URL": REDIS,
        "AGENT_SERVER_BROKER_PREFIX": prefix,
    }
    started: list[Worker] = []
    with tempfile.TemporaryFile() as log_a, tempfile.TemporaryFile() as log_b:
        try:
            for name, log in (("A", log_a), ("B", log_b)):
                port = free_port()
                command = [
                    sys.executable, "-m", "agent_server.cli", "serve", "--port", str(port),
                    "--log-level", "warning", "--graph", "bench=bench/bench_graph.py:make_graph",
                ]  # fmt: skip
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
                started.append(Worker(name, f"http://127.0.0.1:{port}", process, log))
            for worker in started:
                deadline = time.monotonic() + 60
                while True:
                    if worker.process.poll() is not None:
                        raise RuntimeError(f"worker {worker.name} exited:\n{worker.tail()}")
                    with contextlib.suppress(httpx.TransportError):
                        if httpx.get(f"{worker.url}/healthz", timeout=2).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"worker {worker.name} did not start:\n{worker.tail()}")
                    time.sleep(0.1)
            yield started[0], started[1]
        finally:
            for worker in started:
                if worker.process.poll() is None:
                    worker.process.terminate()
            for worker in started:
                try:
                    worker.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait()


def redis_cpu_seconds() -> float:
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        info: Any = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def raise_fd_limit(needed: int) -> None:
    """Sockets here, and in the workers (they inherit it): one per subscriber and more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(f"warning: file descriptor limit {soft} < {needed}; large N may fail")


# -- subscribers ---------------------------------------------------------------------------


@dataclass
class Subscriber:
    side: str  # "A" or "B"
    lags: list[float]  # shared by every subscriber of its side: ms per frame
    frames: int = 0
    messages: int = 0  # messages that carried frames
    last_seq: int = 0
    gaps: int = 0
    run_ids: set[str] = field(default_factory=set)
    first_ts: int = 0  # run_start's ts
    done_ts: int = 0  # the terminal frame's ts
    done_at: float | None = None  # time.time() when the terminal frame was parsed
    terminal: str | None = None


async def subscribe_and_read(
    subscriber: Subscriber,
    url: str,
    thread_id: str,
    args: argparse.Namespace,
    gate: asyncio.Semaphore,
    subscribed: asyncio.Queue[None],
) -> None:
    """Connect, subscribe (or join), then read until the run's terminal frame."""
    request = {"type": "join" if args.mode == "join" else "subscribe", "thread_id": thread_id}
    acknowledgement = "presence" if args.mode == "join" else "subscribed"
    lags = subscriber.lags
    await gate.acquire()
    gated = True
    try:
        async with connect(
            url.replace("http://", "ws://") + "/ws",
            compression="deflate" if args.deflate else None,
            max_size=None,
            ping_interval=None,  # the server pings; the client library answers
            open_timeout=60,
            close_timeout=2,
        ) as ws:
            await ws.send(orjson.dumps(request).decode())
            async for raw in ws:
                now = time.time() * 1000
                data = orjson.loads(raw)
                carried = False
                for message in data if isinstance(data, list) else (data,):
                    if "seq" not in message:  # socket-level: ack, presence, ping, error
                        kind = message.get("type")
                        if kind == "ping":  # the app heartbeat: answer, or be closed as idle
                            await ws.send('{"type":"pong"}')
                        elif kind == "error":
                            raise RuntimeError(f"server error: {message}")
                        elif kind == acknowledgement and gated:
                            gated = False
                            gate.release()
                            subscribed.put_nowait(None)
                        continue
                    carried = True
                    seq = message["seq"]
                    if seq != subscriber.last_seq + 1:
                        subscriber.gaps += 1
                    subscriber.last_seq = seq
                    subscriber.frames += 1
                    subscriber.run_ids.add(message["run_id"])
                    lags.append(now - message["ts"])
                    if message["type"] == "run_start":
                        subscriber.first_ts = message["ts"]
                    elif message["type"] in TERMINAL:
                        subscriber.terminal = message["type"]
                        subscriber.done_ts = message["ts"]
                        subscriber.done_at = now / 1000
                subscriber.messages += carried
                if subscriber.done_at is not None:
                    return
    finally:
        if gated:
            gate.release()


# -- one measurement -------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    subscribers: list[Subscriber]
    lags: dict[str, list[float]]
    wall: float
    run_seconds: float
    cpu: dict[str, float]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def start_run_on(worker: Worker, thread_id: str, http: httpx.AsyncClient) -> str:
    """Start the run so that ``worker`` executes it; return its id.

    ``POST /runs`` would put it on the shared queue, for whichever worker takes it first;
    a streamed run executes where it was asked for. With ``on_disconnect=continue`` the
    stream is closed at once and the run goes on (only its subscribers read it).
    """
    body = {
        "graph": "bench",
        "message": "fan out",
        "thread_id": thread_id,
        "on_disconnect": "continue",
    }
    async with http.stream("POST", f"{worker.url}/runs/stream", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"POST /runs/stream: {response.status_code} {response.text}")
        return response.headers["X-Run-Id"]


async def executing_worker(prefix: str, run_id: str) -> str:
    """The ``worker`` of the run's record in Redis (``<host>-<pid>-<random>``)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS)
    try:
        worker: Any = await client.hget(f"{prefix}:run:{run_id}", "worker")
    finally:
        await client.aclose()
    return worker.decode() if worker else ""


async def measure(
    label: str,
    sides: list[str],
    a: Worker,
    b: Worker,
    prefix: str,
    http: httpx.AsyncClient,
    args: argparse.Namespace,
) -> Result:
    thread_id = f"fanout-{uuid.uuid4().hex[:12]}"
    urls = {"A": a.url, "B": b.url}
    lags: dict[str, list[float]] = {"A": [], "B": []}
    subscribers = [Subscriber(side, lags[side]) for side in sides]
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    subscribed: asyncio.Queue[None] = asyncio.Queue()
    tasks = [
        asyncio.create_task(subscribe_and_read(s, urls[s.side], thread_id, args, gate, subscribed))
        for s in subscribers
    ]
    try:
        async with asyncio.timeout(args.timeout):
            for _ in subscribers:  # every subscriber acknowledged before the run starts
                getter = asyncio.ensure_future(subscribed.get())
                done, _ = await asyncio.wait([getter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    failed = next(t for t in tasks if t.done())
                    failed.result()  # raises what went wrong
                    raise RuntimeError("a subscriber ended before the run started")
        counters = (time.process_time(), a.cpu_seconds(), b.cpu_seconds(), redis_cpu_seconds())
        started = time.time()
        run_id = await start_run_on(a, thread_id, http)
        try:
            async with asyncio.timeout(args.timeout):
                await asyncio.gather(*tasks)
        except TimeoutError:
            finished = sum(s.done_at is not None for s in subscribers)
            seqs = sorted(s.last_seq for s in subscribers)
            raise RuntimeError(
                f"{label}: after {args.timeout:g} s {finished} of {len(subscribers)} subscribers "
                f"had the run's end; last seqs seen from {seqs[0]} to {seqs[-1]}"
            ) from None
        ended = max(s.done_at or 0.0 for s in subscribers)
        names = ("client", "A", "B", "redis")
        after = (time.process_time(), a.cpu_seconds(), b.cpu_seconds(), redis_cpu_seconds())
        cpu = {
            name: later - before for name, before, later in zip(names, counters, after, strict=True)
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    executor = await executing_worker(prefix, run_id)
    if f"-{a.process.pid}-" not in executor:
        raise RuntimeError(f"{label}: the run was executed by {executor!r}, not by A")
    for s in subscribers:
        if s.run_ids != {run_id} or s.gaps or s.terminal != "done" or s.frames != s.last_seq:
            raise RuntimeError(
                f"{label}: a subscriber on {s.side} saw runs {s.run_ids}, {s.frames} frames "
                f"up to seq {s.last_seq}, {s.gaps} gaps, ending with {s.terminal}"
            )
    if len({s.last_seq for s in subscribers}) != 1:
        raise RuntimeError(f"{label}: subscribers disagree on the last seq")
    run_seconds = (subscribers[0].done_ts - subscribers[0].first_ts) / 1000
    return Result(label, subscribers, lags, ended - started, run_seconds, cpu)


def report(result: Result) -> None:
    subscribers = result.subscribers
    frames = sum(s.frames for s in subscribers)
    messages = sum(s.messages for s in subscribers)
    on = {side: sum(s.side == side for s in subscribers) for side in "AB"}
    print(
        f"{result.label}: {on['A']} on A, {on['B']} on B; {frames:,} frames "
        f"({subscribers[0].last_seq} each) in {messages:,} messages "
        f"({frames / messages:.1f} frames/message) in {result.wall:.2f} s "
        f"= {frames / result.wall:,.0f} frames/s"
    )
    parts = []
    for side in "AB":
        values = result.lags[side]
        if values:
            parts.append(
                f"{side}: p50 {percentile(values, 0.5):6.1f}  p99 {percentile(values, 0.99):6.1f}"
            )
    print(f"    lag ms  {'   '.join(parts)}   | the run on A took {result.run_seconds:.2f} s")
    cpu = result.cpu
    share = cpu["client"] / result.wall
    verdict = (
        "CLIENT CPU-BOUND: the figures are a lower bound for the server"
        if share >= CLIENT_BOUND
        else "client not saturated"
    )
    print(
        f"    CPU s   client {cpu['client']:.2f} ({share:.0%} of wall: {verdict}), "
        f"A {cpu['A']:.2f}, B {cpu['B']:.2f}, redis {cpu['redis']:.2f} "
        f"(total {sum(cpu.values()):.2f} of {os.cpu_count()} x {result.wall:.2f} s)"
    )


async def bench(a: Worker, b: Worker, prefix: str, args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        await measure("warm-up", ["A", "B"], a, b, prefix, http, args)
        mode = "subscribe thread_id" if args.mode == "thread" else "join (room, with presence)"
        print(
            f"one run of the bench graph ({args.tokens} tokens) on A, fanned out over /ws; "
            f"mode: {mode}; permessage-deflate {'on' if args.deflate else 'off'}; "
            "lag = client receive time - frame ts"
        )
        for count in args.counts:
            if count == 1:
                plans = [("N=1 (on A)", ["A"]), ("N=1 (on B)", ["B"])]
            else:
                plans = [(f"N={count}", ["A", "B"] * (count // 2) + ["A"] * (count % 2))]
            for label, sides in plans:
                report(await measure(label, sides, a, b, prefix, http, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 100, 1000],
        help="subscriber counts, comma-separated (default 1,100,1000)",
    )
    parser.add_argument("--tokens", type=int, default=500, help="BENCH_TOKENS of the run")
    parser.add_argument("--mode", choices=("thread", "join"), default="thread")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds for subscribing, and for the run"
    )
    args = parser.parse_args()
    if min(args.counts) < 1:
        parser.error("counts must be >= 1")
    raise_fd_limit(4 * max(args.counts) + 1024)
    # SIGTERM unwinds like Ctrl-C, so the workers, the schema and the keys are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with (
        postgres_schema(POSTGRES) as database,
        redis_prefix(REDIS) as prefix,
        workers(database, prefix, args.tokens) as (a, b),
    ):
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(bench(a, b, prefix, args))
        except BaseException:
            for worker in (a, b):
                if worker.process.poll() is not None:
                    print(f"worker {worker.name} exited:\n{worker.tail()}", file=sys.stderr)
            raise


if __name__ == "__main__":
    main()
