"""Per-frame cost of the SSE transports we could use, measured in one run.

A separate uvicorn process (uvloop + httptools, as deployed) serves N ready-encoded token
frames, one write per frame, through:

  sse-starlette   ``EventSourceResponse`` (the obvious library)
  starlette       a plain ``StreamingResponse`` yielding pre-formatted events
  agent-server    our ``SSEResponse`` (disconnect watch, one write per batch), unbatched
  agent-server/16 the same, with frames written 16 per write (what pacing achieves)

and a client reads them. It prints frames/s and µs per frame for each, so the choice in
``agent_server/sse.py`` can be checked on any machine:

    python bench/sse_transport.py [--frames 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_server.frames import Token, encode  # noqa: E402

FRAME = encode(
    Token(
        run_id="6f1c2a9e-1d2b-4c1e-9a55-0c1f7c3b2d10",
        seq=1,
        ts=1_795_000_000_000,
        content=" word",
        message_id="lc_run--01a21bf3-41d3-706f-862a-367eb5deec52",
        node="agent",
    )
)
ROUTES = ["sse-starlette", "starlette", "agent-server", "agent-server/16"]


def build_app():  # type: ignore[no-untyped-def]
    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from agent_server.sse import SSEResponse

    def count(request: Request) -> int:
        return int(request.query_params["n"])

    async def library(request: Request) -> Response:
        n = count(request)
        data = FRAME.decode()

        async def events() -> AsyncIterator[ServerSentEvent]:
            for seq in range(1, n + 1):
                yield ServerSentEvent(data=data, id=str(seq))

        return EventSourceResponse(events(), ping=3600, sep="\n")

    def formatted(n: int, per_write: int) -> AsyncIterator[bytes]:
        async def body() -> AsyncIterator[bytes]:
            batch: list[bytes] = []
            for seq in range(1, n + 1):
                batch.append(b"id: %d\ndata: %b\n\n" % (seq, FRAME))
                if len(batch) == per_write:
                    yield b"".join(batch)
                    batch.clear()
            if batch:
                yield b"".join(batch)

        return body()

    async def plain(request: Request) -> Response:
        return StreamingResponse(formatted(count(request), 1), media_type="text/event-stream")

    async def ours(request: Request) -> Response:
        return SSEResponse(formatted(count(request), 1))

    async def ours_batched(request: Request) -> Response:
        return SSEResponse(formatted(count(request), 16))

    return Starlette(
        routes=[
            Route("/sse-starlette", library),
            Route("/starlette", plain),
            Route("/agent-server", ours),
            Route("/agent-server/16", ours_batched),
        ]
    )


async def receive(client: httpx.AsyncClient, url: str, n: int) -> float:
    started = time.perf_counter()
    frames = 0
    tail = b""  # a marker may straddle two reads; 6 bytes cannot hold a whole one
    async with client.stream("GET", url, params={"n": n}) as response:
        async for chunk in response.aiter_raw():
            window = tail + chunk
            frames += window.count(b"\ndata: ")
            tail = window[-6:]
    elapsed = time.perf_counter() - started
    if frames != n:
        raise SystemExit(f"{url}: expected {n} frames, got {frames}")
    return elapsed


async def measure(port: int, n: int, rounds: int) -> None:
    best = {route: float("inf") for route in ROUTES}
    async with httpx.AsyncClient(timeout=120) as client:
        for route in ROUTES:  # warm-up
            await receive(client, f"http://127.0.0.1:{port}/{route}", 1000)
        for _ in range(rounds):
            for route in ROUTES:
                elapsed = await receive(client, f"http://127.0.0.1:{port}/{route}", n)
                best[route] = min(best[route], elapsed)
    print(f"{n} frames of {len(FRAME)} bytes, best of {rounds} rounds")
    for route in ROUTES:
        per_frame = best[route] / n * 1e6
        print(f"  {route:<16} {n / best[route]:>9.0f} frames/s  {per_frame:6.1f} µs/frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(
            build_app(), port=args.serve, loop="uvloop", http="httptools", log_level="warning"
        )
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], env={**os.environ}, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/starlette", params={"n": 1})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start") from None
                time.sleep(0.1)
        asyncio.run(measure(port, args.frames, args.rounds))
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
