"""A loopback OpenAI-compatible server, so tests drive ``ChatOpenAI`` over real HTTP.

It implements only streamed ``POST /v1/chat/completions``, with one script: when the last
message is the user's, it calls the first offered tool with ``tool_args`` (streamed as
argument deltas); when the last message is a tool result, it answers
``"The <tool> tool returned <result>."`` word by word. Usage follows as a final chunk
when the client asks for it (``stream_options.include_usage``), as OpenAI does.

The server runs uvicorn in a thread on a socket bound to port 0, so it works for sync and
async tests alike and never collides with another process's port.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class OpenAIStub:
    """Records every request body in ``requests``; ``base_url`` ends in ``/v1``."""

    def __init__(self, tool_args: dict[str, Any] | None = None) -> None:
        self.tool_args = tool_args if tool_args is not None else {"expression": "6*7"}
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the OpenAI stub server did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIStub:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _chat(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        if not body.get("stream"):
            return JSONResponse(
                {"error": {"message": "the stub only streams", "type": "invalid_request_error"}},
                status_code=400,
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _sse(self._script(body), include_usage, body.get("model", "")),
            media_type="text/event-stream",
        )

    def _script(self, body: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str | None]]:
        """Deltas with their finish reason (set on the last one only)."""
        messages: list[dict[str, Any]] = body["messages"]
        tools: list[dict[str, Any]] = body.get("tools") or []
        last = messages[-1]
        if last["role"] == "user" and tools:
            arguments = json.dumps(self.tool_args)
            pieces = [arguments[:2], *re.findall(r".{1,4}", arguments[2:])]
            yield (
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": f"call_stub_{len(self.requests)}",
                            "type": "function",
                            "function": {
                                "name": tools[0]["function"]["name"],
                                "arguments": pieces[0],
                            },
                        }
                    ],
                },
                None,
            )
            for piece in pieces[1:]:
                yield {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None
            yield {}, "tool_calls"
            return
        if last["role"] == "tool":
            name = _tool_name(messages, last["tool_call_id"])
            text = f"The {name} tool returned {last['content']}."
        else:
            text = f"You said: {last['content']}"
        yield {"role": "assistant", "content": ""}, None
        for word in re.findall(r"\s*\S+", text):
            yield {"content": word}, None
        yield {}, "stop"


def _tool_name(messages: list[dict[str, Any]], call_id: str) -> str:
    for message in messages:
        for call in message.get("tool_calls") or []:
            if call["id"] == call_id:
                return str(call["function"]["name"])
    return "unknown"


async def _sse(
    deltas: Iterator[tuple[dict[str, Any], str | None]], include_usage: bool, model: str
) -> AsyncIterator[str]:
    completion_tokens = 0
    for delta, finish_reason in deltas:
        completion_tokens += 1 if delta else 0
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        yield _event(model, [choice])
    if include_usage:
        usage = {"prompt_tokens": 10, "completion_tokens": completion_tokens}
        usage["total_tokens"] = usage["prompt_tokens"] + completion_tokens
        yield _event(model, [], usage=usage)
    yield "data: [DONE]\n\n"


def _event(model: str, choices: list[dict[str, Any]], **extra: Any) -> str:
    chunk = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(chunk)}\n\n"
