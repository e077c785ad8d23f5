"""What every HTTP route that starts, finds or streams runs shares, whichever protocol it
speaks: the native routes (:mod:`agent_server.routes`), the protocol adapters
(:mod:`agent_server.protocols`) and the Django views all build on these, so none of
them imports another's routes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from typing import Any, overload

import orjson
from starlette.requests import Request

from agent_server.auth import user_id
from agent_server.cursors import BadCursor, parse_run_cursor
from agent_server.runs import RemoteRun, Run
from agent_server.schemas import RequestError, RunRequest
from agent_server.sse import SSEResponse, run_events
from agent_server.state import AppState


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.agent_server
    return state


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
