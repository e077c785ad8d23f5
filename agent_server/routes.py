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

import asyncio
import functools
import os
import time
import uuid
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, overload

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent_server.agui import agui_endpoint
from agent_server.aisdk import chat_endpoint, resume_endpoint
from agent_server.auth import user_id
from agent_server.cursors import BadCursor, parse_run_cursor
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
from agent_server.sse import SSEResponse, run_events
from agent_server.state import AppState


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.agent_server
    return state


async def parse_run_request(request: Request, state: AppState) -> RunRequest:
    return await read_model(request, RunRequest, state.settings.max_body_bytes)


def query_run_request(request: Request, state: AppState) -> RunRequest:
    """``GET /runs/stream`` takes the same fields as query parameters (for EventSource)."""
    return run_request_from_query(
        request.query_params, len(str(request.url.query)), state.settings.max_body_bytes
    )


def run_request_from_query(params: Mapping[str, str], length: int, limit: int) -> RunRequest:
    """A run request from query parameters (``input``, ``config``, ``timeout`` as JSON
    text), whatever framework parsed them; ``length`` is the raw query's."""
    if length > limit:
        raise RequestError(413, "body_too_large", "query string too large")
    data: dict[str, Any] = {
        key: params[key]
        for key in ("graph", "message", "thread_id", "multitask_strategy", "on_disconnect")
        if key in params
    }
    for key in ("input", "config", "timeout"):
        if key in params:
            try:
                data[key] = orjson.loads(params[key])
            except orjson.JSONDecodeError:
                raise RequestError(
                    400, "invalid_json", f"query parameter {key!r} is not JSON"
                ) from None
    return RunRequest.model_validate(data)


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


@overload
async def launch_run(state: AppState, body: RunRequest, owner: str | None) -> Run: ...


@overload
async def launch_run(
    state: AppState, body: RunRequest, owner: str | None, *, queue: bool
) -> Run | RemoteRun: ...


async def launch_run(
    state: AppState, body: RunRequest, owner: str | None, *, queue: bool = False
) -> Run | RemoteRun:
    """:func:`start_run` for a caller already identified (``owner``: a user id, or None
    without authentication), e.g. by the framework an app embeds agent-server in."""
    if body.thread_id is not None:
        await state.runs.load_thread_owner(body.thread_id, state.graphs.get(body.graph))
    run = build_run(state, body, owner)
    if queue and state.runs.broker.shared:
        return await state.runs.enqueue(run, body.multitask_strategy)
    state.runs.submit(run, body.multitask_strategy)
    await state.runs.accepted(run)
    return run


def new_run(state: AppState, body: RunRequest, request: Request) -> Run:
    return build_run(state, body, user_id(request.scope))


def build_run(state: AppState, body: RunRequest, owner: str | None) -> Run:
    entry = state.graphs.get(body.graph)
    return Run(
        owner=owner,
        on_disconnect=body.on_disconnect or "continue",
        graph=entry,
        input=body.graph_input(),
        thread_id=body.thread_id or str(uuid.uuid4()),
        config=body.runnable_config(),  # type: ignore[arg-type]
        timeout=body.timeout,
    )


async def find_run(state: AppState, run_id: str, request: Request) -> Run | RemoteRun:
    run = await state.runs.find(run_id)
    if run is not None:
        state.runs.check_run(run, user_id(request.scope))
        return run
    if await state.runs.is_gone(run_id):
        raise RequestError(410, "run_gone", f"run {run_id} has finished and its log was dropped")
    raise RequestError(404, "run_not_found", f"no run {run_id}")


def stream_response(
    state: AppState,
    run: Run | RemoteRun,
    *,
    after: int = 0,
    id_prefix: bytes = b"",
    on_disconnect: str = "continue",
    grace: float = 0.0,
) -> SSEResponse:
    return SSEResponse(
        run_events(run, state.streams, after=after, id_prefix=id_prefix),
        headers=stream_headers(run),
        on_disconnect=client_gone(run, on_disconnect, grace),
        send_timeout=state.streams.send_timeout,
    )


def client_gone(run: Run | RemoteRun, on_disconnect: str, grace: float) -> Callable[[], None]:
    """What to do when a stream's client disconnects: nothing (``continue``), cancel the
    run, or, with ``grace``, cancel it if nobody follows it ``grace`` seconds later."""

    def disconnected() -> None:
        if on_disconnect != "cancel" or run.finished:
            return
        if grace <= 0:
            run.cancel("cancelled", "the client disconnected")
            return

        def cancel_if_unwatched() -> None:
            if run.subscribers == 0:
                run.cancel("cancelled", "the client disconnected and did not come back")

        asyncio.get_running_loop().call_later(grace, cancel_if_unwatched)

    return disconnected


def stream_headers(run: Run | RemoteRun) -> dict[str, str]:
    return {"X-Run-Id": run.run_id, "X-Thread-Id": run.thread_id}


def last_event_id(request: Request) -> str | None:
    return request.headers.get("last-event-id") or None


def parse_cursor(text: str, what: str) -> tuple[str | None, int]:
    """``<seq>`` or ``<run_id>:<seq>`` from a client, or 400 (:mod:`agent_server.cursors`)."""
    try:
        return parse_run_cursor(text, what)
    except BadCursor as exc:
        raise RequestError(400, "invalid_last_event_id", str(exc)) from None


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


async def reconnecting_run(
    state: AppState, last_event_id: str, owner: str | None
) -> tuple[Run | RemoteRun, int] | None:
    """The run and seq an EventSource's ``Last-Event-ID`` (``<run_id>:<seq>``) resumes
    from; None when there is nothing more to send (answer 204, which stops it)."""
    run_id, seq = parse_cursor(last_event_id, "Last-Event-ID")
    if run_id is None:
        raise RequestError(
            400, "invalid_last_event_id", "Last-Event-ID must be '<run_id>:<seq>' here"
        )
    run = await state.runs.find(run_id)
    if run is None or (run.finished and seq >= run.last_seq and not run.lost):
        return None  # (a lost run's end is sent even past its log: see RemoteRun.follow)
    state.runs.check_run(run, owner)
    return run, seq


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


async def finished_unless_gone(request: Request, run: Run | RemoteRun) -> bool:
    """Wait for the run to finish; False if the client left first. Starlette does not
    cancel a plain handler when its client leaves, so this watches for it."""
    finished = asyncio.ensure_future(run.wait())
    left = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({finished, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        finished.cancel()
    return run.finished


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
        Route("/ag-ui/{graph}", agui_endpoint, methods=["POST"]),
        Route("/ai-sdk/{graph}", chat_endpoint, methods=["POST"]),
        Route("/ai-sdk/{graph}/{chat_id}/stream", resume_endpoint, methods=["GET"]),
    ]
