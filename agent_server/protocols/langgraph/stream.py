"""LangGraph's SSE stream of a run, rendered from its log (the decisions are in
:mod:`agent_server.protocols.langgraph.routes`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable

import orjson
from starlette.requests import Request

from agent_server.cursors import BadCursor, parse_seq, parse_thread_cursor
from agent_server.frames import dumps
from agent_server.protocols.langgraph.http import APIError
from agent_server.runs import LogEntry, RemoteEntry, RemoteRun, Run
from agent_server.serving import client_gone
from agent_server.sse import PING, SSEResponse, run_events
from agent_server.state import AppState

THREAD_POLL = 0.05  # seconds between looks for a thread's next run


def resume_from(request: Request) -> int:
    """The seq after which a join resumes. ``-1``, ``-`` and ``0`` replay everything (what
    ``useStream`` sends to rejoin from the start)."""
    text = (request.headers.get("last-event-id") or "").strip()
    if text in ("", "-", "-1"):
        return 0
    try:
        return parse_seq(text, "Last-Event-ID")
    except BadCursor as exc:
        raise APIError(400, str(exc), "bad_event_id") from None


def wanted_modes(request: Request) -> frozenset[str] | None:
    modes = [m for m in request.query_params.getlist("stream_mode") if m]  # "" is None
    return frozenset("messages" if m == "messages-tuple" else m for m in modes) or None


def render_parts(
    run_id: str, modes: frozenset[str] | None, id_prefix: bytes = b""
) -> Callable[[list[LogEntry] | list[RemoteEntry]], bytes]:
    """LangGraph's SSE events from a batch of the run's log (see the module docstring).

    ``id_prefix`` makes ids ``<prefix><seq>``, for a stream of several runs (a part's
    bytes end in ``id: <seq>``, which is then rewritten)."""
    metadata = dumps({"run_id": run_id, "attempt": 1})

    def with_id(data: bytes, seq: int) -> bytes:
        if not id_prefix:
            return data
        return data[: data.rindex(b"\nid: ") + 5] + b"%b%d\n\n" % (id_prefix, seq)

    kept: dict[bytes, bool] = {}  # by event name: a run has a handful

    def keep(data: bytes) -> bool:
        if modes is None:
            return True
        name = data[7 : data.index(b"\n", 7)]  # after b"event: "
        found = kept.get(name)
        if found is None:
            mode = name.decode().partition("|")[0]
            group = mode.partition("/")[0] if mode.startswith("messages/") else mode
            found = kept[name] = group in modes
        return found

    def render(batch: Iterable[LogEntry | RemoteEntry]) -> bytes:
        out = []
        for entry in batch:
            kind = entry.type
            if kind == "token":
                part = entry.part  # the chunk's messages part, sharing the token's seq
                if part is not None and keep(part):
                    out.append(with_id(part, entry.seq))
            elif kind == "part":
                if keep(entry.data):
                    out.append(with_id(entry.data, entry.seq))
            elif kind == "run_start":
                out.append(
                    b"event: metadata\ndata: %b\nid: %b%d\n\n" % (metadata, id_prefix, entry.seq)
                )
            elif kind == "error":
                frame = orjson.loads(entry.data)
                if frame["code"] == "cancelled":
                    continue  # LangGraph ends a cancelled run's stream silently
                error = dumps({"error": frame["code"], "message": frame["message"]})
                out.append(b"event: error\ndata: %b\nid: %b%d\n\n" % (error, id_prefix, entry.seq))
        return b"".join(out)

    return render


def stream_error(run_id: str, code: str, message: str) -> bytes:
    """A stream error (``broker_unavailable``) as LangGraph's ``error`` event, without an
    id: the client resumes from the last one it saw."""
    return b"event: error\ndata: %b\n\n" % dumps({"error": code, "message": message})


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
            stream_error=stream_error,
        ),
        headers=headers,
        on_disconnect=client_gone(run, "cancel" if cancel_on_disconnect else "continue", 0),
        send_timeout=state.streams.send_timeout,
    )


def thread_position(request: Request) -> tuple[int, int] | None:
    """Where a thread stream resumes: ``(run created ms, seq)`` from ``Last-Event-ID``
    (``<ms>-<seq>``; ``0`` or ``-`` for every run the server still has), or None: from
    the thread's active run."""
    text = (request.headers.get("last-event-id") or "").strip()
    if not text:
        return None
    if text in ("-", "0"):
        return (0, 0)
    try:
        return parse_thread_cursor(text)
    except BadCursor:
        raise APIError(422, "Invalid last-event-id: must be <ms>-<seq>", "bad_event_id") from None


def created_ms(run: Run) -> int:
    return int(run.created_at * 1000)


async def thread_events(
    state: AppState, thread_id: str, position: tuple[int, int] | None, lifecycle: bool
) -> AsyncIterator[bytes]:
    """Every run on the thread, one after the other, each closed by a ``run_done``
    metadata event, then the next as it starts; never ends by itself (as LangGraph's).
    Ids are ``<run created ms>-<seq>``."""
    streams = state.streams
    modes: frozenset[str] | None = frozenset() if lifecycle else None
    done: set[str] = set()
    if position is None:  # from now: the active run, and the ones after it
        done = {r.run_id for r in state.runs.thread_runs(thread_id) if r.finished}
        position = (0, 0)
    idle = 0.0
    while True:
        waiting = [
            r
            for r in state.runs.thread_runs(thread_id)
            if r.run_id not in done and created_ms(r) >= position[0]
        ]
        if not waiting:
            await asyncio.sleep(THREAD_POLL)
            idle += THREAD_POLL
            if idle >= streams.ping_interval:
                idle = 0.0
                yield PING
            continue
        idle = 0.0
        run = min(waiting, key=lambda r: r.created_at)
        done.add(run.run_id)
        ms = created_ms(run)
        after = position[1] if ms == position[0] else 0
        if run.finished and after >= run.last_seq:
            continue  # resumed after its run_done
        prefix = b"%d-" % ms
        async for chunk in run_events(
            run,
            streams,
            after=after,
            retry=False,
            render=render_parts(run.run_id, modes, prefix),
            end=b"",
            stream_error=stream_error,
        ):
            yield chunk
        if not run.finished:
            return  # dropped as too slow: the client resumes from its last id
        finished = dumps({"status": "run_done", "run_id": run.run_id})
        yield b"event: metadata\ndata: %b\nid: %b%d\n\n" % (finished, prefix, run.last_seq + 1)
