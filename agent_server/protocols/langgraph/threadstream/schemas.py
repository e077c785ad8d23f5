"""What clients send: the command envelope, each command's params, the event stream
request. Shapes are langchain-protocol's (``langchain_protocol``), as the SDKs send them:
unknown fields are ignored (the SDKs add some, like ``multitaskStrategy``), known ones
are validated strictly (``StrictInt``: JSON ``true`` is not a seq)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from agent_server.cursors import MAX_SEQ
from agent_server.protocols.langgraph.threadstream.events import supported_channel
from agent_server.schemas import ClientId, StoredJSON

Seq = Annotated[StrictInt, Field(ge=0, le=MAX_SEQ)]
Segment = Annotated[str, Field(max_length=1024)]
Path = Annotated[list[Segment], Field(max_length=64)]
Strategy = Literal["reject", "interrupt", "rollback", "enqueue"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Command(_Params):
    """``{"id", "method", "params"}``: one command, on ``POST .../commands`` or a
    WebSocket text frame."""

    id: Annotated[StrictInt, Field(ge=0, le=2**53 - 1)]
    method: str = Field(max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class Filter(_Params):
    """A subscription: channels, namespace prefixes, depth below them."""

    channels: list[str] = Field(min_length=1, max_length=64)
    namespaces: list[Path] | None = Field(None, max_length=64)
    depth: Annotated[StrictInt, Field(ge=0, le=64)] | None = None

    @field_validator("channels")
    @classmethod
    def _channels(cls, channels: list[str]) -> list[str]:
        bad = [c for c in channels if not supported_channel(c)]
        if bad:
            raise ValueError(
                f"unsupported channel {bad[0]!r}: values, updates, messages, tools, "
                "lifecycle, input, checkpoints, tasks, custom or custom:<name>"
            )
        return channels


class EventStreamRequest(Filter):
    """``POST .../stream/events`` (and a WebSocket ``subscription.subscribe``): replay
    the thread's events after ``since`` (or the event ``since_event_id``), then live."""

    since: Seq | None = None
    since_event_id: str | None = Field(None, max_length=64)


class Unsubscribe(_Params):
    subscription_id: str = Field(min_length=1, max_length=64)


class Reconnect(EventStreamRequest):
    """``subscription.reconnect``: a subscription again after ``last_event_id`` (or
    ``since``), on a new socket; without channels there is nothing to restore."""

    channels: list[str] = Field(default_factory=list, max_length=64)
    run_id: ClientId | None = None
    last_event_id: str | None = Field(None, max_length=64)
    subscriptions: list[str] | None = Field(None, max_length=64)


class RunStart(_Params):
    assistant_id: str = Field(min_length=1, max_length=128)
    input: Any = None
    config: StoredJSON | None = None
    metadata: StoredJSON | None = None
    multitask_strategy: Strategy | None = None
    multitaskStrategy: Strategy | None = None  # the JS SDK's spelling


class Response(_Params):
    interrupt_id: str = Field(min_length=1, max_length=256)
    namespace: Path = Field(default_factory=list)
    response: Any = None


class InputRespond(_Params):
    """One answer (``interrupt_id``, ``response``) or several (``responses``)."""

    interrupt_id: str | None = Field(None, min_length=1, max_length=256)
    namespace: Path = Field(default_factory=list)
    response: Any = None
    responses: list[Response] | None = Field(None, min_length=1, max_length=100)
    update: StoredJSON | None = None
    goto: Any = None
    config: StoredJSON | None = None
    metadata: StoredJSON | None = None


class Message(_Params):
    role: Literal["user", "system"]
    content: str = Field(max_length=1_000_000)
    name: str | None = Field(None, max_length=256)


class InputInject(_Params):
    namespace: Path = Field(default_factory=list)
    message: Message


class StateGet(_Params):
    namespace: Path = Field(default_factory=list)
    keys: list[str] | None = Field(None, max_length=1000)


class ListCheckpoints(_Params):
    namespace: Path = Field(default_factory=list)
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 10
    before: ClientId | None = None


class StateFork(_Params):
    checkpoint_id: ClientId
    input: Any = None
    config: StoredJSON | None = None


class AgentGetTree(_Params):
    run_id: ClientId | None = None
