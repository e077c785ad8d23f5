"""How much of LangGraph's in-process event rate survives the trip to an SSE client.

For a run that calls two tools and then streams a 2,000-token answer, measured in one
process run (the machine is shared and noisy, so only ratios taken together count):

  (a) consuming ``astream_events(version="v2")`` in-process, no server;
  (b) receiving the same run as frames over SSE from a local ``agent-server`` (a separate
      uvicorn process, as deployed), parsing every frame's JSON in the client.

It prints tokens/s for each, the ratio b/a for one stream and for 20 concurrent
streams, and the bytes on the wire per token. Target: b/a >= 0.8 in both cases.

    python bench/stream_overhead.py [--rounds 3] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_server.tools import ToolRegistry  # noqa: E402
from bench.bench_graph import ANSWER_TOKENS, make_graph  # noqa: E402

MESSAGE = "benchmark"


async def in_process_once(graph) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    tokens = 0
    started = time.perf_counter()
    async for event in graph.astream_events(
        {"messages": [{"role": "user", "content": MESSAGE}]}, config, version="v2"
    ):
        if event["event"] == "on_chat_model_stream" and event["data"]["chunk"].content:
            tokens += 1
    return tokens, time.perf_counter() - started


async def over_sse_once(client: httpx.AsyncClient, url: str) -> tuple[int, int, float]:
    tokens = 0
    received = 0
    buffer = b""
    started = time.perf_counter()
    body = {"graph": "bench", "message": MESSAGE}
    async with client.stream("POST", f"{url}/runs/stream", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            received += len(chunk)
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data: {"):
                        frame = orjson.loads(line[6:])
                        if frame["type"] == "token":
                            tokens += 1
    return tokens, received, time.perf_counter() - started


async def rate_in_process(graph, concurrency: int) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    results = await asyncio.gather(*(in_process_once(graph) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return sum(tokens for tokens, _ in results) / elapsed


async def rate_over_sse(url: str, concurrency: int) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=concurrency + 5)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(over_sse_once(client, url) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    tokens = sum(r[0] for r in results)
    wire = sum(r[1] for r in results)
    return tokens / elapsed, wire / tokens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AGENT_SERVER_DATABASE_URL": "memory://", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "agent_server.cli", "serve", "--port", str(port),
        "--log-level", "warning", "--graph", "bench=bench/bench_graph.py:make_graph",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()

    from langgraph.checkpoint.memory import InMemorySaver

    tools = ToolRegistry.from_sources(ROOT / "tools")
    graph = make_graph(tools).copy(update={"checkpointer": InMemorySaver()})
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}"
    try:
        await rate_over_sse(url, 1)  # warm-up: imports, first-run caches
        await rate_in_process(graph, 1)
        print(
            f"run: 2 tool calls + {ANSWER_TOKENS}-token answer; {args.rounds} rounds, best of each"
        )
        for concurrency in (1, args.concurrency):
            a_rates, b_rates, wire = [], [], []
            for _ in range(args.rounds):  # interleaved, so drift hits both sides alike
                a_rates.append(await rate_in_process(graph, concurrency))
                b_rate, per_token = await rate_over_sse(url, concurrency)
                b_rates.append(b_rate)
                wire.append(per_token)
            a, b = max(a_rates), max(b_rates)
            print(
                f"{concurrency:>3} stream(s): (a) in-process {a:>8.0f} tok/s  "
                f"(b) over SSE {b:>8.0f} tok/s  b/a = {b / a:.2f}  "
                f"(median b/a {statistics.median(b_rates) / statistics.median(a_rates):.2f})  "
                f"{statistics.mean(wire):.0f} bytes/token on the wire"
            )
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    asyncio.run(main())
