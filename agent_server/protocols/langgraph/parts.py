"""LangGraph's stream format, produced from the same ``astream_events`` v2 events as the
native frames (see :mod:`agent_server.translate`).

A run started through the LangGraph API carries :class:`PartOptions`; its driver hands
every event to both translators, so one execution feeds native subscribers (frames)
and LangGraph clients (:class:`~agent_server.frames.Part`, one per SSE event) from one
log. Decisions:

- Event names are LangGraph's: the mode (``messages-tuple`` is sent as ``messages``),
  and for a part from inside a subgraph ``<mode>|<namespace>``, the namespace being
  LangGraph's checkpoint namespace (``node:<task id>`` segments joined by ``|``). Such
  parts are only sent with ``stream_subgraphs``.
- ``messages-tuple`` follows LangGraph's own messages mode: every chunk a chat model
  streams (tool-call chunks included) with the model call's metadata, then each message
  a node returns that was neither streamed nor part of the node's input (a tool's
  ``ToolMessage``, a message built by hand), once.
- The legacy ``messages`` mode accumulates chunks per message id and sends
  ``messages/metadata`` once, then ``messages/partial`` per chunk (the message so far),
  and ``messages/complete`` for whole messages; never with a namespace suffix.
- A model call's metadata is serialised once for all its parts, without the keys that
  only repeat others (``checkpoint_ns``, ``lc_versions``) or are ours (``owner``): a
  token's part is then about 780 bytes on the wire, of which the LangChain message dict
  is a third.
- Messages are LangChain's message dicts with every field (``None`` included), as
  LangGraph's server sends them; they are built from the message's fields directly,
  which costs a fraction of ``model_dump()`` on the token path.
- ``values``, ``updates``, ``custom``, ``debug``, ``tasks`` and ``checkpoints`` pass the
  graph's own stream chunks through; the last three are added to the driver's stream
  modes only for runs that ask for them.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message
from langchain_core.runnables.schema import StreamEvent
from langgraph.types import Command
from pydantic import BaseModel

from agent_server.frames import Emitted, Encoded, _json_default, dumps, dumps_plain, encode_part
from agent_server.translate import NOSTREAM_TAG, FrameFactory

# The modes the driver must add to its own stream modes for a run that asks for them.
GRAPH_MODES = frozenset({"debug", "tasks", "checkpoints"})
HIDDEN_TAG = "langsmith:hidden"


def _default(obj: Any) -> Any:
    """LangGraph's serialisation: messages and other models with every field."""
    if isinstance(obj, BaseMessage):
        return obj.__dict__  # pydantic keeps exactly the fields there
    if isinstance(obj, BaseModel):
        try:
            return obj.model_dump(mode="json")
        except Exception:
            return obj.model_dump()
    return _json_default(obj)


def dumps_part(data: Any) -> bytes:
    return dumps(data, default=_default)


@dataclasses.dataclass(frozen=True)
class PartOptions:
    """What a LangGraph client asked to receive; kept with queued jobs as JSON."""

    modes: tuple[str, ...] = ("values",)
    subgraphs: bool = False

    def graph_modes(self) -> list[str]:
        return [mode for mode in self.modes if mode in GRAPH_MODES]

    def to_json(self) -> dict[str, Any]:
        return {"modes": list(self.modes), "subgraphs": self.subgraphs}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartOptions:
        return cls(tuple(data.get("modes") or ("values",)), bool(data.get("subgraphs")))


def namespace(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The namespace of the graph a task runs in: its checkpoint namespace without the
    task's own segment (as LangGraph's messages mode computes it)."""
    ns = metadata.get("langgraph_checkpoint_ns")
    if not ns:
        return ()
    return tuple(ns.split("|"))[:-1]


def _messages_in(value: Any) -> list[BaseMessage]:
    """Messages in a node's input or output: a message, a list, or a state's fields."""
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, Command):
        return _messages_in(value.update)
    if isinstance(value, Sequence) and not isinstance(value, str):
        found: list[BaseMessage] = []
        for item in value:
            if isinstance(item, BaseMessage):
                found.append(item)
            elif isinstance(item, Command):
                found.extend(_messages_in(item.update))
        return found
    if isinstance(value, Mapping):
        fields = list(value.values())
    elif isinstance(value, BaseModel):
        fields = [getattr(value, name) for name in type(value).model_fields]
    else:
        return []
    found = []
    for field in fields:
        if isinstance(field, BaseMessage):
            found.append(field)
        elif isinstance(field, Sequence) and not isinstance(field, str):
            found.extend(item for item in field if isinstance(item, BaseMessage))
    return found


# Metadata keys LangGraph's server would not send, or sends twice, on every message part:
# the checkpoint namespace again, langchain-core's version, and our own bookkeeping.
DROPPED_METADATA = frozenset({"checkpoint_ns", "lc_versions", "owner"})


class Meta:
    """One model call's (or node's) metadata, serialised once for all its parts."""

    __slots__ = ("_head", "_json", "_tail", "data", "event", "ns")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.ns = namespace(data)
        self.event = ("messages|" + "|".join(self.ns) if self.ns else "messages").encode()
        self._json: bytes | None = None
        self._head = b"event: %b\ndata: [" % self.event
        self._tail: bytes | None = None

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = dumps_part(self.data)
        return self._json

    def part(self, message: BaseMessage, seq: int) -> bytes:
        """The ``messages`` part of one message: its fields serialised directly (pydantic
        keeps exactly them in ``__dict__``). A streamed chunk holds only JSON's own types
        (:func:`~agent_server.frames.dumps_plain`: 0.6 µs instead of 0.95)."""
        body = dumps_plain(message.__dict__, dumps_part)
        if self._tail is None:
            self._tail = b",%b]\nid: " % self.json
        return b"".join((self._head, body, self._tail, b"%d\n\n" % seq))


class PartTranslator:
    """Turns one run's events into LangGraph stream parts for the modes asked for."""

    def __init__(self, make: FrameFactory, options: PartOptions) -> None:
        self.make = make
        self.options = options
        self.modes = frozenset(options.modes)
        self.subgraphs = options.subgraphs
        self.tuples = "messages-tuple" in self.modes
        self.legacy = "messages" in self.modes
        self.events = "events" in self.modes
        self._messages = self.tuples or self.legacy
        # model / node run id (a string from events, the UUID itself from callbacks: no
        # conversion per token) -> metadata
        self._meta: dict[Hashable, Meta] = {}
        self._seen: set[str] = set()
        self._partial: dict[str, BaseMessageChunk] = {}

    def translate(self, event: StreamEvent, token: Encoded | None = None) -> list[Emitted]:
        """The parts of one ``astream_events`` v2 event (the oracle source); ``token``:
        the native token frame of the same event, which carries the chunk's part."""
        parts: list[Emitted] = []
        kind = event["event"]
        if self.events:
            parts.append(self._part("events", (), event))
        if kind == "on_chain_stream":
            if not event["parent_ids"]:
                chunk = event["data"].get("chunk")
                if isinstance(chunk, tuple) and len(chunk) == 3:
                    parts.extend(self.stream_chunk(*chunk))
        elif self._messages:
            run_id = event["run_id"]
            if kind == "on_chat_model_stream":
                parts.extend(self.model_chunk(run_id, event["data"].get("chunk"), token))
            elif kind == "on_chat_model_start":
                self.model_start(run_id, event.get("tags") or [], event.get("metadata"))
            elif kind == "on_chat_model_end":
                parts.extend(self.model_end(run_id, event["data"].get("output")))
            elif kind == "on_chain_start":
                data = event["data"]
                self.node_start(
                    run_id, event["name"], event.get("tags") or (), event.get("metadata"),
                    data.get("input"),
                )  # fmt: skip
            elif kind == "on_chain_end":
                parts.extend(self.node_end(run_id, event["data"].get("output")))
        return parts

    # -- the facts, whichever source reports them (see agent_server/sources.py) -------

    @property
    def wants_messages(self) -> bool:
        """Whether model and node starts and ends matter (the messages modes)."""
        return self._messages

    def model_start(
        self, run_id: Hashable, tags: Sequence[str], metadata: Mapping[str, Any] | None
    ) -> None:
        if NOSTREAM_TAG in tags:
            return
        meta = self._visible(metadata)
        if meta is not None:
            meta["tags"] = [tag for tag in tags if not tag.startswith(("seq:step", "graph:step"))]
            self._meta[run_id] = Meta(meta)

    def model_chunk(
        self, run_id: Hashable, chunk: Any, token: Encoded | None = None
    ) -> list[Emitted]:
        """A streamed chunk's parts. With ``token`` (the chunk's native frame, not yet
        in the log), its ``messages`` part rides on that frame (:attr:`Encoded.part`)
        instead of an entry of its own."""
        meta = self._meta.get(run_id)
        if meta is None or not isinstance(chunk, BaseMessage):
            return []
        return self._emit(meta, chunk, token=token)

    def model_end(self, run_id: Hashable, output: Any) -> list[Emitted]:
        meta = self._meta.pop(run_id, None)
        if meta is None or not isinstance(output, BaseMessage):
            return []
        return self._emit(meta, output, dedupe=True)

    def node_start(
        self,
        run_id: Hashable,
        name: str,
        tags: Sequence[str],
        metadata: Mapping[str, Any] | None,
        input: Any,
    ) -> None:
        metadata = metadata or {}
        if name != metadata.get("langgraph_node") or HIDDEN_TAG in tags:
            return
        meta = self._visible(metadata)
        if meta is None:
            return
        self._meta[run_id] = Meta(meta)
        for message in _messages_in(input):
            if message.id is not None:
                self._seen.add(message.id)

    def node_end(self, run_id: Hashable, output: Any) -> list[Emitted]:
        meta = self._meta.pop(run_id, None)
        if meta is None:
            return []
        parts: list[Emitted] = []
        for message in _messages_in(output):
            parts.extend(self._emit(meta, message, dedupe=True))
        return parts

    def stream_chunk(self, ns: tuple[str, ...], mode: str, payload: Any) -> list[Emitted]:
        """A chunk of the root graph's stream modes, subgraphs included."""
        if mode not in self.modes or (ns and not self.subgraphs):
            return []
        return [self._part(mode, ns, payload)]

    def _part(
        self, mode: str, ns: Sequence[str], data: Any, *, raw: bytes | None = None
    ) -> Emitted:
        self.make.seq += 1
        return encode_part(
            self.make.seq,
            f"{mode}|{'|'.join(ns)}" if ns else mode,
            dumps_part(data) if raw is None else raw,
        )

    def _visible(self, metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not metadata or (namespace(metadata) and not self.subgraphs):
            return None
        return {k: v for k, v in metadata.items() if k not in DROPPED_METADATA}

    def _emit(
        self,
        meta: Meta,
        message: BaseMessage,
        *,
        dedupe: bool = False,
        token: Encoded | None = None,
    ) -> list[Emitted]:
        if message.id is None:
            # As LangGraph does: the id is set on the node's own message object before
            # its reducer sees it, so the part and the state name it alike.
            message.id = str(uuid.uuid4())
        elif dedupe and message.id in self._seen:
            return []
        self._seen.add(message.id)
        parts: list[Emitted] = []
        if self.tuples:
            if token is not None:
                token.part = meta.part(message, token.seq)
            else:
                self.make.seq += 1
                parts.append(Encoded(self.make.seq, "part", meta.part(message, self.make.seq)))
        if self.legacy:
            parts.extend(self._legacy(meta, message))
        return parts

    def _legacy(self, meta: Meta, message: BaseMessage) -> list[Emitted]:
        ns = ()  # LangGraph's server never suffixes these with a namespace
        key = message.id or ""
        if not isinstance(message, BaseMessageChunk):
            self._partial.pop(key, None)
            return [self._part("messages/complete", ns, [message])]
        parts: list[Emitted] = []
        so_far = self._partial.get(key)
        if so_far is None:
            parts.append(self._part("messages/metadata", ns, {key: {"metadata": meta.data}}))
            so_far = message
        else:
            so_far = so_far + message
        self._partial[key] = so_far
        parts.append(self._part("messages/partial", ns, [message_chunk_to_message(so_far)]))
        return parts
