"""agent-server against the other LangGraph servers, on the same graph, in one run.

Each server serves the repository's bench graph (``bench/bench_graph.py``: two parallel
tool calls, then a scripted ``--tokens``-word answer) and is measured by the same client:

  native         ``agent-server serve``, ``POST /runs/stream`` (memory broker; SQLite
                 checkpoints in a temporary file, the default deployment's kind;
                 ``--checkpoints memory`` for ``memory://``);
  langgraph-api  the same server (a process of its own, so that CPU and RSS are
                 attributed cleanly), ``POST /langgraph/threads/{id}/runs/stream``;
  langgraph-dev  ``langgraph dev`` (langgraph-api 0.16.7, venv ``.venv-langgraph``);
  aegra          Aegra 0.11.0 (venv ``.venv-aegra``, Python 3.12, its own PostgreSQL
                 database ``aegra_bench``, dropped and created afresh);
  in-process     ``astream_events(version="v2")`` in this process, no server.

The LangGraph-compatible servers stream ``messages-tuple``. Missing venvs are built
once with pip; a peer that cannot be installed or started is skipped with the reason.

Why it is built this way (the machine is shared, noisy and has 2 cores):
- Everything compared is measured in this one run, interleaved: each round measures
  every contender once, starting with a different one each round. Figures from
  separate runs are not comparable here.
- While one server is measured every other server is paused (``SIGSTOP`` to its whole
  process group: an idle ``langgraph dev`` keeps polling, which once cost agent-server
  a third of its rate beside it). Servers run in their own sessions, so that the
  signals reach their child processes and Ctrl-C reaches only this script.
- Server CPU and RSS are read from ``/proc`` and summed over the server's process and
  all its descendants (``aegra serve`` runs uvicorn as a child). Both are read after a
  short settle, so that work a server does after a stream's end is counted.
- A block is three single streams, one after another, then ``--streams`` at once. CPU is
  the delta over each phase divided by its runs (a run alone; a run among concurrent
  ones); RSS growth is the block's, divided by its runs. The warm-up (one block per
  contender) reaches the allocator's peak first, so later growth is what runs keep.
- Requests ask for ``Accept-Encoding: identity``: bytes per token are the SSE body's.

    python bench/peers.py [--rounds 5] [--tokens 3000] [--streams 10]
                          [--only native,aegra] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
MESSAGE = {"messages": [{"role": "user", "content": "benchmark"}]}
HEADERS = {"Accept-Encoding": "identity"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SETTLE = 0.5  # seconds a server gets, running, before and after a block is read
SINGLE_RUNS = 3  # single streams per contender per round, one after another

LANGGRAPH_VENV = ROOT / ".venv-langgraph"
LANGGRAPH_PACKAGES = ["langgraph-cli[inmem]", "langgraph-api==0.16.7"]
AEGRA_VENV = ROOT / ".venv-aegra"
AEGRA_PACKAGES = ["aegra-cli==0.11.0", "aegra-api==0.11.0"]
AEGRA_DATABASE = "aegra_bench"

CONTENDERS = ("in-process", "native", "langgraph-api", "langgraph-dev", "aegra")
LABELS = {
    "in-process": "in-process `astream_events` v2 (no server)",
    "native": "**agent-server** `POST /runs/stream`",
    "langgraph-api": "agent-server LangGraph API, `messages-tuple`",
    "langgraph-dev": "`langgraph dev` {version}, `messages-tuple`",
    "aegra": "**Aegra {version}**, `messages-tuple`",
}


class Skip(Exception):
    """A peer that cannot be installed or started; the message says why."""


# --- processes ----------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def cpu_seconds(root: int) -> float:
    """utime + stime of the tree, with what its reaped children had used."""
    ticks = 0
    for pid in _descendants(root):
        if (fields := _stat(pid)) is not None:
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def database_cpu_seconds(database: str) -> float:
    """utime + stime of the PostgreSQL backends connected to ``database`` (a separate
    service, so not in a server's tree; reported beside it, not added to it)."""
    ticks = 0
    marker = f" {database} ".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes()
            fields = _stat(int(entry.name))
            if command.startswith(b"postgres: ") and marker in command and fields is not None:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def rss_bytes(root: int) -> int:
    """VmRSS summed over the tree."""
    total = 0
    for pid in _descendants(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One server under test: a process group started in its own session."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    url: str
    ready: Callable[[str], bool]
    log: Path
    version: str = ""
    database: str | None = None  # a PostgreSQL database whose backends work for it
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if self.ready(self.url):
                    return
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        lines = [line for line in tail.splitlines() if line.strip()] or ["no output"]
        cause = next((line for line in reversed(lines) if "Error" in line), lines[-1])
        raise Skip(f"{self.name} did not start ({cause.strip()}); the end of its log:\n{tail}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def stop(self) -> None:
        """SIGCONT, then SIGTERM to the group; SIGKILL what is left after 20 s."""
        if self.process is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # children that outlived the leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None


def _http_ok(method: str, path: str, expect: str) -> Callable[[str], bool]:
    def ready(url: str) -> bool:
        response = httpx.request(method, url + path, json={} if method == "POST" else None)
        return response.status_code == 200 and expect in response.text

    return ready


def _version(python: Path, package: str) -> str:
    script = f"import importlib.metadata as m; print(m.version({package!r}))"
    found = subprocess.run([str(python), "-c", script], capture_output=True, text=True)
    return found.stdout.strip() or "?"


def _pip_install(venv: Path, base_python: str, packages: list[str], what: str) -> None:
    """Build ``venv`` with ``packages`` once (pip's output goes to ``<venv>.log``)."""
    print(f"installing {what} into {venv.name} (once; log in {venv.name}.log)", flush=True)
    log = venv.parent / f"{venv.name}.log"
    with log.open("wb") as out:
        steps = [
            [base_python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *packages],
        ]
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise Skip(f"installing {what} failed; see {log}")


# --- the servers --------------------------------------------------------------------


def agent_server(work: Path, tokens: int, checkpoints: str, path: str) -> Server:
    """``agent-server serve`` as deployed: the CLI, one worker, the memory broker.

    Each of our two contenders (``path``: native, LangGraph API) gets a process of its
    own, so that CPU and RSS growth are attributed to one path each: in a shared
    process, memory one path frees is reused by the other and the split is arbitrary.
    """
    binary = Path(sys.executable).parent / "agent-server"
    if not binary.exists():
        raise Skip(f"no {binary}: run `make install`")
    sqlite = work / f"threads-{path}.sqlite"
    port = free_port()
    env = {
        **os.environ,
        "BENCH_TOKENS": str(tokens),
        "AGENT_SERVER_DATABASE_URL": "memory://" if checkpoints == "memory" else str(sqlite),
        "AGENT_SERVER_BROKER_URL": "memory://",
    }
    command = [
        str(binary), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--graph", "bench=bench/bench_graph.py:make_graph",
    ]  # fmt: skip
    return Server(
        f"agent-server ({path})", command, env, ROOT, f"http://127.0.0.1:{port}",
        _http_ok("GET", "/healthz", ""), work / f"agent-server-{path}.log",
        version=_version(Path(sys.executable), "agent-server"),
    )  # fmt: skip


def langgraph_dev(work: Path, tokens: int) -> Server:
    """``langgraph dev`` over the bench graph, run from a scratch folder.

    It resolves the config's paths against its working folder and keeps its state in
    ``.langgraph_api`` there, so a config with absolute paths is written to ``work``
    and every bench run starts without the last one's threads. The config is
    ``bench/langgraph.json`` with the graph loaded through ``bench/peers/graph.py``: the
    venv holds agent-server's dependencies of the day it was built, and the server's
    own imports may since have grown.
    """
    if not (LANGGRAPH_VENV / "bin" / "langgraph").exists():
        _pip_install(
            LANGGRAPH_VENV, sys.executable, [*LANGGRAPH_PACKAGES, "-e", str(ROOT)], "langgraph dev"
        )
    folder = work / "langgraph-dev"
    folder.mkdir()
    config = json.loads((ROOT / "bench" / "langgraph.json").read_text())
    config["dependencies"] = [str(ROOT)]
    config["graphs"] = {"bench": f"{PEERS / 'graph.py'}:graph"}
    (folder / "langgraph.json").write_text(json.dumps(config))
    port = free_port()
    env = {
        **os.environ,
        "BENCH_TOKENS": str(tokens),
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "WARNING",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
    }
    command = [
        str(LANGGRAPH_VENV / "bin" / "langgraph"), "dev", "--config", "langgraph.json",
        "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload",
    ]  # fmt: skip
    return Server(
        "langgraph dev", command, env, folder, f"http://127.0.0.1:{port}",
        _http_ok("POST", "/assistants/search", '"bench"'), work / "langgraph-dev.log",
        version=_version(LANGGRAPH_VENV / "bin" / "python", "langgraph-api"),
    )  # fmt: skip


def _python_312() -> str:
    for candidate in sorted(Path("/root/.pyenv/versions").glob("3.1[2-9]*/bin/python")):
        return str(candidate)
    for name in ("python3.12", "python3.13"):
        if found := shutil.which(name):
            return found
    raise Skip("Aegra needs Python >= 3.12 and none was found")


def _fresh_database(admin_url: str) -> str:
    """Drop and create ``aegra_bench``; its URL. Aegra migrates it at start-up."""
    import psycopg

    try:
        with psycopg.connect(f"{admin_url}/postgres", autocommit=True, connect_timeout=5) as db:
            db.execute(f"DROP DATABASE IF EXISTS {AEGRA_DATABASE} WITH (FORCE)")
            db.execute(f"CREATE DATABASE {AEGRA_DATABASE}")
    except psycopg.Error as exc:
        raise Skip(f"Aegra needs PostgreSQL at {admin_url}: {exc}") from exc
    return f"{admin_url}/{AEGRA_DATABASE}"


def aegra(work: Path, tokens: int, postgres: str) -> Server:
    """``aegra serve`` (uvicorn in a child process) with ``bench/peers/aegra.json``,
    whose graph is ``bench/peers/graph.py``."""
    if not (AEGRA_VENV / "bin" / "aegra").exists():
        _pip_install(AEGRA_VENV, _python_312(), AEGRA_PACKAGES, "Aegra 0.11.0")
    port = free_port()
    env = {
        **os.environ,
        "BENCH_TOKENS": str(tokens),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": _fresh_database(postgres),
        "LOG_LEVEL": "WARNING",
    }
    command = [
        str(AEGRA_VENV / "bin" / "aegra"), "serve", "--host", "127.0.0.1", "--port", str(port),
        "-c", str(PEERS / "aegra.json"),
    ]  # fmt: skip
    return Server(
        "Aegra", command, env, work, f"http://127.0.0.1:{port}",
        _http_ok("POST", "/assistants/search", '"bench"'), work / "aegra.log",
        version=_version(AEGRA_VENV / "bin" / "python", "aegra-api"), database=AEGRA_DATABASE,
    )  # fmt: skip


# --- the client ---------------------------------------------------------------------


@dataclass
class Sample:
    """One stream as the client saw it."""

    tokens: int
    wire: int
    first_token: float
    elapsed: float


@dataclass
class Request:
    url: str
    body: dict[str, Any]


IsToken = Callable[[bytes, bytes], bool]


def native_token(name: bytes, data: bytes) -> bool:
    return data.startswith(b"{") and orjson.loads(data).get("type") == "token"


def langgraph_token(name: bytes, data: bytes) -> bool:
    """A ``messages-tuple`` part carrying an AI message chunk with content."""
    if name != b"messages":
        return False
    chunk = orjson.loads(data)[0]
    return chunk.get("type") == "AIMessageChunk" and bool(chunk.get("content"))


async def stream_once(client: httpx.AsyncClient, request: Request, is_token: IsToken) -> Sample:
    """POST, read the SSE body to its end; tokens, bytes, first token and wall time."""
    tokens, wire, first = 0, 0, 0.0
    buffer = b""
    started = time.perf_counter()
    async with client.stream("POST", request.url, json=request.body, headers=HEADERS) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            wire += len(chunk)
            # Only the unfinished event stays in the buffer, so normalising it is cheap.
            buffer = (buffer + chunk).replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                name, data = b"", []
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        data.append(line[6:] if line[5:6] == b" " else line[5:])
                    elif line.startswith(b"event:"):
                        name = line[6:].strip()
                if data and is_token(name, b"\n".join(data)):
                    tokens += 1
                    first = first or time.perf_counter() - started
    return Sample(tokens, wire, first, time.perf_counter() - started)


@dataclass
class Contender:
    """A row of the table: how one run is prepared and streamed, and by which server."""

    name: str
    server: Server | None
    prepare: Callable[[httpx.AsyncClient], Awaitable[Request]]
    is_token: IsToken
    stream: Callable[[httpx.AsyncClient, Request, IsToken], Awaitable[Sample]] = stream_once


def native_contender(server: Server) -> Contender:
    async def prepare(client: httpx.AsyncClient) -> Request:
        return Request(f"{server.url}/runs/stream", {"graph": "bench", "input": MESSAGE})

    return Contender("native", server, prepare, native_token)


def langgraph_contender(name: str, server: Server, base: str) -> Contender:
    """A thread run in ``messages-tuple`` mode; the thread is made before the clock starts."""

    async def prepare(client: httpx.AsyncClient) -> Request:
        response = await client.post(f"{base}/threads", json={}, headers=HEADERS)
        response.raise_for_status()
        thread = response.json()["thread_id"]
        body = {"assistant_id": "bench", "input": MESSAGE, "stream_mode": ["messages-tuple"]}
        return Request(f"{base}/threads/{thread}/runs/stream", body)

    return Contender(name, server, prepare, langgraph_token)


# --thread-stream: LangGraph's thread-centric protocol (Agent Protocol v2, issue 16)
# instead of messages-tuple: an event stream on the thread, then `run.start`; the stream
# does not end with the run, so it is read until the root's terminal `lifecycle` event.
THREAD_CHANNELS = ["lifecycle", "input", "messages", "tools", "values"]


def thread_token(name: bytes, data: bytes) -> bool:
    """A ``messages`` event carrying a text delta."""
    return b'"text-delta"' in data and orjson.loads(data)["method"] == "messages"


def thread_stream_contender(name: str, server: Server, base: str) -> Contender:
    async def prepare(client: httpx.AsyncClient) -> Request:
        response = await client.post(f"{base}/threads", json={}, headers=HEADERS)
        response.raise_for_status()
        thread = response.json()["thread_id"]
        return Request(f"{base}/threads/{thread}", {"assistant_id": "bench", "input": MESSAGE})

    return Contender(name, server, prepare, thread_token, stream=thread_stream_once)


def thread_end(data: bytes) -> bool:
    """The root's terminal ``lifecycle`` event: the run is over, the stream is not."""
    if b'"lifecycle"' not in data:
        return False
    params = orjson.loads(data)["params"]
    return not params["namespace"] and params["data"]["event"] in ("completed", "failed")


async def thread_stream_once(
    client: httpx.AsyncClient, request: Request, is_token: IsToken
) -> Sample:
    """Open the thread's event stream, start the run, read to the run's end."""
    tokens, wire, first = 0, 0, 0.0
    buffer = b""
    started = time.perf_counter()
    body = {"channels": THREAD_CHANNELS}
    url = f"{request.url}/stream/events"
    async with client.stream("POST", url, json=body, headers=HEADERS) as response:
        response.raise_for_status()
        command = {"id": 1, "method": "run.start", "params": request.body}
        run = await client.post(f"{request.url}/commands", json=command, headers=HEADERS)
        run.raise_for_status()
        async for chunk in response.aiter_raw():
            wire += len(chunk)
            buffer = (buffer + chunk).replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                lines = event.split(b"\n")
                data = b"".join(line[5:].strip() for line in lines if line.startswith(b"data:"))
                if not data:
                    continue
                if is_token(b"", data):
                    tokens += 1
                    first = first or time.perf_counter() - started
                elif thread_end(data):
                    return Sample(tokens, wire, first, time.perf_counter() - started)
    return Sample(tokens, wire, first, time.perf_counter() - started)
    return Sample(tokens, wire, first, time.perf_counter() - started)


async def measure(contender: Contender, streams: int) -> tuple[float, list[Sample]]:
    """Run ``streams`` runs at once; the wall time from the first request to the last end."""
    limits = httpx.Limits(max_connections=streams + 5)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        requests = [await contender.prepare(client) for _ in range(streams)]
        started = time.perf_counter()
        samples = await asyncio.gather(
            *(contender.stream(client, request, contender.is_token) for request in requests)
        )
        elapsed = time.perf_counter() - started
    if not all(sample.tokens for sample in samples):
        raise RuntimeError(f"{contender.name}: a stream delivered no tokens")
    return elapsed, list(samples)


class InProcess:
    """The reference: ``astream_events(version="v2")`` over the same graph, no server."""

    def __init__(self) -> None:
        from langgraph.checkpoint.memory import InMemorySaver

        from bench.bench_graph import graph

        self.graph = graph.copy(update={"checkpointer": InMemorySaver()})

    async def run(self) -> Sample:
        from langchain_core.runnables import RunnableConfig

        config = RunnableConfig(configurable={"thread_id": str(uuid.uuid4())})
        tokens, first = 0, 0.0
        started = time.perf_counter()
        async for event in self.graph.astream_events(MESSAGE, config, version="v2"):
            if event["event"] == "on_chat_model_stream" and event["data"]["chunk"].content:
                tokens += 1
                first = first or time.perf_counter() - started
        return Sample(tokens, 0, first, time.perf_counter() - started)


# --- the run ------------------------------------------------------------------------


@dataclass
class Block:
    """One contender's turn in a round: single streams one after another, then several at once.

    CPU is read around each phase, so that a run's cost alone and its cost among
    concurrent runs are told apart; RSS growth is the whole block's.
    """

    singles: list[Sample]
    many: list[Sample] = field(default_factory=list)
    many_elapsed: float = 0.0
    cpu_single: float | None = None  # server CPU seconds per run, one stream at a time
    cpu_many: float | None = None  # server CPU seconds per run, all streams at once
    rss: int | None = None  # server RSS growth over the block, bytes
    database_cpu: float | None = None  # its PostgreSQL backends' CPU seconds per run
    client_cpu: float = 0.0
    wall: float = 0.0

    @property
    def runs(self) -> int:
        return len(self.singles) + len(self.many)


@dataclass
class Results:
    contender: str
    label: str
    blocks: list[Block] = field(default_factory=list)
    idle_cpu: float | None = None  # server CPU seconds per second, paused peers, no load

    def singles(self) -> list[float]:
        return [s.tokens / s.elapsed for b in self.blocks for s in b.singles]

    def aggregates(self) -> list[float]:
        return [sum(s.tokens for s in b.many) / b.many_elapsed for b in self.blocks if b.many]

    def first_tokens(self) -> list[float]:
        return [s.first_token for b in self.blocks for s in b.singles]

    def samples(self) -> list[Sample]:
        return [s for b in self.blocks for s in (*b.singles, *b.many)]

    def bytes_per_token(self) -> float | None:
        tokens = sum(s.tokens for s in self.samples())
        wire = sum(s.wire for s in self.samples())
        return wire / tokens if wire and tokens else None

    def cpu_single(self) -> list[float]:
        return [b.cpu_single for b in self.blocks if b.cpu_single is not None]

    def cpu_many(self) -> list[float]:
        return [b.cpu_many for b in self.blocks if b.cpu_many is not None]

    def rss_per_run(self) -> float | None:
        blocks = [b for b in self.blocks if b.rss is not None]
        return sum(b.rss or 0 for b in blocks) / sum(b.runs for b in blocks) if blocks else None


class Bench:
    def __init__(self, contenders: list[Contender], servers: list[Server], streams: int) -> None:
        self.contenders = contenders
        self.servers = servers
        self.streams = streams
        self.in_process: InProcess | None = None

    def only(self, server: Server | None) -> None:
        """Pause every server but ``server`` (all of them for the in-process reference)."""
        for other in self.servers:
            other.signal(signal.SIGCONT if other is server else signal.SIGSTOP)

    async def block(self, contender: Contender) -> Block:
        server = contender.server
        self.only(server)
        await asyncio.sleep(SETTLE)  # a resumed server catches up on its timers first
        client0, wall0 = _client_cpu(), time.perf_counter()
        if server is None:
            assert self.in_process is not None
            block = Block([await self.in_process.run() for _ in range(SINGLE_RUNS)])
        else:
            cpu0, rss0 = cpu_seconds(server.pid), rss_bytes(server.pid)
            db0 = database_cpu_seconds(server.database) if server.database else 0.0
            block = Block([(await measure(contender, 1))[1][0] for _ in range(SINGLE_RUNS)])
            await asyncio.sleep(SETTLE)  # work done after the streams' end counts too
            cpu1 = cpu_seconds(server.pid)
            block.cpu_single = (cpu1 - cpu0) / SINGLE_RUNS
            if self.streams:
                block.many_elapsed, block.many = await measure(contender, self.streams)
                await asyncio.sleep(SETTLE)
                block.cpu_many = (cpu_seconds(server.pid) - cpu1) / self.streams
            block.rss = rss_bytes(server.pid) - rss0
            if server.database:
                block.database_cpu = (database_cpu_seconds(server.database) - db0) / block.runs
        block.wall = time.perf_counter() - wall0
        block.client_cpu = _client_cpu() - client0
        return block

    async def idle_cpu(self, server: Server, seconds: float = 3.0) -> float:
        self.only(server)
        await asyncio.sleep(SETTLE)
        cpu0 = cpu_seconds(server.pid)
        await asyncio.sleep(seconds)
        return (cpu_seconds(server.pid) - cpu0) / seconds

    async def run(self, rounds: int, results: dict[str, Results]) -> None:
        print("warm-up: one block each (imports, caches, the allocator's peak)", flush=True)
        for contender in self.contenders:
            await self.block(contender)
        for server in self.servers:
            idle = await self.idle_cpu(server)
            for contender in self.contenders:
                if contender.server is server:
                    results[contender.name].idle_cpu = idle
        for index in range(rounds):
            shift = index % len(self.contenders)
            for contender in self.contenders[shift:] + self.contenders[:shift]:
                results[contender.name].blocks.append(await self.block(contender))
            rates = (f"{c.name} {results[c.name].singles()[-1]:,.0f}" for c in self.contenders)
            print(f"round {index + 1}/{rounds}: {', '.join(rates)} tok/s", flush=True)
        self.only(None)


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the report ---------------------------------------------------------------------


def _best_median(values: list[float], fmt: str, low: bool = False) -> str:
    if not values:
        return "-"
    best = min(values) if low else max(values)
    return f"{format(best, fmt)} / {format(statistics.median(values), fmt)}"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:,.0f} ms" if values else "-"


def table(results: dict[str, Results], streams: int) -> str:
    """The issue's table: best / median where there are several samples."""
    lines = [
        f"| same run, one session | tok/s, 1 stream | tok/s, {streams} streams at once "
        f"| server CPU per run (1 stream / {streams} at once) | RSS kept per finished run "
        "| first token | bytes/token |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results.values():
        rss = result.rss_per_run()
        wire = result.bytes_per_token()
        first = [t * 1000 for t in result.first_tokens()]
        cells = [
            result.label,
            _best_median(result.singles(), ",.0f"),
            _best_median(result.aggregates(), ",.0f"),
            f"{_ms(result.cpu_single())} / {_ms(result.cpu_many())}"
            if result.cpu_single()
            else "-",
            f"{rss / 2**20:.2f} MiB" if rss is not None else "-",
            f"{_best_median(first, ',.1f', low=True)} ms",
            f"{wire:,.0f}" if wire else "-",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


@dataclass
class Target:
    """One of issue 15's targets: ``value(numerator, denominator)`` on best and median."""

    name: str
    numerator: list[float]
    denominator: list[float]
    goal: str
    higher_is_better: bool = True
    difference: bool = False  # numerator - denominator, in ms, instead of a ratio

    def figures(self) -> tuple[float, float] | None:
        a, b = self.numerator, self.denominator
        if not a or not b:
            return None
        if self.difference:
            return (min(a) - min(b)) * 1000, (statistics.median(a) - statistics.median(b)) * 1000
        pick = max if self.higher_is_better else min  # the best of a cost is its minimum
        return pick(a) / pick(b), statistics.median(a) / statistics.median(b)


def targets(results: dict[str, Results], streams: int) -> tuple[str, dict[str, dict[str, float]]]:
    """Issue 15's targets, as ratios (or differences) on best and on median figures."""
    native, api, aegra, reference = (
        results.get(name) for name in ("native", "langgraph-api", "aegra", "in-process")
    )
    rows: list[Target] = []
    if native and aegra:
        rows += [
            Target(
                "agent-server / Aegra, tok/s 1 stream", native.singles(), aegra.singles(), "≥ 2.5"
            ),
            Target(
                f"agent-server / Aegra, tok/s {streams} streams",
                native.aggregates(), aegra.aggregates(), "≥ 2.5",
            ),
            Target(
                "agent-server / Aegra, CPU per run (1 stream)",
                native.cpu_single(), aegra.cpu_single(), "≤ 0.4", higher_is_better=False,
            ),
            Target(
                f"agent-server / Aegra, CPU per run ({streams} at once)",
                native.cpu_many(), aegra.cpu_many(), "≤ 0.4", higher_is_better=False,
            ),
        ]  # fmt: skip
    if native and reference:
        rows.append(
            Target(
                "agent-server first token - in-process first token",
                native.first_tokens(), reference.first_tokens(), "≤ 5 ms", difference=True,
            )
        )  # fmt: skip
    if native and api:
        rows += [
            Target(
                "LangGraph API / native, tok/s 1 stream", api.singles(), native.singles(), "≥ 0.9"
            ),
            Target(
                f"LangGraph API / native, tok/s {streams} streams",
                api.aggregates(), native.aggregates(), "≥ 0.9",
            ),
        ]  # fmt: skip
    lines = ["| target (issue 15) | best | median | goal |", "|---|---|---|---|"]
    raw: dict[str, dict[str, float]] = {}
    for row in rows:
        if (found := row.figures()) is None:
            continue
        best, median = found
        raw[row.name] = {"best": best, "median": median}
        unit = " ms" if row.difference else ""
        lines.append(f"| {row.name} | {best:.2f}{unit} | {median:.2f}{unit} | {row.goal} |")
    if native and (rss := native.rss_per_run()) is not None:
        raw["agent-server RSS kept per finished run, MiB"] = {"best": rss / 2**20}
        lines.append(
            f"| agent-server RSS kept per finished run | {rss / 2**20:.2f} MiB | | ≤ 0.5 MiB |"
        )
    return "\n".join(lines), raw


def _commit() -> str:
    found = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return found.stdout.strip() or "?"


# --- main ---------------------------------------------------------------------------


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[None]:
    """Stop every started server on the way out, whatever the way (Ctrl-C, SIGTERM)."""

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        for server in servers:
            server.stop()
        signal.signal(signal.SIGTERM, previous)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=3000, help="words in the answer")
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"measure only these (repeatable or comma-separated): {', '.join(CONTENDERS)}",
    )
    parser.add_argument("--checkpoints", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument(
        "--thread-stream",
        action="store_true",
        help="LangGraph-compatible servers: the thread-centric stream, not messages-tuple",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("AEGRA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="the PostgreSQL server where Aegra gets its database (no database name)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the raw figures here")
    args = parser.parse_args()
    wanted = {n.strip() for spec in args.only or [",".join(CONTENDERS)] for n in spec.split(",")}
    if unknown := wanted - set(CONTENDERS):
        parser.error(f"unknown --only {', '.join(sorted(unknown))}; choose from {CONTENDERS}")
    args.wanted = [name for name in CONTENDERS if name in wanted]
    return args


def main() -> None:
    args = parse_args()
    os.environ["BENCH_TOKENS"] = str(args.tokens)  # read by bench_graph at import
    sys.path.insert(0, str(ROOT))
    load_start = os.getloadavg()
    started = time.monotonic()
    servers: list[Server] = []
    skipped: dict[str, str] = {}
    results: dict[str, Results] = {}
    contenders: list[Contender] = []

    with tempfile.TemporaryDirectory(prefix="bench-peers-") as scratch, running(servers):
        work = Path(scratch)
        bench = Bench(contenders, servers, args.streams)

        def start(make: Callable[[], Server], names: list[str]) -> Server | None:
            server = None
            try:
                server = make()
                print(f"starting {server.name} {server.version}", flush=True)
                servers.append(server)  # before it starts, so that an interrupt stops it
                server.start()
                return server
            except Skip as exc:
                if server in servers:
                    servers.remove(server)  # it has stopped itself
                for name in names:
                    skipped[name] = str(exc)
                print(f"skipped {', '.join(names)}: {exc}", flush=True)
                return None

        if "in-process" in args.wanted:
            try:
                bench.in_process = InProcess()
                contenders.append(Contender("in-process", None, _no_request, native_token))
            except Exception as exc:  # the graph could not be built here: report, go on
                skipped["in-process"] = f"{type(exc).__name__}: {exc}"
        if "native" in args.wanted and (
            server := start(
                lambda: agent_server(work, args.tokens, args.checkpoints, "native"), ["native"]
            )
        ):
            contenders.append(native_contender(server))
        lg_contender = thread_stream_contender if args.thread_stream else langgraph_contender
        if "langgraph-api" in args.wanted and (
            server := start(
                lambda: agent_server(work, args.tokens, args.checkpoints, "langgraph-api"),
                ["langgraph-api"],
            )
        ):
            url = f"{server.url}/langgraph"
            contenders.append(lg_contender("langgraph-api", server, url))
        if "langgraph-dev" in args.wanted and (
            server := start(lambda: langgraph_dev(work, args.tokens), ["langgraph-dev"])
        ):
            contenders.append(lg_contender("langgraph-dev", server, server.url))
        if "aegra" in args.wanted and (
            server := start(lambda: aegra(work, args.tokens, args.postgres), ["aegra"])
        ):
            contenders.append(lg_contender("aegra", server, server.url))
        contenders.sort(key=lambda c: CONTENDERS.index(c.name))

        versions = {s.name: s.version for s in servers}
        for contender in contenders:
            label = LABELS[contender.name]
            if args.thread_stream:
                label = label.replace("`messages-tuple`", "thread stream (`/stream/events`)")
            version = contender.server.version if contender.server else ""
            results[contender.name] = Results(contender.name, label.format(version=version))
        if not contenders:
            raise SystemExit("nothing to measure")
        asyncio.run(bench.run(args.rounds, results))

    load_end = os.getloadavg()
    duration = time.monotonic() - started
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    checkpoints = "memory://" if args.checkpoints == "memory" else "SQLite file"
    print()
    print(
        f"{when}, agent-server {_commit()}; 2 tool calls + {args.tokens}-token answer; "
        f"{args.rounds} rounds (best / median), {args.streams} streams at once; "
        f"agent-server: memory broker, {checkpoints} checkpoints; "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
    )
    print(
        f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
        f"at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
        f"{os.cpu_count()} cores; the whole run took {duration:.0f} s"
    )
    print()
    print(table(results, args.streams))
    print()
    target_table, target_values = targets(results, args.streams)
    if target_values:
        print(target_table)
        print()
    for result in results.values():
        notes = []
        if (tokens := {s.tokens for s in result.samples()}) != {args.tokens}:
            notes.append(f"tokens per run {sorted(tokens)} (expected {args.tokens})")
        if growth := [b.rss / 2**20 for b in result.blocks if b.rss is not None]:
            runs = result.blocks[0].runs
            notes.append(
                f"RSS growth per block of {runs} runs {min(growth):+.1f} to {max(growth):+.1f} MiB"
            )
        if database := [b.database_cpu for b in result.blocks if b.database_cpu is not None]:
            notes.append(f"its PostgreSQL backends: {_ms(database)} CPU per run (not in the table)")
        if result.idle_cpu is not None:
            notes.append(f"idle server CPU {result.idle_cpu * 1000:.1f} ms/s (3 s, 10 ms ticks)")
        blocks = [b for b in result.blocks if b.cpu_single is not None]  # servers only
        if blocks:
            share = sum(b.client_cpu for b in blocks) / sum(b.wall for b in blocks)
            notes.append(f"client CPU {share:.0%} of wall time")
        if notes:
            print(f"- {result.contender}: " + "; ".join(notes))
    for name, reason in skipped.items():
        print(f"- {name}: skipped: {reason.splitlines()[0]}")

    if args.json:
        raw = {
            "date": when,
            "commit": _commit(),
            "tokens": args.tokens,
            "rounds": args.rounds,
            "streams": args.streams,
            "checkpoints": args.checkpoints,
            "versions": versions,
            "load_average": {"start": load_start, "end": load_end},
            "duration_s": duration,
            "skipped": skipped,
            "targets": target_values,
            "results": {name: asdict(result) for name, result in results.items()},
        }
        args.json.write_text(json.dumps(raw, indent=2))
        print(f"raw figures: {args.json}")


async def _no_request(client: httpx.AsyncClient) -> Request:
    raise AssertionError("the in-process reference makes no request")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every server this run started has been stopped")
