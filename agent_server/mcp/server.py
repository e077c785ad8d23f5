"""Every graph as an MCP tool, at ``/mcp`` (Streamable HTTP).

The official ``mcp`` package's server side (its low-level ``Server`` and
``StreamableHTTPSessionManager``) speaks the protocol; the session manager runs in the
app's lifespan (:func:`serve_mcp`), and :class:`MCPEndpoint` is the ASGI route.

Decisions (read before changing):

- A tool per graph, named after it, described by the graph's description, taking
  ``{"message": string, "thread_id"?: string}``, or ``{"thread_id", "resume"}`` to
  answer a pending interrupt. It answers with the final answer's text (the text of the
  run's last streamed AI message) as text content and ``{"answer", "thread_id",
  "run_id", "status"}`` as structured content; an interrupted run's result says so in
  its text and lists the interrupts (``value``, ``interrupt_id``) in ``interrupts``; a
  failed, timed-out or cancelled run is ``isError: true`` with the error's message (and
  ``error`` in the structured content). LangGraph's ``/mcp`` takes the graph's raw
  input and answers with the ``repr()`` of the final state; ours is meant for clients
  and models, so it takes a message and answers with text (docs/mcp.md).
- A call is a run like any other: started on the run manager (limits, queue, run
  timeout, per-thread order), owned by the caller that the auth middleware identified
  on the HTTP request that carried the call, so thread ownership holds as on every
  route. A refusal (busy thread, full queue, another user's thread, no pending
  interrupt) is an error *result*, not a protocol error: the model reading it can act
  on it. An unknown tool and arguments that do not fit are the protocol's
  invalid-params error (-32602), as the MCP specification asks; the SDK's own
  ``call_tool`` decorator would turn them into results, so the handler is registered
  by hand.
- Progress: when the request carries a progress token, each token, tool and custom
  frame of the run is sent as a progress notification while the run goes on:
  ``progress`` is the frame's ``seq`` (frames so far, strictly increasing), ``message``
  the token's text or a one-line event (``tool_start calculator {"expression": "2+2"}``).
- A client that cancels the request (``notifications/cancelled``), or whose session
  ends, cancels the run. At shutdown the calls end with the session manager but their
  runs are left to the lifespan's drain (``AGENT_SERVER_SHUTDOWN_GRACE``) like every
  other run.
- Sessions are stateful (cancellation needs the session that runs the call) and live
  in this worker: behind several workers, route a session's requests to one worker
  (its ``Mcp-Session-Id`` header). They are not tied to a user: every request is
  authenticated on its own and each call's run belongs to that request's user.
- The SDK answers some refusals in plain text (a wrong ``Content-Type``, a body over the
  limit): :class:`MCPEndpoint` rewrites every non-JSON error into a JSON-RPC error body,
  so every 4xx of ``/mcp`` has one documented shape (``GET /openapi.json``). An
  ``Origin`` header that is neither the server's own nor in ``AGENT_SERVER_CORS_ORIGINS``
  is refused (403), as the MCP specification asks against DNS rebinding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from typing import Any, Literal

import anyio
import orjson
from langgraph.types import Command
from mcp import McpError, types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from agent_server.auth import user_id
from agent_server.frames import dumps
from agent_server.graphs import GraphEntry
from agent_server.runs import Forbidden, Run, RunRejected, RunStatus
from agent_server.schemas import THREAD_ID_PATTERN, RunRequest
from agent_server.serving import launch_run
from agent_server.state import AppState

__all__ = ["MCPEndpoint", "build_server", "routes", "serve_mcp"]

logger = logging.getLogger("agent_server.mcp")

SERVER_NAME = "agent-server"
STATE_KEY = "mcp_sessions"
EVENT_TEXT_LIMIT = 200  # characters of a one-line tool event in a progress message
PROGRESS_TYPES = frozenset({"token", "tool_start", "tool_end", "tool_error", "custom", "interrupt"})

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "description": "The user's message."},
        "thread_id": {
            "type": "string",
            "pattern": THREAD_ID_PATTERN,
            "description": "Continue this conversation (from an earlier result); "
            "omit it to start a new one.",
        },
        "resume": {
            "description": "The answer to the thread's pending interrupt (any JSON), "
            "instead of a message; needs thread_id.",
        },
    },
    "additionalProperties": False,
}
OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "thread_id": {"type": "string"},
        "run_id": {"type": "string"},
        "status": {"type": "string", "enum": [status.value for status in RunStatus]},
        "interrupts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"value": {}, "interrupt_id": {"type": ["string", "null"]}},
            },
        },
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
    "required": ["answer", "thread_id", "run_id", "status"],
}


class GraphCall(BaseModel):
    """The arguments of a graph's tool."""

    model_config = ConfigDict(extra="forbid")

    message: str | None = None
    thread_id: str | None = Field(None, pattern=THREAD_ID_PATTERN)
    resume: Any = None

    @property
    def resuming(self) -> bool:
        return "resume" in self.model_fields_set


# -- the JSON-RPC bodies of /mcp, for GET /openapi.json ----------------------------------


class JSONRPCMessage(BaseModel):
    """A JSON-RPC 2.0 request, notification or response of the MCP protocol."""

    model_config = ConfigDict(extra="allow")

    jsonrpc: Literal["2.0"]
    id: str | int | None = None
    method: str | None = None
    params: dict[str, Any] | None = None


class JSONRPCErrorData(BaseModel):
    code: int
    message: str
    data: Any = None


class JSONRPCErrorBody(BaseModel):
    """How ``/mcp`` refuses a request (MCP's Streamable HTTP transport)."""

    jsonrpc: Literal["2.0"]
    id: str | int | None = None
    error: JSONRPCErrorData


# -- the tools --------------------------------------------------------------------------


def _tool(entry: GraphEntry) -> types.Tool:
    description = entry.description or f"Run the {entry.name!r} agent on a message."
    return types.Tool(
        name=entry.name,
        description=f"{description} Returns the agent's answer and the thread_id to "
        "continue the conversation.",
        inputSchema=INPUT_SCHEMA,
        outputSchema=OUTPUT_SCHEMA,
    )


def _invalid(message: str) -> McpError:
    return McpError(types.ErrorData(code=types.INVALID_PARAMS, message=message))


def _error_result(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structuredContent=structured,
        isError=True,
    )


def _json_safe(value: Any) -> Any:
    """What the graph produced (messages, models, ...) as plain JSON values."""
    return orjson.loads(dumps(value))


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= EVENT_TEXT_LIMIT else line[: EVENT_TEXT_LIMIT - 1] + "…"


def _event_text(frame: Mapping[str, Any]) -> str:
    """A progress message for a frame: a token's text, or a one-line event."""
    kind = frame["type"]
    if kind == "token":
        return str(frame.get("content", ""))
    if kind == "tool_start":
        return _one_line(f"tool_start {frame['name']} {dumps(frame.get('input')).decode()}")
    if kind == "tool_end":
        output = frame.get("output")
        text = output if isinstance(output, str) else dumps(output).decode()
        return _one_line(f"tool_end {frame['name']}: {text}")
    if kind == "tool_error":
        return _one_line(f"tool_error {frame['name']}: {frame.get('error', '')}")
    if kind == "custom":
        return _one_line(f"{frame.get('name')}: {dumps(frame.get('data')).decode()}")
    return _one_line(f"interrupt: {dumps(frame.get('value')).decode()}")


class _Lifetime:
    """Whether the endpoint is closing: its calls' runs are then left to the drain."""

    closing = False


class _Call:
    """One ``tools/call``: start the run, follow it (with progress), answer."""

    def __init__(self, server: Server[Any, Any], state: AppState, lifetime: _Lifetime) -> None:
        self.server = server
        self.state = state
        self.lifetime = lifetime

    async def __call__(self, request: types.CallToolRequest) -> types.ServerResult:
        return types.ServerResult(await self.call(request.params))

    async def call(self, params: types.CallToolRequestParams) -> types.CallToolResult:
        state = self.state
        context = self.server.request_context
        if params.name not in state.graphs:
            known = ", ".join(state.graphs.names()) or "none"
            raise _invalid(f"unknown tool {params.name!r} (available: {known})")
        try:
            arguments = GraphCall.model_validate(params.arguments or {})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "arguments"
            raise _invalid(f"{where}: {first['msg']}") from None
        if arguments.resuming == (arguments.message is not None):
            raise _invalid("give exactly one of 'message' or 'resume'")
        if arguments.resuming and arguments.thread_id is None:
            raise _invalid("'resume' needs the 'thread_id' of the interrupted thread")
        http = context.request
        owner = user_id(http.scope) if http is not None else None
        entry = state.graphs.get(params.name)
        try:
            run = await self._start(entry, arguments, owner)
        except RunRejected as exc:
            return _error_result(f"{exc.code}: {exc.message}")
        except Forbidden as exc:
            return _error_result(f"forbidden: {exc.message}")
        token = context.meta.progressToken if context.meta is not None else None
        try:
            answer = await self._follow(run, token, context.request_id)
        except BaseException:
            if not self.lifetime.closing and not run.finished:
                run.cancel("cancelled", "cancelled by the MCP client")
            raise
        return _result(run, answer)

    async def _start(self, entry: GraphEntry, arguments: GraphCall, owner: str | None) -> Run:
        runs = self.state.runs
        if not arguments.resuming:
            body = RunRequest(
                graph=entry.name, message=arguments.message, thread_id=arguments.thread_id
            )
            return await launch_run(self.state, body, owner)
        thread_id = arguments.thread_id
        assert thread_id is not None
        await runs.load_thread_owner(thread_id, entry)
        runs.check_thread(thread_id, owner)
        snapshot = await entry.graph.aget_state({"configurable": {"thread_id": thread_id}})
        if not snapshot.interrupts:
            raise RunRejected(
                409, "not_interrupted", f"thread {thread_id!r} is not waiting on an interrupt"
            )
        run = Run(
            graph=entry,
            input=Command(resume=arguments.resume),
            thread_id=thread_id,
            owner=owner,
        )
        runs.submit(run, "reject")
        await runs.accepted(run)
        return run

    async def _follow(self, run: Run, token: str | int | None, request_id: Any) -> str:
        """Until the run ends: the text of its last AI message, progress on the way."""
        session = self.server.request_context.session
        message_id: Any = None
        answer: list[str] = []
        async for batch in run.follow():
            for entry in batch:
                if entry.type not in PROGRESS_TYPES:
                    continue
                frame = orjson.loads(entry.data)
                if entry.type == "token":
                    if frame.get("message_id") != message_id:
                        message_id, answer = frame.get("message_id"), []
                    answer.append(str(frame.get("content", "")))
                if token is None:
                    continue
                try:
                    await session.send_progress_notification(
                        token,
                        float(entry.seq),
                        message=_event_text(frame),
                        related_request_id=request_id,
                    )
                except Exception as exc:  # the client's stream is gone: the run goes on
                    logger.info("MCP progress for run %s not sent: %s", run.run_id, exc)
                    token = None
        await run.wait()
        return "".join(answer)


def _result(run: Run, answer: str) -> types.CallToolResult:
    structured: dict[str, Any] = {
        "answer": answer,
        "thread_id": run.thread_id,
        "run_id": run.run_id,
        "status": run.status.value,
    }
    if run.status == RunStatus.INTERRUPTED:
        interrupts = [{"value": f.value, "interrupt_id": f.interrupt_id} for f in run.interrupts]
        structured["interrupts"] = _json_safe(interrupts)
        values = ", ".join(dumps(item["value"]).decode() for item in interrupts)
        text = (f"{answer}\n\n" if answer else "") + (
            f"The agent is waiting for input: {values}. Answer with the same thread_id "
            f"({run.thread_id}) and 'resume' set to the answer."
        )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structuredContent=structured,
        )
    if run.status == RunStatus.SUCCESS:
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=answer)],
            structuredContent=structured,
        )
    final = run.final
    code = getattr(final, "code", run.status.value)
    message = getattr(final, "message", f"the run ended with status {run.status.value}")
    structured["error"] = {"code": code, "message": message}
    return _error_result(message, structured)


def build_server(state: AppState, lifetime: _Lifetime | None = None) -> Server[Any, Any]:
    """The MCP server: ``tools/list`` and ``tools/call`` over the app's graphs."""
    from agent_server import __version__

    server: Server[Any, Any] = Server(
        SERVER_NAME,
        version=__version__,
        instructions="Each tool is an agent: send it a message, get its answer and a "
        "thread_id that continues the conversation.",
    )

    @server.list_tools()  # type: ignore[no-untyped-call, untyped-decorator]
    async def list_tools() -> list[types.Tool]:
        return [_tool(entry) for entry in state.graphs]

    server.request_handlers[types.CallToolRequest] = _Call(server, state, lifetime or _Lifetime())
    return server


class _SessionEndIsNoError(logging.Filter):
    """mcp 1.x logs ``Error in standalone SSE writer`` with a ``ClosedResourceError``
    traceback whenever a client ends its session (DELETE) while its GET stream is open:
    the normal end of a session. That record is dropped; every other one passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(error, anyio.ClosedResourceError)
            and record.getMessage() == "Error in standalone SSE writer"
        )


SESSION_END_IS_NO_ERROR = _SessionEndIsNoError()


@contextlib.asynccontextmanager
async def serve_mcp(app: Starlette, state: AppState) -> AsyncIterator[None]:
    """Run ``/mcp``'s session manager for the app's lifespan."""
    lifetime = _Lifetime()
    logging.getLogger("mcp.server.streamable_http").addFilter(SESSION_END_IS_NO_ERROR)
    manager = StreamableHTTPSessionManager(
        build_server(state, lifetime),
        max_request_body_size=state.settings.max_body_bytes,
    )
    async with manager.run():
        setattr(app.state, STATE_KEY, manager)
        try:
            yield
        finally:
            lifetime.closing = True  # the calls end here; their runs drain with the others
            setattr(app.state, STATE_KEY, None)


# -- the route -----------------------------------------------------------------------------


def _error_body(message: str, code: int = types.INVALID_REQUEST) -> bytes:
    return dumps(
        {"jsonrpc": "2.0", "id": "server-error", "error": {"code": code, "message": message}}
    )


async def _refuse(send: Send, status: int, message: str) -> None:
    body = _error_body(message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json_errors(send: Send) -> Send:
    """``send`` with every non-JSON error response rewritten as a JSON-RPC error."""
    held: Message | None = None
    body = bytearray()

    async def sender(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] >= 400:
            kind = Headers(raw=message.get("headers", [])).get("content-type", "")
            if not kind.startswith("application/json"):
                held = message
                return
        if message["type"] == "http.response.body" and held is not None:
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            text = body.decode("utf-8", "replace").strip()
            await _refuse(send, held["status"], text or HTTPStatus(held["status"]).phrase)
            held = None
            return
        await send(message)

    return sender


def _origin_allowed(scope: Scope, allowed: list[str]) -> bool:
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is None or "*" in allowed or origin in allowed:
        return True
    host = headers.get("host", "")
    return origin.split("://", 1)[-1] == host


class MCPEndpoint:
    """``/mcp``: hands each request to the session manager the lifespan started."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["app"]
        manager: StreamableHTTPSessionManager | None = getattr(app.state, STATE_KEY, None)
        if manager is None:
            await _refuse(send, 503, "the MCP endpoint is not running (shutting down)")
            return
        state: AppState = app.state.agent_server
        if not _origin_allowed(scope, state.settings.cors_origins):
            await _refuse(send, 403, "Origin not allowed")
            return
        await manager.handle_request(scope, receive, _json_errors(send))


def routes() -> list[BaseRoute]:
    return [Route("/mcp", MCPEndpoint(), methods=["GET", "POST", "DELETE"])]
