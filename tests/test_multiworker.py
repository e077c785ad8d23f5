"""Two real server processes sharing Redis and PostgreSQL: one set of runs and threads."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.services import postgres_schema, redis_prefix

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[str, str]]:
    with postgres_schema() as database, redis_prefix() as (redis_url, prefix):
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AGENT_SERVER_DATABASE_URL": database,
            "AGENT_SERVER_BROKER_URL": redis_url,
            "AGENT_SERVER_BROKER_PREFIX": prefix,
            "AGENT_SERVER_LOG_LEVEL": "warning",
        }
        processes, urls = [], []
        for _ in range(2):
            port = free_port()
            command = [
                sys.executable, "-m", "agent_server.cli", "serve", "--port", str(port),
                "--graph", "ticker=tests.sample_graphs:ticker",
            ]  # fmt: skip
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env))
            urls.append(f"http://127.0.0.1:{port}")
        try:
            for url in urls:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if httpx.get(f"{url}/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "worker did not start"
                    time.sleep(0.1)
            yield urls[0], urls[1]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=20)


def frames(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def test_run_on_a_joined_on_b_with_identical_frames(workers: tuple[str, str]) -> None:
    a, b = workers
    with httpx.Client(timeout=30) as client:
        run = client.post(f"{a}/runs", json={"graph": "agent", "message": "what is 6*7?"}).json()
        on_b = client.get(f"{b}/runs/{run['run_id']}/stream").content
        on_a = client.get(f"{a}/runs/{run['run_id']}/stream").content
        described = client.get(f"{b}/runs/{run['run_id']}").json()
    assert frames(on_b) == frames(on_a)
    assert on_b.endswith(b"data: [DONE]\n\n")
    assert frames(on_b)[-1]["type"] == "done"
    assert any(f["type"] == "tool_end" and f["output"] == "42" for f in frames(on_b))
    assert described["status"] == "success" and described["last_seq"] == len(frames(on_a))


def test_cancel_on_b_stops_the_run_on_a(workers: tuple[str, str]) -> None:
    a, b = workers
    with httpx.Client(timeout=30) as client:
        run_id = client.post(f"{a}/runs", json={"graph": "ticker", "message": "x"}).json()["run_id"]
        time.sleep(0.2)
        cancelled = client.post(f"{b}/runs/{run_id}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        assert client.get(f"{a}/runs/{run_id}").json()["status"] == "cancelled"
        log = frames(client.get(f"{a}/runs/{run_id}/stream").content)
    assert log[-1]["type"] == "error" and log[-1]["code"] == "cancelled"


def test_resume_on_b_after_a_drop_on_a(workers: tuple[str, str]) -> None:
    a, b = workers
    with httpx.Client(timeout=30) as client:
        run_id = client.post(f"{a}/runs", json={"graph": "ticker", "message": "x"}).json()["run_id"]
        seen: list[dict[str, Any]] = []
        with client.stream("GET", f"{a}/runs/{run_id}/stream") as response:
            buffer = b""
            for chunk in response.iter_raw():
                buffer += chunk
                complete, _, buffer = buffer.rpartition(b"\n\n")
                seen.extend(frames(complete))
                if len(seen) >= 5:
                    break  # the connection to A drops
        last = seen[-1]["seq"]
        client.post(f"{b}/runs/{run_id}/cancel")  # end it soon, from B
        rest = frames(
            client.get(f"{b}/runs/{run_id}/stream", headers={"Last-Event-ID": str(last)}).content
        )
        whole = frames(client.get(f"{a}/runs/{run_id}/stream").content)
    assert [f["seq"] for f in seen + rest] == [f["seq"] for f in whole]
    assert seen + rest == whole


def test_websocket_on_b_follows_a_run_on_a(workers: tuple[str, str]) -> None:
    a, b = workers
    with httpx.Client(timeout=30) as client:
        run = client.post(f"{a}/runs", json={"graph": "agent", "message": "2+2"}).json()

    async def follow() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with connect(b.replace("http", "ws") + "/ws") as ws:
            await ws.send(json.dumps({"type": "subscribe", "run_id": run["run_id"]}))
            while True:
                data = json.loads(await asyncio.wait_for(ws.recv(), 10))
                for message in data if isinstance(data, list) else [data]:
                    got.append(message)
                    if message.get("type") == "done":
                        return got

    got = asyncio.run(follow())
    streamed = [m for m in got if "seq" in m]
    assert [m["seq"] for m in streamed] == list(range(1, len(streamed) + 1))
    assert any(m["type"] == "tool_end" and m["output"] == "4" for m in streamed)


def test_thread_continues_on_the_other_worker(workers: tuple[str, str]) -> None:
    a, b = workers
    with httpx.Client(timeout=30) as client:
        client.post(f"{a}/runs/wait", json={"graph": "agent", "message": "one", "thread_id": "mw"})
        result = client.post(
            f"{b}/runs/wait", json={"graph": "agent", "message": "two", "thread_id": "mw"}
        ).json()
    humans = [m["content"] for m in result["values"]["messages"] if m["type"] == "human"]
    assert humans == ["one", "two"]


def test_serve_workers_refuses_memory_broker() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent_server.cli", "serve", "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, "AGENT_SERVER_BROKER_URL": "memory://"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers needs a shared broker" in result.stderr


def test_serve_workers_shares_one_port() -> None:
    import signal

    with postgres_schema() as database, redis_prefix() as (redis_url, prefix):
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AGENT_SERVER_DATABASE_URL": database,
            "AGENT_SERVER_BROKER_URL": redis_url,
            "AGENT_SERVER_BROKER_PREFIX": prefix,
            "AGENT_SERVER_LOG_LEVEL": "warning",
            "AGENT_SERVER_SHUTDOWN_GRACE": "1",
        }
        command = [sys.executable, "-m", "agent_server.cli", "serve", "--workers", "2",
                   "--port", str(port)]  # fmt: skip
        parent = subprocess.Popen(command, cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            workers: set[int] = set()
            deadline = time.monotonic() + 40
            while len(workers) < 2 and time.monotonic() < deadline:
                try:  # a new connection each time: the kernel spreads them
                    workers.add(httpx.get(f"{url}/healthz", timeout=2).json()["worker"])
                except httpx.TransportError:
                    time.sleep(0.1)
            assert len(workers) == 2
            runs = [
                httpx.post(f"{url}/runs", json={"graph": "agent", "message": f"m{i}"}).json()
                for i in range(6)
            ]
            for run in runs:  # every run is visible through any worker
                stream = httpx.get(f"{url}/runs/{run['run_id']}/stream", timeout=30).content
                assert stream.endswith(b"data: [DONE]\n\n") and b'"type":"done"' in stream
        finally:
            parent.send_signal(signal.SIGTERM)
            parent.wait(timeout=30)
    assert parent.returncode == 0
