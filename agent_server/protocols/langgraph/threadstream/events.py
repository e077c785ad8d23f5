"""Channels and events: one run's log, read as the thread-centric protocol's events.

A :class:`RunTranslator` reads a run's log entries in order (native frames, plus the
LangGraph parts of the runs this protocol starts) and produces the protocol's events,
each encoded once as the JSON object that both transports send. It is deterministic:
the same log always gives the same events with the same ``seq``, on any worker and in
any connection, which is what makes resuming exact (:mod:`.history` gives each run its
``base``).

Decisions (read before changing):

- Seq. The events of log entry ``s`` of a run are numbered ``base + K*(s-1) + 1`` and
  on, at most :data:`K` (64) of them: an entry gives one to five events, but a terminal
  frame closes every open subgraph (three events each), so past 21 subgraphs open at
  once the extra closing events are dropped, with a warning. Seqs have gaps, as every
  filtered subscription sees anyway, and need no state to be found again: a client
  resuming after seq ``n`` gets exactly the events numbered above ``n``. ``event_id``
  is the same number as a string, so every cursor a client sends back (``since``,
  ``since_event_id``, ``Last-Event-ID``) means the same thing. (Not a per-connection
  counter, as LangGraph's server has: a client keeps its cursor across connections,
  workers and runs.)
- Namespaces are our frames' (enclosing subgraph node names, outermost first, without
  LangGraph's task ids), and the parts' namespaces are cut to the same form, so every
  channel names a subgraph alike and the SDKs' prefix matching works across channels.
- ``messages``: a model's message starts on its first token (``message-start``, an empty
  text block, then one ``content-block-delta`` per token) and finishes when the next
  message of its namespace starts, when a tool of its namespace starts, when its node's
  ``updates`` arrive, or when the run ends (``content-block-finish`` with the whole text,
  then ``message-finish``; a failed run ends it with ``error``). Where the run has
  ``updates`` parts (the runs of this protocol), the node's returned AI message also
  gives the message its tool calls (a ``tool_call`` block each, after the text) and its
  usage, and an AI message that only called tools (no token was streamed) is sent whole.
- ``tools`` comes from our tool frames, for every graph: ``tool-started`` / ``-finished``
  / ``-error`` keyed by the model's ``tool_call_id``. A ``custom`` frame (a stream
  writer) written while exactly one tool call is in flight, or naming one of several by
  ``data["tool"]``, is also that call's ``tool-output-delta`` (its text, or its JSON).
  (A stream writer's chunks reach the log after the callbacks of the same moment, so a
  tool's last writes can follow its end: they are then ``custom`` events only.)
- ``lifecycle``: the root is ``running`` from the run's first frame, then ``completed``,
  ``interrupted`` (the run stopped on an interrupt) or ``failed`` (with the error's
  message; a cancelled or timed-out run too). A subgraph namespace is ``started`` when
  any event first names it and ``completed`` when its node's ``updates`` arrive in the
  parent, or when the run ends.
- ``input.requested`` carries ``interrupt_id`` and ``payload`` (the interrupt's value),
  as the protocol defines them.
- ``values`` / ``updates`` / ``tasks`` / ``checkpoints`` come from the LangGraph parts
  in the log (runs started through this protocol ask for them): ``values`` is the state
  as the graph streamed it, without ``__interrupt__``; ``updates`` is ``{node, values}``;
  ``checkpoints`` is ``{id, parent_id, step, source}``; ``tasks`` is passed through.
- An event's ``timestamp`` is its frame's ``ts`` (a part has none: the last frame's),
  so a replayed event is byte for byte the one sent live.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import orjson
from langchain_protocol import (
    Checkpoint,
    ContentBlockFinishData,
    ContentBlockStartData,
    CustomData,
    InputRequestedData,
    LifecycleData,
    MessageErrorData,
    MessageFinishData,
    MessageMetadata,
    MessageStartData,
    ToolCall,
    ToolCallChunk,
    ToolErrorData,
    ToolFinishedData,
    ToolOutputDeltaData,
    ToolStartedData,
    UpdatesData,
    UsageInfo,
)

from agent_server.runs import LogEntry

logger = logging.getLogger("agent_server.protocols.langgraph.threadstream")

K = 64  # seq slots per log entry (see the module docstring)

Namespace = tuple[str, ...]
ROOT: Namespace = ()

CHANNELS = frozenset(
    {"values", "updates", "messages", "tools", "lifecycle", "input", "checkpoints",
     "tasks", "custom"}
)  # fmt: skip


def supported_channel(channel: str) -> bool:
    return channel in CHANNELS or (channel.startswith("custom:") and len(channel) > 7)


class EventFilter:
    """What one subscription wants: channels, namespace prefixes and a depth below
    them, matched as the SDKs match them (a prefix segment without ``:`` also matches a
    ``name:<id>`` segment)."""

    __slots__ = ("_namespaces", "channels", "depth", "key", "namespaces")

    def __init__(
        self,
        channels: Iterable[str],
        namespaces: Sequence[Sequence[str]] | None = None,
        depth: int | None = None,
    ) -> None:
        self.channels = frozenset(channels)
        self.namespaces = [tuple(ns) for ns in namespaces] if namespaces else None
        self.depth = depth
        # equal for filters that want the same events (they share a translation)
        self.key = (self.channels, tuple(self.namespaces or ()), depth)
        self._namespaces: dict[Namespace, bool] = {}

    def wants(self, channel: str, namespace: Namespace, name: str | None = None) -> bool:
        channels = self.channels
        if channel not in channels and (
            channel != "custom" or name is None or f"custom:{name}" not in channels
        ):
            return False
        found = self._namespaces.get(namespace)
        if found is None:
            found = self._namespaces[namespace] = self._match(namespace)
        return found

    def _match(self, namespace: Namespace) -> bool:
        if self.namespaces is None:
            return True
        for prefix in self.namespaces:
            if len(prefix) > len(namespace):
                continue
            if all(
                seg == got or (":" not in seg and got.partition(":")[0] == seg)
                for seg, got in zip(prefix, namespace, strict=False)
            ) and (self.depth is None or len(namespace) - len(prefix) <= self.depth):
                return True
        return False


NOTHING = EventFilter(())  # a translator that only tracks state (agent.getTree)

_ENVELOPE = (
    b'{"type":"event","event_id":"%d","seq":%d,"method":"%b",'
    b'"params":{"namespace":%b,"timestamp":%d,"data":%b}}'
)
_BLOCK_START = b'{"event":"content-block-start","index":0,"content":{"type":"text","text":""}}'
_DELTA = b'{"event":"content-block-delta","index":0,"delta":{"type":"text-delta","text":%b}}'
_MESSAGE_FINISH = b'{"event":"message-finish"}'


_NAMESPACES: dict[Namespace, bytes] = {ROOT: b"[]"}


def namespace_json(namespace: Namespace) -> bytes:
    found = _NAMESPACES.get(namespace)
    if found is None:
        found = orjson.dumps(list(namespace))
        if len(_NAMESPACES) < 10_000:
            _NAMESPACES[namespace] = found
    return found


def part_namespace(segments: str) -> Namespace:
    """A part's ``a:<id>|b:<id>`` namespace in our frames' form (node names)."""
    return tuple(segment.partition(":")[0] for segment in segments.split("|")) if segments else ()


class _Message:
    __slots__ = ("id", "node", "text")

    def __init__(self, id: str, node: str | None) -> None:
        self.id = id
        self.node = node
        self.text: list[str] = []


def _ai_messages(values: Any) -> list[dict[str, Any]]:
    """The AI messages (as LangChain dicts) in a node's update or a state."""
    found = values.get("messages") if isinstance(values, dict) else None
    if isinstance(found, dict):
        found = [found]
    if not isinstance(found, list):
        return []
    return [m for m in found if isinstance(m, dict) and m.get("type") in ("ai", "AIMessageChunk")]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class RunTranslator:
    """One run's log entries, in order, as encoded protocol events (see the module
    docstring). Only events with ``seq > after`` that ``wanted`` matches are encoded;
    every entry still updates the state (open messages, namespaces, tool calls)."""

    def __init__(self, base: int, after: int = 0, wanted: EventFilter = NOTHING) -> None:
        self.base = base
        self.after = after
        self.wanted = wanted
        self.graph = "root"
        self.status = "running"  # the root's lifecycle, for agent.getTree
        self.ts = 0
        self.namespaces: dict[Namespace, str] = {}  # subgraph -> its lifecycle
        self._messages: dict[Namespace, _Message] = {}
        self._tools: dict[str, tuple[Namespace, str]] = {}  # in flight: id -> (ns, name)
        self._unnamed: dict[str, deque[str]] = {}  # calls without an id, by tool name
        self._interrupted = False
        self._known: set[str] = set()  # message ids this run streamed or its state held
        self._out: list[bytes] = []
        self.seqs: list[int] = []  # the seq of each event the last feed() returned
        self._next = 0
        self._limit = 0
        self._warned = False
        self._handlers: dict[str, Callable[[LogEntry], None]] = {
            "token": self._token,
            "run_start": self._run_start,
            "tool_start": self._tool_start,
            "tool_end": self._tool_end,
            "tool_error": self._tool_error,
            "custom": self._custom,
            "interrupt": self._interrupt,
            "part": self._part,
            "done": self._done,
            "error": self._error,
        }

    def feed(self, entries: Iterable[LogEntry]) -> list[bytes]:
        """The encoded events of ``entries`` that the filter wants."""
        out: list[bytes] = []
        self._out = out
        self.seqs = []
        handlers = self._handlers
        for entry in entries:
            self._next = self.base + K * (entry.seq - 1) + 1
            self._limit = self._next + K
            handler = handlers.get(entry.type)
            if handler is not None:
                handler(entry)
        return out

    # -- emitting -------------------------------------------------------------------

    def _emit(
        self, method: bytes, channel: str, ns: Namespace, data: Any, name: str | None = None
    ) -> None:
        seq = self._next
        if seq >= self._limit:
            if not self._warned:
                self._warned = True
                logger.warning("a log entry made more than %d events; dropped the rest", K)
            return
        self._next = seq + 1
        if seq <= self.after or not self.wanted.wants(channel, ns, name):
            return
        payload = data if isinstance(data, bytes) else orjson.dumps(data)
        self._out.append(_ENVELOPE % (seq, seq, method, namespace_json(ns), self.ts, payload))
        self.seqs.append(seq)

    def _lifecycle(self, ns: Namespace, data: LifecycleData) -> None:
        self._emit(b"lifecycle", "lifecycle", ns, data)

    def _enter(self, ns: Namespace) -> None:
        """Announce ``ns`` and its enclosing subgraphs the first time they appear."""
        for length in range(1, len(ns) + 1):
            prefix = ns[:length]
            if prefix not in self.namespaces:
                self.namespaces[prefix] = "started"
                self._lifecycle(prefix, {"event": "started", "graph_name": prefix[-1]})

    def _close(
        self, ns: Namespace, error: str | None = None, whole: dict[str, Any] | None = None
    ) -> None:
        """Finish the open message of ``ns``; ``whole``: the AI message its node returned
        (its tool calls and usage)."""
        message = self._messages.pop(ns, None)
        if message is None:
            return
        if error is not None:
            failed: MessageErrorData = {"event": "error", "message": error}
            self._emit(b"messages", "messages", ns, failed)
            return
        text = "".join(message.text)
        finish: ContentBlockFinishData = {
            "event": "content-block-finish",
            "index": 0,
            "content": {"type": "text", "text": text},
        }
        self._emit(b"messages", "messages", ns, finish)
        self._finish_message(ns, whole, 1)

    def _finish_message(self, ns: Namespace, whole: dict[str, Any] | None, index: int) -> None:
        """The tool call blocks (from ``index``) and ``message-finish`` of a message."""
        if whole is None:
            self._emit(b"messages", "messages", ns, _MESSAGE_FINISH)
            return
        for call in whole.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            call_id, name = call.get("id"), str(call.get("name"))
            found = call.get("args")
            args: dict[str, Any] = found if isinstance(found, dict) else {}
            chunk: ToolCallChunk = {
                "type": "tool_call_chunk", "id": call_id, "name": name,
                "args": orjson.dumps(args).decode(),
            }  # fmt: skip
            started: ContentBlockStartData = {
                "event": "content-block-start", "index": index, "content": chunk
            }  # fmt: skip
            self._emit(b"messages", "messages", ns, started)
            done: ToolCall = {"type": "tool_call", "id": call_id, "name": name, "args": args}
            finished: ContentBlockFinishData = {
                "event": "content-block-finish", "index": index, "content": done
            }  # fmt: skip
            self._emit(b"messages", "messages", ns, finished)
            index += 1
        usage = whole.get("usage_metadata")
        if isinstance(usage, dict):
            finish: MessageFinishData = {"event": "message-finish", "usage": cast(UsageInfo, usage)}
            self._emit(b"messages", "messages", ns, finish)
        else:
            self._emit(b"messages", "messages", ns, _MESSAGE_FINISH)

    def _whole_message(self, ns: Namespace, node: str, message: dict[str, Any]) -> None:
        """An AI message its node returned unstreamed, with tool calls and no text."""
        start: MessageStartData = {"event": "message-start", "role": "ai", "id": message["id"]}
        start["metadata"] = cast(MessageMetadata, {"langgraph_node": node})
        self._emit(b"messages", "messages", ns, start)
        self._finish_message(ns, message, 0)

    def _finish(self, ns: Namespace, status: str) -> None:
        """End ``ns`` and every open subgraph below it, deepest first."""
        inside = [
            n
            for n, state in self.namespaces.items()
            if state == "started" and n[: len(ns)] == ns and len(n) > len(ns)
        ]
        if ns and self.namespaces.get(ns) == "started":
            inside.append(ns)
        for found in sorted(inside, key=len, reverse=True):
            self._close(found)
            self.namespaces[found] = status
            self._lifecycle(found, {"event": status, "graph_name": found[-1]})  # type: ignore[typeddict-item]

    # -- frames ---------------------------------------------------------------------

    def _run_start(self, entry: LogEntry) -> None:
        frame = orjson.loads(entry.data)
        self.ts = frame["ts"]
        self.graph = frame.get("graph") or "root"
        self._lifecycle(ROOT, {"event": "running", "graph_name": self.graph})

    def _token(self, entry: LogEntry) -> None:
        frame = orjson.loads(entry.data)
        self.ts = frame["ts"]
        ns = tuple(frame["namespace"]) if frame["namespace"] else ROOT
        if ns and ns not in self.namespaces:
            self._enter(ns)
        message_id = frame["message_id"] or f"msg-{self.base}-{entry.seq}"
        message = self._messages.get(ns)
        if message is not None and message.id != message_id:
            self._close(ns)
            message = None
        if message is None:
            node = frame["node"]
            message = self._messages[ns] = _Message(message_id, node)
            self._known.add(message_id)
            start: MessageStartData = {"event": "message-start", "role": "ai", "id": message_id}
            if node:  # LangGraph's key (the SDKs name a message's node by it)
                start["metadata"] = cast(MessageMetadata, {"langgraph_node": node})
            self._emit(b"messages", "messages", ns, start)
            self._emit(b"messages", "messages", ns, _BLOCK_START)
        text = frame["content"]
        message.text.append(text)
        self._emit(b"messages", "messages", ns, _DELTA % orjson.dumps(text))

    def _tool_start(self, entry: LogEntry) -> None:
        frame = orjson.loads(entry.data)
        self.ts = frame["ts"]
        ns = tuple(frame["namespace"]) if frame["namespace"] else ROOT
        if ns and ns not in self.namespaces:
            self._enter(ns)
        self._close(ns)  # its model finished before its tools run
        name = frame["name"]
        call_id = frame["tool_call_id"]
        if not call_id:  # a tool invoked directly has no id: ours, matched by name
            call_id = f"{name}-{self.base + entry.seq}"
            self._unnamed.setdefault(name, deque()).append(call_id)
        self._tools[call_id] = (ns, name)
        started: ToolStartedData = {
            "event": "tool-started",
            "tool_call_id": call_id,
            "tool_name": name,
            "input": frame["input"],
        }
        self._emit(b"tools", "tools", ns, started)

    def _ended_call(self, frame: dict[str, Any]) -> tuple[str, Namespace]:
        call_id = frame["tool_call_id"]
        if not call_id:
            waiting = self._unnamed.get(frame["name"])
            call_id = waiting.popleft() if waiting else f"{frame['name']}-unknown"
        ns, _ = self._tools.pop(call_id, (ROOT, frame["name"]))
        return call_id, ns

    def _tool_end(self, entry: LogEntry) -> None:
        frame = orjson.loads(entry.data)
        self.ts = frame["ts"]
        call_id, ns = self._ended_call(frame)
        finished: ToolFinishedData = {
            "event": "tool-finished",
            "tool_call_id": call_id,
            "output": frame["output"],
        }
        self._emit(b"tools", "tools", ns, finished)

    def _tool_error(self, entry: LogEntry) -> None:
        frame = orjson.loads(entry.data)
        self.ts = frame["ts"]
        call_id, ns = self._ended_call(frame)
        failed: ToolErrorData = {
            "event": "tool-error",
            "tool_call_id": call_id,
            "message": frame["error"],
        }
        self._emit(b"tools", "tools", ns, failed)

    def _custom(self, entry: LogEntry) -> None:
        frame = orjson.loads(entry.data)
        self.ts = frame["ts"]
        name, value = frame["name"], frame["data"]
        custom: CustomData = {"payload": value}
        if name != "custom":  # a stream writer's bare payload is named "custom": no name
            custom["name"] = name
        self._emit(b"custom", "custom", ROOT, custom, name if name != "custom" else None)
        calls = list(self._tools.items())
        if len(calls) > 1 and isinstance(value, dict) and isinstance(value.get("tool"), str):
            calls = [call for call in calls if call[1][1] == value["tool"]]
        if len(calls) == 1:
            call_id, (ns, _) = calls[0]
            delta: ToolOutputDeltaData = {
                "event": "tool-output-delta",
                "tool_call_id": call_id,
                "delta": _text(value),
            }
            self._emit(b"tools", "tools", ns, delta)

    def _interrupt(self, entry: LogEntry) -> None:
        frame = orjson.loads(entry.data)
        self.ts = frame["ts"]
        self._interrupted = True
        requested: InputRequestedData = {
            "interrupt_id": frame.get("interrupt_id") or f"interrupt-{self.base + entry.seq}",
            "payload": frame.get("value"),
        }
        self._emit(b"input.requested", "input", ROOT, requested)

    def _done(self, entry: LogEntry) -> None:
        self.ts = orjson.loads(entry.data)["ts"]
        for ns in sorted(self._messages, key=len, reverse=True):
            self._close(ns)
        status = "interrupted" if self._interrupted else "completed"
        self._finish(ROOT, status)
        self.status = status
        self._lifecycle(ROOT, {"event": status, "graph_name": self.graph})  # type: ignore[typeddict-item]

    def _error(self, entry: LogEntry) -> None:
        frame = orjson.loads(entry.data)
        self.ts = frame["ts"]
        message = frame["message"]
        for ns in sorted(self._messages, key=len, reverse=True):
            self._close(ns, message)
        self._finish(ROOT, "failed")
        self.status = "failed"
        self._lifecycle(ROOT, {"event": "failed", "graph_name": self.graph, "error": message})

    # -- LangGraph parts ---------------------------------------------------------------

    def _part(self, entry: LogEntry) -> None:
        data = entry.data  # b"event: <mode>|<ns>\ndata: <json>\nid: <seq>\n\n"
        head = data.index(b"\n")
        mode, _, segments = data[7:head].decode().partition("|")
        body = data[head + 7 : data.rindex(b"\nid: ")]
        ns = part_namespace(segments)
        if mode == "values":
            if ns and ns not in self.namespaces:
                self._enter(ns)
            if b'"__interrupt__"' in body:
                state = orjson.loads(body)
                if isinstance(state, dict):
                    state.pop("__interrupt__", None)
                body = orjson.dumps(state)
            if b'"tool_calls":[{' in body:  # such messages, once in the state, are not new
                for message in _ai_messages(orjson.loads(body)):
                    if isinstance(message.get("id"), str):
                        self._known.add(message["id"])
            self._emit(b"values", "values", ns, body)
        elif mode == "updates":
            self._updates(ns, orjson.loads(body))
        elif mode == "tasks":
            if ns and ns not in self.namespaces:
                self._enter(ns)
            self._emit(b"tasks", "tasks", ns, body)
        elif mode == "checkpoints":
            self._checkpoint(ns, orjson.loads(body))

    def _updates(self, ns: Namespace, update: Any) -> None:
        if not isinstance(update, dict):
            return
        if ns and ns not in self.namespaces:
            self._enter(ns)
        for node, values in update.items():
            if node == "__interrupt__":
                continue  # the interrupt frames say it (input.requested)
            returned = {m["id"]: m for m in _ai_messages(values) if isinstance(m.get("id"), str)}
            message = self._messages.get(ns)
            if message is not None and message.node == node:
                self._close(ns, whole=returned.get(message.id))
            for message_id, whole in returned.items():
                if message_id not in self._known and whole.get("tool_calls"):
                    self._known.add(message_id)
                    self._whole_message(ns, node, whole)
            data: UpdatesData = {"node": node, "values": values}
            self._emit(b"updates", "updates", ns, data)
            child = (*ns, node)
            if self.namespaces.get(child) == "started":
                self._finish(child, "completed")

    def _checkpoint(self, ns: Namespace, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        config = payload.get("config") or {}
        parent = payload.get("parent_config") or {}
        metadata = payload.get("metadata") or {}
        checkpoint_id = (config.get("configurable") or {}).get("checkpoint_id")
        if not isinstance(checkpoint_id, str):
            return
        found: Checkpoint = {
            "id": checkpoint_id,
            "step": metadata.get("step", -1),
            "source": metadata.get("source", "loop"),
        }
        parent_id = (parent.get("configurable") or {}).get("checkpoint_id")
        if isinstance(parent_id, str):
            found["parent_id"] = parent_id
        self._emit(b"checkpoints", "checkpoints", ns, found)
