"""The fuzz suite's machinery (tests/test_fuzz.py): hostile values, request strategies
drawn from the OpenAPI document, and a client that sends them to a live server and
judges every answer.

A verdict is recorded, never raised inside hypothesis: a failing request is not shrunk
(each one costs a real round trip), every request is counted, and the test fails at the
end with the list of failures.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
from hypothesis import strategies as st

HUGE = "9" * 4301  # one digit past what int() converts
HUGER = "1" * 20_000

# What a client may send back as a seq or an id: odd digits (escaped: Arabic-Indic, a
# mathematical and a fullwidth digit), huge numbers, signs, separators, NUL, traversal.
HOSTILE_CURSORS = (
    "²", "\u0663", "\u0661\u0662\u0663", "\U0001d7d7", "\uff11", "1²", "-1", "+1", " 1",
    "1 ", "0x10", "1e3", "1_0", "1.0", "", "-", "*", "\x00", "1\x00", "9" * 19, HUGE, HUGER,
    "NaN", "inf", "1:2:3", ":", "x:", "1-", "-1-", "1-²", "²-1", f"{HUGE}-1", f"1-{HUGE}",
    "1-*-1", "../../etc/passwd",
)  # fmt: skip
HOSTILE_IDS = (
    "../../etc/passwd", "..", ".", "%2e%2e", "a/../b", "\x00", "a\x00b", "²", "\u0663", HUGE,
    "x" * 5000, " ", "\t", "\r\n", "😀" * 50, "\ud7ff", "null", "undefined", "*", "%00",
    "'; DROP TABLE x; --", "$where", "{", "0", "-1",
)  # fmt: skip
HOSTILE_JSON_TEXT = (
    b"", b"{", b"}", b"[", b"null", b"[]", b'"x"', b"0", b"true", b"\xff\xfe\x00", b"\x00",
    b"{\"a\":}", b"{'a': 1}", b"NaN", b"Infinity", b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000, HUGE.encode(), b"\xef\xbb\xbf{}",
    b'{"graph": "\\ud800"}', b'{"graph": "\\u0000"}', b"{" + b" " * 30_000 + b"}",
)  # fmt: skip
CONTENT_TYPES = (
    "application/json", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=utf-16", "*/*", "\x7f",
    "application/json" + "x" * 5000,
)  # fmt: skip

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from([*HOSTILE_IDS, *HOSTILE_CURSORS]),
    st.just(f"__RAW__{HUGE}"),  # a 4,301-digit JSON number, spliced in as text
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def dumps(value: Any) -> bytes:
    """JSON text, with ``"__RAW__<digits>"`` strings written as bare numbers."""
    text = json.dumps(value)
    return re.sub(r'"__RAW__(\d+)"', r"\1", text).encode()


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # a template: /runs/{run_id}/stream
    params: tuple[dict[str, Any], ...]
    body: str | None  # the request body's component name

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"{\w+}", "[^/]+", self.path) + "$")


def operations(document: dict[str, Any]) -> list[Operation]:
    """Every operation of an OpenAPI document (paths joined to its server URL)."""
    base = document["servers"][0]["url"].rstrip("/")
    found = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            ref = body["schema"]["$ref"].rsplit("/", 1)[-1] if body else None
            found.append(Operation(method.upper(), base + path, tuple(op["parameters"]), ref))
    return found


@dataclass
class Known:
    """Ids that exist on the server, so that hostile values reach past the lookups."""

    values: dict[str, str] = field(default_factory=dict)

    def for_param(self, name: str, path: str) -> list[str]:
        if name == "thread_id":
            key = "lg_thread_id" if "/langgraph/" in path else "thread_id"
            return [self.values[key]] if key in self.values else []
        if name == "run_id":
            key = "lg_run_id" if "/langgraph/" in path else "run_id"
            return [self.values[key]] if key in self.values else []
        if name in ("graph", "id"):
            return ["agent"]
        if name == "chat_id":
            return [self.values.get("thread_id", "chat")]
        return []


# A request body that validates, per component: a hostile value replaces one field.
USER = {"messages": [{"role": "user", "content": "hi"}]}
BASES: dict[str, dict[str, Any]] = {
    "RunRequest": {"graph": "agent", "message": "what is 2+2?"},
    "RunCreate": {"assistant_id": "agent", "input": USER},
    "ThreadCreate": {"metadata": {"k": "v"}},
    "ThreadSearch": {"limit": 5},
    "ThreadUpdate": {"metadata": {"k": "v"}},
    "StateUpdate": {"values": {"messages": []}},
    "StateAt": {"checkpoint": {}},
    "HistoryQuery": {"limit": 5},
    "AssistantSearch": {"limit": 5},
    "RunAgentInput": {
        "threadId": "fuzz-agui", "runId": "r1", "state": {}, "tools": [], "context": [],
        "forwardedProps": {}, "messages": [{"id": "m1", "role": "user", "content": "hi"}],
    },
    "ChatRequest": {
        "id": "fuzz-chat",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    },
}  # fmt: skip


@dataclass
class Request:
    method: str
    url: str  # path and query, already encoded
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def describe(self) -> str:
        body = "" if self.body is None else f" body={self.body[:120]!r}"
        headers = {k: v[:60] for k, v in self.headers.items()}
        return f"{self.method} {self.url[:200]} headers={headers}{body}"


def _path(op: Operation, values: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: quote(values[m.group(1)], safe=""), op.path)


CURSORS = st.sampled_from(HOSTILE_CURSORS)


def _cursor_values(name: str, run_id: str) -> st.SearchStrategy[str]:
    """What goes in a query or header parameter: hostile cursors, any text, and, for
    ``Last-Event-ID``, ``<run_id>:<hostile>`` and ``<hostile>-<hostile>`` shapes."""
    values = CURSORS | st.text(max_size=20)
    if name != "Last-Event-ID":
        return values
    return (
        values
        | CURSORS.map(lambda v: f"{run_id}:{v}")
        | st.tuples(CURSORS, CURSORS).map(lambda pair: "-".join(pair))
    )


def _body(draw: st.DrawFn, model: str | None) -> bytes:
    """A body that validates but for one hostile field, or hostile bytes."""
    kind = draw(st.sampled_from(["field", "field", "field", "raw", "huge", "junk"]))
    if kind == "raw":
        return draw(st.sampled_from(HOSTILE_JSON_TEXT))
    if kind == "huge":  # over every test server's max_body_bytes
        return b'{"graph": "' + b"x" * 30_000 + b'"}'
    if kind == "junk":
        return dumps(draw(JSON_VALUES))
    base = dict(BASES.get(model or "", {}))
    key = draw(st.sampled_from([*base, "extra"]))
    if draw(st.integers(0, 4)) == 0:
        base.pop(key, None)
    else:
        base[key] = draw(JSON_VALUES)
    return dumps(base)


@st.composite
def hostile_requests(draw: st.DrawFn, ops: list[Operation], known: Known) -> Request:
    """One operation's request with hostile values in some of its slots."""
    op = draw(st.sampled_from(ops))
    path_values = {
        name: draw(
            st.sampled_from(known.for_param(name, op.path) or ["x"])
            | st.sampled_from(HOSTILE_IDS)
            | st.text(min_size=1, max_size=20)
        )
        for name in re.findall(r"{(\w+)}", op.path)
    }
    run_id = known.values.get("lg_run_id" if "/langgraph/" in op.path else "run_id", "r")
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for param in op.params:
        if param["in"] == "path" or not draw(st.booleans()):
            continue
        value = draw(_cursor_values(param["name"], run_id))
        if param["in"] == "header":
            headers[param["name"]] = value
        else:
            query.append((param["name"], value))
    if draw(st.integers(0, 9)) == 0:
        query.append((draw(st.sampled_from(["after", "x", "graph", "token"])), draw(CURSORS)))
    if draw(st.integers(0, 9)) == 0:
        headers["X-Overlong"] = "x" * draw(st.sampled_from([8_000, 60_000]))
    body: bytes | None = None
    if op.body is not None or draw(st.integers(0, 9)) == 0:
        body = _body(draw, op.body)
        headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES[:1] * 4 + CONTENT_TYPES))
    qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    url = _path(op, path_values) + (f"?{qs}" if qs else "")
    return Request(op.method, url, headers, body)


class ServerErrors(logging.Handler):
    """Every ERROR a server in this process logs (an exception that escaped a handler,
    or a stream that broke after its headers were sent)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "agent_server.runs" and record.getMessage().endswith(" failed"):
            return  # a graph refusing its input: the run's error frame says so (not a 5xx)
        error = record.exc_info[1] if record.exc_info else None
        cause = f" ({type(error).__name__}: {str(error)[:200]})" if error else ""
        self.records.append(f"{record.name}: {record.getMessage()[:300]}{cause}")


@contextmanager
def server_errors() -> Iterator[ServerErrors]:
    handler = ServerErrors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@dataclass
class Report:
    """What the whole suite sent and got, for the summary line and docs/reliability.md."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    unsendable: int = 0
    parser_refused: int = 0
    ws_sent: int = 0
    ws_answers: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        by_status = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        errors = sum(n for code, n in self.statuses.items() if code >= 500)
        ws = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.ws_answers.items()))
        return (
            f"fuzz: {self.sent} HTTP requests ({by_status}; {self.parser_refused} of the 400s "
            f"from uvicorn's own parser); 5xx: {errors}; {self.unsendable} not sendable by "
            f"httpx; {self.ws_sent} WebSocket messages ({ws}); "
            f"{time.monotonic() - self.started:.1f} s"
        )


REPORT = Report()
PARSER_REFUSED = b"Invalid HTTP request received."


def _header_bytes(value: str) -> bytes:
    """As a client would send it: Latin-1 where it can be (the server decodes headers as
    Latin-1, so ``²`` arrives as ``²``), else UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


class Fuzzer:
    """Sends requests to one live server and judges each answer against the document."""

    def __init__(
        self, base_url: str, document: dict[str, Any], ops: list[Operation], host: bool = False
    ) -> None:
        self.base_url = base_url
        self.host = host  # mounted in a FastAPI app, whose router answers what it cannot route
        self.document = document
        self.ops = ops
        self.client = httpx.Client(base_url=base_url, timeout=20)
        self.failures: list[str] = []
        self.statuses: Counter[int] = Counter()

    def close(self) -> None:
        self.client.close()

    def send(self, request: Request) -> int:
        headers = {k: _header_bytes(v) for k, v in request.headers.items()}
        try:
            with self.client.stream(
                request.method, request.url, headers=headers, content=request.body
            ) as response:
                status = response.status_code
                kind = response.headers.get("content-type", "")
                body = b"" if kind.startswith("text/event-stream") else response.read()
        except httpx.LocalProtocolError:  # h11 will not send it (a NUL in a header...)
            REPORT.unsendable += 1
            return 0
        except httpx.HTTPError as exc:
            self.failures.append(f"{request.describe()}: {type(exc).__name__}: {exc}")
            return 0
        self.statuses[status] += 1
        REPORT.sent += 1
        REPORT.statuses[status] += 1
        if status >= 500:
            self.failures.append(f"{request.describe()}: {status} {body[:300]!r}")
        elif status == 400 and body == PARSER_REFUSED:
            REPORT.parser_refused += 1  # uvicorn's own parser: the app never saw it
        elif status >= 400:
            problem = self.shape_problem(request, status, body)
            if problem:
                self.failures.append(f"{request.describe()}: {status} {problem}")
        return status

    def error_schema(self, request: Request, status: int) -> str:
        """The component a 4xx body must match: the operation's answer for that status,
        else the document's ``4XX`` (refused before any handler: the native shape)."""
        path = httpx.URL("http://fuzz" + request.url).path  # dot segments resolved, as sent
        for op in self.ops:
            if op.method == request.method and op.pattern.match(path):
                responses = self.document["paths"][self._template(op)][op.method.lower()]
                response = responses["responses"].get(str(status)) or responses["responses"]["4XX"]
                schema = response["content"]["application/json"]["schema"]["$ref"]
                return str(schema)
        return "#/components/schemas/ErrorBody"

    def _template(self, op: Operation) -> str:
        base = self.document["servers"][0]["url"].rstrip("/")
        return op.path[len(base) :] if base else op.path

    def shape_problem(self, request: Request, status: int, body: bytes) -> str | None:
        ref = self.error_schema(request, status)
        if status in (404, 405) and (
            body.startswith(b'{"code":"not_found","message":"Not Found"')
            or b'"code":"method_not_allowed"' in body
        ):
            ref = "#/components/schemas/ErrorBody"  # the router's, before any handler
        if self.host and status in (404, 405) and body.startswith(b'{"detail":'):
            return None  # FastAPI's router (a path its mount does not match, e.g. with a LF)
        try:
            data = json.loads(body)
            schema = {"$ref": ref, "components": self.document["components"]}
            jsonschema.validate(data, schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            return f"not {ref.rsplit('/', 1)[-1]}: {str(exc)[:200]} in {body[:200]!r}"
        return None
