"""LangGraph's SSE stream of a run, rendered from its log (the decisions are in
:mod:`agent_server.langgraph_api.routes`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson
from starlette.requests import Request

from agent_server.frames import dumps
from agent_server.langgraph_api.http import APIError
from agent_server.routes import client_gone
from agent_server.runs import LogEntry, RemoteEntry, RemoteRun, Run
from agent_server.sse import SSEResponse, run_events
from agent_server.state import AppState


def resume_from(request: Request) -> int:
    """The seq after which a join resumes. ``-1``, ``-`` and ``0`` replay everything (what
    ``useStream`` sends to rejoin from the start)."""
    text = (request.headers.get("last-event-id") or "").strip()
    if text in ("", "-", "-1"):
        return 0
    if not text.isdigit():
        raise APIError(400, f"Last-Event-ID must be an event id, not {text!r}", "bad_event_id")
    return int(text)


def wanted_modes(request: Request) -> frozenset[str] | None:
    modes = [m for m in request.query_params.getlist("stream_mode") if m]  # "" is None
    return frozenset("messages" if m == "messages-tuple" else m for m in modes) or None


def render_parts(
    run_id: str, modes: frozenset[str] | None
) -> Callable[[list[LogEntry] | list[RemoteEntry]], bytes]:
    """LangGraph's SSE events from a batch of the run's log (see the module docstring)."""
    metadata = dumps({"run_id": run_id, "attempt": 1})

    def keep(data: bytes) -> bool:
        if modes is None:
            return True
        name = data[7 : data.index(b"\n")].decode()  # after b"event: "
        mode = name.partition("|")[0]
        return mode.partition("/")[0] in modes if mode.startswith("messages/") else mode in modes

    def render(batch: Iterable[LogEntry | RemoteEntry]) -> bytes:
        out = []
        for entry in batch:
            kind = entry.type
            if kind == "part":
                if keep(entry.data):
                    out.append(entry.data)
            elif kind == "run_start":
                out.append(b"event: metadata\ndata: %b\nid: %d\n\n" % (metadata, entry.seq))
            elif kind == "error":
                frame = orjson.loads(entry.data)
                if frame["code"] == "cancelled":
                    continue  # LangGraph ends a cancelled run's stream silently
                error = dumps({"error": frame["code"], "message": frame["message"]})
                out.append(b"event: error\ndata: %b\nid: %d\n\n" % (error, entry.seq))
        return b"".join(out)

    return render


def stream(
    state: AppState,
    run: Run | RemoteRun,
    *,
    after: int = 0,
    modes: frozenset[str] | None = None,
    cancel_on_disconnect: bool = False,
    stateless: bool = False,
) -> SSEResponse:
    path = f"/runs/{run.run_id}" if stateless else f"/threads/{run.thread_id}/runs/{run.run_id}"
    headers = {"Content-Location": path}
    if not stateless:
        headers["Location"] = f"{path}/stream"
    return SSEResponse(
        run_events(
            run,
            state.streams,
            after=after,
            retry=False,
            render=render_parts(run.run_id, modes),
            end=b"",
        ),
        headers=headers,
        on_disconnect=client_gone(run, "cancel" if cancel_on_disconnect else "continue", 0),
        send_timeout=state.streams.send_timeout,
    )
