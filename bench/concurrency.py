"""How one server process holds up under many concurrent streams, and next to a slow one.

Two measurements, each against its own ``agent-server serve`` process on loopback (a
separate uvicorn process, as deployed; ``memory://`` checkpoints,
``AGENT_SERVER_MAX_CONCURRENT_RUNS=256``), every stream read and every frame's JSON
parsed by an httpx client in this process (one connection per stream, no keep-alive):

1. **200 concurrent streams** of the default ``agent`` graph (the offline scripted
   model quotes a 250-word message back: about 280 tokens per run), all started at
   once. Prints aggregate frames/s, p50/p99 time to first token (client side: from
   sending the request to parsing the first ``token`` frame), p50/p99 total stream
   time, the server's CPU time per frame, and its RSS (``VmRSS`` of the server
   process: before, peak sampled every 20 ms on a thread, after).
2. **A slow consumer next to 50 normal streams.** The 50 streams' aggregate frames/s
   (a) alone and (b) with one extra client that POSTs ``/runs/stream`` for a long run
   over a raw socket with a small ``SO_RCVBUF`` and then never reads. Its run
   (``bench/slow_graph.py``) writes a 4 MB burst of 16 KB tokens, enough to fill the
   socket buffers (about 2.8 MB over loopback), then streams at an LLM's pace until it
   is cancelled after the round. Rounds go a b, b a, a b, ... (so that a steady drift
   hits both alike) after one uncounted warm-up round; b/a is printed, target >= 0.9.
   This server runs with short bounds (``AGENT_SERVER_SEND_TIMEOUT=2``,
   ``AGENT_SERVER_SUBSCRIBER_MAX_LAG=2000``) so that the slow client is dropped
   *during* each b round. ``/metrics`` is scraped every 0.25 s in every round (a and b
   alike): when the ``agent_server_subscribers`` gauge falls to the number of open
   normal streams, the slow client was dropped; ``agent_server_subscribers_dropped_slow``
   is compared before and after, and the server's end of the slow connection is read
   from ``/proc/net/tcp`` at the end of the round.

The machine is shared and noisy (2 cores: server and client take one each), so compare
the figures of one run of the script with each other, not across runs. The default run
takes about a minute and a half.

    python bench/concurrency.py [--streams 200] [--words 250] [--normal 50]
        [--normal-words 1250] [--pairs 4] [--server-env KEY=VALUE ...] [--only 1|2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent

PARAGRAPH = (
    "streaming agents send their answers as small frames over a long lived connection and "
    "every client reads them at its own pace while the server keeps one ordered log per "
    "run so that a reader who leaves can come back and resume where it stopped the log "
    "is the only buffer and a reader is just a position in it which keeps memory flat "
    "when many people watch the same conversation at once a slow reader should never "
    "hold up the graph or the other readers and a reader that stops altogether is "
    "dropped after a bound and told to reconnect this paragraph has no digits so that "
    "the offline model quotes it back instead of reaching for the calculator tool"
)

SLOW_RCVBUF = 4096
# /proc/net/tcp states (include/net/tcp_states.h)
TCP_STATES = {"01": "ESTABLISHED", "04": "FIN-WAIT-1", "05": "FIN-WAIT-2", "07": "CLOSE"}
METRICS = (
    "agent_server_subscribers",
    "agent_server_subscribers_dropped_slow_total",
    "agent_server_runs_active",
)


def message(words: int) -> str:
    """``words`` words of PARAGRAPH, repeated as needed (no digits: no calculator call)."""
    vocabulary = PARAGRAPH.split()
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(words))


def percentile(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# -- the server process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    port: int, env: dict[str, str], graphs: Sequence[str], log: TextIO, level: str = "warning"
) -> Any:
    env = {
        **os.environ,
        "AGENT_SERVER_DATABASE_URL": "memory://",
        "AGENT_SERVER_MAX_CONCURRENT_RUNS": "256",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    command = [
        sys.executable, "-m", "agent_server.cli", "serve", "--port", str(port),
        "--log-level", level,
    ]  # fmt: skip
    for graph in graphs:
        command += ["--graph", graph]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")


def stop_server(process: Any) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def explain_failure(process: Any, log: TextIO) -> None:
    """The server's state and the end of its log, when a measurement failed."""
    # A server that was sent SIGTERM (by someone else) drains its runs, then exits by it.
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=15)
    log.flush()
    log.seek(0)
    tail = log.read()[-3000:]
    state = "still running" if process.poll() is None else f"exited with {process.returncode}"
    print(f"measurement failed; server {state}; end of its log:\n{tail}", file=sys.stderr)


def summarise_log(log: TextIO) -> str:
    """The server's warnings, errors and subscriber drops, counted, in one line."""
    log.flush()
    log.seek(0)
    text = log.read()
    kinds: dict[str, int] = {}
    for level, logger, line in re.findall(r"^\S+ \S+ ([A-Z]+)\s+(\S+): (.*)$", text, re.M):
        dropped = logger.startswith("agent_server") and ("dropped" in line or "aborted" in line)
        if level == "INFO" and not dropped:
            continue
        line = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<run>", line)  # group drops by reason
        key = f"{level} {logger}: {line}"
        kinds[key] = kinds.get(key, 0) + 1
    if not kinds:
        return "server log: no warnings or errors"
    exceptions = sorted(
        set(re.findall(r"^\s*\|?\s*((?:\w+\.)*\w+(?:Error|Group)\b.*)$", text, re.M))
    )
    parts = [f"{count}x {key}" for key, count in kinds.items()]
    if exceptions:
        parts.append("exceptions: " + "; ".join(exceptions[:4]))
    return "server log:\n     " + "\n     ".join(parts)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's RSS on a thread, so a busy event loop cannot skip samples."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kb(self.pid))


# -- clients -----------------------------------------------------------------------------


@dataclass
class Stream:
    frames: int = 0
    tokens: int = 0
    ttft: float | None = None
    total: float = 0.0
    last_type: str | None = None
    done: bool = False  # saw data: [DONE]
    run_id: str = ""

    @property
    def ok(self) -> bool:
        return self.done and self.last_type == "done"


@dataclass
class Open:
    count: int = 0


async def read_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], open_streams: Open | None = None
) -> Stream:
    result = Stream()
    buffer = b""
    if open_streams is not None:
        open_streams.count += 1
    started = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/runs/stream", json=body) as response:
            response.raise_for_status()
            result.run_id = response.headers.get("x-run-id", "")
            async for chunk in response.aiter_raw():
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data: {"):
                            frame = orjson.loads(line[6:])
                            result.frames += 1
                            result.last_type = frame["type"]
                            if result.last_type == "token":
                                result.tokens += 1
                                if result.ttft is None:
                                    result.ttft = time.perf_counter() - started
                        elif line == b"data: [DONE]":
                            result.done = True
    finally:
        result.total = time.perf_counter() - started
        if open_streams is not None:
            open_streams.count -= 1
    return result


def client_for(streams: int) -> httpx.AsyncClient:
    # No keep-alive: every stream opens its own connection, as a browser's would, and a
    # connection idle between rounds cannot meet uvicorn's keep-alive timeout mid-reuse.
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    return httpx.AsyncClient(timeout=httpx.Timeout(120), limits=limits)


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    text = (await client.get(f"{url}/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in METRICS:
            values[name] = float(value)
    return values


async def settle(client: httpx.AsyncClient, url: str, timeout: float = 15.0) -> dict[str, float]:
    """Wait (bounded) until no run is active and no stream is open."""
    deadline = time.monotonic() + timeout
    while True:
        values = await scrape(client, url)
        idle = not values["agent_server_runs_active"] and not values["agent_server_subscribers"]
        if idle or time.monotonic() > deadline:
            return values
        await asyncio.sleep(0.1)


class SlowClient:
    """POSTs /runs/stream over a raw socket with a tiny receive buffer; never reads."""

    def __init__(self, port: int, body: dict[str, Any]) -> None:
        self.port = port
        self.body = orjson.dumps(body)
        self.sock: socket.socket | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)  # before connect
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        head = (
            f"POST /runs/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
        )
        await loop.sock_sendall(sock, head.encode() + self.body)
        self.sock = sock

    def server_side(self) -> str:
        """The server's end of this connection as the kernel has it (/proc/net/tcp)."""
        if self.sock is None:
            return "not connected"
        mine = self.sock.getsockname()[1]
        with open("/proc/net/tcp") as table:
            for row in table.readlines()[1:]:
                fields = row.split()
                local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
                if int(local, 16) == self.port and int(remote, 16) == mine:
                    state = TCP_STATES.get(fields[3], fields[3])
                    unsent = int(fields[4].split(":")[0], 16)
                    return f"{state}, {unsent / 2**20:.1f} MB unsent"
        return "gone"

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# -- 1. many concurrent streams ----------------------------------------------------------


async def server_side_ttft(
    client: httpx.AsyncClient, url: str, results: Sequence[Stream]
) -> list[float]:
    """Per run, from the server accepting it to its first token (``GET /runs/{id}``)."""
    gate = asyncio.Semaphore(20)

    async def one(run_id: str) -> float | None:
        async with gate:
            run = (await client.get(f"{url}/runs/{run_id}")).json()
        if run.get("first_token_at") is None:
            return None
        return float(run["first_token_at"]) - float(run["created_at"])

    found = await asyncio.gather(*(one(r.run_id) for r in results if r.run_id))
    return [t for t in found if t is not None]


async def many_streams(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    body = {"graph": "agent", "message": message(args.words)}
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(port, args.server_env, [], log)
        try:
            async with client_for(args.streams) as client:
                await asyncio.gather(*(read_stream(client, url, body) for _ in range(4)))  # warm
                await settle(client, url)
                before = rss_kb(server.pid)
                cpu_before = cpu_seconds(server.pid)
                client_cpu = time.process_time()
                with RssSampler(server.pid) as sampler:
                    started = time.perf_counter()
                    results = await asyncio.gather(
                        *(read_stream(client, url, body) for _ in range(args.streams))
                    )
                    elapsed = time.perf_counter() - started
                client_cpu = time.process_time() - client_cpu
                server_cpu = cpu_seconds(server.pid) - cpu_before
                await settle(client, url)
                after = rss_kb(server.pid)
                server_ttft = await server_side_ttft(client, url, results)
        except Exception:
            explain_failure(server, log)
            raise
        finally:
            stop_server(server)
        server_log = summarise_log(log)

    frames = sum(r.frames for r in results)
    tokens = sum(r.tokens for r in results)
    ok = sum(r.ok for r in results)
    ttft = [r.ttft for r in results if r.ttft is not None]
    totals = [r.total for r in results]
    mb = 1024
    print(
        f"1. {args.streams} concurrent streams on one server process: graph 'agent', "
        f"a {args.words}-word message quoted back ({tokens / len(results):.0f} tokens/run)"
    )
    print(
        f"   {frames} frames in {elapsed:.2f} s = {frames / elapsed:.0f} frames/s "
        f"({tokens / elapsed:.0f} tokens/s); {ok}/{len(results)} streams ended with done"
    )
    print(
        f"   time to first token  p50 {statistics.median(ttft):6.3f} s   "
        f"p99 {percentile(ttft, 99):6.3f} s   max {max(ttft):6.3f} s"
    )
    if server_ttft:
        print(
            f"   (server side, accepted -> first token: p50 {statistics.median(server_ttft):6.3f}"
            f" s   p99 {percentile(server_ttft, 99):6.3f} s)"
        )
    print(
        f"   total stream time    p50 {statistics.median(totals):6.3f} s   "
        f"p99 {percentile(totals, 99):6.3f} s   max {max(totals):6.3f} s"
    )
    print(
        f"   server CPU {server_cpu:.2f} s ({server_cpu / elapsed:.0%} of one core), "
        f"{server_cpu / frames * 1e6:.0f} µs/frame; client CPU {client_cpu:.2f} s "
        f"({client_cpu / elapsed:.0%})"
    )
    print(
        f"   server RSS  before {before / mb:.1f} MB  peak {sampler.peak / mb:.1f} MB  "
        f"after {after / mb:.1f} MB"
    )
    grown = after - before
    print(
        f"   after - before = {grown / len(results):.0f} KB per run, "
        f"{grown * 1024 / frames:.0f} bytes per frame (finished runs' logs are retained)"
    )
    print(f"   {server_log}")


# -- 2. a slow consumer next to normal ones ----------------------------------------------


@dataclass
class Round:
    slow: bool
    rate: float
    ok: int
    drop_after: float | None = None  # seconds into the round
    attached_at_end: bool | None = None
    dropped_slow: float = 0.0
    slow_frames: int = 0
    slow_connection: str = ""
    cpu_per_frame: float = 0.0  # server CPU seconds per normal frame
    rss_mb: float = 0.0


async def one_round(
    client: httpx.AsyncClient, url: str, port: int, pid: int, normal: int, words: int, slow: bool
) -> Round:
    body = {"graph": "agent", "message": message(words)}
    open_streams = Open()
    samples: list[tuple[float, float, int]] = []  # (t, subscribers, open normal streams)
    before = await scrape(client, url)
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    running = True

    async def sample() -> None:  # in every round, so that a and b pay for it alike
        while running:
            values = await scrape(client, url)
            t = time.perf_counter() - started
            samples.append((t, values["agent_server_subscribers"], open_streams.count))
            await asyncio.sleep(0.25)

    slow_client = None
    thread_id = f"slow-{uuid.uuid4()}"
    if slow:
        slow_client = SlowClient(
            port, {"graph": "slow", "input": {"calls": 0}, "thread_id": thread_id}
        )
        await slow_client.start()
    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(
            *(read_stream(client, url, body, open_streams) for _ in range(normal))
        )
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        running = False
        await sampler
    frames = sum(r.frames for r in results)
    result = Round(slow, frames / elapsed, sum(r.ok for r in results), cpu_per_frame=cpu / frames)
    if slow_client is not None:
        end = await scrape(client, url)  # the normal streams are closed: is the slow one?
        result.attached_at_end = end["agent_server_subscribers"] > 0
        result.dropped_slow = (
            end["agent_server_subscribers_dropped_slow_total"]
            - before["agent_server_subscribers_dropped_slow_total"]
        )
        # Dropped: the gauge counts no more than the normal streams, while all are open.
        was_attached = False
        for t, subscribers, open_count in samples:
            if open_count == normal and subscribers > open_count:
                was_attached = True
            elif was_attached and open_count == normal and subscribers <= open_count:
                result.drop_after = t
                break
        result.slow_connection = slow_client.server_side()
        runs = (await client.get(f"{url}/threads/{thread_id}/runs")).json()["runs"]
        for run in runs:
            result.slow_frames = max(result.slow_frames, run["last_seq"])
            if run["status"] in ("pending", "running"):
                await client.post(f"{url}/runs/{run['run_id']}/cancel")
        slow_client.close()
    await settle(client, url)
    result.rss_mb = rss_kb(pid) / 1024
    return result


async def slow_consumer(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AGENT_SERVER_SEND_TIMEOUT": "2",
        "AGENT_SERVER_SUBSCRIBER_MAX_LAG": "2000",
        "SLOW_TOKEN_BYTES": str(args.slow_token_bytes),
        **args.server_env,
    }
    rounds: list[Round] = []
    with tempfile.TemporaryFile("w+") as log:
        graphs = ["slow=bench/slow_graph.py:make_graph"]
        server = start_server(port, env, graphs, log, level="info")  # to see drops' reasons
        try:
            async with client_for(args.normal) as client:
                measure = (client, url, port, server.pid, args.normal, args.normal_words)
                await one_round(*measure, slow=False)  # warm-up, not counted
                for pair in range(args.pairs):
                    # a b, b a, a b, ...: a steady drift (the heap grows) hits both alike.
                    order = (False, True) if pair % 2 == 0 else (True, False)
                    for slow in order:
                        rounds.append(await one_round(*measure, slow=slow))
        except Exception:
            explain_failure(server, log)
            raise
        finally:
            stop_server(server)
        server_log = summarise_log(log)

    print(
        f"2. {args.normal} normal streams ('agent', {args.normal_words}-word message): "
        f"(a) alone, (b) next to one client that never reads"
    )
    print(
        f"   slow client: 'slow' graph ({args.slow_token_bytes // 1024} KB tokens), "
        f"SO_RCVBUF {SLOW_RCVBUF}; server bounds: AGENT_SERVER_SEND_TIMEOUT=2, "
        "AGENT_SERVER_SUBSCRIBER_MAX_LAG=2000"
    )
    for number, r in enumerate(rounds, 1):
        label = "(b) + slow" if r.slow else "(a) alone "
        line = (
            f"   round {number:>2} {label} {r.rate:6.0f} frames/s  {r.ok}/{args.normal} done  "
            f"server {r.cpu_per_frame * 1e6:3.0f} µs CPU/frame, RSS {r.rss_mb:4.0f} MB"
        )
        if r.slow:
            when = f"{r.drop_after:.1f} s in" if r.drop_after is not None else "not seen"
            line += (
                f"\n{'':17}slow client: dropped {when}, "
                f"{'still attached' if r.attached_at_end else 'gone'} at round end, "
                f"dropped_slow +{r.dropped_slow:.0f}; server's socket {r.slow_connection}; "
                f"its run: {r.slow_frames} frames"
            )
        print(line)
    a = [r.rate for r in rounds if not r.slow]
    b = [r.rate for r in rounds if r.slow]
    pairs = []
    for i in range(0, len(rounds), 2):
        first, second = rounds[i], rounds[i + 1]
        slow_round, alone = (second, first) if second.slow else (first, second)
        pairs.append(slow_round.rate / alone.rate)
    print(
        f"   b/a = {statistics.median(b) / statistics.median(a):.2f} (medians "
        f"{statistics.median(b):.0f} / {statistics.median(a):.0f}); best b / best a = "
        f"{max(b) / max(a):.2f}; per pair {', '.join(f'{p:.2f}' for p in pairs)}; "
        "target b/a >= 0.90"
    )
    print(f"   {server_log}")


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="part 1 concurrent streams")
    parser.add_argument("--words", type=int, default=250, help="part 1 message words")
    parser.add_argument("--normal", type=int, default=50, help="part 2 normal streams")
    parser.add_argument("--normal-words", type=int, default=1250, help="part 2 message words")
    parser.add_argument("--pairs", type=int, default=4, help="part 2 (a, b) round pairs")
    parser.add_argument("--slow-token-bytes", type=int, default=16384)
    parser.add_argument(
        "--server-env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for both servers, e.g. AGENT_SERVER_RETENTION_RUNS=0",
    )
    parser.add_argument("--only", choices=("1", "2"), help="run one part only")
    args = parser.parse_args()
    args.server_env = dict(args.server_env)
    started = time.perf_counter()
    if args.only in (None, "1"):
        await many_streams(args)
    if args.only in (None, "2"):
        await slow_consumer(args)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"total {time.perf_counter() - started:.0f} s; load average now {load}")


if __name__ == "__main__":
    asyncio.run(main())
