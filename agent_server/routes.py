"""HTTP routes: start, stream, join, resume and cancel runs; threads; graphs and tools.

Resume rules (see docs/protocol.md):

- ``POST /runs/stream`` events carry ``id: <seq>``; the run's id is in ``X-Run-Id`` and
  in ``run_start``, so a client resumes it at ``GET /runs/{id}/stream``.
- ``GET /runs/stream`` is for ``EventSource``, which reconnects by itself and can only
  repeat the same URL: its ids are ``<run_id>:<seq>``, so a reconnect carrying
  ``Last-Event-ID`` resumes that run instead of starting a new one, and one from the
  final frame (or for a dropped run) gets 204, which tells ``EventSource`` to stop.
  Because such a client is expected back, ``on_disconnect=cancel`` there waits
  ``reconnect_grace`` seconds for a subscriber before cancelling.
"""

from __future__ import annotations

import functools
import os
import time
from importlib import resources
from typing import Any, overload

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent_server.auth import user_id
from agent_server.frames import dumps
from agent_server.openapi import openapi_endpoint
from agent_server.runs import RemoteRun, Run, RunRejected
from agent_server.schemas import (
    JSONResponse,
    RequestError,
    RunRequest,
    error_response,
    path_id,
    read_model,
)
from agent_server.serving import (
    app_state,
    find_run,
    finished_unless_gone,
    last_event_id,
    launch_run,
    parse_cursor,
    reconnecting_run,
    run_request_from_query,
    stream_response,
)
from agent_server.state import AppState


async def parse_run_request(request: Request, state: AppState) -> RunRequest:
    return await read_model(request, RunRequest, state.settings.max_body_bytes)


def query_run_request(request: Request, state: AppState) -> RunRequest:
    """``GET /runs/stream`` takes the same fields as query parameters (for EventSource)."""
    return run_request_from_query(
        request.query_params, len(str(request.url.query)), state.settings.max_body_bytes
    )


@overload
async def start_run(state: AppState, body: RunRequest, request: Request) -> Run: ...


@overload
async def start_run(
    state: AppState, body: RunRequest, request: Request, *, queue: bool
) -> Run | RemoteRun: ...


async def start_run(
    state: AppState, body: RunRequest, request: Request, *, queue: bool = False
) -> Run | RemoteRun:
    """Start a run here, or with ``queue`` and a shared broker, on whichever worker
    takes it from the queue first (background runs)."""
    return await launch_run(state, body, user_id(request.scope), queue=queue)


async def post_runs_stream(request: Request) -> Response:
    state = app_state(request)
    body = await parse_run_request(request, state)
    run = await start_run(state, body, request)
    return stream_response(state, run, on_disconnect=body.on_disconnect or "cancel")


async def get_runs_stream(request: Request) -> Response:
    state = app_state(request)
    resume = last_event_id(request)
    if resume is not None:  # EventSource reconnecting: never start a new run
        found = await reconnecting_run(state, resume, user_id(request.scope))
        if found is None:
            return Response(status_code=204)
        run, seq = found
        return stream_response(
            state,
            run,
            after=seq,
            id_prefix=run.run_id.encode() + b":",
            on_disconnect=run.on_disconnect,
            grace=state.settings.reconnect_grace,
        )
    body = query_run_request(request, state)
    run = await start_run(state, body, request)
    run.on_disconnect = body.on_disconnect or "cancel"
    return stream_response(
        state,
        run,
        id_prefix=run.run_id.encode() + b":",
        on_disconnect=run.on_disconnect,
        grace=state.settings.reconnect_grace,
    )


async def post_runs(request: Request) -> Response:
    state = app_state(request)
    run = await start_run(state, await parse_run_request(request, state), request, queue=True)
    location = str(request.url_for("get_run", run_id=run.run_id))
    return JSONResponse(run.describe(), status_code=202, headers={"Location": location})


async def post_runs_wait(request: Request) -> Response:
    state = app_state(request)
    body = await parse_run_request(request, state)
    run = await start_run(state, body, request)
    if not await finished_unless_gone(request, run):
        if (body.on_disconnect or "cancel") == "cancel":
            run.cancel("cancelled", "the client disconnected")
        return Response(status_code=499)  # nobody is listening any more
    await state.runs.settled(run)
    return JSONResponse(run.result())


async def get_run(request: Request) -> Response:
    state = app_state(request)
    run = await find_run(state, path_id(request, "run_id"), request)
    return JSONResponse(run.describe())


async def get_run_stream(request: Request) -> Response:
    state = app_state(request)
    run = await find_run(state, path_id(request, "run_id"), request)
    after = 0
    resume = last_event_id(request) or request.query_params.get("after")
    if resume is not None:
        run_part, after = parse_cursor(resume, "Last-Event-ID / after")
        if run_part is not None and run_part != run.run_id:
            raise RequestError(400, "invalid_last_event_id", "Last-Event-ID names another run")
    return stream_response(state, run, after=after)


async def post_run_cancel(request: Request) -> Response:
    state = app_state(request)
    run = await find_run(state, path_id(request, "run_id"), request)
    if run.finished:
        return error_response(409, "run_finished", f"run {run.run_id} is already {run.status}")
    run.cancel("cancelled", "cancelled by request")
    await state.runs.settled(run)  # every worker reads it cancelled once this answers
    return JSONResponse(run.describe(), status_code=202)


async def get_thread_runs(request: Request) -> Response:
    state = app_state(request)
    thread_id = path_id(request, "thread_id")
    user = user_id(request.scope)
    runs = await state.runs.all_thread_runs(thread_id)
    if runs:
        await state.runs.load_thread_owner(thread_id, state.graphs.graphs.get(runs[-1]["graph"]))
    elif user is not None:
        raise RequestError(404, "thread_not_found", f"no known runs on thread {thread_id!r}")
    state.runs.check_thread(thread_id, user)
    return JSONResponse({"runs": runs})


async def get_thread_state(request: Request) -> Response:
    state = app_state(request)
    thread_id = path_id(request, "thread_id")
    user = user_id(request.scope)
    state.runs.check_thread(thread_id, user)
    if user is not None and not state.runs.thread_runs(thread_id):
        # With auth on, a thread this server has no owner record of is not shown to anyone.
        raise RequestError(404, "thread_not_found", f"no known runs on thread {thread_id!r}")
    graph_name = request.query_params.get("graph")
    if graph_name is None:
        latest = state.runs.latest_on_thread(thread_id)
        if latest is None:
            raise RequestError(
                404, "thread_not_found", f"no known runs on thread {thread_id!r}; pass ?graph="
            )
        graph_name = latest.graph.name
    entry = state.graphs.get(graph_name)
    await state.runs.load_thread_owner(thread_id, entry)
    state.runs.check_thread(thread_id, user)
    snapshot = await entry.graph.aget_state({"configurable": {"thread_id": thread_id}})
    checkpoint = (snapshot.config or {}).get("configurable", {})
    if not checkpoint.get("checkpoint_id"):
        raise RequestError(404, "thread_not_found", f"thread {thread_id!r} has no state")
    return JSONResponse(
        {
            "thread_id": thread_id,
            "graph": graph_name,
            "values": snapshot.values,
            "next": list(snapshot.next),
            "interrupts": [
                {"value": item.value, "interrupt_id": item.id} for item in snapshot.interrupts
            ],
            "checkpoint_id": checkpoint.get("checkpoint_id"),
            "created_at": snapshot.created_at,
            "metadata": snapshot.metadata,
        }
    )


async def get_graphs(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse({"graphs": state.graphs.describe()})


async def get_tools(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse({"tools": state.tools.describe()})


async def healthz(request: Request) -> Response:
    """200 while this worker can serve everything; 503 with the reason (a load balancer
    takes it out) while it shuts down or cannot reach its broker."""
    state = app_state(request)
    health = state.runs.broker.health
    body: dict[str, Any] = {
        "status": "ok",
        "graphs": len(state.graphs),
        "tools": len(state.tools),
        "worker": os.getpid(),
    }
    if not state.runs.accepting:
        body["status"] = "shutting_down"
    elif not health.up:
        body["status"] = "broker_unavailable"
        body["reason"] = health.error
        body["down_for"] = round(time.monotonic() - health.since, 3)
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@functools.cache
def playground_page() -> bytes:
    return (resources.files("agent_server") / "static" / "playground.html").read_bytes()


async def playground(request: Request) -> Response:
    """The playground: one static page, no build step, nothing fetched from elsewhere."""
    return Response(
        playground_page(),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CSP},
    )


# The page talks only to this server (its own origin, over HTTP and WebSocket).
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)


async def metrics(request: Request) -> Response:
    state = app_state(request)
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


async def rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RunRejected)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return Response(
        dumps({"code": exc.code, "message": exc.message}),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/runs", post_runs, methods=["POST"]),
        Route("/runs/stream", post_runs_stream, methods=["POST"]),
        Route("/runs/stream", get_runs_stream, methods=["GET"]),
        Route("/runs/wait", post_runs_wait, methods=["POST"]),
        Route("/runs/{run_id}", get_run, methods=["GET"]),
        Route("/runs/{run_id}/stream", get_run_stream, methods=["GET"]),
        Route("/runs/{run_id}/cancel", post_run_cancel, methods=["POST"]),
        Route("/threads/{thread_id}/runs", get_thread_runs, methods=["GET"]),
        Route("/threads/{thread_id}/state", get_thread_state, methods=["GET"]),
        Route("/graphs", get_graphs, methods=["GET"]),
        Route("/tools", get_tools, methods=["GET"]),
        Route("/", playground, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
    ]
