"""Runs over HTTP: background runs, joining, resuming, cancelling, limits, metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_server.app import create_app
from agent_server.frames import parse_frame
from tests.conftest import test_settings
from tests.live import live_server
from tests.services import redis_prefix


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The same suite with each broker: one worker alone, and one publishing to Redis."""
    overrides: dict[str, Any] = {
        "max_concurrent_runs": 2,
        "max_queued_runs": 1,
        "retention_runs": 5,
        "reconnect_grace": 1.0,
        "sse_retry_ms": 1500,
    }
    with contextlib.ExitStack() as stack:
        if request.param == "redis":
            redis_url, prefix = stack.enter_context(redis_prefix())
            overrides.update(broker_url=redis_url, broker_prefix=prefix)
        yield stack.enter_context(live_server(create_app(test_settings(**overrides))))


def events(raw: bytes) -> list[dict[str, str]]:
    """Parse SSE by the spec, keeping every field, so tests see exactly what was sent."""
    out = []
    for block in raw.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if fields:
            out.append(fields)
    return out


def frames_of(raw: bytes) -> list[Any]:
    return [parse_frame(e["data"]) for e in events(raw) if e.get("data", "").startswith("{")]


def wait_status(client: httpx.Client, url: str, run_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        run = client.get(f"{url}/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {statuses}")


def test_background_run_then_join_and_resume(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        started = client.post(f"{server}/runs", json={"graph": "agent", "message": "2+2"})
        assert started.status_code == 202
        body = started.json()
        assert {"run_id", "thread_id", "status"} <= body.keys()
        assert started.headers["location"].endswith(f"/runs/{body['run_id']}")
        run = wait_status(client, server, body["run_id"], "success")
        assert run["started_at"] <= run["ended_at"] and run["last_seq"] > 3
        full = frames_of(client.get(f"{server}/runs/{body['run_id']}/stream").content)
        assert [f.seq for f in full] == list(range(1, run["last_seq"] + 1))
        for after in (0, 1, 3, run["last_seq"] - 1, run["last_seq"]):
            by_header = client.get(
                f"{server}/runs/{body['run_id']}/stream", headers={"Last-Event-ID": str(after)}
            )
            by_query = client.get(f"{server}/runs/{body['run_id']}/stream", params={"after": after})
            assert [f.seq for f in frames_of(by_header.content)] == list(
                range(after + 1, run["last_seq"] + 1)
            )
            assert by_query.content == by_header.content
            assert by_header.content.endswith(b"data: [DONE]\n\n")
        listed = client.get(f"{server}/threads/{body['thread_id']}/runs").json()["runs"]
        assert [r["run_id"] for r in listed] == [body["run_id"]]
        state = client.get(f"{server}/threads/{body['thread_id']}/state").json()
        assert state["values"]["messages"][-1]["type"] == "ai"
        assert state["next"] == [] and state["checkpoint_id"]


def test_join_a_live_run_and_resume_mid_stream(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        run_id = client.post(f"{server}/runs", json={"graph": "ticker", "message": "x"}).json()[
            "run_id"
        ]
        seen: list[Any] = []
        with client.stream("GET", f"{server}/runs/{run_id}/stream") as response:
            buffer = b""
            for chunk in response.iter_raw():
                buffer += chunk
                seen = frames_of(buffer.rsplit(b"\n\n", 1)[0] + b"\n\n")
                if len(seen) >= 4:
                    break  # drop the connection mid-run
        assert client.get(f"{server}/runs/{run_id}").json()["status"] == "running"
        last = seen[-1].seq
        client.post(f"{server}/runs/{run_id}/cancel")
        rest = frames_of(
            client.get(
                f"{server}/runs/{run_id}/stream", headers={"Last-Event-ID": str(last)}
            ).content
        )
        assert rest[0].seq == last + 1
        assert rest[-1].type == "error" and rest[-1].code == "cancelled"


def test_unknown_and_dropped_runs(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{server}/runs/nope").status_code == 404
        ids = []
        for i in range(7):  # retention_runs is 5
            run_id = client.post(
                f"{server}/runs", json={"graph": "agent", "message": "hi", "thread_id": f"drop-{i}"}
            ).json()["run_id"]
            wait_status(client, server, run_id, "success")
            ids.append(run_id)
        gone = client.get(f"{server}/runs/{ids[0]}/stream")
        assert gone.status_code == 410 and gone.json()["code"] == "run_gone"
        assert client.get(f"{server}/runs/{ids[0]}").status_code == 410
        assert client.get(f"{server}/runs/{ids[-1]}").status_code == 200


def test_event_source_route_ids_carry_the_run_and_reconnects_resume(server: str) -> None:
    params = {"graph": "agent", "message": "what is 6*7?"}
    with httpx.Client(timeout=30) as client:
        raw = client.get(f"{server}/runs/stream", params=params).content
        evs = events(raw)
        assert evs[0]["retry"] == "1500"  # the reconnect delay is ours
        ids = [e["id"] for e in evs if "id" in e]
        run_id = ids[0].split(":")[0]
        assert ids == [f"{run_id}:{n}" for n in range(1, len(ids) + 1)]
        # a reconnect from the middle resumes the same run: exactly the rest
        again = client.get(
            f"{server}/runs/stream", params=params, headers={"Last-Event-ID": ids[2]}
        )
        assert [e["id"] for e in events(again.content) if "id" in e] == ids[3:]
        # from the final frame (or for a run nobody knows) the answer is 204: stop
        done = client.get(
            f"{server}/runs/stream", params=params, headers={"Last-Event-ID": ids[-1]}
        )
        assert done.status_code == 204
        unknown = client.get(
            f"{server}/runs/stream", params=params, headers={"Last-Event-ID": "gone:3"}
        )
        assert unknown.status_code == 204
        bad = client.get(f"{server}/runs/stream", params=params, headers={"Last-Event-ID": "7"})
        assert bad.status_code == 400
        # no new run was started by any reconnect
        thread = parse_frame(evs[0]["data"]).thread_id
        assert len(client.get(f"{server}/threads/{thread}/runs").json()["runs"]) == 1


def test_event_source_disconnect_waits_for_the_reconnect(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "GET", f"{server}/runs/stream", params={"graph": "ticker", "message": "x"}
        ) as response:
            first = next(response.iter_raw())
        last_id = [e["id"] for e in events(first.rsplit(b"\n\n", 1)[0] + b"\n\n") if "id" in e][-1]
        run_id = last_id.split(":")[0]
        # back within reconnect_grace (1 s): the run goes on
        with client.stream(
            "GET",
            f"{server}/runs/stream",
            params={"graph": "ticker", "message": "x"},
            headers={"Last-Event-ID": last_id},
        ) as response:
            reader = response.iter_raw()  # keep it referenced: a dropped iterator closes
            chunk = next(reader)
            assert events(chunk)[0]["id"] == f"{run_id}:{int(last_id.split(':')[1]) + 1}"
            time.sleep(1.5)  # longer than the grace: still watched, so still running
            assert client.get(f"{server}/runs/{run_id}").json()["status"] == "running"
        # gone for good: cancelled after the grace period
        run = wait_status(client, server, run_id, "cancelled")
        assert run["status"] == "cancelled"


def test_on_disconnect_continue_keeps_the_run(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "POST",
            f"{server}/runs/stream",
            json={"graph": "quiet", "message": "x", "on_disconnect": "continue"},
        ) as response:
            run_id = response.headers["x-run-id"]
            next(response.iter_raw())
        assert wait_status(client, server, run_id, "success")["status"] == "success"


def test_cancel_route(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        run_id = client.post(f"{server}/runs", json={"graph": "ticker", "message": "x"}).json()[
            "run_id"
        ]
        wait_status(client, server, run_id, "running")
        cancelled = client.post(f"{server}/runs/{run_id}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        again = client.post(f"{server}/runs/{run_id}/cancel")
        assert again.status_code == 409 and again.json()["code"] == "run_finished"
        log = frames_of(client.get(f"{server}/runs/{run_id}/stream").content)
        assert log[-1].type == "error" and log[-1].code == "cancelled"


def test_limits_queue_and_reject_with_retry_after(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        a = client.post(f"{server}/runs", json={"graph": "ticker", "message": "x"}).json()
        b = client.post(f"{server}/runs", json={"graph": "ticker", "message": "x"}).json()
        for run in (a, b):  # both slots taken before the next ones arrive
            wait_status(client, server, run["run_id"], "running")
        queued = client.post(f"{server}/runs", json={"graph": "agent", "message": "x"})
        assert queued.status_code == 202
        full = client.post(f"{server}/runs", json={"graph": "agent", "message": "x"})
        assert full.status_code == 429 and full.json()["code"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1
        assert queued.json()["status"] == "pending"
        for run in (a, b):
            client.post(f"{server}/runs/{run['run_id']}/cancel")
        done = wait_status(client, server, queued.json()["run_id"], "success")
        log = frames_of(client.get(f"{server}/runs/{done['run_id']}/stream").content)
        assert log[0].queue_position == 1


def test_thread_busy_strategies(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        body = {"graph": "ticker", "message": "x", "thread_id": "busy-thread"}
        first = client.post(f"{server}/runs", json=body).json()
        busy = client.post(f"{server}/runs", json=body)
        assert busy.status_code == 409 and busy.json()["code"] == "thread_busy"
        second = client.post(
            f"{server}/runs",
            json={**body, "graph": "agent", "multitask_strategy": "interrupt"},
        ).json()
        assert wait_status(client, server, second["run_id"], "success")
        assert client.get(f"{server}/runs/{first['run_id']}").json()["status"] == "cancelled"


def test_timeout_per_request(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        raw = client.post(
            f"{server}/runs/stream", json={"graph": "ticker", "message": "x", "timeout": 0.2}
        ).content
    last = frames_of(raw)[-1]
    assert last.type == "error" and last.code == "timeout"
    assert raw.endswith(b"data: [DONE]\n\n")


def test_metrics(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        client.post(f"{server}/runs/wait", json={"graph": "agent", "message": "2+2"})
        text = client.get(f"{server}/metrics").text
    for name in (
        'agent_server_runs_total{status="success"}',
        "agent_server_runs_active",
        "agent_server_runs_queued",
        "agent_server_subscribers",
        "agent_server_frames_sent_total",
        "agent_server_time_to_first_token_seconds_bucket",
        "agent_server_run_duration_seconds_count",
    ):
        assert name in text


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cuts=st.lists(st.integers(min_value=1, max_value=12), max_size=5))
def test_http_reconnects_reassemble_the_exact_stream(server: str, cuts: list[int]) -> None:
    """Drop the connection after random numbers of frames, reconnect with Last-Event-ID."""
    with httpx.Client(timeout=30) as client:
        run_id = client.post(
            f"{server}/runs", json={"graph": "agent", "message": "count " * 30}
        ).json()["run_id"]
        received: list[int] = []
        for cut in [*cuts, 10**6]:
            headers = {"Last-Event-ID": str(received[-1])} if received else {}
            with client.stream("GET", f"{server}/runs/{run_id}/stream", headers=headers) as r:
                buffer = b""
                taken = 0
                for chunk in r.iter_raw():
                    buffer += chunk
                    complete, _, buffer = buffer.rpartition(b"\n\n")
                    for frame in frames_of(complete + b"\n\n") if complete else []:
                        if taken < cut:
                            received.append(frame.seq)
                            taken += 1
                    if taken >= cut:
                        break
        final = client.get(f"{server}/runs/{run_id}").json()
    assert received == list(range(1, final["last_seq"] + 1))


def test_wait_cancels_its_run_when_the_client_leaves(server: str) -> None:
    with httpx.Client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post(
            f"{server}/runs/wait", json={"graph": "ticker", "message": "x", "thread_id": "w-leave"}
        )
    with httpx.Client(timeout=30) as client:
        runs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            runs = client.get(f"{server}/threads/w-leave/runs").json()["runs"]
            if runs and runs[0]["status"] == "cancelled":
                break
            time.sleep(0.05)
    assert runs and runs[0]["status"] == "cancelled"


def test_cancel_a_run_still_waiting_for_a_slot(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        busy = [
            client.post(f"{server}/runs", json={"graph": "ticker", "message": "x"}).json()
            for _ in range(2)  # max_concurrent_runs is 2
        ]
        for run in busy:  # both slots taken before the next one arrives
            wait_status(client, server, run["run_id"], "running")
        queued = client.post(f"{server}/runs", json={"graph": "agent", "message": "x"}).json()
        started = time.monotonic()
        cancelled = client.post(f"{server}/runs/{queued['run_id']}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        assert time.monotonic() - started < 2  # not after the busy runs
        log = frames_of(client.get(f"{server}/runs/{queued['run_id']}/stream").content)
        for run in busy:
            client.post(f"{server}/runs/{run['run_id']}/cancel")
    assert [f.type for f in log] == ["run_start", "error"] and log[-1].code == "cancelled"


def test_bad_cursors_and_ids_are_400_and_422(server: str) -> None:
    """Regressions (issue 14): ``?after=²`` and 4,301-digit seqs were 500s; a NUL in a
    path id reached PostgreSQL and was a 500 there (tests/test_fuzz.py)."""
    huge = "9" * 4301
    with httpx.Client(base_url=server, timeout=30) as client:
        run_id = client.post("/runs/wait", json={"graph": "agent", "message": "hi"}).json()
        run_id = run_id["run_id"]
        cursors = [
            client.get(f"/runs/{run_id}/stream", params={"after": "\u00b2"}),
            client.get(f"/runs/{run_id}/stream", params={"after": huge}),
            client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": huge}),
            client.get("/runs/stream", headers={"Last-Event-ID": f"{run_id}:{huge}"}),
        ]
        ids = [
            client.get("/runs/a%00b"),
            client.get("/runs/a%00b/stream"),
            client.post("/runs/a%00b/cancel"),
            client.get("/threads/a%00b/runs"),
            client.get(f"/threads/{'x' * 129}/state"),
            client.get("/ai-sdk/agent/a%00b/stream"),
        ]
    for response in cursors:
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_last_event_id"
    for response in ids:
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_error"
        assert "control characters" in response.json()["message"]
