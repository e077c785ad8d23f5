"""HTTP routes: start and stream runs, wait for results, list graphs and tools."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent_server.runs import Run
from agent_server.schemas import JSONResponse, RequestError, RunRequest, read_body
from agent_server.sse import SSEResponse, run_events
from agent_server.state import AppState


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.agent_server
    return state


async def parse_run_request(request: Request, state: AppState) -> RunRequest:
    body = await read_body(request, state.settings.max_body_bytes)
    try:
        return RunRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise RequestError(400, "invalid_json", "request body is not valid JSON") from None
        raise


def query_run_request(request: Request) -> RunRequest:
    """``GET /runs/stream`` takes the same fields as query parameters (for EventSource)."""
    params = request.query_params
    data: dict[str, Any] = {
        key: params[key] for key in ("graph", "message", "thread_id") if key in params
    }
    for key in ("input", "config"):
        if key in params:
            try:
                data[key] = orjson.loads(params[key])
            except orjson.JSONDecodeError:
                raise RequestError(
                    400, "invalid_json", f"query parameter {key!r} is not JSON"
                ) from None
    return RunRequest.model_validate(data)


def start_run(state: AppState, body: RunRequest) -> Run:
    entry = state.graphs.get(body.graph)
    run = Run(
        graph=entry,
        input=body.graph_input(),
        thread_id=body.thread_id or str(uuid.uuid4()),
        config=body.runnable_config(),  # type: ignore[arg-type]
    )
    return state.runs.start(run)


def stream_response(state: AppState, run: Run) -> SSEResponse:
    def on_disconnect() -> None:
        run.cancel()

    return SSEResponse(
        run_events(
            run,
            ping_interval=state.settings.ping_interval,
            pacer=state.pacer,
        ),
        headers={"X-Run-Id": run.run_id, "X-Thread-Id": run.thread_id},
        on_disconnect=on_disconnect,
    )


async def post_runs_stream(request: Request) -> Response:
    state = app_state(request)
    body = await parse_run_request(request, state)
    return stream_response(state, start_run(state, body))


async def get_runs_stream(request: Request) -> Response:
    state = app_state(request)
    return stream_response(state, start_run(state, query_run_request(request)))


async def post_runs_wait(request: Request) -> Response:
    state = app_state(request)
    run = start_run(state, await parse_run_request(request, state))
    try:
        async for _ in run.follow():
            pass
    finally:
        run.cancel()  # a no-op once finished; stops the run if this request is abandoned
    return JSONResponse(run.result())


async def get_graphs(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse({"graphs": state.graphs.describe()})


async def get_tools(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse({"tools": state.tools.describe()})


async def healthz(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse({"status": "ok", "graphs": len(state.graphs), "tools": len(state.tools)})


def routes() -> list[BaseRoute]:
    return [
        Route("/runs/stream", post_runs_stream, methods=["POST"]),
        Route("/runs/stream", get_runs_stream, methods=["GET"]),
        Route("/runs/wait", post_runs_wait, methods=["POST"]),
        Route("/graphs", get_graphs, methods=["GET"]),
        Route("/tools", get_tools, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
