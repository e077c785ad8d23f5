"""Agent-to-agent (A2A): every assistant as an A2A agent, as LangGraph's server has it.

``GET /a2a/{assistant_id}/.well-known/agent-card.json`` describes the agent;
``POST /a2a/{assistant_id}`` takes JSON-RPC 2.0: ``message/send``, ``message/stream``
(Server-Sent Events), ``tasks/get`` and ``tasks/cancel``. An A2A message is a LangGraph
run: its text parts become one user message (``{"messages": [...]}``: the assistant's
graph must take ``messages``), its ``contextId`` is the thread (created when new;
without one, a new thread), the task is the run (``<thread id>:<run id>``, LangGraph's
form, so ``tasks/get`` needs nothing else) and the reply is the last AI message, as an
artifact.

Decisions:

- The wire format is A2A 0.3 (``kind`` fields, ``"user"``/``"agent"`` roles,
  ``"completed"`` states) and the card says ``protocolVersion: "0.3.0"``, so the official
  ``a2a-sdk`` client (1.x) speaks it through its 0.3 transport. LangGraph's server
  (0.16.7) answers A2A 1.0 and accepts these 0.3 method names too.
- A thread stopped on an interrupt is ``input-required`` (the interrupt values as a data
  artifact); the next message in that context resumes it (``Command(resume=text)``).
- ``message/stream`` sends the task (``submitted``), a ``working`` status, then, when the
  run ends, the reply artifact and the final status: not token by token (LangGraph's
  server sends the growing reply as ``working`` status messages).
- Errors are JSON-RPC errors with HTTP 200 (invalid JSON: -32700, unknown method:
  -32601, invalid params: -32602, unknown task: -32001, unknown assistant: -32004).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from agent_server.auth import user_id
from agent_server.cursors import BadCursor, parse_id
from agent_server.protocols.langgraph.assistants import resolve_assistant
from agent_server.protocols.langgraph.http import APIError, endpoint, json_response, thread_config
from agent_server.protocols.langgraph.runs import create_run, final_values
from agent_server.protocols.langgraph.schemas import CommandBody, RunCreate
from agent_server.protocols.langgraph.threads import open_thread
from agent_server.runs import Forbidden, RemoteRun, Run, RunRejected, RunStatus
from agent_server.schemas import read_body
from agent_server.state import AppState

PROTOCOL_VERSION = "0.3.0"
STATES = {
    RunStatus.PENDING: "submitted",
    RunStatus.RUNNING: "working",
    RunStatus.SUCCESS: "completed",
    RunStatus.INTERRUPTED: "input-required",
    RunStatus.CANCELLED: "canceled",
    RunStatus.ERROR: "failed",
    RunStatus.TIMEOUT: "failed",
}


class RPCError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def rpc_result(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def rpc_error(request_id: Any, code: int, message: str) -> Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return json_response(body)


def now() -> str:
    return datetime.now(UTC).isoformat()


@endpoint
async def agent_card(request: Request, state: AppState) -> Response:
    assistant, entry = await resolve_assistant(
        state, request.path_params["assistant_id"], user_id(request.scope)
    )
    url = str(request.url).split("/.well-known/", 1)[0]
    description = assistant.get("description") or entry.description or assistant["name"]
    return json_response(
        {
            "name": assistant.get("name") or entry.name,
            "description": description,
            "url": url,
            "version": str(assistant.get("version", 1)),
            "protocolVersion": PROTOCOL_VERSION,
            "preferredTransport": "JSONRPC",
            "capabilities": {"streaming": True, "pushNotifications": False},
            "defaultInputModes": ["text/plain", "application/json"],
            "defaultOutputModes": ["text/plain", "application/json"],
            "skills": [
                {
                    "id": f"{entry.name}-main",
                    "name": f"{entry.name} capabilities",
                    "description": description,
                    "tags": ["assistant", "langgraph"],
                }
            ],
        }
    )


async def rpc(request: Request) -> Response:
    """``POST /a2a/{assistant_id}``: one JSON-RPC request."""
    state: AppState = request.app.state.agent_server
    try:
        parse_id(request.path_params["assistant_id"], "assistant_id")
    except BadCursor as exc:
        return rpc_error(None, -32602, str(exc))
    try:
        call = orjson.loads(await read_body(request, state.settings.max_body_bytes))
    except orjson.JSONDecodeError:
        return rpc_error(None, -32700, "Parse error: the body is not JSON")
    if not isinstance(call, dict) or call.get("jsonrpc") != "2.0" or "method" not in call:
        return rpc_error(None, -32600, "Invalid request: not a JSON-RPC 2.0 request")
    request_id = call.get("id")
    params = call.get("params")
    method = call["method"]
    try:
        if method not in ("message/send", "message/stream", "tasks/get", "tasks/cancel"):
            raise RPCError(-32601, f"Method not found: {method!r}")
        if not isinstance(params, dict):
            raise RPCError(-32602, "Invalid params: an object is required")
        if method == "message/send":
            return json_response(rpc_result(request_id, await send(request, state, params)))
        if method == "message/stream":
            events = stream(request, state, params, request_id)
            first = await anext(events)  # errors before the stream starts are answers
            return StreamingResponse(
                _prepend(first, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        if method == "tasks/get":
            return json_response(rpc_result(request_id, await get_task(request, state, params)))
        return json_response(rpc_result(request_id, await cancel_task(request, state, params)))
    except RPCError as exc:
        return rpc_error(request_id, exc.code, exc.message)
    except APIError as exc:
        code = -32004 if exc.code == "assistant_not_found" else -32602
        return rpc_error(request_id, code, exc.detail)
    except Forbidden as exc:
        return rpc_error(request_id, -32602, exc.message)
    except RunRejected as exc:
        return rpc_error(request_id, -32603, exc.message)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _text(message: dict[str, Any]) -> str:
    parts = message.get("parts")
    if message.get("role") != "user" or not isinstance(parts, list):
        raise RPCError(-32602, "Invalid params: a user message with parts is required")
    texts = []
    for part in parts:
        if isinstance(part, dict) and part.get("kind") == "text":
            texts.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("kind") == "data":
            texts.append(orjson.dumps(part.get("data")).decode())
    if not texts:
        raise RPCError(-32602, "Invalid params: the message has no text or data part")
    return "\n".join(texts)


async def start(request: Request, state: AppState, params: dict[str, Any]) -> tuple[Run, str]:
    """The run an A2A message starts, and its context (thread) id."""
    message = params.get("message")
    if not isinstance(message, dict):
        raise RPCError(-32602, "Invalid params: 'message' is required")
    text = _text(message)
    assistant_id = request.path_params["assistant_id"]
    _, entry = await resolve_assistant(state, assistant_id, user_id(request.scope))
    try:
        properties = (entry.graph.get_input_jsonschema() or {}).get("properties") or {}
    except Exception:  # a graph whose input cannot be described
        properties = {}
    if "messages" not in properties:
        raise RPCError(-32602, f"Assistant {assistant_id} does not take messages")
    context_id = str(message.get("contextId") or uuid.uuid4())
    body = RunCreate(assistant_id=assistant_id, if_not_exists="create", stream_mode=["values"])
    if message.get("contextId") and await interrupted(request, state, context_id, entry):
        body.command = CommandBody(resume=text)
    else:
        body.input = {"messages": [{"role": "user", "content": text}]}
    run = await create_run(request, state, body, context_id)
    if not isinstance(run, Run):
        raise RPCError(-32603, "the run was queued for another worker")
    return run, context_id


async def interrupted(request: Request, state: AppState, thread_id: str, entry: Any) -> bool:
    try:
        await open_thread(state, thread_id, request)
    except APIError:
        return False
    snapshot = await entry.graph.aget_state(thread_config(thread_id))
    return bool(snapshot.interrupts)


def _reply(values: Any) -> str:
    messages = values.get("messages") if isinstance(values, dict) else None
    for message in reversed(messages or []):
        kind = message.get("type") if isinstance(message, dict) else getattr(message, "type", "")
        if kind in ("ai", "AIMessageChunk"):
            content = message.get("content") if isinstance(message, dict) else message.content
            if isinstance(content, list):
                return "".join(
                    str(c.get("text", "")) if isinstance(c, dict) else str(c) for c in content
                )
            return str(content)
    return ""


def task_json(
    run: Run | RemoteRun, context_id: str, values: Any = None, assistant_id: str = ""
) -> dict[str, Any]:
    """The A2A task of a run (with its result when ``values`` are given)."""
    task_id = f"{context_id}:{run.run_id}"
    state = STATES.get(run.status, "working")
    task: dict[str, Any] = {
        "kind": "task",
        "id": task_id,
        "contextId": context_id,
        "status": {"state": state, "timestamp": now()},
    }
    if isinstance(values, dict) and "__error__" in values:
        error = values["__error__"]
        task["status"] = {
            "state": "failed",
            "timestamp": now(),
            "message": _agent_message(f"{error['error']}: {error['message']}", task_id, context_id),
        }
    elif isinstance(values, dict) and values.get("__interrupt__"):
        task["status"] = {"state": "input-required", "timestamp": now()}
        task["artifacts"] = [
            {
                "artifactId": str(uuid.uuid4()),
                "name": "Interrupt",
                "parts": [{"kind": "data", "data": i} for i in values["__interrupt__"]],
            }
        ]
    elif values is not None and run.status == RunStatus.SUCCESS:
        task["artifacts"] = [_artifact(_reply(values), assistant_id)]
    return task


def _artifact(text: str, assistant_id: str) -> dict[str, Any]:
    return {
        "artifactId": str(uuid.uuid4()),
        "name": "Assistant Response",
        "description": f"Response from assistant {assistant_id}",
        "parts": [{"kind": "text", "text": text}],
    }


def _agent_message(text: str, task_id: str, context_id: str) -> dict[str, Any]:
    return {
        "kind": "message",
        "role": "agent",
        "messageId": str(uuid.uuid4()),
        "parts": [{"kind": "text", "text": text}],
        "taskId": task_id,
        "contextId": context_id,
    }


async def finished(state: AppState, run: Run | RemoteRun) -> Any:
    await state.runs.settled(run)
    return await final_values(state, run)


async def send(request: Request, state: AppState, params: dict[str, Any]) -> dict[str, Any]:
    run, context_id = await start(request, state, params)
    values = await finished(state, run)
    return task_json(run, context_id, values, request.path_params["assistant_id"])


async def stream(
    request: Request, state: AppState, params: dict[str, Any], request_id: Any
) -> AsyncIterator[bytes]:
    def event(result: dict[str, Any]) -> bytes:
        return b"data: %b\n\n" % orjson.dumps(rpc_result(request_id, result))

    run, context_id = await start(request, state, params)
    task_id = f"{context_id}:{run.run_id}"
    yield event(
        {**task_json(run, context_id), "status": {"state": "submitted", "timestamp": now()}}
    )
    yield event(
        {
            "kind": "status-update",
            "taskId": task_id,
            "contextId": context_id,
            "status": {"state": "working", "timestamp": now()},
            "final": False,
        }
    )
    values = await finished(state, run)
    done = task_json(run, context_id, values, request.path_params["assistant_id"])
    for artifact in done.get("artifacts", []):
        yield event(
            {
                "kind": "artifact-update",
                "taskId": task_id,
                "contextId": context_id,
                "artifact": artifact,
                "append": False,
                "lastChunk": True,
            }
        )
    yield event(
        {
            "kind": "status-update",
            "taskId": task_id,
            "contextId": context_id,
            "status": done["status"],
            "final": True,
        }
    )


async def _task_run(
    request: Request, state: AppState, params: dict[str, Any]
) -> tuple[Run | RemoteRun, str]:
    context_id, _, run_id = str(params.get("id") or "").partition(":")
    if not run_id:
        raise RPCError(-32602, "Invalid params: 'id' is a task id ('<context id>:<run id>')")
    try:
        await open_thread(state, context_id, request)
    except (APIError, Forbidden):
        raise RPCError(-32001, f"Task {params['id']} not found") from None
    run = await state.runs.find(run_id)
    if run is None or run.thread_id != context_id:
        raise RPCError(-32001, f"Task {params['id']} not found")
    return run, context_id


async def get_task(request: Request, state: AppState, params: dict[str, Any]) -> dict[str, Any]:
    run, context_id = await _task_run(request, state, params)
    values = await final_values(state, run) if run.finished else None
    return task_json(run, context_id, values, request.path_params["assistant_id"])


async def cancel_task(request: Request, state: AppState, params: dict[str, Any]) -> dict[str, Any]:
    run, context_id = await _task_run(request, state, params)
    if run.finished:
        raise RPCError(-32002, f"Task {params['id']} cannot be canceled: it has ended")
    run.cancel("cancelled", "cancelled over A2A")
    await state.runs.settled(run)
    return task_json(run, context_id)
