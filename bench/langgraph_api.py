"""The LangGraph API's stream against our own frames, for the same run, in one process run.

One run of the benchmark graph (two tool calls, then a ``BENCH_TOKENS``-word answer,
3,000 by default) is streamed from one local ``agent-server`` process:

  (a) as native frames: ``POST /runs/stream``;
  (b) as LangGraph parts: ``POST /langgraph/threads/{id}/runs/stream`` in
      ``messages-tuple`` mode, as LangGraph's SDKs and ``useStream`` read it;
  (c) optionally, with ``--langgraph-dev``, from LangGraph's own dev server serving the
      same graph (``langgraph dev --config bench/langgraph.json``, from the venv that
      ``make test-langgraph-dev`` builds).

The client parses every event's JSON. It prints tokens/s, time to first token and bytes
on the wire per token for each (best of ``--rounds``, interleaved so drift hits all alike).
Each server is paused (SIGSTOP) while the other is measured: an idle ``langgraph dev``
keeps polling, and on two cores that alone cost agent-server about a third of its rate.

    python bench/langgraph_api.py [--rounds 3] [--concurrency 1] [--langgraph-dev]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("BENCH_TOKENS", "3000")

from bench.stream_overhead import free_port, start_server  # noqa: E402

MESSAGE = {"messages": [{"role": "user", "content": "benchmark"}]}


@dataclass
class Sample:
    tokens: int
    wire: int
    first_token: float
    elapsed: float


async def read_events(response: httpx.Response, on_event) -> int:  # type: ignore[no-untyped-def]
    """Feed each SSE event's (name, data) to ``on_event``; the bytes received."""
    received = 0
    buffer = b""
    async for chunk in response.aiter_raw():
        received += len(chunk)
        buffer += chunk.replace(b"\r\n", b"\n")
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            name, data = b"", b""
            for line in event.split(b"\n"):
                if line.startswith(b"event: "):
                    name = line[7:]
                elif line.startswith(b"data: "):
                    data = line[6:]
            if data:
                on_event(name, data)
    return received


async def native(client: httpx.AsyncClient, url: str) -> Sample:
    tokens, first = 0, 0.0
    started = time.perf_counter()

    def on_event(name: bytes, data: bytes) -> None:
        nonlocal tokens, first
        if data.startswith(b"{"):
            frame = orjson.loads(data)
            if frame["type"] == "token":
                tokens += 1
                first = first or time.perf_counter() - started

    body = {"graph": "bench", "input": MESSAGE}
    async with client.stream("POST", f"{url}/runs/stream", json=body) as response:
        response.raise_for_status()
        wire = await read_events(response, on_event)
    return Sample(tokens, wire, first, time.perf_counter() - started)


async def langgraph(client: httpx.AsyncClient, url: str) -> Sample:
    tokens, first = 0, 0.0
    thread = (await client.post(f"{url}/threads", json={})).json()["thread_id"]
    started = time.perf_counter()

    def on_event(name: bytes, data: bytes) -> None:
        nonlocal tokens, first
        if name == b"messages":
            chunk, _metadata = orjson.loads(data)
            if chunk["type"] == "AIMessageChunk" and chunk["content"]:
                tokens += 1
                first = first or time.perf_counter() - started

    body = {"assistant_id": "bench", "input": MESSAGE, "stream_mode": ["messages-tuple"]}
    path = f"{url}/threads/{thread}/runs/stream"
    async with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        wire = await read_events(response, on_event)
    return Sample(tokens, wire, first, time.perf_counter() - started)


async def measure(kind, url: str, concurrency: int) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """tokens/s over all streams, median time to first token, bytes per token."""
    limits = httpx.Limits(max_connections=concurrency + 5)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        started = time.perf_counter()
        samples = await asyncio.gather(*(kind(client, url) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    tokens = sum(s.tokens for s in samples)
    assert all(s.tokens for s in samples), "a stream delivered no tokens"
    return (
        tokens / elapsed,
        statistics.median(s.first_token for s in samples),
        sum(s.wire for s in samples) / tokens,
    )


def start_langgraph_dev(port: int) -> subprocess.Popen[bytes]:
    binary = ROOT / ".venv-langgraph" / "bin" / "langgraph"
    if not binary.exists():
        raise SystemExit("no .venv-langgraph: run `make test-langgraph-dev` once to build it")
    command = [
        str(binary), "dev", "--config", "bench/langgraph.json", "--host", "127.0.0.1",
        "--port", str(port), "--no-browser", "--no-reload",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            found = httpx.post(f"http://127.0.0.1:{port}/assistants/search", json={})
            if found.status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("langgraph dev did not start")


def only(running: subprocess.Popen[bytes], others: list[subprocess.Popen[bytes]]) -> None:
    """Let ``running`` have the machine: pause the other servers."""
    for process in others:
        process.send_signal(signal.SIGSTOP if process is not running else signal.SIGCONT)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--langgraph-dev", action="store_true", help="also measure LangGraph's dev server"
    )
    args = parser.parse_args()

    port = free_port()
    server = start_server(port)
    servers = [server]
    url = f"http://127.0.0.1:{port}"
    contenders = {
        "(a) agent-server frames   ": (native, url, server),
        "(b) agent-server LangGraph": (langgraph, f"{url}/langgraph", server),
    }
    if args.langgraph_dev:
        dev_port = free_port()
        dev = start_langgraph_dev(dev_port)
        servers.append(dev)
        contenders["(c) LangGraph's server    "] = (langgraph, f"http://127.0.0.1:{dev_port}", dev)
    try:
        for kind, target, process in contenders.values():  # warm-up: imports, caches
            only(process, servers)
            await measure(kind, target, 1)
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, (kind, target, process) in contenders.items():
                only(process, servers)
                results[name].append(await measure(kind, target, args.concurrency))
        print(
            f"run: 2 tool calls + {os.environ['BENCH_TOKENS']}-token answer, "
            f"{args.concurrency} stream(s) at once; best of {args.rounds} rounds"
        )
        for name, found in results.items():
            rate = max(r[0] for r in found)
            first = min(r[1] for r in found)
            wire = statistics.mean(r[2] for r in found)
            print(
                f"{name}: {rate:>8.0f} tok/s  first token {first * 1000:>7.1f} ms  "
                f"{wire:>5.0f} bytes/token"
            )
    finally:
        for process in servers:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    asyncio.run(main())
