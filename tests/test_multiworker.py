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


def start_workers(
    database: str, redis_url: str, prefix: str, count: int = 2, **extra: str
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    env = {
        **os.environ,
        **extra,
        "PYTHONPATH": str(ROOT),
        "AGENT_SERVER_DATABASE_URL": database,
        "AGENT_SERVER_BROKER_URL": redis_url,
        "AGENT_SERVER_BROKER_PREFIX": prefix,
        "AGENT_SERVER_LOG_LEVEL": "warning",
    }
    processes, urls = [], []
    for _ in range(count):
        port = free_port()
        command = [
            sys.executable, "-m", "agent_server.cli", "serve", "--port", str(port),
            "--graph", "ticker=tests.sample_graphs:ticker",
        ]  # fmt: skip
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env))
        urls.append(f"http://127.0.0.1:{port}")
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
    return processes, urls


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[str, str]]:
    with postgres_schema() as database, redis_prefix() as (redis_url, prefix):
        processes, urls = start_workers(database, redis_url, prefix)
        try:
            yield urls[0], urls[1]
        finally:
            stop(processes)


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


def test_a_room_spans_workers(workers: tuple[str, str]) -> None:
    a, b = workers

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with (
            connect(a.replace("http", "ws") + "/ws") as on_a,
            connect(b.replace("http", "ws") + "/ws") as on_b,
        ):
            for ws in (on_a, on_b):
                await ws.send(json.dumps({"type": "join", "thread_id": "span"}))
                await asyncio.sleep(0.2)
            # presence spans workers: the member on A hears B arrive, with both listed
            presence = []
            while len(presence) < 2:
                data = json.loads(await asyncio.wait_for(on_a.recv(), 10))
                if data.get("type") == "presence":
                    presence.append(data)
            assert presence[-1]["event"] == "join" and len(presence[-1]["members"]) == 2
            await on_a.send(
                json.dumps({"type": "run", "graph": "agent", "message": "2+2", "thread_id": "span"})
            )

            async def frames_until_done(ws: Any) -> list[dict[str, Any]]:
                got: list[dict[str, Any]] = []
                while True:
                    data = json.loads(await asyncio.wait_for(ws.recv(), 15))
                    for message in data if isinstance(data, list) else [data]:
                        if "seq" in message:
                            got.append(message)
                            if message["type"] in ("done", "error"):
                                return got

            return await asyncio.gather(frames_until_done(on_a), frames_until_done(on_b))

    seen_on_a, seen_on_b = asyncio.run(scenario())
    assert seen_on_a == seen_on_b
    assert any(m["type"] == "tool_end" and m["output"] == "4" for m in seen_on_b)


def test_a_killed_worker_leaves_its_runs_worker_lost() -> None:
    import signal

    with postgres_schema() as database, redis_prefix() as (redis_url, prefix):
        processes, (a, b) = start_workers(database, redis_url, prefix)
        try:
            # executed on A: a streamed run runs where it was asked (background runs go
            # to whichever worker takes them from the queue)
            body = {"graph": "ticker", "message": "x", "on_disconnect": "continue"}
            with httpx.stream("POST", f"{a}/runs/stream", json=body) as started:
                run_id = started.headers["x-run-id"]
            with (
                httpx.Client(timeout=60) as client,
                client.stream("GET", f"{b}/runs/{run_id}/stream") as response,
            ):
                raw = b""
                killed_at = None
                for chunk in response.iter_raw():
                    raw += chunk
                    if killed_at is None and raw.count(b'"tick"') >= 3:
                        processes[0].send_signal(signal.SIGKILL)  # mid-run, no goodbye
                        killed_at = time.monotonic()
            noticed = time.monotonic() - (killed_at or 0)
            log = frames(raw)
            record = httpx.get(f"{b}/runs/{run_id}").json()
        finally:
            stop(processes)
    assert log[-1]["type"] == "error" and log[-1]["code"] == "worker_lost"
    assert [f["seq"] for f in log] == list(range(1, len(log) + 1))
    assert raw.endswith(b"data: [DONE]\n\n")
    assert record["status"] == "error"
    assert noticed < 15  # heartbeat TTL (6 s) plus a read interval


def test_background_runs_are_taken_by_any_worker() -> None:
    import redis

    with postgres_schema() as database, redis_prefix() as (redis_url, prefix):
        processes, (a, _) = start_workers(
            database, redis_url, prefix, AGENT_SERVER_MAX_CONCURRENT_RUNS="1"
        )
        try:
            ids = [
                httpx.post(
                    f"{a}/runs", json={"graph": "ticker", "message": "x", "timeout": 0.5}
                ).json()["run_id"]
                for _ in range(4)
            ]
            client = redis.Redis.from_url(redis_url)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                records = [client.hgetall(f"{prefix}:run:{run_id}") for run_id in ids]
                if all(r.get(b"status") == b"timeout" for r in records):
                    break
                time.sleep(0.1)
            client.close()
        finally:
            stop(processes)
    assert all(r[b"status"] == b"timeout" for r in records)
    assert len({r[b"worker"] for r in records}) == 2  # one slot each: both had to work


def test_a_threads_runs_are_listed_by_every_worker(workers: tuple[str, str]) -> None:
    a, b = workers
    with httpx.Client(timeout=30) as client:
        first = client.post(
            f"{a}/runs/wait", json={"graph": "agent", "message": "1", "thread_id": "listed"}
        ).json()
        second = client.post(
            f"{b}/runs/wait", json={"graph": "agent", "message": "2", "thread_id": "listed"}
        ).json()
        time.sleep(0.3)  # records are written just after the run ends
        on_a = client.get(f"{a}/threads/listed/runs").json()["runs"]
        on_b = client.get(f"{b}/threads/listed/runs").json()["runs"]
    expected = [first["run_id"], second["run_id"]]
    assert [r["run_id"] for r in on_a] == [r["run_id"] for r in on_b] == expected
    assert all(r["status"] == "success" for r in on_a + on_b)


def test_a_busy_thread_is_refused_on_every_worker(workers: tuple[str, str]) -> None:
    a, b = workers
    body = {"graph": "ticker", "message": "x", "thread_id": "busy-everywhere"}
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{a}/runs", json=body).json()
        refused = client.post(f"{b}/runs", json=body)
        assert refused.status_code == 409 and refused.json()["code"] == "thread_busy"
        client.post(f"{b}/runs/{first['run_id']}/cancel")
        again = client.post(f"{b}/runs", json={**body, "timeout": 0.2})
    assert again.status_code == 202  # free once the first ended


def test_langgraph_clients_see_one_deployment(workers: tuple[str, str]) -> None:
    """The LangGraph API over two workers: a thread made on A is B's too, a run started
    on A is joined on B with every part (parts travel through Redis like frames)."""
    from langgraph_sdk import get_sync_client

    a, b = (get_sync_client(url=f"{url}/langgraph", api_key=None) for url in workers)
    thread = a.threads.create(metadata={"deploy": "both"})
    run = a.runs.create(
        thread["thread_id"],
        "agent",
        input={"messages": [{"role": "user", "content": "what is 6*7?"}]},
        stream_mode=["messages-tuple", "updates"],
    )
    parts = list(b.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="-1"))
    assert parts[0].event == "metadata"
    # A token's part rides on its frame's log entry (frames.Encoded.part), through Redis
    # too: B's stream is A's, part for part and id for id.
    assert parts == list(a.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="-1"))
    streamed = "".join(
        p.data[0]["content"]
        for p in parts
        if p.event == "messages" and p.data[0]["type"] == "AIMessageChunk"
    )
    assert "The calculator tool returned 42." in streamed
    tool_results = [
        p.data[0]["content"] for p in parts if p.event == "messages" and p.data[0]["type"] == "tool"
    ]
    assert tool_results == ["42"]
    assert [next(iter(p.data)) for p in parts if p.event == "updates"] == [
        "agent",
        "tools",
        "agent",
    ]
    state = b.threads.get_state(thread["thread_id"])
    assert state["values"]["messages"][-1]["content"] == "The calculator tool returned 42."
    assert [t["thread_id"] for t in b.threads.search(metadata={"deploy": "both"})] == [
        thread["thread_id"]
    ]
    assert b.runs.get(thread["thread_id"], run["run_id"])["status"] == "success"

    ticking = a.runs.create(
        thread["thread_id"], "ticker", input={"messages": []}, stream_mode="custom"
    )
    for part in b.runs.join_stream(thread["thread_id"], ticking["run_id"], last_event_id="-1"):
        if part.event == "custom":
            break
    b.runs.cancel(thread["thread_id"], ticking["run_id"], wait=True)
    assert a.runs.get(thread["thread_id"], ticking["run_id"])["status"] == "interrupted"
