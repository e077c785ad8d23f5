"""The Vercel AI SDK's UI message stream: our frames as the parts ``useChat`` reads.

``POST /ai-sdk/{graph}`` takes the body ``DefaultChatTransport`` sends (``id``, the chat;
``messages``, UI messages with ``parts``; ``trigger``; ``messageId``) and streams parts as
SSE with the ``x-vercel-ai-ui-message-stream: v1`` header and ``[DONE]`` at the end.
``GET /ai-sdk/{graph}/{chat_id}/stream`` rejoins the chat's active run from its start
(the SDK's default ``resumeStreamIsReplay``), or answers 204 when there is none.

Decisions:

- The chat id is the thread id: a chat is a conversation. The graph gets the last user
  message's text; the thread holds the rest.
- Parts emitted (checked with ``ai`` 6.0.326, ``tests/js/aisdk.mjs``): ``start``
  (``messageId``), ``start-step`` / ``finish-step`` around each graph node's output,
  ``text-start`` / ``text-delta`` / ``text-end`` (one text block per model message),
  ``tool-input-start``, ``tool-input-delta`` (the JSON arguments, whole),
  ``tool-input-available``, ``tool-output-available`` / ``tool-output-error``, ``data-<name>``
  for ``custom`` frames (transient), ``error`` (``errorText``) for a failed or cancelled
  run, and ``finish``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent_server.auth import user_id
from agent_server.frames import (
    BaseFrame,
    Custom,
    Done,
    Error,
    Interrupt,
    Token,
    ToolEnd,
    ToolError,
    ToolStart,
    dumps,
)
from agent_server.runs import Run
from agent_server.schemas import THREAD_ID_PATTERN, RequestError, path_id, read_model
from agent_server.serving import app_state, stream_headers
from agent_server.sse import DONE, SSEResponse

HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}


class UIPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = ""
    role: str
    parts: list[UIPart] = Field(default_factory=list)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=THREAD_ID_PATTERN)
    messages: list[UIMessage] = Field(min_length=1)
    trigger: str = "submit-message"
    messageId: str | None = None

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return "".join(p.text or "" for p in message.parts if p.type == "text")
        raise ValueError("no user message")


def part(data: dict[str, Any]) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


class UIStreamTranslator:
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.text: str | None = None  # the open text block (a model message id)
        self.step: str | None = None  # the open step (graph node)

    def start(self) -> bytes:
        return part({"type": "start", "messageId": self.message_id})

    def _close_text(self) -> bytes:
        if self.text is None:
            return b""
        text, self.text = self.text, None
        return part({"type": "text-end", "id": text})

    def _enter(self, node: str | None) -> bytes:
        if node is None or node == self.step:
            return b""
        out = self._close_text()
        if self.step is not None:
            out += part({"type": "finish-step"})
        self.step = node
        return out + part({"type": "start-step"})

    def _close_all(self) -> bytes:
        out = self._close_text()
        if self.step is not None:
            out += part({"type": "finish-step"})
            self.step = None
        return out

    def frame(self, frame: BaseFrame) -> bytes:
        if isinstance(frame, Token):
            out = self._enter(frame.node)
            block = frame.message_id or self.text or str(uuid.uuid4())
            if block != self.text:
                out += self._close_text() + part({"type": "text-start", "id": block})
                self.text = block
            return out + part({"type": "text-delta", "id": block, "delta": frame.content})
        if isinstance(frame, ToolStart):
            call = frame.tool_call_id or str(uuid.uuid4())
            return (
                self._enter(frame.node)
                + self._close_text()
                + part({"type": "tool-input-start", "toolCallId": call, "toolName": frame.name})
                + part(
                    {
                        "type": "tool-input-delta",
                        "toolCallId": call,
                        "inputTextDelta": dumps(frame.input).decode(),
                    }
                )
                + part(
                    {
                        "type": "tool-input-available",
                        "toolCallId": call,
                        "toolName": frame.name,
                        "input": frame.input,
                    }
                )
            )
        if isinstance(frame, ToolEnd):
            return part(
                {"type": "tool-output-available", "toolCallId": frame.tool_call_id,
                 "output": frame.output}
            )  # fmt: skip
        if isinstance(frame, ToolError):
            return part(
                {"type": "tool-output-error", "toolCallId": frame.tool_call_id,
                 "errorText": frame.error}
            )  # fmt: skip
        if isinstance(frame, Custom):
            return part({"type": f"data-{frame.name}", "data": frame.data, "transient": True})
        if isinstance(frame, Interrupt):
            return part({"type": "data-interrupt", "data": {"value": frame.value,
                         "interruptId": frame.interrupt_id}})  # fmt: skip
        if isinstance(frame, Error):
            return self._close_all() + part({"type": "error", "errorText": frame.message})
        if isinstance(frame, Done):
            return self._close_all() + part({"type": "finish"})
        return b""


async def ui_stream(run: Run, message_id: str) -> AsyncIterator[bytes]:
    translator = UIStreamTranslator(message_id)
    yield translator.start()
    async for batch in run.follow():
        chunk = b"".join(translator.frame(entry.frame) for entry in batch)
        if chunk:
            yield chunk
    yield DONE


async def chat_endpoint(request: Request) -> Response:
    """``POST /ai-sdk/{graph}``: a ``useChat`` request in, a UI message stream out."""
    state = app_state(request)
    entry = state.graphs.get(request.path_params["graph"])
    body = await read_model(request, ChatRequest, state.settings.max_body_bytes)
    try:
        text = body.last_user_text()
    except ValueError as exc:
        raise RequestError(422, "validation_error", str(exc)) from None
    user = user_id(request.scope)
    await state.runs.load_thread_owner(body.id, entry)
    run = Run(
        graph=entry,
        input={"messages": [{"role": "user", "content": text}]},
        thread_id=body.id,
        owner=user,
    )
    state.runs.submit(run)
    await state.runs.accepted(run)
    return SSEResponse(
        ui_stream(run, body.messageId or f"msg-{run.run_id}"),
        headers={**HEADERS, **stream_headers(run)},
        on_disconnect=lambda: None,  # the SDK resumes with GET .../stream: keep running
        send_timeout=state.streams.send_timeout,
    )


async def resume_endpoint(request: Request) -> Response:
    """``GET /ai-sdk/{graph}/{chat_id}/stream``: the chat's active run, replayed, or 204."""
    state = app_state(request)
    chat = path_id(request, "chat_id")
    state.runs.check_thread(chat, user_id(request.scope))
    active = [r for r in state.runs.thread_runs(chat) if not r.finished]
    if not active:
        return Response(status_code=204)
    run = active[-1]
    return SSEResponse(
        ui_stream(run, f"msg-{run.run_id}"),
        headers={**HEADERS, **stream_headers(run)},
        send_timeout=state.streams.send_timeout,
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/ai-sdk/{graph}", chat_endpoint, methods=["POST"]),
        Route("/ai-sdk/{graph}/{chat_id}/stream", resume_endpoint, methods=["GET"]),
    ]
