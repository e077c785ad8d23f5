"""Fan-out of one run to many WebSocket subscribers spread over two workers.

Two ``agent-server serve`` processes, A and B, share one Redis key prefix (runs) and one
PostgreSQL schema (threads), both fresh and removed at the end, also on failure. For
each N (default 1, 100, 1000) N WebSocket clients connect to ``/ws``, half to A and
half to B, and each sends ``{"type": "subscribe", "thread_id": T}`` *before* the run
exists, so that every subscriber sees the run from its ``run_start``. Then ONE run of the
``bench`` graph (bench/bench_graph.py: two tool calls, then ``--tokens`` streamed
words) is started on thread T so that A executes it: ``POST /runs/stream`` to A with
``on_disconnect=continue``, the response closed at once (``POST /runs`` would put it on
the shared queue, for whichever worker takes it first; the script checks the run's
record names A). A's subscribers read the run's log in A's memory; B's get it through
Redis (the "farthest" subscriber: A copies the log to a Redis Stream in batches, and
B follows it with ``XREAD``, once per subscriber).

It prints, per N:

- aggregate delivery: frames received by all subscribers / the time from starting the
  run to the last subscriber's ``done`` (and WebSocket messages: frames ready at once
  arrive as one JSON array);
- delivery lag, for every frame at every subscriber: the time the client parsed it
  minus the frame's ``ts`` (set by A; one machine, one clock; ``ts`` is whole ms, so a
  lag carries up to +1 ms of rounding), p50 and p99 for A's and B's subscribers apart.
  Once subscribed, a client keeps each read with its arrival time and parses it after
  the run: parsing half a million frames (N = 1000) in this one process would
  otherwise queue the arrivals behind it and count the client's own work as lag. For
  the same reason it reads into memory touched before the run, looks for the run's end
  in a read's tail only, and keeps the collector off during the run;
- how long the run itself took on A (``done.ts - run_start.ts``), and the CPU seconds
  spent meanwhile by this client, by A, by B and by the Redis server (all of it, from
  ``INFO cpu``), each also as a share of the wall time; a share of 85 % or more is
  called saturated (each is one thread). All subscribers live in this one Python
  process: when it is saturated, the client is the bottleneck and the figures are a
  lower bound for the server, which the output says.

N = 1 is measured twice, one subscriber on A and one on B. One unreported warm-up run
comes first. A subscriber must see the whole run (seq 1..done, no gap, no other run);
those that do not (no frame for ``--stall`` seconds, or closed) are counted and
reported as INCOMPLETE with the reason, the figures cover what did arrive, and the
script exits with status 1 after the last row.

``--broker-max-connections`` sets the workers' Redis connection pool
(``?max_connections=`` on ``AGENT_SERVER_BROKER_URL``; redis-py's default is 100): every
subscriber of a run executing elsewhere holds one connection in ``XREAD BLOCK``.
``--mode join`` joins the thread's room instead of subscribing: the same frames, plus
``presence`` to every member on each join (O(N^2) events while subscribing, coalesced
by the server into far fewer messages); the run starts once no presence has come for
``QUIET`` seconds. ``--mode threadstream`` subscribes through the
LangGraph API's thread stream instead (``/langgraph/threads/{T}/stream/events`` over
WebSocket: the ``messages``, ``tools`` and ``lifecycle`` channels, one event per message,
lag from each event's ``timestamp``). ``--deflate`` offers permessage-deflate as
browsers do: the server compresses a batch once for all its sockets, and the client
finds the run's end by inflating each message as it comes (:class:`CompressedEnds`),
which costs it about 6 µs a message more than a plain stream.

Loopback only. Needs Redis and PostgreSQL (``AGENT_SERVER_TEST_REDIS``,
``AGENT_SERVER_TEST_POSTGRES``, defaults as in tests/services.py). On a 2-core machine,
where A, B, Redis and this client share the cores, the default run takes about 20 s
(plus ``--stall`` for each N where subscribers stall); it stops with an error when a
phase (subscribing, or the run) exceeds ``--timeout`` or all of them ``--budget``, so it
never takes much more than ``--budget`` plus the workers' start. The figures are noisy:
compare the rows of one run with each other rather than across runs or machines
(``--rounds`` repeats each N).

    python bench/fanout.py [--counts 1,100,1000] [--tokens 500] [--token-delay 0]
                           [--mode thread|join|threadstream]
                           [--broker-max-connections N] [--deflate] [--rounds 1]
                           [--timeout 60] [--stall 10] [--budget 170]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from websockets.frames import Opcode
from websockets.http11 import Response

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.connections import Stats, WsClient  # noqa: E402

POSTGRES = os.environ.get("AGENT_SERVER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("AGENT_SERVER_TEST_REDIS", "redis://127.0.0.1:6379/0")
TERMINAL = ("done", "error")
TERMINAL_MARKERS = tuple(f'"type":"{kind}"' for kind in TERMINAL)
PING_MARKER = '"type":"ping"'
# the root's end on a LangGraph thread stream (one event object per message)
THREAD_END = re.compile(
    rb'"method":"lifecycle","params":\{"namespace":\[\],"timestamp":\d+,'
    rb'"data":\{"event":"(?:completed|failed|interrupted)"'
)
DONE_MARKER, ERROR_MARKER = (m.encode() for m in TERMINAL_MARKERS)


def ends_native(data: bytes | bytearray, start: int = 0, end: int | None = None) -> bool:
    """Whether the bytes hold a terminal frame. Only their tail is searched: the terminal
    frame is the last of the run a subscriber gets, and small, so it ends within a few
    hundred bytes of its read (a ping may follow it in the same read); searching all of
    the 100 MB that 1,000 subscribers read cost the client 40 ms a run (the client's own
    cost is not the server's lag)."""
    end = len(data) if end is None else end
    start = max(start, end - END_SEARCH)
    return data.find(DONE_MARKER, start, end) >= 0 or data.find(ERROR_MARKER, start, end) >= 0


def ends_thread(data: bytes | bytearray, start: int = 0, end: int | None = None) -> bool:
    """Whether the bytes hold the root's end on a thread stream (lifecycle events are
    few: the substring check spares the regex nearly every read)."""
    end = len(data) if end is None else end
    if data.find(b'"method":"lifecycle"', start, end) < 0:
        return False
    return THREAD_END.search(data, start, end) is not None


class CompressedEnds:
    """Spots a run's end in a permessage-deflate stream while it arrives, at the cost of
    the compressed bytes: frame headers are read here, each message is inflated with the
    socket's one decompressor (the server keeps its context while a socket streams) and
    only the inflated tail is searched. websockets' parser, which costs about ten times as
    much a message, reads the kept bytes after the run, like the plain ones.

    Fed every byte after the handshake's response, from the first read on, so that its
    decompressor has seen every message the server compressed."""

    def __init__(self, ends: Callable[..., bool]) -> None:
        self.ends = ends
        self.buffer = bytearray()
        self.in_handshake = True
        self.inflater = zlib.decompressobj(wbits=-15)  # inflates any smaller window too
        self.message: list[bytes] = []  # a fragmented message's payloads so far
        self.compressed = False  # the message under way (RSV1 on its first frame)

    def feed(self, data: bytes | memoryview) -> bool:
        """Whether a message completed by these bytes holds the run's end."""
        buffer = self.buffer
        buffer += data
        if self.in_handshake:
            head = buffer.find(b"\r\n\r\n")
            if head < 0:
                return False
            del buffer[: head + 4]
            self.in_handshake = False
        ended, start, size = False, 0, len(buffer)
        while size - start >= 2:
            first, length = buffer[start], buffer[start + 1] & 0x7F
            header = 2
            if length == 126:
                header = 4
                if size - start < header:
                    break
                length = int.from_bytes(buffer[start + 2 : start + 4], "big")
            elif length == 127:
                header = 10
                if size - start < header:
                    break
                length = int.from_bytes(buffer[start + 2 : start + 10], "big")
            if size - start < header + length:
                break
            payload = bytes(buffer[start + header : start + header + length])
            start += header + length
            opcode = first & 0x0F
            if opcode >= 0x8:  # a control frame (ping, pong, close), never compressed
                continue
            if opcode != 0x0:  # a message's first frame
                self.compressed, self.message = bool(first & 0x40), []
            self.message.append(payload)
            if first & 0x80:  # its last frame
                body = b"".join(self.message)
                if self.compressed:
                    body = self.inflater.decompress(body + b"\x00\x00\xff\xff")
                ended = ended or self.ends(body)
        del buffer[:start]
        return ended


THREAD_RUN = "the thread's run"  # what a thread stream's events say of their run
MARKER_SIZE = 160  # longer than either end marker: the seam between two reads
END_SEARCH = 4096  # the bytes at the end of a read searched for a terminal frame
ARENA = 1 << 18  # bytes a socket reads into (a subscriber's run, ~100 KB, fits in one)
MIN_READ = 1 << 16  # less room left than this: the next read goes to a new arena
PAGE = 4096
CONNECTING_AT_ONCE = 64  # handshakes in flight; the rest wait (kind to both accept queues)
QUIET = 0.3  # seconds without a message: a room's presence has settled
SATURATED = 0.85  # CPU time / wall time above which a process (one thread) is saturated


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
def workers(
    database: str, prefix: str, args: argparse.Namespace
) -> Iterator[tuple[Worker, Worker]]:
    broker = REDIS
    if args.broker_max_connections:
        broker += ("&" if "?" in broker else "?") + f"max_connections={args.broker_max_connections}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_TOKENS": str(args.tokens),
        "BENCH_TOKEN_DELAY": str(args.token_delay),
        "AGENT_SERVER_DATABASE_URL": database,
        "AGENT_SERVER_BROKER_URL": broker,
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
    acknowledged: bool = False
    frames: int = 0
    messages: int = 0  # messages that carried frames
    last_seq: int = 0
    gaps: int = 0
    run_ids: set[str] = field(default_factory=set)
    first_ts: int = 0  # run_start's ts
    done_ts: int = 0  # the terminal frame's ts
    last_at: float = 0.0  # time.time() when its last frame arrived
    received: int = 0  # messages received after the acknowledgement (live, for stalls)
    # (arrival time in ms, the message): parsed by read() once every subscriber is done
    arrived: list[tuple[float, str]] = field(default_factory=list)
    parse: Callable[[], None] = lambda: None  # its socket's bytes into ``arrived``
    prepare: Callable[[], None] = lambda: None  # its socket's reads into touched memory
    close: Callable[[], None] = lambda: None  # its socket's
    terminal: str | None = None
    error: str | None = None  # why it stopped reading before the terminal frame


def read(subscriber: Subscriber, arrived: list[tuple[float, str]]) -> None:
    """The frames of the messages a subscriber kept, with their arrival times."""
    for now, raw in arrived:
        data = orjson.loads(raw)
        carried = False
        for message in data if isinstance(data, list) else (data,):
            if message.get("type") == "event":  # a LangGraph thread stream's
                carried = True
                read_thread_event(subscriber, now, message)
                continue
            if "seq" not in message:  # socket-level: presence, ping, error
                if message.get("type") == "error":
                    subscriber.error = f"error message {message.get('code')}"
                continue
            carried = True
            seq = message["seq"]
            if seq != subscriber.last_seq + 1:
                subscriber.gaps += 1
            subscriber.last_seq = seq
            subscriber.frames += 1
            subscriber.run_ids.add(message["run_id"])
            subscriber.lags.append(now - message["ts"])
            if message["type"] == "run_start":
                subscriber.first_ts = message["ts"]
            elif message["type"] in TERMINAL:
                subscriber.terminal = message["type"]
                subscriber.done_ts = message["ts"]
        if carried:
            subscriber.messages += 1
            subscriber.last_at = now / 1000


def read_thread_event(subscriber: Subscriber, now: float, event: dict[str, Any]) -> None:
    """An event of a thread stream: seqs rise (not one by one), the run is the thread's."""
    seq, params = event["seq"], event["params"]
    if seq <= subscriber.last_seq:
        subscriber.gaps += 1
    subscriber.last_seq = seq
    subscriber.frames += 1
    subscriber.run_ids.add(THREAD_RUN)
    subscriber.lags.append(now - params["timestamp"])
    subscriber.first_ts = subscriber.first_ts or params["timestamp"]
    data = params["data"]
    ended = data.get("event") in ("completed", "failed", "interrupted")
    if event["method"] == "lifecycle" and not params["namespace"] and ended:
        subscriber.terminal = "done" if data["event"] == "completed" else data["event"]
        subscriber.done_ts = params["timestamp"]


class SubscriberSocket(WsClient, asyncio.BufferedProtocol):
    """One subscriber's socket on websockets' sans-I/O protocol (bench/connections.py),
    a tenth of the asyncio client's cost per message: until acknowledged, each message
    is parsed; then it is kept with its arrival time and parsed after the run (see the
    module docstring), except the heartbeat's ``ping``, answered at once.

    It reads into an arena (``BufferedProtocol``), made afresh with every page touched
    just before the run (:meth:`prepare`): reading the run into new ``bytes`` cost the
    client 25,000 page faults (100 MB at N = 1000), and at times 0.3 s of kernel time
    in the middle of the run, counted as the server's lag."""

    def __init__(
        self,
        subscriber: Subscriber,
        uri: str,
        deflate: bool,
        acknowledgement: str,
        on_acknowledged: Callable[[], None],
        end: Callable[..., bool] = ends_native,
    ) -> None:
        super().__init__(0, uri, deflate, Stats())
        self.conn.max_size = None
        self.subscriber = subscriber
        self.acknowledgement = acknowledgement
        self.ends = end
        self.on_acknowledged = on_acknowledged
        self.arrived = subscriber.arrived
        self.compressed_ends = CompressedEnds(end) if deflate else None
        self.chunks: list[tuple[float, memoryview]] = []  # (arrival time in ms, bytes read)
        self.arena = bytearray(ARENA)
        self.used = 0  # bytes of the arena read into
        self.tail = b""
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self.transport = transport
        self.conn.send_request(self.conn.connect())
        self.flush()

    def prepare(self) -> None:
        arena = bytearray(ARENA)
        arena[::PAGE] = b"\x01" * len(range(0, ARENA, PAGE))
        self.arena, self.used = arena, 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        if ARENA - self.used < MIN_READ:  # the one before stays, held by its chunks
            self.arena, self.used = bytearray(ARENA), 0
        return memoryview(self.arena)[self.used :]

    def buffer_updated(self, nbytes: int) -> None:
        now = time.time() * 1000
        arena, start = self.arena, self.used
        end = self.used = start + nbytes
        compressed = self.compressed_ends
        if self.subscriber.acknowledged:
            # Kept as it came, parsed after the run (see the module docstring); the run's
            # end is spotted in the bytes (a marker may straddle two reads), or, when
            # compressed, in each message inflated (CompressedEnds).
            read = memoryview(arena)[start:end]
            self.chunks.append((now, read))
            self.subscriber.received += 1
            if compressed is not None:
                if compressed.feed(read):
                    self.end(None)
                return
            seam = self.tail + arena[start : start + MARKER_SIZE]
            if self.ends(arena, start, end) or self.ends(seam):
                self.end(None)
            self.tail = bytes(arena[max(start, end - MARKER_SIZE) : end])
            return
        data = bytes(arena[start:end])
        if compressed is not None:
            compressed.feed(data)
        self.parse(now, data)
        self.flush()

    def parse(self, now: float, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Response):
                if event.status_code == 101 and self.conn.handshake_exc is None:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(RuntimeError(f"handshake {event.status_code}"))
            elif event.opcode is Opcode.TEXT:
                self.on_message(now, event.data.decode())
            elif event.opcode is Opcode.CLOSE and self.conn.close_rcvd is not None:
                close = self.conn.close_rcvd
                self.end(f"closed by the server ({close.code} {close.reason})")

    def parse_chunks(self) -> None:
        """The bytes kept during the run, each message with its chunk's arrival time."""
        for now, data in self.chunks:
            self.parse(now, bytes(data))
        self.chunks.clear()

    def on_message(self, now: float, raw: str) -> None:
        subscriber = self.subscriber
        if subscriber.acknowledged:
            self.arrived.append((now, raw))
            subscriber.received += 1
            if self.ends(raw.encode()):
                self.end(None)
            elif PING_MARKER in raw and orjson.loads(raw).get("type") == "ping":
                self.send({"type": "pong"})
            return
        data = orjson.loads(raw)
        for message in data if isinstance(data, list) else (data,):
            kind = message.get("type")
            if kind == "error":
                self.end(f"error message {message.get('code')}")
            elif kind == self.acknowledgement:
                subscriber.acknowledged = True
                self.on_acknowledged()
            elif "seq" in message:
                self.arrived.append((now, orjson.dumps(message).decode()))

    def end(self, error: str | None) -> None:
        if not self.finished.done():
            self.subscriber.error = self.subscriber.error or error
            self.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.finished.done():  # the server's close frame, if any, says why
            self.parse_chunks()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost during the handshake: {exc}"))
        self.end(f"connection lost ({exc})")


async def subscribe_and_read(
    subscriber: Subscriber,
    url: str,
    thread_id: str,
    args: argparse.Namespace,
    gate: asyncio.Semaphore,
    on_acknowledged: Callable[[], None],
) -> None:
    """Connect, subscribe (or join), then read until the run's terminal frame."""
    path, end = "/ws", ends_native
    if args.mode == "threadstream":
        path, end = f"/langgraph/threads/{thread_id}/stream/events", ends_thread
        params = {"channels": ["messages", "tools", "lifecycle"]}
        request: dict[str, Any] = {"id": 1, "method": "subscription.subscribe", "params": params}
        acknowledgement = "success"
    else:
        request = {"type": "join" if args.mode == "join" else "subscribe", "thread_id": thread_id}
        acknowledgement = "presence" if args.mode == "join" else "subscribed"
    port = int(url.rsplit(":", 1)[1])

    def acknowledged() -> None:
        gate.release()
        on_acknowledged()

    uri = url.replace("http://", "ws://") + path
    socket_ = SubscriberSocket(subscriber, uri, args.deflate, acknowledgement, acknowledged, end)
    subscriber.prepare = socket_.prepare
    await gate.acquire()
    try:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: socket_, "127.0.0.1", port)
        await asyncio.wait_for(socket_.opened, 60)
        socket_.send(request)
        await socket_.finished
    except Exception as exc:
        subscriber.error = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        if not subscriber.acknowledged:
            gate.release()
        # Closed once every subscriber is done (measure): a member leaving a room makes
        # the server tell the others, who are still being measured.
        subscriber.close = socket_.close
        subscriber.parse = socket_.parse_chunks


# -- one measurement -------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    subscribers: list[Subscriber]
    lags: dict[str, list[float]]
    wall: float  # from starting the run to the last frame any subscriber parsed
    elapsed: float  # the window of the CPU figures
    run_seconds: float
    cpu: dict[str, float]
    last_seq: int
    missing: dict[str, Counter[str]]  # side -> why its incomplete subscribers are
    cut: str  # why the wait ended before every subscriber finished, or ""
    joined: float  # seconds from the first connect to the room's presence settled (join)


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


def time_left(args: argparse.Namespace) -> float:
    """Seconds for the next phase: ``--timeout``, within what is left of ``--budget``."""
    left = args.deadline - time.monotonic()
    if left <= 0:
        raise RuntimeError(f"out of time: --budget {args.budget:g} s spent")
    return min(args.timeout, left)


Counters = tuple[float, float, float, float, float]  # time, CPU of client, A, B, redis


def counters(a: Worker, b: Worker) -> Counters:
    return (
        time.time(),
        time.process_time(),
        a.cpu_seconds(),
        b.cpu_seconds(),
        redis_cpu_seconds(),
    )


async def wait_for_subscribers(
    subscribers: list[Subscriber],
    tasks: list[asyncio.Task[None]],
    a: Worker,
    b: Worker,
    args: argparse.Namespace,
) -> tuple[Counters, str]:
    """Until every subscriber has its terminal frame or stopped, or none got a frame for
    ``--stall`` seconds, or the time is up. Returns the counters at the end (when the
    last subscriber finished, or, after a stall, the first sample, every 0.2 s, that saw
    the last frame: waiting for a stall counts neither as CPU nor as wall time) and why
    the wait ended: "" when every subscriber finished."""
    deadline = time.monotonic() + time_left(args)
    sample: tuple[int, Counters] | None = None

    async def sampler() -> None:
        nonlocal sample
        while True:
            await asyncio.sleep(0.2)
            frames = sum(s.received for s in subscribers)
            if sample is None or frames != sample[0]:
                sample = (frames, counters(a, b))

    sampling = asyncio.create_task(sampler())
    try:
        while True:
            pending = [task for task in tasks if not task.done()]
            remaining = deadline - time.monotonic()
            if not pending:
                return counters(a, b), ""
            if remaining <= 0:
                return counters(a, b), "waiting stopped at the time limit"
            progress = sum(s.received for s in subscribers)
            window = min(args.stall, remaining)
            done, _ = await asyncio.wait(
                pending, timeout=window, return_when=asyncio.FIRST_COMPLETED
            )
            if not done and sum(s.received for s in subscribers) == progress:
                if window < args.stall:
                    return counters(a, b), "waiting stopped at the time limit"
                stalled = f"no frame came for {args.stall:g} s"
                return (sample[1] if sample is not None else counters(a, b)), stalled
    finally:
        sampling.cancel()


async def settle(subscribers: list[Subscriber], args: argparse.Namespace) -> None:
    """Wait until no subscriber has received anything for ``QUIET`` seconds: every join's
    presence told to every member, so that the run is measured on its own."""
    deadline = time.monotonic() + min(args.timeout, time_left(args))
    received = -1
    while time.monotonic() < deadline:
        now = sum(s.received for s in subscribers)
        if now == received:
            return
        received = now
        await asyncio.sleep(QUIET)
    raise RuntimeError("the room's presence did not settle within the time limit")


def why_incomplete(s: Subscriber, run_id: str, last_seq: int, frames: int) -> str | None:
    runs = {run_id, THREAD_RUN}
    if s.terminal == "done" and not s.gaps and s.run_ids <= runs and s.frames == frames:
        return None
    if s.run_ids - runs:
        return "saw another run"
    if s.gaps:
        return "gap in seqs"
    if s.error:
        return s.error
    if s.terminal is not None:
        return f"ended with {s.terminal} at seq {s.last_seq}"
    return "got no frame" if not s.frames else "stopped mid-run"


async def measure(
    label: str,
    sides: list[str],
    a: Worker,
    b: Worker,
    prefix: str,
    http: httpx.AsyncClient,
    args: argparse.Namespace,
) -> Result:
    thread_id = str(uuid.uuid4())
    urls = {"A": a.url, "B": b.url}
    if args.mode == "threadstream":  # the LangGraph API's threads exist before a stream
        created = await http.post(f"{a.url}/langgraph/threads", json={"thread_id": thread_id})
        created.raise_for_status()
    lags: dict[str, list[float]] = {"A": [], "B": []}
    subscribers = [Subscriber(side, lags[side]) for side in sides]
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    ready = asyncio.Event()
    acknowledged = 0

    def on_acknowledged() -> None:
        nonlocal acknowledged
        acknowledged += 1
        if acknowledged == len(subscribers):
            ready.set()

    connecting = time.monotonic()
    joined = 0.0
    tasks = [
        asyncio.create_task(
            subscribe_and_read(s, urls[s.side], thread_id, args, gate, on_acknowledged)
        )
        for s in subscribers
    ]
    try:
        seconds = time_left(args)
        try:
            waiter = asyncio.ensure_future(ready.wait())
            async with asyncio.timeout(seconds):  # every subscriber acknowledged, or one failed
                done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if waiter not in done:
                    failed = next(s for s, t in zip(subscribers, tasks, strict=True) if t.done())
                    raise RuntimeError(f"{label}: a subscriber on {failed.side}: {failed.error}")
        except TimeoutError:
            raise RuntimeError(
                f"{label}: {acknowledged} of {len(subscribers)} subscribers ready "
                f"after {seconds:.0f} s"
            ) from None
        finally:
            waiter.cancel()
        if args.mode == "join":  # the presence of the last joins is still being told
            await settle(subscribers, args)
            joined = time.monotonic() - connecting - QUIET
        # The client's collector stays out of the run: a full collection over what a
        # thousand subscribers hold took a quarter of a second at times.
        for subscriber in subscribers:
            subscriber.prepare()
        gc.collect()
        gc.freeze()
        gc.disable()
        before = counters(a, b)
        try:
            started = time.time()
            run_id = await start_run_on(a, thread_id, http)
            after, cut = await wait_for_subscribers(subscribers, tasks, a, b, args)
        finally:
            gc.enable()
            gc.unfreeze()
        elapsed = after[0] - started
        names = ("client", "A", "B", "redis")
        cpu = {name: y - x for name, x, y in zip(names, before[1:], after[1:], strict=True)}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for subscriber in subscribers:
            subscriber.close()
        for subscriber in subscribers:  # also when stopped: the figures cover what arrived
            subscriber.parse()
            read(subscriber, subscriber.arrived)

    executor = await executing_worker(prefix, run_id)
    if f"-{a.process.pid}-" not in executor:
        raise RuntimeError(f"{label}: the run was executed by {executor!r}, not by A")
    finished = [s for s in subscribers if s.terminal == "done"]
    last_seq = max((s.last_seq for s in finished), default=0)
    frames = max((s.frames for s in finished), default=0)
    missing: dict[str, Counter[str]] = {"A": Counter(), "B": Counter()}
    for s in subscribers:
        reason = why_incomplete(s, run_id, last_seq, frames)
        if reason is not None:
            missing[s.side][reason] += 1
    wall = max((s.last_at for s in subscribers), default=started) - started
    run_seconds = (finished[0].done_ts - finished[0].first_ts) / 1000 if finished else 0.0
    return Result(
        label, subscribers, lags, wall, elapsed, run_seconds, cpu, last_seq, missing, cut, joined
    )


def report(result: Result) -> None:
    subscribers = result.subscribers
    frames = sum(s.frames for s in subscribers)
    messages = sum(s.messages for s in subscribers)
    on = {side: sum(s.side == side for s in subscribers) for side in "AB"}
    print(
        f"{result.label}: {on['A']} on A, {on['B']} on B; {frames:,} frames "
        f"({frames // max(len(subscribers), 1)} per subscriber) in {messages:,} messages "
        f"({frames / max(messages, 1):.1f} frames/message) in {result.wall:.2f} s "
        f"= {frames / max(result.wall, 1e-9):,.0f} frames/s"
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
    shares = {name: seconds / result.elapsed for name, seconds in cpu.items()}
    busy = [name for name, share in shares.items() if share >= SATURATED]
    listed = ", ".join(f"{name} {cpu[name]:.2f} ({shares[name]:.0%})" for name in cpu)
    print(
        f"    CPU s   {listed} of {result.elapsed:.2f} s wall on {os.cpu_count()} cores; "
        f"saturated: {', '.join(busy) or 'none'}"
    )
    if result.joined:
        print(f"    joins   every member in and told of every other in {result.joined:.2f} s")
    if "client" in busy:
        print("    CLIENT CPU-BOUND: this client is the bottleneck; the figures are a lower bound")
    for side in "AB":
        reasons = result.missing[side]
        if reasons:
            listed = "; ".join(f"{count} {reason}" for reason, count in reasons.most_common(3))
            print(
                f"    INCOMPLETE on {side}: {sum(reasons.values())} of {on[side]} subscribers "
                f"did not get the whole run ({result.cut or 'they stopped'}): {listed}"
            )


async def bench(a: Worker, b: Worker, prefix: str, args: argparse.Namespace) -> bool:
    """Every row; False when some subscriber did not get the whole run."""
    complete = True
    args.deadline = time.monotonic() + args.budget
    async with httpx.AsyncClient(timeout=30) as http:
        await measure("warm-up", ["A", "B"], a, b, prefix, http, args)
        mode = {
            "thread": "subscribe thread_id",
            "join": "join (room, with presence)",
            "threadstream": "LangGraph thread stream (messages, tools, lifecycle)",
        }[args.mode]
        pool = args.broker_max_connections or "redis-py default"
        print(
            f"one run of the bench graph ({args.tokens} tokens, {args.token_delay:g} s apart) "
            f"executed by A, fanned out over /ws; mode: {mode}; "
            f"permessage-deflate {'on' if args.deflate else 'off'}; "
            f"workers' Redis pool: {pool}; lag = client receive time - frame ts"
        )
        for count in args.counts:
            if count == 1:
                plans = [("N=1 (on A)", ["A"]), ("N=1 (on B)", ["B"])]
            else:
                plans = [(f"N={count}", ["A", "B"] * (count // 2) + ["A"] * (count % 2))]
            for label, sides in plans * args.rounds:
                result = await measure(label, sides, a, b, prefix, http, args)
                report(result)
                complete = complete and not any(result.missing.values())
    return complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 100, 1000],
        help="subscriber counts, comma-separated (default 1,100,1000)",
    )
    parser.add_argument("--tokens", type=int, default=500, help="BENCH_TOKENS of the run")
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        help="seconds between the model's tokens (BENCH_TOKEN_DELAY; 0: as fast as it can)",
    )
    parser.add_argument("--mode", choices=("thread", "join", "threadstream"), default="thread")
    parser.add_argument(
        "--broker-max-connections",
        type=int,
        default=0,
        help="the workers' Redis connection pool size (default: redis-py's)",
    )
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measurements of each N, each printed"
    )
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds for subscribing, and for the run"
    )
    parser.add_argument(
        "--budget", type=float, default=170, help="seconds for all measurements together"
    )
    parser.add_argument(
        "--stall", type=float, default=10, help="give up on a run when no frame came for this long"
    )
    args = parser.parse_args()
    if min(args.counts) < 1 or args.rounds < 1:
        parser.error("counts and rounds must be >= 1")
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
        workers(database, prefix, args) as (a, b),
    ):
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                complete = runner.run(bench(a, b, prefix, args))
        except BaseException:
            for worker in (a, b):
                state = "running" if worker.process.poll() is None else "exited"
                print(f"worker {worker.name} ({state}), end of its log:", file=sys.stderr)
                print(worker.tail(), file=sys.stderr)
            raise
    if not complete:
        print("some subscribers did not get the whole run (INCOMPLETE above)")
        sys.exit(1)


if __name__ == "__main__":
    main()
