"""The frame protocol: every frame round-trips, the envelope is strict, payloads are JSON-safe."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import time
import typing
import uuid
from typing import Any

import orjson
import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, ValidationError

from agent_server.frames import (
    TERMINAL_TYPES,
    BaseFrame,
    Custom,
    Done,
    Encoded,
    Error,
    Frame,
    Interrupt,
    LazyToken,
    Part,
    RunStart,
    Token,
    ToolEnd,
    ToolError,
    ToolStart,
    Usage,
    dumps,
    encode,
    encode_part,
    encode_token,
    now_ms,
    parse_frame,
)
from agent_server.translate import FrameFactory

ENVELOPE = {"run_id": "run-1", "seq": 3, "ts": 1_700_000_000_123}

# One instance of every frame type, with every optional field set.
SAMPLES: list[BaseFrame] = [
    RunStart(**ENVELOPE, graph="agent", thread_id="thread-1"),
    Token(**ENVELOPE, content=" hi", message_id="m1", node="agent", namespace=["sub"]),
    ToolStart(
        **ENVELOPE,
        tool_call_id="call_1",
        name="calculator",
        input={"expression": "2+2"},
        node="tools",
        namespace=[],
    ),
    ToolEnd(**ENVELOPE, tool_call_id="call_1", name="calculator", output="4", duration_ms=1.5),
    ToolError(**ENVELOPE, tool_call_id="call_2", name="calculator", error="bad", duration_ms=2.0),
    Custom(**ENVELOPE, name="progress", data={"step": 1, "of": [1, 2]}),
    Interrupt(**ENVELOPE, value={"question": "ok?"}, resumable=True, interrupt_id="i1"),
    Error(**ENVELOPE, code="run_error", message="the model backend went away"),
    Done(
        **ENVELOPE,
        usage=Usage(input_tokens=3, output_tokens=4, total_tokens=7),
        duration_ms=12.25,
    ),
]
SAMPLE_IDS = [frame.type for frame in SAMPLES]


def frame_classes() -> list[type[BaseFrame]]:
    union = typing.get_args(Frame)[0]
    return list(typing.get_args(union))


def test_the_samples_cover_every_frame_type() -> None:
    assert {cls.model_fields["type"].default for cls in frame_classes()} == set(SAMPLE_IDS)
    assert {type(frame) for frame in SAMPLES} == set(frame_classes())
    assert {"done", "error"} == TERMINAL_TYPES


@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_every_frame_round_trips(frame: BaseFrame) -> None:
    data = encode(frame)
    assert isinstance(data, bytes)
    for received in (data, data.decode(), orjson.loads(data)):
        parsed = parse_frame(received)
        assert type(parsed) is type(frame)
        assert parsed == frame


@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_type_is_the_first_key_then_the_envelope(frame: BaseFrame) -> None:
    keys = list(orjson.loads(encode(frame)))
    assert keys[:4] == ["type", "run_id", "seq", "ts"]
    assert keys == list(type(frame).model_fields)  # every field is sent, in declared order


def test_minimal_frames_get_their_defaults() -> None:
    token = parse_frame({"type": "token", **ENVELOPE, "content": "x"})
    assert isinstance(token, Token)
    assert (token.message_id, token.node, token.namespace) == (None, None, [])
    done = parse_frame({"type": "done", **ENVELOPE, "duration_ms": 1})
    assert isinstance(done, Done) and done.usage == Usage()


@pytest.mark.parametrize("missing", ["type", "run_id", "seq", "ts"])
def test_envelope_fields_are_required(missing: str) -> None:
    data: dict[str, Any] = {"type": "run_start", **ENVELOPE, "graph": "agent"}
    parse_frame(data)
    del data[missing]
    with pytest.raises(ValidationError):
        parse_frame(data)


@pytest.mark.parametrize(
    ("field", "value"), [("seq", 0), ("seq", -1), ("ts", "soon"), ("run_id", None)]
)
def test_envelope_values_are_checked(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        parse_frame({"type": "run_start", **ENVELOPE, "graph": "agent", field: value})


def test_payload_fields_are_required() -> None:
    with pytest.raises(ValidationError):
        parse_frame({"type": "interrupt", **ENVELOPE, "value": 1})  # resumable missing
    with pytest.raises(ValidationError):
        parse_frame({"type": "error", **ENVELOPE, "message": "no code"})


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_frame({"type": "telemetry", **ENVELOPE})
    with pytest.raises(ValidationError):
        parse_frame(b'{"type": "Token", "run_id": "r", "seq": 1, "ts": 1, "content": "x"}')


def test_extra_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        parse_frame({"type": "token", **ENVELOPE, "content": "x", "contents": "y"})
    with pytest.raises(ValidationError):
        Token(**ENVELOPE, content="x", text="y")  # type: ignore[call-arg]


def test_invalid_json_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_frame("{not json")


def test_ts_is_integer_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    make = FrameFactory("run-1")
    frames = [make(RunStart, graph="agent"), make(Token, content="x"), make(Done, duration_ms=1)]
    after = time.time_ns() // 1_000_000
    for seq, frame in enumerate(frames, start=1):
        assert frame.seq == seq and frame.run_id == "run-1"
        assert isinstance(frame.ts, int) and before <= frame.ts <= after
        assert isinstance(orjson.loads(encode(frame))["ts"], int)
    assert isinstance(now_ms(), int)
    # Milliseconds, not seconds or nanoseconds: a browser's `new Date(ts)` is "now".
    assert abs(now_ms() / 1000 - time.time()) < 5


# -- JSON safety of payloads ----------------------------------------------------------------


class Point(BaseModel):
    x: int
    at: datetime.datetime


@dataclasses.dataclass
class Pair:
    left: str
    right: Any


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque 7>"


class WithToJson:
    def to_json(self) -> dict[str, str]:
        return {"kind": "custom"}


def roundtrip(value: Any) -> Any:
    return orjson.loads(dumps(value))


def test_langchain_messages() -> None:
    message = AIMessage(
        "let me compute",
        id="m1",
        tool_calls=[{"name": "calculator", "args": {"expression": "2+2"}, "id": "call_1"}],
    )
    data = roundtrip(message)
    assert data["type"] == "ai" and data["content"] == "let me compute" and data["id"] == "m1"
    assert data["tool_calls"][0]["name"] == "calculator"
    assert data["tool_calls"][0]["args"] == {"expression": "2+2"}
    assert roundtrip(ToolMessage("4", tool_call_id="call_1"))["tool_call_id"] == "call_1"
    assert roundtrip([HumanMessage("hi")])[0]["type"] == "human"


def test_documents() -> None:
    doc = Document(page_content="text", metadata={"source": "a.txt", "page": 2})
    data = roundtrip(doc)
    assert data["page_content"] == "text"
    assert data["metadata"] == {"source": "a.txt", "page": 2}


def test_pydantic_models_and_dataclasses() -> None:
    at = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert roundtrip(Point(x=1, at=at)) == {"x": 1, "at": "2024-01-02T03:04:05Z"}
    assert roundtrip(Pair("a", Point(x=2, at=at))) == {
        "left": "a",
        "right": {"x": 2, "at": "2024-01-02T03:04:05Z"},
    }


def test_bytes_become_base64() -> None:
    raw = bytes(range(256))
    for value in (raw, bytearray(raw), memoryview(raw)):
        data = roundtrip(value)
        assert data == {"type": "bytes", "base64": base64.b64encode(raw).decode("ascii")}
        assert base64.b64decode(data["base64"]) == raw


def test_collections_dates_ids_and_keys() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert sorted(roundtrip({1, 2, 3})) == [1, 2, 3]
    assert roundtrip(frozenset({"a"})) == ["a"]
    assert roundtrip((1, "two", (3,))) == [1, "two", [3]]
    assert roundtrip(datetime.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05"
    assert roundtrip(datetime.date(2024, 1, 2)) == "2024-01-02"
    assert roundtrip(ident) == "12345678-1234-5678-1234-567812345678"
    assert roundtrip({1: "int key", ident: "uuid key"}) == {
        "1": "int key",
        "12345678-1234-5678-1234-567812345678": "uuid key",
    }


def test_exceptions_and_arbitrary_objects() -> None:
    assert roundtrip(ValueError("boom")) == "ValueError: boom"
    assert roundtrip(KeyError("k")) == "KeyError: 'k'"
    assert roundtrip(Opaque()) == "<Opaque 7>"
    assert roundtrip(WithToJson()) == {"kind": "custom"}
    assert roundtrip(object).startswith("<class")
    assert roundtrip(len) == "<built-in function len>"
    assert roundtrip(Pair("lock", Opaque())) == {"left": "lock", "right": "<Opaque 7>"}


def test_a_frame_carrying_everything_encodes() -> None:
    data = {
        "message": AIMessage("hi"),
        "doc": Document(page_content="p"),
        "blob": b"\x00",
        "tags": {"a"},
        "when": datetime.date(2024, 1, 2),
        "error": RuntimeError("x"),
        "thing": Opaque(),
    }
    frame = Custom(**ENVELOPE, name="everything", data=data)
    parsed = parse_frame(encode(frame))
    assert isinstance(parsed, Custom)
    assert parsed.data["message"]["content"] == "hi"
    assert parsed.data["blob"] == {"type": "bytes", "base64": "AA=="}
    assert parsed.data["tags"] == ["a"]
    assert parsed.data["error"] == "RuntimeError: x"
    assert parsed.data["thing"] == "<Opaque 7>"


# `dumps` promises never to fail; orjson refuses these outright, so they take the slow
# path. A raise inside a run would turn into an `error` frame instead of the payload.


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


NEVER_RAISING_GAPS = [
    pytest.param(2**64, id="int-beyond-64-bits"),
    pytest.param(Document(page_content="p", metadata={"o": Opaque()}), id="model-with-object"),
    pytest.param(AIMessage("x", additional_kwargs={"o": Opaque()}), id="message-with-object"),
    pytest.param(BadRepr(), id="raising-repr"),
    pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
]


@pytest.mark.parametrize("value", NEVER_RAISING_GAPS)
def test_dumps_never_raises_gaps(value: Any) -> None:
    assert isinstance(dumps(value), bytes)


@pytest.mark.parametrize(
    "fields",
    [
        {"content": " word", "message_id": "lc_run--1", "node": "agent", "namespace": []},
        {"content": 'é\u2028"\\\n', "message_id": None, "node": None, "namespace": ["a", "b"]},
        {"content": "🙂" * 50, "message_id": "m", "node": "n", "namespace": ["sub"]},
    ],
)
def test_the_token_path_encodes_as_the_model_does(fields: dict[str, Any]) -> None:
    encoded = encode_token("run-1", 7, 1795764297722, **fields)
    model = Token(run_id="run-1", seq=7, ts=1795764297722, **fields)
    assert encoded.data == encode(model) and encoded.seq == 7 and encoded.type == "token"
    assert encoded.frame == model  # parsed back when a consumer asks for the model


def test_the_part_path_encodes_as_the_model_does() -> None:
    part = Part(run_id="r", seq=3, ts=1, event="messages|sub:1", data=b'[{"a":1},{}]')
    assert encode_part(3, "messages|sub:1", b'[{"a":1},{}]').data == encode(part)


def test_a_tokens_part_travels_with_it_as_one_string() -> None:
    """A LangGraph API run's token carries its chunk's part (one log entry for both):
    a broker and a compact log keep the pair as one string and read it back."""
    token = encode_token("r", 4, 5, "hi\nthere", "m1", "agent", [])
    assert token.wire == token.data and Encoded.unwire(4, "token", token.wire) == token
    token.part = b'event: messages\ndata: [{"content":"hi\\nthere"},{}]\nid: 4\n\n'
    back = Encoded.unwire(4, "token", token.wire)
    assert back == token and back.data == token.data and back.part == token.part
    part = encode_part(5, "values", b"{}")  # its bytes hold newlines: never split
    assert Encoded.unwire(5, "part", part.wire) == part


def test_a_lazy_token_encodes_when_read_as_the_token_path_does() -> None:
    fields = ("r", 9, 1795764297722, " word", "m1", "agent", ["sub"])
    lazy = LazyToken(*fields)
    assert lazy.seq == 9 and lazy.type == "token" and lazy.part is None
    assert lazy.data == encode_token(*fields).data and lazy == encode_token(*fields)
    assert lazy.frame == Token(run_id="r", seq=9, ts=1795764297722, content=" word",
                               message_id="m1", node="agent", namespace=["sub"])  # fmt: skip
    lazy.part = b"event: messages\ndata: []\nid: 9\n\n"
    assert Encoded.unwire(9, "token", lazy.wire) == lazy


def test_the_token_path_takes_a_node_name_json_does_not() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    token = encode_token("r", 1, 2, "x", None, Odd(), [])  # type: ignore[arg-type]
    assert orjson.loads(token.data)["content"] == "x"
