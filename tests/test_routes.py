"""End to end over real HTTP: a uvicorn server on loopback, httpx + httpx-sse clients."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import connect_sse

from agent_server.app import create_app
from agent_server.frames import parse_frame
from tests import sample_graphs
from tests.conftest import test_settings
from tests.helpers import dispatched
from tests.live import live_server


def stream(url: str, body: dict[str, Any]) -> tuple[httpx.Response, list[Any], list[str]]:
    """POST /runs/stream; returns the response, the frames and the raw SSE ids."""
    frames: list[Any] = []
    ids: list[str] = []
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "POST", f"{url}/runs/stream", json=body) as source,
    ):
        for sse in dispatched(source):
            assert sse.event == "message"  # no event name: EventSource.onmessage gets it
            if sse.data == "[DONE]":
                break
            frames.append(parse_frame(sse.data))
            ids.append(sse.id)
        response = source.response
    return response, frames, ids


def test_agent_calls_calculator_and_answers(server: str) -> None:
    response, frames, ids = stream(server, {"graph": "agent", "message": "what is 12*(3+4)?"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    kinds = [f.type for f in frames]
    assert kinds[0] == "run_start" and kinds[-1] == "done"
    assert ids == [str(f.seq) for f in frames]
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    start = next(f for f in frames if f.type == "tool_start")
    end = next(f for f in frames if f.type == "tool_end")
    assert (start.name, start.input) == ("calculator", {"expression": "12*(3+4)"})
    assert end.tool_call_id == start.tool_call_id and end.output == "84"
    answer = "".join(f.content for f in frames if f.type == "token")
    assert "84" in answer
    assert frames[0].thread_id == response.headers["x-thread-id"]


def test_get_route_for_event_source(server: str) -> None:
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client, "GET", f"{server}/runs/stream", params={"graph": "agent", "message": "hi"}
        ) as source,
    ):
        data = [sse.data for sse in dispatched(source)]
    assert data[-1] == "[DONE]"
    frames = [parse_frame(d) for d in data[:-1]]
    assert frames[0].type == "run_start" and frames[-1].type == "done"
    assert '"hi"' in "".join(f.content for f in frames if f.type == "token")


def test_threads_share_memory_through_the_checkpointer(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        first = client.post(
            f"{server}/runs/wait", json={"graph": "agent", "message": "hello", "thread_id": "t-mem"}
        ).json()
        second = client.post(
            f"{server}/runs/wait", json={"graph": "agent", "message": "again", "thread_id": "t-mem"}
        ).json()
    assert first["status"] == second["status"] == "success"
    assert len(first["values"]["messages"]) == 2
    assert len(second["values"]["messages"]) == 4
    assert second["values"]["messages"][0]["content"] == "hello"


def test_wait_returns_final_state(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        result = client.post(
            f"{server}/runs/wait", json={"graph": "agent", "message": "2+2"}
        ).json()
    messages = result["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "tool", "ai"]
    assert messages[2]["content"] == "4"
    assert "4" in messages[-1]["content"]
    assert result["error"] is None and result["usage"]["output_tokens"] > 0


def test_failure_mid_stream_sends_error_then_done_marker(server: str) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{server}/runs/stream", json={"graph": "failing", "message": "x"}
        ) as r,
    ):
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    frames = [parse_frame(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert frames[-1].type == "error"
    assert frames[-1].code == "run_error"
    assert frames[-1].message == "the model backend went away"
    # the server is still fine
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{server}/healthz").json()["status"] == "ok"


def test_idle_stream_gets_comment_pings(server: str) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{server}/runs/stream", json={"graph": "quiet", "message": "x"}
        ) as r,
    ):
        raw = r.read().decode()
    assert ": ping\n\n" in raw  # ping_interval is 0.1 s in tests, the graph idles 0.5 s
    assert "\r" not in raw
    assert raw.endswith("data: [DONE]\n\n")


def test_disconnect_cancels_the_run(server: str) -> None:
    sample_graphs.TICKS.clear()
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client, "POST", f"{server}/runs/stream", json={"graph": "ticker", "message": "x"}
        ) as source,
    ):
        for sse in dispatched(source):
            if '"tick"' in sse.data:
                break
    time.sleep(0.3)
    stopped_at = len(sample_graphs.TICKS)
    time.sleep(0.3)
    assert len(sample_graphs.TICKS) == stopped_at < 200


def test_graphs_tools_health(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        graphs = client.get(f"{server}/graphs").json()["graphs"]
        tools = client.get(f"{server}/tools").json()["tools"]
        health = client.get(f"{server}/healthz")
    names = [g["name"] for g in graphs]
    assert "agent" in names
    agent = next(g for g in graphs if g["name"] == "agent")
    assert set(agent["nodes"]) == {"agent", "tools"}
    by_name = {t["name"]: t for t in tools}
    assert {"calculator", "current_time", "long_task"} <= set(by_name)
    assert by_name["calculator"]["args_schema"]["properties"]["expression"]["type"] == "string"
    assert by_name["calculator"]["description"]
    assert health.status_code == 200


def test_a_worker_without_its_broker_says_so_and_keeps_trying() -> None:
    """Redis unreachable (a closed port): /healthz answers 503 with the reason, /metrics
    shows it, and the background jobs are retried, not dead; routes that need Redis
    answer 503 ``broker_unavailable``, and runs local to the worker still stream."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = test_settings(broker_url=f"redis://127.0.0.1:{port}/0", broker_wait=1)
    with live_server(create_app(settings)) as url, httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 20
        while (health := client.get(f"{url}/healthz")).status_code == 200:
            assert time.monotonic() < deadline, "the outage was never noticed"
            time.sleep(0.1)
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "broker_unavailable"
        assert "Connect" in body["reason"] and body["down_for"] >= 0
        time.sleep(1.0)  # a few restarts
        metrics = client.get(f"{url}/metrics").text
        assert "agent_server_broker_up 0.0" in metrics
        restarts = {
            line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("agent_server_background_restarts_total{")
        }
        assert {"heartbeat", "queue", "cancels", "announcements", "presence"} <= set(restarts)
        assert restarts["heartbeat"] >= 2 and restarts["queue"] >= 1
        queued = client.post(f"{url}/runs", json={"graph": "agent", "message": "hi"})
        assert queued.status_code == 503 and queued.headers["retry-after"] == "2"
        assert queued.json()["code"] == "broker_unavailable"
        elsewhere = client.get(f"{url}/runs/00000000-0000-0000-0000-000000000000")
        assert elsewhere.status_code == 503
        local = client.post(f"{url}/runs/stream", json={"graph": "agent", "message": "2+2"})
        assert local.status_code == 200 and b'"type":"done"' in local.content


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"graph": "nope", "message": "x"}, 404, "graph_not_found"),
        ({"message": "x"}, 422, "validation_error"),
        ({"graph": "agent"}, 422, "validation_error"),
        ({"graph": "agent", "message": "x", "input": {}}, 422, "validation_error"),
        ({"graph": "agent", "message": 5}, 422, "validation_error"),
        ({"graph": "agent", "message": "x", "thread_id": "bad id!"}, 422, "validation_error"),
        (
            {"graph": "agent", "message": "x", "config": {"recursion_limit": 0}},
            422,
            "validation_error",
        ),
        ({"graph": "agent", "message": "x", "surprise": 1}, 422, "validation_error"),
    ],
)
@pytest.mark.parametrize("route", ["/runs/stream", "/runs/wait"])
def test_bad_requests_get_json_errors(
    server: str, route: str, body: dict[str, Any], status: int, code: str
) -> None:
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{server}{route}", json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert error["code"] == code and error["message"]
    if status == 422:
        assert error["errors"] and all("loc" in e and "msg" in e for e in error["errors"])
    if status == 404:
        assert "agent" in error["message"]  # names what is available


def test_invalid_json_oversize_and_unknown_routes(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        bad = client.post(
            f"{server}/runs/stream",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        huge = client.post(
            f"{server}/runs/stream", json={"graph": "agent", "message": "x" * 20_000}
        )
        missing = client.get(f"{server}/nowhere")
        method = client.delete(f"{server}/graphs")
        query = client.get(f"{server}/runs/stream", params={"graph": "agent", "input": "{bad"})
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_json")
    assert (huge.status_code, huge.json()["code"]) == (413, "body_too_large")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (method.status_code, method.json()["code"]) == (405, "method_not_allowed")
    assert (query.status_code, query.json()["code"]) == (400, "invalid_json")


def test_frames_are_json_objects_with_envelope(server: str) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{server}/runs/stream",
            json={"graph": "agent", "message": '/long_task {"steps": 2, "delay": 0}'},
        ) as r,
    ):
        raw = r.read()
    events = [block for block in raw.split(b"\n\n") if block.startswith(b"id: ")]
    for block in events:
        id_line, data_line = block.split(b"\n")
        frame = orjson.loads(data_line[len(b"data: ") :])
        assert {"type", "run_id", "seq", "ts"} <= frame.keys()
        assert id_line == b"id: %d" % frame["seq"]
    customs = [orjson.loads(b.split(b"\n")[1][6:]) for b in events if b'"custom"' in b]
    assert [c["data"]["step"] for c in customs if c["name"] == "progress"] == [1, 2]
