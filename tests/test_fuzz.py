"""Hostile input against live uvicorn servers: every HTTP route (native, LangGraph API,
AG-UI, AI SDK, the FastAPI example's mount at /agents, the Django example's SSE view) and
the WebSockets. No answer may be a 5xx, no server may log an error, and every 4xx body
must have the shape the OpenAPI document gives for it (tests/fuzzing.py judges).

Requests come from two sources, both deterministic (``derandomize=True``):
schemathesis over ``/openapi.json`` (bodies and parameters that follow or break the
schemas), and our own strategies for what matters most here (odd digits and 4,301-digit
numbers in every seq and id position, NUL bytes, traversal, malformed and oversized JSON,
bad content types, overlong headers). The figures are printed at the end of the session
(tests/conftest.py) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.fuzzing import (
    HOSTILE_CURSORS,
    HOSTILE_IDS,
    HUGE,
    JSON_VALUES,
    REPORT,
    Fuzzer,
    Known,
    Request,
    dumps,
    hostile_requests,
    operations,
    server_errors,
)
from tests.live import LiveProcess, live_server
from tests.services import postgres_schema, redis_prefix

schemathesis = pytest.importorskip("schemathesis")

# The servers run in this process: their own use of ``random`` (uuids, jitter) happens
# while hypothesis draws, which it warns about; it does not touch the draws.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

FUZZ = {
    "graphs": {
        "agent": "graphs/agent.py:make_graph",
        "approval": "tests.hitl_graphs:approval",
        "failing": "tests.sample_graphs:failing",
    },
    "reconnect_grace": 0.0,
    "ws_rate_limit": 10_000.0,
    "ws_rate_burst": 10_000,
    "max_body_bytes": 20_000,
}


def examples(n: int) -> Any:
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def known_ids(client: httpx.Client, prefix: str = "") -> Known:
    """A finished native run and a LangGraph thread with a run, to aim at."""
    native = client.post(
        f"{prefix}/runs/wait", json={"graph": "agent", "message": "2+2", "thread_id": "fuzz-t"}
    )
    assert native.status_code == 200, native.text
    lg = client.post(f"{prefix}/langgraph/threads", json={}).json()["thread_id"]
    wait = client.post(
        f"{prefix}/langgraph/threads/{lg}/runs/wait",
        json={"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": "hi"}]}},
    )
    assert wait.status_code == 200, wait.text
    return Known(
        {
            "run_id": native.json()["run_id"],
            "thread_id": "fuzz-t",
            "lg_thread_id": lg,
            "lg_run_id": wait.headers["content-location"].rsplit("/", 1)[-1],
        }
    )


def schema_requests(document: dict[str, Any]) -> st.SearchStrategy[Request]:
    """schemathesis' cases (valid and invalid by the schema) over every operation."""
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(document)
    base_url = "http://fuzz" + document["servers"][0]["url"].rstrip("/")
    cases = [
        result.ok().as_strategy(generation_mode=mode)
        for result in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]

    def to_request(case: Any) -> Request:
        kwargs = case.as_transport_kwargs(base_url=base_url)
        url = httpx.URL(kwargs["url"]).copy_merge_params(kwargs.get("params") or {})
        headers = {k: str(v) for k, v in kwargs["headers"].items() if not k.startswith("X-Sch")}
        body = None
        if "json" in kwargs:
            body = json.dumps(kwargs["json"]).encode()
        elif kwargs.get("data") is not None:
            data = kwargs["data"]
            body = data if isinstance(data, bytes) else str(data).encode()
        return Request(kwargs["method"], url.raw_path.decode(), headers, body)

    return st.one_of(cases).map(to_request)


@pytest.fixture(scope="module")
def main() -> Iterator[tuple[str, Any]]:
    """agent-server as deployed: PostgreSQL storage, the Redis broker."""
    with postgres_schema() as database, redis_prefix() as (redis_url, prefix):
        app = create_app(
            test_settings(database_url=database, broker_url=redis_url, broker_prefix=prefix, **FUZZ)
        )
        with live_server(app) as url:
            yield url, app


def fuzz(
    url: str, document_path: str, n_schema: int, n_hostile: int, host: bool = False
) -> list[str]:
    document = httpx.get(url + document_path).json()
    ops = operations(document)
    fuzzer = Fuzzer(url, document, ops, host)
    try:
        known = known_ids(fuzzer.client, document["servers"][0]["url"].rstrip("/"))

        @examples(n_schema)
        @given(schema_requests(document))
        def by_schema(request: Request) -> None:
            fuzzer.send(request)

        @examples(n_hostile)
        @given(hostile_requests(ops, known))
        def by_hand(request: Request) -> None:
            fuzzer.send(request)

        with server_errors() as logged:
            by_schema()
            by_hand()
        return fuzzer.failures + [f"server logged: {line}" for line in logged.records]
    finally:
        fuzzer.close()


def test_every_route_of_the_server(main: tuple[str, Any]) -> None:
    url, _ = main
    failures = fuzz(url, "/openapi.json", n_schema=500, n_hostile=1800)
    assert not failures, "\n".join(failures[:30])


def send_all(url: str, requests: list[Request]) -> list[str]:
    """Send fixed requests to the server; its failures, and what it logged."""
    document = httpx.get(url + "/openapi.json").json()
    fuzzer = Fuzzer(url, document, operations(document))
    try:
        with server_errors() as logged:
            for request in requests:
                fuzzer.send(request)
        return fuzzer.failures + [f"server logged: {line}" for line in logged.records]
    finally:
        fuzzer.close()


def test_seqs_and_ids_in_every_position(main: tuple[str, Any]) -> None:
    """Every hostile cursor and id in every place a seq or an id is read (issue 14's
    500s: ``?after=²`` and 4,301-digit numbers)."""
    url, _ = main
    with httpx.Client(base_url=url, timeout=20) as client:
        known = known_ids(client).values
    run, lg_run, lg_thread = known["run_id"], known["lg_run_id"], known["lg_thread_id"]
    thread_stream = f"/langgraph/threads/{lg_thread}/stream"
    places: list[Callable[[str], Request]] = [
        lambda v: Request("GET", f"/runs/{run}/stream", {"Last-Event-ID": v}),
        lambda v: Request("GET", f"/runs/{run}/stream", {"Last-Event-ID": f"{run}:{v}"}),
        lambda v: Request("GET", f"/runs/{run}/stream?after={quote(v)}"),
        lambda v: Request("GET", "/runs/stream", {"Last-Event-ID": f"{run}:{v}"}),
        lambda v: Request("GET", "/runs/stream", {"Last-Event-ID": v}),
        lambda v: Request("GET", f"/langgraph/threads/{lg_thread}/runs/{lg_run}/stream",
                          {"Last-Event-ID": v}),
        lambda v: Request("GET", thread_stream, {"Last-Event-ID": v}),
        lambda v: Request("GET", thread_stream, {"Last-Event-ID": f"{v}-1"}),
        lambda v: Request("GET", thread_stream, {"Last-Event-ID": f"1-{v}"}),
        lambda v: Request("GET", f"/langgraph/assistants/agent/graph?xray={quote(v)}"),
        lambda v: Request("GET", f"/langgraph/threads/{lg_thread}/runs?limit={quote(v)}"),
        lambda v: Request("GET", f"/langgraph/threads/{lg_thread}/history?limit={quote(v)}"),
        lambda v: Request("GET", f"/threads/{quote(v)}/runs"),
        lambda v: Request("GET", f"/threads/{quote(v)}/state"),
        lambda v: Request("GET", f"/runs/{quote(v)}"),
        lambda v: Request("GET", f"/langgraph/threads/{quote(v)}/runs/{quote(v)}"),
        lambda v: Request("GET", f"/ai-sdk/agent/{quote(v)}/stream"),
    ]  # fmt: skip
    values = (*HOSTILE_CURSORS, *HOSTILE_IDS)
    failures = send_all(url, [place(value) for place in places for value in values])
    assert not failures, "\n".join(failures[:30])


JSON = {"Content-Type": "application/json"}
AGUI = {"runId": "r", "state": {}, "tools": [], "context": [], "forwardedProps": {},
        "messages": [{"id": "m1", "role": "user", "content": "hi"}]}  # fmt: skip
# Each was a 500 (PostgreSQL refuses NUL in text and jsonb), found by this suite.
FOUND: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/threads/a%00b/runs", None),
    ("GET", "/langgraph/threads/a%00b", None),
    ("GET", "/langgraph/threads/a%00b/state/a%00b", None),
    ("POST", "/langgraph/threads/a%00b/history", {"limit": 5}),
    ("POST", "/langgraph/threads", {"thread_id": "a\x00b"}),
    ("POST", "/langgraph/threads", {"metadata": {"k": "a\x00b"}}),
    ("POST", "/langgraph/threads/search", {"ids": ["a\x00b"]}),
    ("POST", "/langgraph/threads/search", {"metadata": {"a\x00b": 1}}),
    ("POST", "/ag-ui/agent", {**AGUI, "threadId": "a\x00b"}),
]


def test_the_500s_found_are_422s(main: tuple[str, Any]) -> None:
    """Regression: with PostgreSQL storage, each of these was a 500; now a 422 naming the
    field (the LangGraph API's in its own shape)."""
    url, _ = main
    requests = [Request(m, path, JSON, json.dumps(body).encode() if body else None)
                for m, path, body in FOUND]  # fmt: skip
    document = httpx.get(url + "/openapi.json").json()
    fuzzer = Fuzzer(url, document, operations(document))
    statuses = [fuzzer.send(request) for request in requests]
    fuzzer.close()
    assert statuses == [422] * len(FOUND), list(zip(FOUND, statuses, strict=True))
    assert not fuzzer.failures, fuzzer.failures


# -- WebSocket -----------------------------------------------------------------------------

WS_HOSTILE: list[str | bytes] = [
    "", "not json", "[]", "[1, 2]", "null", "1", '"run"', "{", "[" * 5000, '{"a":' * 3000,
    '{"type": 1}', '{"type": "nope"}', '{"type": "run"}', '{"type": "run", "graph": 1}',
    '{"type": "run", "graph": "agent", "message": 5}',
    '{"type": "run", "graph": "agent", "message": "hi", "thread_id": "../x"}',
    '{"type": "run", "graph": "agent", "message": "hi", "thread_id": "\\u0000"}',
    '{"type": "run", "graph": "agent", "input": {}, "message": "x"}',
    '{"type": "run", "graph": "agent", "message": "hi", "timeout": 1e400}',
    '{"type": "run", "graph": "agent", "message": "hi", "config": {"recursion_limit": '
    + HUGE + "}}",
    '{"type": "subscribe"}', '{"type": "subscribe", "run_id": 7}',
    '{"type": "subscribe", "run_id": "x", "thread_id": "y"}',
    '{"type": "subscribe", "run_id": "\\u0000"}',
    '{"type": "subscribe", "thread_id": "' + "x" * 10_000 + '"}',
    '{"type": "join", "thread_id": "\\u0000"}', '{"type": "join", "thread_id": []}',
    '{"type": "leave", "thread_id": "t"}', '{"type": "cancel", "run_id": {}}',
    '{"type": "cancel", "run_id": "' + HUGE + '"}', '{"type": "resume"}',
    '{"type": "resume", "thread_id": "\\u0000", "graph": "agent"}',
    '{"type": "resume", "run_id": "nope", "value": 1}', '{"type": "ping", "id": [1]}',
    '{"type": "pong"}', '{"type": "ping", "extra": 1}', b"\x00\x01\x02", b'{"type": "ping"}',
    b"\xff\xfe", "\ud800".encode("utf-8", "surrogatepass"),
]  # fmt: skip


def ws_after_values(run_id: str) -> list[str]:
    """``after`` in subscribe: huge and odd numbers (JSON numbers and strings)."""
    values = ["-1", "1.5", '"1"', '"²"', "1e30", "9" * 19, "9" * 30, HUGE, "true", "null"]
    return [f'{{"type": "subscribe", "run_id": "{run_id}", "after": {v}}}' for v in values]


def ws_exchange(
    socket_url: str, messages: list[str | bytes], origin: str | None = None
) -> list[str]:
    """Send each message, then a ``ping`` probe, and read up to its ``pong``: the session
    must still be serving. Every ``error`` on the way must carry a code and a message; a
    close must be a documented one (1009 for an oversized message)."""
    failures: list[str] = []
    sockets = ExitStack()
    ws: ClientConnection | None = None
    for n, message in enumerate(messages):
        if ws is None:
            ws = sockets.enter_context(
                connect(socket_url, origin=origin, open_timeout=10, max_size=None)  # type: ignore[arg-type]
            )
        REPORT.ws_sent += 1
        try:
            ws.send(message)
            ws.send(json.dumps({"type": "ping", "id": f"probe-{n}"}))
            while True:
                reply = json.loads(ws.recv(timeout=10))
                for item in reply if isinstance(reply, list) else [reply]:
                    kind = item.get("type")
                    if kind in ("error", "run_accepted", "subscribed", "unsubscribed"):
                        REPORT.ws_answers[kind] += 1
                    if kind == "error" and not (
                        isinstance(item.get("code"), str) and isinstance(item.get("message"), str)
                    ):
                        failures.append(f"{message[:80]!r}: error without code/message: {item}")
                if isinstance(reply, dict) and reply.get("id") == f"probe-{n}":
                    break
        except TimeoutError:
            failures.append(f"{message[:80]!r}: no answer to the next ping within 10 s")
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            REPORT.ws_answers[f"close {code}"] += 1
            if code != 1009:
                failures.append(f"{message[:80]!r}: closed with {code}")
            ws = None
    sockets.close()
    return failures


def ws_messages(run_id: str, n: int) -> list[str | bytes]:
    """The fixed hostile list, then ``n`` generated ones (typed, with random fields)."""
    generated: list[str | bytes] = []
    kinds = st.sampled_from(["run", "cancel", "resume", "subscribe", "unsubscribe", "join",
                             "leave", "ping", "pong", "nope"])  # fmt: skip
    fields = st.sampled_from(["graph", "message", "input", "thread_id", "run_id", "after",
                              "config", "timeout", "value", "client_run_id", "id"])  # fmt: skip

    @examples(n)
    @given(kinds, st.dictionaries(fields, JSON_VALUES, max_size=4))
    def collect(kind: str, extra: dict[str, Any]) -> None:
        generated.append(dumps({"type": kind, **extra}).decode())

    collect()
    big = json.dumps({"type": "ping", "id": "x" * 1_100_000})
    return [*WS_HOSTILE, *ws_after_values(run_id), *generated, big]


def test_websocket(main: tuple[str, Any]) -> None:
    url, _ = main
    with httpx.Client(base_url=url, timeout=20) as client:
        run_id = known_ids(client).values["run_id"]
    with server_errors() as logged:
        failures = ws_exchange(url.replace("http", "ws") + "/ws", ws_messages(run_id, 150))
    failures += [f"server logged: {line}" for line in logged.records]
    assert not failures, "\n".join(failures[:30])


# -- embedding views -------------------------------------------------------------------------


def test_fastapi_example_mount() -> None:
    """examples/fastapi_app: agent-server under /agents (its document there says so), and
    the host's own route."""
    from examples.fastapi_app.main import create

    app = create(test_settings(database_url="memory://", **FUZZ))
    with live_server(app) as url:
        document = httpx.get(url + "/agents/openapi.json").json()
        assert document["servers"] == [{"url": "/agents"}]
        failures = fuzz(url, "/agents/openapi.json", n_schema=100, n_hostile=300, host=True)
        # The host's own route answers in FastAPI's shape: only its statuses are judged.
        fuzzer = Fuzzer(url, document, operations(document))
        for value in [*HOSTILE_IDS, *HOSTILE_CURSORS]:
            body = dumps({"question": value, "thread_id": value})
            fuzzer.send(Request("POST", "/ask", JSON, body))
        fuzzer.close()
    assert not failures, "\n".join(failures[:30])
    assert not [status for status in fuzzer.statuses if status >= 500]


@pytest.fixture(scope="module")
def django_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProcess]:
    logs = tmp_path_factory.mktemp("django-fuzz")
    env = {
        "AGENT_SERVER_ALLOW_ANONYMOUS": "1",
        "AGENT_SERVER_DATABASE_URL": "memory://",
        "AGENT_SERVER_SHUTDOWN_GRACE": "0",
        "AGENT_SERVER_RECONNECT_GRACE": "0",
        "AGENT_SERVER_WS_RATE_LIMIT": "10000",
        "AGENT_SERVER_WS_RATE_BURST": "10000",
        "DJANGO_DATA_DIR": str(logs),
    }
    live = LiveProcess.start("examples.django_app.asgi:application", env=env, log=logs / "log")
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def test_django_example(django_example: LiveProcess, main: tuple[str, Any]) -> None:
    """The SSE view at /sse/agent/ (GET /runs/stream's parameters) and the Channels
    consumer at /ws/agent/."""
    url = django_example.url
    main_document = httpx.get(main[0] + "/openapi.json").json()
    view = next(
        op for op in operations(main_document) if op.method == "GET" and op.path == "/runs/stream"
    )
    sse = [view.__class__(view.method, "/sse/agent/", view.params, None)]
    document = {**main_document, "paths": {"/sse/agent/": main_document["paths"]["/runs/stream"]},
                "servers": [{"url": ""}]}  # fmt: skip
    fuzzer = Fuzzer(url, document, sse)
    first = fuzzer.client.get("/sse/agent/?graph=agent&message=hi")
    run_id = first.headers["x-run-id"]

    @examples(120)
    @given(hostile_requests(sse, Known({"run_id": run_id})))
    def by_hand(request: Request) -> None:
        fuzzer.send(request)

    by_hand()
    for value in HOSTILE_CURSORS:
        fuzzer.send(Request("GET", "/sse/agent/", {"Last-Event-ID": f"{run_id}:{value}"}))
    fuzzer.close()
    failures = fuzzer.failures + ws_exchange(
        url.replace("http", "ws") + "/ws/agent/", ws_messages(run_id, 30), origin=url
    )
    output = django_example.output()
    if "Traceback" in output:
        failures.append("the Django server logged:\n" + output[output.index("Traceback") :][:2000])
    assert not failures, "\n".join(failures[:30])


RAW: list[bytes] = [
    b"GET /runs/x/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\x002\r\n\r\n",
    b"GET /runs/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: r:\xb2\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"x" * 200_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 2000 + b"\r\n",
    b"GET /threads/a\x00b/runs HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: " + HUGE.encode() + b"\r\n\r\n{}",
    b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    b"POST /runs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    b"GARBAGE\r\n\r\n",
]


def test_raw_requests_no_client_library_would_send(main: tuple[str, Any]) -> None:
    """What httpx refuses to send (NUL and Latin-1 bytes in headers, a 4,301-digit
    Content-Length, huge header lines): uvicorn's parser or the app refuses it, never
    with a 5xx."""
    url, _ = main
    host, port = url.removeprefix("http://").split(":")
    with server_errors() as logged:
        statuses = []
        for raw in RAW:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(raw)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                    if b"\r\n\r\n" in answer:
                        break
            status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
            statuses.append(status)
            REPORT.sent += 1
            REPORT.statuses[status] += 1
    assert all(status < 500 for status in statuses), list(zip(RAW, statuses, strict=True))
    assert not logged.records, logged.records
