"""The HTTP API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Decisions (read before changing):

- The paths are the app's own routes, walked at request time, and every route must have
  an entry in :data:`NATIVE` or :data:`LANGGRAPH`: a route added without one makes the
  document fail to build (and ``tests/test_openapi.py`` with it), so nothing is served
  undocumented. ``/ws`` is not an HTTP operation: the document's description points to
  docs/protocol.md for it.
- Request bodies and error bodies are the pydantic models the handlers validate with and
  answer from (:class:`~agent_server.schemas.RunRequest`, the LangGraph API's bodies,
  AG-UI's ``RunAgentInput``, the AI SDK's ``ChatRequest``, the two error shapes); their
  JSON schemas become ``#/components/schemas/...``. Success bodies that are built as
  plain dicts get the small models below, or a described free-form object.
- Paths are relative to the one server URL, the request's root path: mounted under
  ``/agents`` (docs/embedding.md) or behind ``uvicorn --root-path``, the document says
  ``servers: [{"url": "/agents"}]`` and its paths stay ``/runs``, ... The LangGraph API is
  found under whatever prefix the settings give it.
- Two error shapes: the native ``{"code", "message"}`` and, from the LangGraph API's
  handlers, ``{"detail", "code"}``. A request refused before any handler runs (401 from
  the auth middleware, 404 for an unknown path, 405 for a wrong method) has the native
  shape on every path, and the document says so.
- Built once per app and root path (the first request pays for it), then served as the
  same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from ag_ui.core import RunAgentInput
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from agent_server.auth import OPEN_PATHS
from agent_server.cursors import ID_PATTERN, MAX_DIGITS
from agent_server.mcp.server import JSONRPCErrorBody, JSONRPCMessage
from agent_server.protocols.aisdk import ChatRequest
from agent_server.protocols.langgraph import schemas as lg
from agent_server.protocols.langgraph.schemas import LangGraphError
from agent_server.protocols.langgraph.threadstream import schemas as thread_stream
from agent_server.runs import RunStatus
from agent_server.schemas import (
    THREAD_ID_PATTERN,
    ErrorBody,
    JSONResponse,
    RunConfig,
    RunRequest,
)
from agent_server.settings import Settings

REF = "#/components/schemas/{model}"
SEQ = rf"[0-9]{{1,{MAX_DIGITS}}}"


# -- success bodies built as dicts by the handlers ---------------------------------------


class RunDescription(BaseModel):
    """A run as ``POST /runs``, ``GET /runs/{id}`` and the cancel route describe it."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    thread_id: str
    graph: str
    status: RunStatus
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    first_token_at: float | None = None
    last_seq: int = 0


class RunResult(RunDescription):
    """A finished run (``POST /runs/wait``): its final values, interrupts or error."""

    values: Any = None
    interrupts: list[dict[str, Any]] = Field(default_factory=list)
    error: ErrorBody | None = None
    usage: dict[str, Any] | None = None


class ThreadRuns(BaseModel):
    runs: list[RunDescription]


class ThreadState(BaseModel):
    thread_id: str
    graph: str
    values: Any = None
    next: list[str]
    interrupts: list[dict[str, Any]]
    checkpoint_id: str
    created_at: str | None = None
    metadata: dict[str, Any] | None = None


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")  # the reason and time of a broker outage

    status: Literal["ok", "shutting_down", "broker_unavailable"]
    graphs: int
    tools: int
    worker: int


class GraphList(BaseModel):
    graphs: list[dict[str, Any]]


class ToolList(BaseModel):
    tools: list[dict[str, Any]]


MODELS: tuple[type[BaseModel], ...] = (
    ErrorBody, LangGraphError, RunRequest, RunConfig, RunDescription, RunResult, ThreadRuns,
    ThreadState, Health, GraphList, ToolList, RunAgentInput, ChatRequest, lg.RunCreate,
    lg.ThreadCreate, lg.ThreadSearch, lg.ThreadUpdate, lg.StateUpdate, lg.StateAt,
    lg.HistoryQuery, lg.AssistantSearch, lg.StorePut, lg.StoreDelete, lg.StoreSearch,
    lg.StoreNamespaces, lg.AssistantCreate, lg.AssistantPatch, lg.AssistantCount,
    lg.AssistantVersions, lg.AssistantLatest, lg.ThreadPrune, lg.RunBatch,
    lg.CronCreate, lg.CronPatch, lg.CronSearch, lg.CronCount,
)  # fmt: skip
# /mcp's JSON-RPC bodies (agent_server/mcp/server.py).
MODELS += (JSONRPCMessage, JSONRPCErrorBody)
# Thread streams' bodies (agent_server/protocols/langgraph/threadstream).
MODELS += (thread_stream.Command, thread_stream.EventStreamRequest)


# -- operations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["query", "header", "path"]
    schema: dict[str, Any]
    description: str = ""
    required: bool = False
    many: bool = False  # repeated query parameter

    def json(self) -> dict[str, Any]:
        schema = {"type": "array", "items": self.schema} if self.many else self.schema
        out: dict[str, Any] = {"name": self.name, "in": self.where, "schema": schema}
        if self.description:
            out["description"] = self.description
        if self.required or self.where == "path":
            out["required"] = True
        if self.many:
            out.update(style="form", explode=True)
        return out


Body = type[BaseModel] | Literal["json", "sse", "text", "html", "empty"]


@dataclass(frozen=True)
class Op:
    summary: str
    ok: dict[int, tuple[Body, str]]
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()


def _string(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def _json_text(schema: dict[str, Any], what: str) -> dict[str, Any]:
    return _string(contentMediaType="application/json", contentSchema=schema, description=what)


def _enum(*values: str) -> dict[str, Any]:
    return _string(enum=list(values))


BOOL = _enum("true", "false", "1", "0", "yes", "no")
RUN_ERRORS = (400, 403, 404, 409, 413, 422, 429, 503)
STREAM: dict[int, tuple[Body, str]] = {
    200: ("sse", "Server-Sent Events, one frame per event, ending with `data: [DONE]`.")
}
SSE_ID = Param(
    "Last-Event-ID",
    "header",
    _string(pattern=rf"^(?:.+:)?{SEQ}$"),
    "Resume after this event: `<seq>` or `<run_id>:<seq>` (seq: 1 to 18 ASCII digits).",
)
RESUME_AFTER = Param("after", "query", _string(pattern=rf"^{SEQ}$"), "Same as `Last-Event-ID`.")

MCP_PARAMS = (
    Param("Mcp-Session-Id", "header", _string(), "The session, from `initialize`'s answer."),
    Param("Mcp-Protocol-Version", "header", _string(), "The negotiated protocol version."),
)

NATIVE: dict[tuple[str, str], Op] = {
    ("POST", "/runs"): Op(
        "Start a background run", {202: (RunDescription, "Accepted; `Location` names it.")},
        RunRequest, errors=RUN_ERRORS,
    ),
    ("POST", "/runs/stream"): Op("Start a run and stream its frames", STREAM, RunRequest,
                                 errors=RUN_ERRORS),
    ("GET", "/runs/stream"): Op(
        "Start a run from query parameters and stream it (for EventSource)",
        {**STREAM, 204: ("empty", "Nothing more to send for this `Last-Event-ID`.")},
        params=(
            Param("graph", "query", _string(minLength=1)),
            Param("message", "query", _string(), "One user turn (or `input`)."),
            Param("input", "query", _json_text({}, "The graph's input, as JSON text.")),
            Param("thread_id", "query", _string(pattern=THREAD_ID_PATTERN)),
            Param("config", "query", _json_text({"$ref": REF.format(model="RunConfig")},
                                                "RunConfig as JSON text.")),
            Param("timeout", "query", _json_text({"type": "number"}, "Seconds, as JSON.")),
            Param("multitask_strategy", "query", _enum("reject", "enqueue", "interrupt")),
            Param("on_disconnect", "query", _enum("cancel", "continue")),
            Param("Last-Event-ID", "header", _string(pattern=rf"^.+:{SEQ}$"),
                  "EventSource reconnecting: `<run_id>:<seq>`; resumes, never starts a run."),
        ),
        errors=RUN_ERRORS,
    ),
    ("POST", "/runs/wait"): Op("Run to completion and answer its result",
                               {200: (RunResult, "The finished run.")}, RunRequest,
                               errors=RUN_ERRORS),
    ("GET", "/runs/{run_id}"): Op("Describe a run", {200: (RunDescription, "The run.")},
                                  errors=(403, 404, 410)),
    ("GET", "/runs/{run_id}/stream"): Op(
        "Join a run's stream (replay, then live)", STREAM, params=(SSE_ID, RESUME_AFTER),
        errors=(400, 403, 404, 410),
    ),
    ("POST", "/runs/{run_id}/cancel"): Op("Cancel a run",
                                          {202: (RunDescription, "Cancelled.")},
                                          errors=(403, 404, 409, 410)),
    ("GET", "/threads/{thread_id}/runs"): Op("A thread's runs", {200: (ThreadRuns, "Its runs.")},
                                             errors=(403, 404)),
    ("GET", "/threads/{thread_id}/state"): Op(
        "A thread's latest state", {200: (ThreadState, "Its state.")},
        params=(Param("graph", "query", _string(), "The graph, if no run is known."),),
        errors=(403, 404),
    ),
    ("GET", "/graphs"): Op("The graphs", {200: (GraphList, "Every graph.")}),
    ("GET", "/tools"): Op("The tools", {200: (ToolList, "Every tool, with its JSON schema.")}),
    ("GET", "/healthz"): Op(
        "Liveness and readiness",
        {200: (Health, "Accepting runs."),
         503: (Health, "Draining, or the broker is unreachable (`reason`).")},
    ),
    ("GET", "/metrics"): Op("Prometheus metrics", {200: ("text", "The exposition format.")}),
    ("GET", "/"): Op("The playground", {200: ("html", "One static page.")}),
    ("GET", "/openapi.json"): Op("This document", {200: ("json", "OpenAPI 3.1.")}),
    ("POST", "/ag-ui/{graph}"): Op("AG-UI: run an agent",
                                   {200: ("sse", "AG-UI events (bare `\\n` line ends).")},
                                   RunAgentInput, errors=RUN_ERRORS),
    ("POST", "/ai-sdk/{graph}"): Op("AI SDK: a useChat request",
                                    {200: ("sse", "UI message stream parts, then `[DONE]`.")},
                                    ChatRequest, errors=RUN_ERRORS),
    ("GET", "/ai-sdk/{graph}/{chat_id}/stream"): Op(
        "AI SDK: rejoin the chat's active run",
        {200: ("sse", "The active run's parts from its start."),
         204: ("empty", "No active run.")},
        errors=(403,),
    ),
    # MCP's Streamable HTTP transport (docs/mcp.md); errors are JSON-RPC bodies.
    ("POST", "/mcp"): Op(
        "MCP: a JSON-RPC message (every graph is a tool)",
        {200: ("sse", "A request's answer: its progress notifications, then its response."),
         202: ("empty", "A notification or a response, accepted.")},
        JSONRPCMessage, params=MCP_PARAMS, errors=(400, 403, 404, 406, 413, 415),
    ),
    ("GET", "/mcp"): Op("MCP: the session's stream of server messages",
                        {200: ("sse", "Server-to-client JSON-RPC messages.")},
                        params=MCP_PARAMS, errors=(400, 403, 404, 406, 409)),
    ("DELETE", "/mcp"): Op("MCP: end the session", {200: ("empty", "Ended.")},
                           params=MCP_PARAMS, errors=(400, 403, 404, 405)),
}  # fmt: skip

LG_ERRORS = (400, 403, 404, 409, 413, 422, 429, 503)
LG_STREAM: dict[int, tuple[Body, str]] = {
    200: ("sse", "LangGraph's SSE events (`event:` mode, `data:`, `id: <seq>`).")
}
STREAM_MODE = Param("stream_mode", "query", _string(), many=True)
CANCEL_ON_DISCONNECT = Param("cancel_on_disconnect", "query", BOOL)
ANY_JSON: tuple[Body, str] = ("json", "As LangGraph's server answers.")

LANGGRAPH: dict[tuple[str, str], Op] = {
    ("POST", "/assistants/search"): Op("Search assistants", {200: ANY_JSON}, lg.AssistantSearch,
                                       errors=(400, 404, 413, 422)),
    ("GET", "/assistants/{id}"): Op("An assistant", {200: ANY_JSON}, errors=(404,)),
    ("GET", "/assistants/{id}/graph"): Op(
        "An assistant's graph", {200: ANY_JSON},
        params=(Param("xray", "query", _string(pattern=rf"^(?:true|false|{SEQ})$")),),
        errors=(404,),
    ),
    ("GET", "/assistants/{id}/schemas"): Op("An assistant's schemas", {200: ANY_JSON},
                                            errors=(404,)),
    ("POST", "/threads"): Op("Create a thread", {200: ANY_JSON}, lg.ThreadCreate,
                             errors=(400, 409, 413, 422)),
    ("POST", "/threads/search"): Op("Search threads", {200: ANY_JSON}, lg.ThreadSearch,
                                    errors=(400, 413, 422)),
    ("GET", "/threads/{thread_id}"): Op("A thread", {200: ANY_JSON}, errors=(403, 404)),
    ("PATCH", "/threads/{thread_id}"): Op("Update a thread's metadata", {200: ANY_JSON},
                                          lg.ThreadUpdate, errors=(400, 403, 404, 413, 422)),
    ("DELETE", "/threads/{thread_id}"): Op("Delete a thread", {204: ("empty", "Deleted.")},
                                           errors=(403, 404)),
    ("GET", "/threads/{thread_id}/state"): Op(
        "A thread's state", {200: ANY_JSON},
        params=(Param("subgraphs", "query", BOOL),), errors=(403, 404),
    ),
    ("POST", "/threads/{thread_id}/state"): Op("Update a thread's state", {200: ANY_JSON},
                                               lg.StateUpdate,
                                               errors=(400, 403, 404, 409, 413, 422)),
    ("POST", "/threads/{thread_id}/state/checkpoint"): Op(
        "A thread's state at a checkpoint", {200: ANY_JSON}, lg.StateAt,
        errors=(400, 403, 404, 413, 422),
    ),
    ("GET", "/threads/{thread_id}/state/{checkpoint_id}"): Op(
        "A thread's state at a checkpoint", {200: ANY_JSON},
        params=(Param("subgraphs", "query", BOOL),), errors=(403, 404),
    ),
    ("POST", "/threads/{thread_id}/history"): Op("A thread's history", {200: ANY_JSON},
                                                 lg.HistoryQuery,
                                                 errors=(400, 403, 404, 413, 422)),
    ("GET", "/threads/{thread_id}/history"): Op(
        "A thread's history", {200: ANY_JSON},
        params=(Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
                Param("before", "query", _string(), "A checkpoint id.")),
        errors=(403, 404, 422),
    ),
    ("GET", "/threads/{thread_id}/stream"): Op(
        "Every run on the thread, as it happens", LG_STREAM,
        params=(
            Param("stream_mode", "query", _enum("run_modes", "lifecycle", "state_update"),
                  many=True),
            Param("stream_modes", "query", _enum("run_modes", "lifecycle", "state_update"),
                  many=True),
            Param("Last-Event-ID", "header", _string(pattern=rf"^(?:-|{SEQ}(?:-(?:{SEQ}|\*)?)?)$"),
                  "`<run created ms>-<seq>`; `0` or `-` for every run still known."),
        ),
        errors=(403, 404, 422),
    ),
    ("GET", "/threads/{thread_id}/runs"): Op(
        "A thread's runs", {200: ANY_JSON},
        params=(Param("limit", "query", {"type": "integer", "minimum": 0}),
                Param("offset", "query", {"type": "integer", "minimum": 0}),
                Param("status", "query", _string())),
        errors=(403, 404, 422),
    ),
    ("POST", "/threads/{thread_id}/runs"): Op("Start a background run", {200: ANY_JSON},
                                              lg.RunCreate, errors=LG_ERRORS),
    ("POST", "/threads/{thread_id}/runs/stream"): Op("Start a run and stream it", LG_STREAM,
                                                     lg.RunCreate, errors=LG_ERRORS),
    ("POST", "/threads/{thread_id}/runs/wait"): Op("Run to completion", {200: ANY_JSON},
                                                   lg.RunCreate, errors=LG_ERRORS),
    ("GET", "/threads/{thread_id}/runs/{run_id}"): Op("A run", {200: ANY_JSON},
                                                      errors=(403, 404, 410)),
    ("DELETE", "/threads/{thread_id}/runs/{run_id}"): Op(
        "Delete a finished run", {204: ("empty", "Deleted.")}, errors=(403, 404, 409, 410),
    ),
    ("GET", "/threads/{thread_id}/runs/{run_id}/join"): Op(
        "Wait for a run's final values", {200: ANY_JSON}, params=(CANCEL_ON_DISCONNECT,),
        errors=(403, 404, 410),
    ),
    ("GET", "/threads/{thread_id}/runs/{run_id}/stream"): Op(
        "Join a run's stream", LG_STREAM,
        params=(
            STREAM_MODE, CANCEL_ON_DISCONNECT,
            Param("Last-Event-ID", "header", _string(pattern=rf"^(?:-|-1|{SEQ})$"),
                  "Resume after this seq; `-1`, `-` or `0` replay everything."),
        ),
        errors=(400, 403, 404, 410),
    ),
    ("POST", "/threads/{thread_id}/runs/{run_id}/cancel"): Op(
        "Cancel a run",
        {200: ANY_JSON, 202: ("empty", "Cancelling (without `wait`).")},
        params=(Param("wait", "query", BOOL),
                Param("action", "query", _enum("interrupt", "rollback"))),
        errors=(403, 404, 410, 422),
    ),
    ("POST", "/runs"): Op("Start a stateless background run", {200: ANY_JSON}, lg.RunCreate,
                          errors=LG_ERRORS),
    ("POST", "/runs/stream"): Op("Start a stateless run and stream it", LG_STREAM,
                                 lg.RunCreate, errors=LG_ERRORS),
    ("POST", "/runs/wait"): Op("Run a stateless run to completion", {200: ANY_JSON},
                               lg.RunCreate, errors=LG_ERRORS),
    # issue 18: assistant records, thread copies and prunes, batches, the store
    ("POST", "/assistants"): Op("Create an assistant", {200: ANY_JSON}, lg.AssistantCreate,
                                errors=(400, 404, 409, 413, 422)),
    ("POST", "/assistants/count"): Op("Count assistants", {200: ANY_JSON}, lg.AssistantCount,
                                      errors=(400, 404, 413, 422)),
    ("PATCH", "/assistants/{id}"): Op("Update an assistant (a new version)", {200: ANY_JSON},
                                      lg.AssistantPatch, errors=(400, 403, 404, 409, 413, 422)),
    ("DELETE", "/assistants/{id}"): Op(
        "Delete an assistant", {204: ("empty", "Deleted.")},
        params=(Param("delete_threads", "query", BOOL),), errors=(403, 404, 409),
    ),
    ("POST", "/assistants/{id}/versions"): Op("An assistant's versions", {200: ANY_JSON},
                                              lg.AssistantVersions,
                                              errors=(400, 404, 413, 422)),
    ("POST", "/assistants/{id}/latest"): Op("Make a version current", {200: ANY_JSON},
                                            lg.AssistantLatest,
                                            errors=(400, 403, 404, 413, 422)),
    ("POST", "/threads/prune"): Op("Prune or delete threads", {200: ANY_JSON}, lg.ThreadPrune,
                                   errors=(400, 413, 422)),
    ("POST", "/threads/{thread_id}/copy"): Op("Copy a thread with its history",
                                              {200: ANY_JSON}, errors=(403, 404)),
    ("POST", "/runs/batch"): Op("Start stateless background runs", {200: ANY_JSON},
                                lg.RunBatch, errors=LG_ERRORS),
    ("PUT", "/store/items"): Op("Put a store item", {204: ("empty", "Stored.")}, lg.StorePut,
                                errors=(400, 403, 413, 422)),
    ("GET", "/store/items"): Op(
        "A store item (null when absent)", {200: ANY_JSON},
        params=(Param("namespace", "query", _string(), "Labels joined by `.`.", required=True),
                Param("key", "query", _string(minLength=1), required=True),
                Param("refresh_ttl", "query", BOOL)),
        errors=(403, 422),
    ),
    ("DELETE", "/store/items"): Op("Delete a store item", {204: ("empty", "Deleted.")},
                                   lg.StoreDelete, errors=(400, 403, 413, 422)),
    ("POST", "/store/items/search"): Op("Search store items", {200: ANY_JSON}, lg.StoreSearch,
                                        errors=(400, 403, 413, 422)),
    ("POST", "/store/namespaces"): Op("List store namespaces", {200: ANY_JSON},
                                      lg.StoreNamespaces, errors=(400, 403, 413, 422)),
    ("POST", "/a2a/{assistant_id}"): Op(
        "A2A JSON-RPC: message/send, message/stream, tasks/get, tasks/cancel",
        {200: ("json", "A JSON-RPC response (errors too); `message/stream`: SSE of them.")},
        errors=(413,),
    ),
    ("GET", "/a2a/{assistant_id}/.well-known/agent-card.json"): Op(
        "The assistant's A2A agent card", {200: ANY_JSON}, errors=(404,)),
    ("GET", "/a2a/{assistant_id}/.well-known/agent.json"): Op(
        "The assistant's A2A agent card (older path)", {200: ANY_JSON}, errors=(404,)),
    # issue 18: crons
    ("POST", "/runs/crons"): Op("Create a cron (a new thread per run)", {200: ANY_JSON},
                                lg.CronCreate, errors=(400, 404, 413, 422)),
    ("POST", "/threads/{thread_id}/runs/crons"): Op("Create a cron on a thread",
                                                    {200: ANY_JSON}, lg.CronCreate,
                                                    errors=(400, 403, 404, 413, 422)),
    ("POST", "/runs/crons/search"): Op("Search the caller's crons", {200: ANY_JSON},
                                       lg.CronSearch, errors=(400, 413, 422)),
    ("POST", "/runs/crons/count"): Op("Count the caller's crons", {200: ANY_JSON},
                                      lg.CronCount, errors=(400, 413, 422)),
    ("GET", "/runs/crons/{cron_id}"): Op("A cron", {200: ANY_JSON}, errors=(404,)),
    ("PATCH", "/runs/crons/{cron_id}"): Op("Update a cron", {200: ANY_JSON}, lg.CronPatch,
                                           errors=(400, 404, 413, 422)),
    ("DELETE", "/runs/crons/{cron_id}"): Op("Delete a cron", {204: ("empty", "Deleted.")},
                                            errors=(404,)),
}  # fmt: skip

# Agent Protocol v2 thread streams (docs/thread-streams.md); their WebSocket at
# /threads/{thread_id}/stream/events is not an HTTP operation.
LANGGRAPH |= {
    ("POST", "/threads/{thread_id}/commands"): Op(
        "Send a command to a thread",
        {200: ("json", "The reply: `{type: success, id, result, meta}` or a protocol error "
                       "`{type: error, id, error, message}`.")},
        thread_stream.Command, errors=(400, 403, 413, 422, 429, 503),
    ),
    ("POST", "/threads/{thread_id}/stream/events"): Op(
        "A thread's events, filtered (SSE); never ends by itself",
        {200: ("sse", "One `data:` line per event (`{type: event, event_id, seq, method, "
                      "params}`).")},
        thread_stream.EventStreamRequest,
        params=(Param("Last-Event-ID", "header", _string(), "Resume after this event id."),),
        errors=(400, 403, 404, 413, 422),
    ),
}  # fmt: skip

ERROR_TEXT = {
    400: "Bad request: not JSON, or a bad cursor (`Last-Event-ID`, `after`).",
    401: "Missing or invalid credentials (auth on).",
    403: "The thread or run belongs to another user.",
    404: "Unknown graph, run, thread or assistant.",
    405: "Wrong method.",
    409: "A conflict: the thread is busy, the run already finished...",
    410: "The run's log was dropped (retention).",
    413: "The body is over the size limit.",
    422: "A field is missing, extra or invalid.",
    429: "Too many runs waiting; see `Retry-After`.",
    503: "The server is shutting down.",
}


# -- the document ------------------------------------------------------------------------


def _content(body: Body) -> dict[str, Any] | None:
    if body == "empty":
        return None
    if body == "sse":
        return {"text/event-stream": {"schema": _string()}}
    if body == "text":
        return {"text/plain": {"schema": _string()}}
    if body == "html":
        return {"text/html": {"schema": _string()}}
    if body == "json":
        return {"application/json": {"schema": {}}}
    assert not isinstance(body, str)
    return {"application/json": {"schema": {"$ref": REF.format(model=body.__name__)}}}


def _error(status: int, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "description": ERROR_TEXT.get(status, "Client error."),
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
    }


def _operation(
    method: str, path: str, op: Op, tag: str, error: type[BaseModel], auth: bool | None
) -> dict[str, Any]:
    """One operation; ``auth``: None without authentication, else whether it needs it."""
    path_params = [
        Param(name, "path", _string() if name == "graph" else _string(pattern=ID_PATTERN))
        for name in re.findall(r"{(\w+)}", path)
    ]
    responses: dict[str, Any] = {}
    for status, (body, text) in op.ok.items():
        response: dict[str, Any] = {"description": text}
        content = _content(body)
        if content is not None:
            response["content"] = content
        responses[str(status)] = response
    # Every id in a path is checked (cursors.parse_id): 422 before any lookup.
    for status in sorted({*op.errors, *([422] if path_params else [])}):
        responses[str(status)] = _error(status, error)
    if auth:
        responses["401"] = _error(401, ErrorBody)
    # Refused before the handler (unknown path or method), in the native shape.
    responses["4XX"] = _error(0, ErrorBody) | {"description": "Refused before any handler."}
    operation: dict[str, Any] = {
        "operationId": _operation_id(tag, method, path),
        "summary": op.summary,
        "tags": [tag],
        "parameters": [p.json() for p in (*path_params, *op.params)],
        "responses": responses,
    }
    if op.body is not None:
        schema = {"$ref": REF.format(model=op.body.__name__)}
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    if auth is False:
        operation["security"] = []
    return operation


def _operation_id(tag: str, method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{tag.replace(' ', '_').lower()}_{method.lower()}_{words}"


def _routes(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, str, Route]]:
    """``(mount prefix, path, route)`` of every HTTP route, mounts walked."""
    found: list[tuple[str, str, Route]] = []
    for route in routes:
        if isinstance(route, Mount):
            found += _routes(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            found.append((prefix, route.path, route))
    return found


def build_document(routes: list[BaseRoute], settings: Settings, root_path: str) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (an app's), served at ``root_path``."""
    auth = settings.auth != "none"
    paths: dict[str, dict[str, Any]] = {}
    error: type[BaseModel]
    for prefix, path, route in _routes(routes):
        table, tag, error = NATIVE, "agent-server", ErrorBody
        if prefix == settings.langgraph_api_prefix:
            table, tag, error = LANGGRAPH, "LangGraph API", LangGraphError
        elif prefix:
            raise LookupError(f"no OpenAPI entries for routes under {prefix!r}")
        elif path == "/mcp":
            tag, error = "MCP", JSONRPCErrorBody
        elif path.startswith(("/ag-ui/", "/ai-sdk/")):
            tag = "AG-UI" if path.startswith("/ag-ui/") else "AI SDK"
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op = table.get((method, path))
            if op is None:
                raise LookupError(f"{method} {prefix}{path} has no entry in agent_server.openapi")
            secured = (prefix + path not in OPEN_PATHS) if auth else None
            paths.setdefault(prefix + path, {})[method.lower()] = _operation(
                method, prefix + path, op, tag, error, secured
            )
    _, schemas = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    components: dict[str, Any] = {"schemas": schemas.get("$defs", {})}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "agent-server",
            "version": "1",
            "description": "Runs LangGraph agents and streams their frames. The WebSocket "
            "`/ws` (not an HTTP operation) is described in docs/protocol.md; the LangGraph "
            f"API is under `{settings.langgraph_api_prefix}` (docs/langgraph-api.md).",
        },
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": components,
    }
    if auth:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        }
        document["security"] = [{"bearer": []}, {"apiKey": []}]
    return document


async def openapi_endpoint(request: Request) -> Response:
    """``GET /openapi.json``: built on the first request, then the same bytes."""
    app = request.app
    root_path: str = request.scope.get("root_path", "")
    cache: dict[str, bytes] | None = getattr(app.state, "openapi_documents", None)
    if cache is None:
        cache = app.state.openapi_documents = {}
    if root_path not in cache:
        settings: Settings = app.state.agent_server.settings
        document = build_document(list(app.routes), settings, root_path)
        cache[root_path] = bytes(JSONResponse(document).body)
    return Response(cache[root_path], media_type="application/json")
