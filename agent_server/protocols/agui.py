"""AG-UI (the Agent-User Interaction protocol): our frames as AG-UI events.

``POST /ag-ui/{graph}`` takes a ``RunAgentInput`` and streams AG-UI events as SSE. It is a
pure translation of the run's frames (built on the ``ag-ui-protocol`` package's models),
so runs started here have the same limits, cancellation and logs as any other.

Decisions:

- Ordering as the official client enforces it: ``RUN_STARTED`` first; a text message,
  a tool call and a step are closed before anything that could not happen inside them
  and before ``RUN_FINISHED``; nothing after ``RUN_FINISHED`` or ``RUN_ERROR``.
- Steps are graph nodes: a step opens when frames start coming from a node and closes
  when they come from another (or the run ends).
- A tool call is announced whole (``START``, one ``ARGS`` with the JSON arguments,
  ``END``) when the tool starts, then ``TOOL_CALL_RESULT`` when it ends. A failed tool's
  result is its error text: AG-UI has no tool-error event.
- An interrupt ends the run with ``RUN_FINISHED`` whose outcome is
  ``{"type": "interrupt", "interrupts": [...]}``; a cancelled run with outcome
  ``cancelled``; any other error with ``RUN_ERROR``.
- Conversation: the request carries the whole message history, the thread already holds
  it. Only messages whose ids the thread does not know are sent to the graph, with their
  AG-UI ids, so the next request recognises them. ``resume`` becomes
  ``Command(resume=payload)`` (one payload per interrupt id when there are several).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from ag_ui.core import (
    AssistantMessage,
    CustomEvent,
    Event,
    FunctionCall,
    Interrupt,
    MessagesSnapshotEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StateSnapshotEvent,
    StepFinishedEvent,
    StepStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCall,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    UserMessage,
)
from ag_ui.core import (
    ToolMessage as AGUIToolMessage,
)
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.types import Command
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent_server.auth import user_id
from agent_server.cursors import BadCursor, parse_id
from agent_server.frames import (
    BaseFrame,
    Custom,
    Done,
    Error,
    Token,
    ToolEnd,
    ToolError,
    ToolStart,
    dumps,
)
from agent_server.frames import (
    Interrupt as InterruptFrame,
)
from agent_server.runs import Run
from agent_server.schemas import RequestError, read_model
from agent_server.serving import app_state, stream_headers
from agent_server.sse import SSEResponse
from agent_server.translate import text_of


def encode_event(event: Event) -> bytes:
    """One SSE event, lines ending in a bare ``\\n`` (the client rejects ``\\r\\n``)."""
    data = event.model_dump_json(by_alias=True, exclude_none=True)
    return b"data: " + data.encode() + b"\n\n"


def graph_input(body: RunAgentInput, known_ids: set[str]) -> Any:
    """What the graph is given: new user messages, or the answer to its interrupts."""
    if body.resume:
        answers = {entry.interrupt_id: entry.payload for entry in body.resume}
        value = next(iter(answers.values())) if len(answers) == 1 else answers
        return Command(resume=value)
    new = []
    for message in body.messages:
        if message.id in known_ids:
            continue
        if isinstance(message, UserMessage):
            content = message.content if isinstance(message.content, str) else str(message.content)
            new.append(HumanMessage(content=content, id=message.id))
    return {"messages": new}


def to_agui_messages(messages: list[BaseMessage]) -> list[Any]:
    """The thread's messages in AG-UI's shape, for ``MESSAGES_SNAPSHOT``."""
    converted: list[Any] = []
    for message in messages:
        identifier = message.id or str(uuid.uuid4())
        if isinstance(message, HumanMessage):
            converted.append(UserMessage(id=identifier, content=text_of(message.content)))
        elif isinstance(message, AIMessage):
            calls = [
                ToolCall(
                    id=call["id"] or "",
                    function=FunctionCall(
                        name=call["name"], arguments=dumps(call["args"]).decode()
                    ),
                )
                for call in message.tool_calls
            ]
            converted.append(
                AssistantMessage(
                    id=identifier,
                    content=text_of(message.content) or None,
                    tool_calls=calls or None,
                )
            )
        elif isinstance(message, ToolMessage):
            converted.append(
                AGUIToolMessage(
                    id=identifier,
                    content=text_of(message.content),
                    tool_call_id=message.tool_call_id,
                )
            )
    return converted


class AGUITranslator:
    """Frames of one run in, AG-UI events out, keeping the protocol's ordering rules."""

    def __init__(self, thread_id: str, run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.message: str | None = None  # the open text message
        self.last_message: str | None = None
        self.step: str | None = None  # the open step (node)
        self.interrupts: list[Interrupt] = []
        self.finished = False

    def start(self) -> list[Event]:
        return [RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id)]

    def _close_message(self) -> list[Event]:
        if self.message is None:
            return []
        message, self.message = self.message, None
        return [TextMessageEndEvent(message_id=message)]

    def _enter(self, node: str | None) -> list[Event]:
        events: list[Event] = []
        if node is None or node == self.step:
            return events
        events += self._close_message()
        if self.step is not None:
            events.append(StepFinishedEvent(step_name=self.step))
        self.step = node
        events.append(StepStartedEvent(step_name=node))
        return events

    def _close_all(self) -> list[Event]:
        events = self._close_message()
        if self.step is not None:
            events.append(StepFinishedEvent(step_name=self.step))
            self.step = None
        return events

    def frame(self, frame: BaseFrame, values: Any = None) -> list[Event]:
        if self.finished:
            return []
        if isinstance(frame, Token):
            events = self._enter(frame.node)
            message_id = frame.message_id or self.message or str(uuid.uuid4())
            if message_id != self.message:
                events += self._close_message()
                self.message = self.last_message = message_id
                events.append(TextMessageStartEvent(message_id=message_id, role="assistant"))
            if frame.content:
                events.append(TextMessageContentEvent(message_id=message_id, delta=frame.content))
            return events
        if isinstance(frame, ToolStart):
            events = self._enter(frame.node)
            events += self._close_message()
            call_id = frame.tool_call_id or str(uuid.uuid4())
            events += [
                ToolCallStartEvent(
                    tool_call_id=call_id,
                    tool_call_name=frame.name,
                    parent_message_id=self.last_message,
                ),
                ToolCallArgsEvent(tool_call_id=call_id, delta=dumps(frame.input).decode()),
                ToolCallEndEvent(tool_call_id=call_id),
            ]
            return events
        if isinstance(frame, ToolEnd | ToolError):
            content = frame.error if isinstance(frame, ToolError) else frame.output
            return [
                ToolCallResultEvent(
                    message_id=str(uuid.uuid4()),
                    tool_call_id=frame.tool_call_id or "",
                    content=content if isinstance(content, str) else dumps(content).decode(),
                    role="tool",
                )
            ]
        if isinstance(frame, Custom):
            return [CustomEvent(name=frame.name, value=frame.data)]
        if isinstance(frame, InterruptFrame):
            self.interrupts.append(
                Interrupt(
                    id=frame.interrupt_id or str(uuid.uuid4()),
                    reason="human_input",
                    metadata={"value": frame.value},
                )
            )
            return []
        if isinstance(frame, Error):
            self.finished = True
            events = self._close_all()
            if frame.code == "cancelled":
                return [
                    *events,
                    RunFinishedEvent(
                        thread_id=self.thread_id,
                        run_id=self.run_id,
                        outcome=RunFinishedCancelledOutcome(),
                    ),
                ]
            return [*events, RunErrorEvent(message=frame.message, code=frame.code)]
        if isinstance(frame, Done):
            self.finished = True
            events = self._close_all()
            if isinstance(values, dict):
                snapshot = {k: v for k, v in values.items() if k != "messages"}
                events.append(StateSnapshotEvent(snapshot=dumps_safe(snapshot)))
                messages = [m for m in values.get("messages", []) if isinstance(m, BaseMessage)]
                events.append(MessagesSnapshotEvent(messages=to_agui_messages(messages)))
            outcome: Any = (
                RunFinishedInterruptOutcome(interrupts=self.interrupts)
                if self.interrupts
                else RunFinishedSuccessOutcome()
            )
            events.append(
                RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, outcome=outcome)
            )
            return events
        return []


def dumps_safe(value: Any) -> Any:
    """A JSON-safe copy (state may hold messages, Documents...)."""
    import orjson

    return orjson.loads(dumps(value))


async def agui_events(run: Any, translator: AGUITranslator) -> AsyncIterator[bytes]:
    """The SSE body: the run's frames, translated."""
    yield b"".join(encode_event(e) for e in translator.start())
    async for batch in run.follow():
        chunk = b""
        for entry in batch:
            values = run.values if entry.type == "done" else None
            chunk += b"".join(encode_event(e) for e in translator.frame(entry.frame, values))
        if chunk:
            yield chunk


async def agui_endpoint(request: Request) -> Response:
    """``POST /ag-ui/{graph}``: a ``RunAgentInput`` in, AG-UI events out (SSE)."""
    state = app_state(request)
    entry = state.graphs.get(request.path_params["graph"])
    body = await read_model(request, RunAgentInput, state.settings.max_body_bytes)
    try:
        parse_id(body.thread_id, "threadId")
    except BadCursor as exc:
        raise RequestError(422, "validation_error", str(exc)) from None
    user = user_id(request.scope)
    await state.runs.load_thread_owner(body.thread_id, entry)
    state.runs.check_thread(body.thread_id, user)
    snapshot = await entry.graph.aget_state({"configurable": {"thread_id": body.thread_id}})
    known = {
        m.id for m in (snapshot.values or {}).get("messages", []) if isinstance(m, BaseMessage)
    }
    run = Run(
        graph=entry,
        input=graph_input(body, {i for i in known if i}),
        thread_id=body.thread_id,
        owner=user,
    )
    state.runs.submit(run)
    await state.runs.accepted(run)
    return SSEResponse(
        agui_events(run, AGUITranslator(body.thread_id, body.run_id)),
        headers=stream_headers(run),
        on_disconnect=lambda: run.cancel("cancelled", "the client disconnected"),
        send_timeout=state.streams.send_timeout,
    )


def routes() -> list[BaseRoute]:
    return [Route("/ag-ui/{graph}", agui_endpoint, methods=["POST"])]
