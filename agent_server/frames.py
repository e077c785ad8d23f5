"""The wire protocol, version 1: every frame a run produces, defined once.

Every transport (SSE, WebSocket, the in-process stream) and every adapter serialises
from these models, and each frame is serialised once: :func:`encode` produces the JSON
bytes that every consumer of the frame receives.

Decisions worth knowing before changing anything here:

- ``seq`` counts 1, 2, 3... per run with no gaps; clients resume from it.
- ``ts`` is milliseconds since the Unix epoch (an integer), so ``new Date(frame.ts)``
  works in a browser.
- A run's frames start with ``run_start`` and end with exactly one terminal frame:
  ``done`` (the run finished, possibly waiting on an ``interrupt``) or ``error``.
- Payload fields typed ``Any`` (tool inputs and outputs, custom data, interrupt values)
  hold the objects the graph produced; :func:`encode` makes them JSON-safe lazily
  through orjson's ``default`` hook (messages, Documents, pydantic models, dataclasses,
  bytes, sets...), so the common case of strings and dicts costs nothing extra.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BaseFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    run_id: str
    seq: int = Field(ge=1)
    ts: int


class RunStart(BaseFrame):
    type: Literal["run_start"] = "run_start"
    graph: str
    thread_id: str | None = None
    queue_position: int = 0  # runs ahead of this one when it was accepted; 0 = started


class Token(BaseFrame):
    type: Literal["token"] = "token"
    content: str
    message_id: str | None = None
    node: str | None = None
    namespace: list[str] = Field(default_factory=list)


class ToolStart(BaseFrame):
    type: Literal["tool_start"] = "tool_start"
    tool_call_id: str | None = None
    name: str
    input: Any = None
    node: str | None = None
    namespace: list[str] = Field(default_factory=list)


class ToolEnd(BaseFrame):
    type: Literal["tool_end"] = "tool_end"
    tool_call_id: str | None = None
    name: str
    output: Any = None
    duration_ms: float | None = None


class ToolError(BaseFrame):
    type: Literal["tool_error"] = "tool_error"
    tool_call_id: str | None = None
    name: str
    error: str
    duration_ms: float | None = None


class Custom(BaseFrame):
    type: Literal["custom"] = "custom"
    name: str
    data: Any = None


class Interrupt(BaseFrame):
    type: Literal["interrupt"] = "interrupt"
    value: Any = None
    resumable: bool
    interrupt_id: str | None = None


class Error(BaseFrame):
    """A terminal frame, or, with ``seq`` 0, a *stream* error that is not in the run's
    log (``broker_unavailable``): the stream ends, the run may not have; resume from the
    last seq received."""

    type: Literal["error"] = "error"
    seq: int = Field(ge=0)
    code: str
    message: str


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class Done(BaseFrame):
    type: Literal["done"] = "done"
    usage: Usage = Field(default_factory=Usage)
    duration_ms: float


class Part(BaseFrame):
    """One event of LangGraph's own stream format, for the LangGraph API
    (:mod:`agent_server.protocols.langgraph`); never sent by the native transports.

    It lives in the run's log beside the native frames, so a LangGraph client can join
    or resume the run exactly as any other client (its ``id:`` is the part's ``seq``), on
    any worker. ``data`` holds its JSON already; :func:`encode` makes the whole SSE event.
    Not a member of :data:`Frame`: no native client ever receives or parses one.
    """

    type: Literal["part"] = "part"
    event: str  # "values", "messages", "updates|agent:<task id>", ...
    data: bytes


Frame = Annotated[
    RunStart | Token | ToolStart | ToolEnd | ToolError | Custom | Interrupt | Error | Done,
    Field(discriminator="type"),
]
FRAME_ADAPTER: TypeAdapter[Frame] = TypeAdapter(Frame)
TERMINAL_TYPES = frozenset({"done", "error"})


def parse_frame(data: bytes | str | Mapping[str, Any]) -> Frame:
    """Validate a received frame (JSON text or a dict) into its model."""
    if isinstance(data, Mapping):
        return FRAME_ADAPTER.validate_python(data)
    return FRAME_ADAPTER.validate_json(data)


def _json_default(obj: Any) -> Any:
    """orjson's fallback for what the graph hands us: make it JSON-safe, never fail."""
    try:
        if isinstance(obj, BaseModel):
            # LangChain messages and Documents are pydantic models too. When a model holds
            # values pydantic cannot put in JSON, python mode leaves them for orjson to
            # hand back here, instead of raising.
            try:
                return obj.model_dump(mode="json", exclude_none=True)
            except Exception:
                return obj.model_dump(exclude_none=True)
        if isinstance(obj, bytes | bytearray | memoryview):
            return {"type": "bytes", "base64": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, set | frozenset | tuple):
            return list(obj)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if isinstance(obj, Exception):
            return f"{type(obj).__name__}: {obj}"
        to_json = getattr(obj, "to_json", None)
        if callable(to_json):
            return to_json()
        return repr(obj)
    except Exception:
        return f"<unserialisable {type(obj).__name__}>"


_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_MAX_DEPTH = 64


def _sanitise(obj: Any, depth: int = 0) -> Any:
    """The slow path for what orjson refuses outright: huge ints, odd keys, cycles."""
    if depth > _MAX_DEPTH:
        return "<too deep>"
    if isinstance(obj, bool | float | str) or obj is None:
        return obj
    if isinstance(obj, int):
        return obj if -(2**63) <= obj < 2**64 else str(obj)
    if isinstance(obj, dict):
        return {
            k if isinstance(k, str) else str(k): _sanitise(v, depth + 1) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple | set | frozenset):
        return [_sanitise(item, depth + 1) for item in obj]
    converted = _json_default(obj)
    return converted if isinstance(converted, str) else _sanitise(converted, depth + 1)


def dumps(obj: Any, default: Callable[[Any], Any] = _json_default) -> bytes:
    """JSON bytes for any value a frame may carry (see :func:`_json_default`); never raises."""
    try:
        return orjson.dumps(obj, default=default, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(_sanitise(obj), default=default, option=_OPTIONS)


def dumps_plain(obj: Any, general: Callable[[Any], bytes] = dumps) -> bytes:
    """JSON bytes for a value of JSON's own types, by orjson without options: the same
    bytes as :func:`dumps`, a third faster on a dict (``OPT_NON_STR_KEYS`` alone costs
    the difference), for the token path. What orjson refuses as it is (a model inside,
    a non-string key) takes the ``general`` way."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return general(obj)


def encode(frame: BaseFrame) -> bytes:
    """Serialise a frame once; the returned bytes are shared by every consumer.

    The copy is deliberate: orjson returns its output in a buffer of at least 4 KB, and
    a run's log keeps every frame's bytes, so a 200-byte token held 4 KB (measured with
    tracemalloc). The exact-size copy costs about 0.2 µs.

    A :class:`Part` is encoded as the SSE event its only transport sends.
    """
    if type(frame) is Part:
        return b"event: %b\ndata: %b\nid: %d\n\n" % (frame.event.encode(), frame.data, frame.seq)
    return bytes(memoryview(dumps(frame.__dict__)))


class Encoded:
    """A frame with its encoding: seq, type and the bytes every transport sends, and the
    model when there is one. The token path (tokens, LangGraph parts) encodes straight
    from its fields (:func:`encode_token`, :func:`encode_part`), building no model: a
    consumer that wants one (``frame``) gets it parsed from the bytes.

    ``part``: for a token of a LangGraph API run, the ``messages`` part of the same chunk
    (an SSE event whose id is this seq). One log entry then serves both kinds of client,
    instead of a token entry and a part entry per chunk: the LangGraph API's stream costs
    a part's bytes more than the native one, not a second entry's round through the log,
    its followers and its compaction (see docs/performance.md)."""

    __slots__ = ("_frame", "data", "part", "seq", "type")

    def __init__(
        self,
        seq: int,
        type: str,
        data: bytes,
        frame: BaseFrame | None = None,
        part: bytes | None = None,
    ):
        self.seq = seq
        self.type = type
        self.data = data
        self._frame = frame
        self.part = part

    @classmethod
    def of(cls, frame: BaseFrame) -> Encoded:
        return cls(frame.seq, frame.type, encode(frame), frame)

    @property
    def wire(self) -> bytes:
        """The entry as one byte string, for a broker or a compact log (:meth:`unwire`
        reads it back): a token's part follows its JSON after a newline, which JSON
        from :func:`dumps` never holds."""
        return self.data if self.part is None else self.data + b"\n" + self.part

    @classmethod
    def unwire(cls, seq: int, type: str, raw: bytes) -> Encoded:
        if type == "token":
            cut = raw.find(b"\n")
            if cut >= 0:
                return cls(seq, type, raw[:cut], part=raw[cut + 1 :])
        return cls(seq, type, raw)

    @property
    def frame(self) -> BaseFrame:
        if self._frame is None:
            self._frame = parse_frame(self.data)  # never asked of a LangGraph part
        return self._frame

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Encoded):
            return NotImplemented
        return (self.seq, self.type, self.data, self.part) == (
            other.seq, other.type, other.data, other.part,
        )  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.seq, self.data))

    def __repr__(self) -> str:
        return f"Encoded({self.seq}, {self.type!r}, {self.data[:60]!r})"


# What translators emit: a model, or a frame encoded without one.
Emitted = BaseFrame | Encoded


def encode_token(
    run_id: str,
    seq: int,
    ts: int,
    content: str,
    message_id: str | None,
    node: str | None,
    namespace: list[str],
) -> Encoded:
    """A :class:`Token`, encoded as :func:`encode` would encode the model (byte for byte:
    tests/test_frames.py), without building it: about 1 µs instead of 4 a token. Its
    fields are JSON's own types (:func:`dumps_plain`; a node name from odd metadata that
    is not takes :func:`dumps`' way)."""
    fields = {
        "type": "token", "run_id": run_id, "seq": seq, "ts": ts, "content": content,
        "message_id": message_id, "node": node, "namespace": namespace,
    }  # fmt: skip
    return Encoded(seq, "token", bytes(memoryview(dumps_plain(fields))))


class LazyToken(Encoded):
    """A :class:`Token` of a LangGraph API run, encoded on first read of ``data``.

    Such a run's clients read the token's ``part`` (:attr:`Encoded.part`), not its frame;
    the frame is there for native watchers and late joiners, and is encoded only when
    one of them reads it: a compact log keeps an unread token as its fields and part
    (``runs/log.py``). The fields are taken when the token is made (``ts`` included), so
    the bytes are what :func:`encode_token` would have made then."""

    # The fields in slots of their own, not a tuple: a tuple holding the namespace list
    # stays tracked by the garbage collector, a second object per token for every
    # collection to walk while the run is live (docs/performance.md).
    __slots__ = ("_content", "_message_id", "_namespace", "_node", "_run_id", "_ts")

    def __init__(
        self,
        run_id: str,
        seq: int,
        ts: int,
        content: str,
        message_id: str | None,
        node: str | None,
        namespace: list[str],
    ) -> None:
        self.seq = seq
        self.type = "token"
        self._frame = None
        self.part = None
        self._run_id: str | None = run_id  # None once encoded
        self._ts = ts
        self._content = content
        self._message_id = message_id
        self._node = node
        self._namespace = namespace

    @property
    def fields(self) -> tuple[Any, ...] | None:
        """``(run_id, ts, content, message_id, node, namespace)`` while the frame is not
        encoded: what a compact log keeps of it instead of the frame."""
        if self._run_id is None:
            return None
        return (
            self._run_id, self._ts, self._content, self._message_id, self._node, self._namespace,
        )  # fmt: skip

    @property
    def data(self) -> bytes:
        run_id = self._run_id
        if run_id is not None:
            token = encode_token(
                run_id, self.seq, self._ts, self._content, self._message_id, self._node,
                self._namespace,
            )  # fmt: skip
            _DATA.__set__(self, token.data)
            self._run_id, self._content = None, ""
        data: bytes = _DATA.__get__(self, Encoded)
        return data

    @data.setter
    def data(self, value: bytes) -> None:
        _DATA.__set__(self, value)
        self._run_id, self._content = None, ""


_DATA = Encoded.__dict__["data"]  # the slot LazyToken fills on first read


def encode_part(seq: int, event: str, data: bytes) -> Encoded:
    """A :class:`Part` as :func:`encode` encodes it (the SSE event it is sent as)."""
    return Encoded(seq, "part", b"event: %b\ndata: %b\nid: %d\n\n" % (event.encode(), data, seq))
