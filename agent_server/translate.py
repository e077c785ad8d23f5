"""Translate LangGraph ``astream_events(version="v2")`` events into protocol frames.

This module is the single place where LangGraph's event shapes are known. The frames it
produces are the contract of every stream; any faster source must produce the same.

Decisions:

- ``on_tool_start`` events carry no ``tool_call_id``; LangChain hands it only to callback
  handlers. :class:`ToolCallIds` is a tiny inline handler that records it by run id, so
  parallel calls of one tool are told apart. ``on_tool_end`` / ``on_tool_error`` carry it
  themselves and win when present.
- Stream-writer output arrives as the root graph's ``on_chain_stream`` chunks
  ``(namespace, "custom", payload)`` because the driver streams with
  ``stream_mode=STREAM_MODE`` and ``subgraphs=True``. Root ``values`` chunks are kept
  (not sent) as the run's result. A payload that is a dict
  with a string ``name`` and a ``data`` key becomes ``custom(name, data)``; any other
  payload becomes ``custom(name="custom", data=payload)``.
- Interrupts are read from the root ``updates`` chunk ``__interrupt__`` (subgraph
  interrupts surface there too), which avoids a state read after the stream ends.
- An AI message that a node returns without streaming it (no model call, or a model that
  does not stream) becomes one ``token`` with its whole text, as LangGraph's ``messages``
  mode does. Messages already in the state (from earlier turns, from the input) or
  already streamed are never sent again: ids are tracked from the root ``values``.
- ``namespace`` lists the enclosing subgraph nodes, outermost first (``[]`` at the root),
  without LangGraph's task ids, which mean nothing to a client.
- Chat models tagged ``nostream`` are not streamed token by token; their finished
  message arrives whole (see below), as in LangGraph's own messages mode.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables.schema import StreamEvent

from agent_server.frames import (
    BaseFrame,
    Custom,
    Emitted,
    Interrupt,
    LazyToken,
    Token,
    ToolEnd,
    ToolError,
    ToolStart,
    Usage,
    encode_token,
    now_ms,
)

NOSTREAM_TAG = "nostream"
STREAM_MODE = ["values", "updates", "custom"]


class FrameFactory:
    """Stamps frames of one run with ``run_id``, the next ``seq`` and ``ts``."""

    __slots__ = ("run_id", "seq")

    def __init__(self, run_id: str, start_seq: int = 0) -> None:
        self.run_id = run_id
        self.seq = start_seq

    def __call__(self, cls: type[BaseFrame], **fields: Any) -> BaseFrame:
        self.seq += 1
        return cls(run_id=self.run_id, seq=self.seq, ts=now_ms(), **fields)


class ToolCallIds(BaseCallbackHandler):
    """Records ``tool_call_id`` per tool run id; runs inline, before the event is read."""

    run_inline = True
    # Only tool starts matter: skip the per-token and per-chain callbacks entirely
    # (tool callbacks are gated by ignore_agent, which must stay False).
    ignore_llm = True
    ignore_chat_model = True
    ignore_chain = True
    ignore_retriever = True
    ignore_custom_event = True
    ignore_retry = True

    def __init__(self) -> None:
        self.by_run: dict[str, str] = {}

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        tool_call_id = kwargs.get("tool_call_id")
        if tool_call_id:
            self.by_run[str(run_id)] = tool_call_id


def namespace_of(metadata: Mapping[str, Any]) -> list[str]:
    """Enclosing subgraph node names from ``langgraph_checkpoint_ns`` (``a:id|b:id``)."""
    ns = metadata.get("langgraph_checkpoint_ns")
    if not ns or "|" not in ns:
        return []
    return [part.partition(":")[0] for part in ns.split("|")[:-1]]


def text_of(content: Any) -> str:
    """The text of a message chunk's content (a string or a list of content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return ""


def tool_output(output: Any) -> Any:
    """What a client wants from a tool's result: a ToolMessage's content (and artifact)."""
    if isinstance(output, ToolMessage):
        if output.artifact is not None:
            return {"content": output.content, "artifact": output.artifact}
        return output.content
    return output


def error_text(error: Any) -> str:
    if isinstance(error, BaseException):
        return str(error) or type(error).__name__
    return str(error)


class EventTranslator:
    """Turns one run's events into frames; also gathers usage and interrupts."""

    def __init__(
        self, make: FrameFactory, *, resumable: bool = True, lazy_tokens: bool = False
    ) -> None:
        self.make = make
        self.resumable = resumable
        # Token frames encoded on first read (frames.LazyToken): a LangGraph API run's
        # clients read the parts that ride on them instead.
        self._token = LazyToken if lazy_tokens else encode_token
        self.tool_call_ids = ToolCallIds()
        self.usage = Usage()
        self.interrupted = False
        self.values: Any = None  # the root graph's latest state, for results
        self._seen_messages: set[str] = set()  # ids already streamed or already in state
        self._last_message_id: str | None = None
        self._tool_started: dict[str, float] = {}
        self._handlers: dict[str, Callable[[StreamEvent], list[Emitted]]] = {
            "on_chat_model_stream": self._on_chat_model_stream,
            "on_chat_model_end": self._on_chat_model_end,
            "on_tool_start": self._on_tool_start,
            "on_tool_end": self._on_tool_end,
            "on_tool_error": self._on_tool_error,
            "on_custom_event": self._on_custom_event,
            "on_chain_stream": self._on_chain_stream,
        }

    def translate(self, event: StreamEvent) -> list[Emitted]:
        """The frames of one ``astream_events`` v2 event (the oracle source)."""
        handler = self._handlers.get(event["event"])
        return handler(event) if handler is not None else []

    # -- astream_events: each event's facts, handed to the methods below ------------

    def _on_chat_model_stream(self, event: StreamEvent) -> list[Emitted]:
        chunk = event["data"].get("chunk")
        if chunk is None:
            return []
        return self.token(chunk, event.get("tags") or (), event["metadata"])

    def _on_chat_model_end(self, event: StreamEvent) -> list[Emitted]:
        return self.model_end(event["data"].get("output"))

    def _on_tool_start(self, event: StreamEvent) -> list[Emitted]:
        run_id = event["run_id"]
        tool_call_id = self.tool_call_ids.by_run.get(run_id)
        return self.tool_start(
            run_id, tool_call_id, event["name"], event["data"].get("input"), event["metadata"]
        )

    def _on_tool_end(self, event: StreamEvent) -> list[Emitted]:
        return self.tool_end(event["run_id"], event["name"], event["data"].get("output"))

    def _on_tool_error(self, event: StreamEvent) -> list[Emitted]:
        data = event["data"]
        return self.tool_error(
            event["run_id"], event["name"], data.get("error"), data.get("tool_call_id")
        )

    def _on_custom_event(self, event: StreamEvent) -> list[Emitted]:
        return self.custom_event(event["name"], event["data"])

    def _on_chain_stream(self, event: StreamEvent) -> list[Emitted]:
        if event["parent_ids"]:
            return []  # only the root graph's stream carries our stream modes
        chunk = event["data"].get("chunk")
        if not isinstance(chunk, tuple) or len(chunk) != 3:
            return []
        ns, mode, payload = chunk
        return self.stream_chunk(ns, mode, payload)

    # -- the facts, whichever source reports them (see agent_server/sources.py) -------

    def token(self, chunk: Any, tags: Sequence[str], metadata: Mapping[str, Any]) -> list[Emitted]:
        """A chat model's streamed chunk (an ``AIMessageChunk``)."""
        if NOSTREAM_TAG in tags:
            return []
        return self.model_token(chunk, metadata.get("langgraph_node"), namespace_of(metadata))

    def model_token(self, chunk: Any, node: str | None, namespace: list[str]) -> list[Emitted]:
        """:meth:`token` for a model whose tags and metadata were read once, at its start
        (the callbacks source): the hot path, one call per streamed token."""
        content = chunk.content
        text = content if isinstance(content, str) else text_of(content)
        if not text:
            return []
        message_id = chunk.id
        if message_id != self._last_message_id:
            self._last_message_id = message_id
            if message_id:
                self._seen_messages.add(message_id)
        make = self.make
        make.seq += 1
        return [self._token(make.run_id, make.seq, now_ms(), text, message_id, node, namespace)]

    def model_end(self, output: Any) -> list[Emitted]:
        """A chat model's whole answer: its usage counts."""
        usage = getattr(output, "usage_metadata", None) if isinstance(output, BaseMessage) else None
        if usage:
            self.usage.input_tokens += usage.get("input_tokens", 0)
            self.usage.output_tokens += usage.get("output_tokens", 0)
            self.usage.total_tokens += usage.get("total_tokens", 0)
        return []

    def tool_start(
        self,
        run_id: str,
        tool_call_id: str | None,
        name: str,
        input: Any,
        metadata: Mapping[str, Any],
    ) -> list[Emitted]:
        self._tool_started[run_id] = time.perf_counter()
        return [
            self.make(
                ToolStart,
                tool_call_id=tool_call_id,
                name=name,
                input=input,
                node=metadata.get("langgraph_node"),
                namespace=namespace_of(metadata),
            )
        ]

    def _finish_tool(self, run_id: str) -> tuple[str | None, float | None]:
        started = self._tool_started.pop(run_id, None)
        duration = None if started is None else round((time.perf_counter() - started) * 1e3, 3)
        return self.tool_call_ids.by_run.pop(run_id, None), duration

    def tool_end(self, run_id: str, name: str, output: Any) -> list[Emitted]:
        tool_call_id, duration = self._finish_tool(run_id)
        if isinstance(output, ToolMessage):
            tool_call_id = output.tool_call_id or tool_call_id
            if output.status == "error":
                # A tool that reports failure through its message rather than raising.
                return [
                    self.make(
                        ToolError,
                        tool_call_id=tool_call_id,
                        name=name,
                        error=text_of(output.content) or "tool failed",
                        duration_ms=duration,
                    )
                ]
        return [
            self.make(
                ToolEnd,
                tool_call_id=tool_call_id,
                name=name,
                output=tool_output(output),
                duration_ms=duration,
            )
        ]

    def tool_error(
        self, run_id: str, name: str, error: Any, tool_call_id: str | None
    ) -> list[Emitted]:
        known_id, duration = self._finish_tool(run_id)
        return [
            self.make(
                ToolError,
                tool_call_id=tool_call_id or known_id,
                name=name,
                error=error_text(error),
                duration_ms=duration,
            )
        ]

    def custom_event(self, name: str, data: Any) -> list[Emitted]:
        return [self.make(Custom, name=name, data=data)]

    def stream_chunk(self, ns: tuple[str, ...], mode: str, payload: Any) -> list[Emitted]:
        """A chunk of the root graph's stream modes (``STREAM_MODE``), subgraphs included."""
        if mode == "custom":
            if (
                isinstance(payload, Mapping)
                and isinstance(payload.get("name"), str)
                and "data" in payload
            ):
                return [self.make(Custom, name=payload["name"], data=payload["data"])]
            return [self.make(Custom, name="custom", data=payload)]
        if mode == "values" and not ns:
            self.values = payload
            if isinstance(payload, Mapping):
                for message in _messages_in(payload):
                    if message.id:
                        self._seen_messages.add(message.id)
            return []
        if mode == "updates" and isinstance(payload, Mapping):
            frames = self._unstreamed_messages(ns, payload)
            if not ns:
                frames.extend(self._interrupts(payload))
            return frames
        return []

    def _unstreamed_messages(
        self, ns: tuple[str, ...], payload: Mapping[str, Any]
    ) -> list[Emitted]:
        """AI messages a node returned without streaming them (no model call, or a model
        that does not stream) still reach clients: as one token with the whole text."""
        frames: list[Emitted] = []
        namespace = [part.partition(":")[0] for part in ns]
        for node, update in payload.items():
            if node.startswith("__") or not isinstance(update, Mapping):
                continue
            for message in _messages_in(update):
                if not isinstance(message, AIMessage) or message.id in self._seen_messages:
                    continue
                if message.id is None:
                    # As LangGraph's messages mode does, before the state's reducer would:
                    # the frame and the state then name the message alike.
                    message.id = str(uuid.uuid4())
                self._seen_messages.add(message.id)
                text = text_of(message.content)
                if text:
                    frames.append(
                        self.make(
                            Token,
                            content=text,
                            message_id=message.id,
                            node=node,
                            namespace=namespace,
                        )
                    )
        return frames

    def _interrupts(self, payload: Mapping[str, Any]) -> list[Emitted]:
        interrupts = payload.get("__interrupt__")
        if not interrupts:
            return []
        self.interrupted = True
        return [
            self.make(
                Interrupt,
                value=getattr(item, "value", item),
                resumable=self.resumable,
                interrupt_id=getattr(item, "id", None),
            )
            for item in interrupts
        ]


def _messages_in(update: Mapping[str, Any]) -> list[BaseMessage]:
    """Messages among a state update's values (a message, or a list holding some)."""
    found: list[BaseMessage] = []
    for value in update.values():
        if isinstance(value, BaseMessage):
            found.append(value)
        elif isinstance(value, list):
            found.extend(item for item in value if isinstance(item, BaseMessage))
    return found
