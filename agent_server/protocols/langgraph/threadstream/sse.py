"""The HTTP transport: ``POST /threads/{id}/commands`` (one command, one JSON answer)
and ``POST /threads/{id}/stream/events`` (one filtered event stream as SSE).

Decisions (read before changing):

- Each event is one SSE event holding only ``data: <the event's JSON>``: no ``event:``
  line (the SDKs read the method from the JSON) and no ``id:`` (the JSON's ``event_id``
  is the cursor; the stream is a POST, which no browser ``EventSource`` reconnects).
  Lines end in a bare ``\\n``. Events that are ready together leave in one write.
- The stream resumes after ``since`` (a seq, the Python SDK's), ``since_event_id`` (an
  event id, in the body) or a ``Last-Event-ID`` header (an event id), whichever is
  furthest; without any it replays the thread (the JS SDK reopens that way and drops
  the events it has seen by ``event_id``).
- It never ends while the client stays: it waits for the thread's next run, with a
  ``: ping`` comment every ``AGENT_SERVER_PING_INTERVAL`` seconds. When the server must
  end it while the run goes on (the client fell too far behind, its writes stalled past
  ``AGENT_SERVER_SEND_TIMEOUT``, a broker outage outlasted its bound), the response is
  cut off *without* its final chunk, after an ``{"type": "error", "id": null}`` event
  when there is something to say: a cleanly ended stream would tell the Python SDK that
  the thread is done, a broken one makes both SDKs reconnect and resume.
- Refusals before the stream starts have LangGraph's error shape and statuses (the
  SDKs do not retry a 4xx): 404 for a thread that does not exist yet, 403 for another
  user's, 400/422 for a bad request. A command's answer is a protocol envelope with
  status 200, errors included; what the HTTP layer refuses (not a command, another
  user's thread, a full queue) also gets its status, with ``detail`` and ``code`` beside
  the envelope's fields so that it is LangGraph's error shape too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from langchain_protocol import ErrorCode
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agent_server.auth import user_id
from agent_server.cursors import BadCursor, parse_id, parse_seq
from agent_server.protocols.langgraph.http import APIError, endpoint, json_response, parse
from agent_server.protocols.langgraph.threads import open_thread
from agent_server.protocols.langgraph.threadstream.commands import (
    Caller,
    CommandError,
    execute,
    failure,
    success,
)
from agent_server.protocols.langgraph.threadstream.events import EventFilter
from agent_server.protocols.langgraph.threadstream.feed import thread_events
from agent_server.protocols.langgraph.threadstream.history import thread_runs
from agent_server.protocols.langgraph.threadstream.schemas import Command, EventStreamRequest
from agent_server.runs import Forbidden, SubscriberTooSlow
from agent_server.schemas import RequestError, read_body
from agent_server.state import AppState
from agent_server.streams import StreamError, Streams

logger = logging.getLogger("agent_server.protocols.langgraph.threadstream")

PING = b": ping\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
# Our code beside the protocol's, for the statuses a command can be refused with.
HTTP_CODES = {
    400: "invalid_command", 403: "forbidden", 413: "body_too_large", 422: "validation_error",
    429: "queue_full", 503: "unavailable",
}  # fmt: skip


# -- commands -------------------------------------------------------------------------


def refused(status: int, command_id: int | None, error: ErrorCode, message: str) -> Response:
    body: dict[str, Any] = {**failure(command_id, error, message)}
    if status != 200:
        body.update(detail=message, code=HTTP_CODES.get(status, "error"))
    return json_response(body, status)


async def commands(request: Request) -> Response:
    """``POST /threads/{thread_id}/commands``."""
    state: AppState = request.app.state.agent_server
    command_id: int | None = None
    try:
        thread_id = parse_id(request.path_params["thread_id"], "thread_id")
        raw = await read_body(request, state.settings.max_body_bytes)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CommandError("invalid_argument", "the body is not JSON", 400) from None
        if isinstance(data, dict) and type(data.get("id")) is int:
            command_id = data["id"]
        try:
            command = Command.model_validate(data)
        except ValidationError:
            raise CommandError(
                "invalid_argument",
                "a command is {id: an integer, method: a string, params: an object}",
                400,
            ) from None
        caller = Caller(state, thread_id, request)
        result, applied = await execute(caller, command.id, command.method, command.params)
        return json_response(success(command.id, result, applied))
    except CommandError as exc:
        response = refused(exc.status, command_id, exc.error, exc.message)
        if exc.retry_after:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except BadCursor as exc:
        return refused(422, command_id, "invalid_argument", str(exc))
    except RequestError as exc:
        return refused(exc.status, command_id, "invalid_argument", exc.message)


# -- the event stream ---------------------------------------------------------------------


def resume_after(body: EventStreamRequest, header: str | None) -> int:
    """The furthest of the cursors given (see the module docstring)."""
    after = body.since or 0
    for text, what in ((body.since_event_id, "since_event_id"), (header, "Last-Event-ID")):
        if text and text.strip() not in ("", "-", "-1", "0"):
            try:
                after = max(after, parse_seq(text.strip(), what))
            except BadCursor as exc:
                raise APIError(400, f"{exc} (an event_id)", "invalid_argument") from None
    return after


@endpoint
async def stream_events(request: Request, state: AppState) -> Response:
    """``POST /threads/{thread_id}/stream/events``."""
    body = await parse(request, state, EventStreamRequest)
    thread_id = request.path_params["thread_id"]
    await open_thread(state, thread_id, request)  # 404, 403
    after = resume_after(body, request.headers.get("last-event-id"))
    wanted = EventFilter(body.channels, body.namespaces, body.depth)
    events = thread_events(
        state, thread_runs(state), thread_id, after, wanted, user_id(request.scope)
    )
    return EventStreamResponse(sse(state, thread_id, events), state.streams)


class Abort(Exception):
    """Raised by a stream's body: end the response without its final chunk."""


async def sse(
    state: AppState, thread_id: str, events: AsyncIterator[list[bytes]]
) -> AsyncIterator[bytes]:
    streams = state.streams
    try:
        async for batch in events:
            yield b"".join([b"data: %b\n\n" % event for event in batch]) if batch else PING
    except SubscriberTooSlow as exc:
        streams.dropped_slow += 1
        logger.info("dropped a slow subscriber of thread %s: %s", thread_id, exc)
        raise Abort from None
    except StreamError as exc:
        logger.warning("ended a stream of thread %s: %s", thread_id, exc)
        error = failure(None, "unknown_error", f"{exc.code}: {exc}")
        yield b"data: %b\n\n" % orjson.dumps(error)
        raise Abort from None
    except Forbidden as exc:
        yield b"data: %b\n\n" % orjson.dumps(failure(None, "permission_denied", exc.message))
        raise Abort from None


class EventStreamResponse(Response):
    """Streams ready-made SSE bytes; notices a client that leaves at once; a body that
    raises :class:`Abort` (or a send stalled past ``send_timeout``) cuts the response off
    unfinished, so that the client reconnects."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(self, body: AsyncIterator[bytes], streams: Streams) -> None:
        # As Starlette's StreamingResponse, without Response.__init__: nothing to render.
        self.body_iterator = body
        self.streams = streams
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        finished = False

        async def watch_disconnect(cancel: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            cancel.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch_disconnect, group.cancel_scope)
                try:
                    async for chunk in self.body_iterator:
                        with anyio.move_on_after(self.streams.send_timeout) as sending:
                            await send(
                                {"type": "http.response.body", "body": chunk, "more_body": True}
                            )
                        if sending.cancelled_caught:
                            self.streams.dropped_slow += 1
                            logger.info("dropped a thread stream that stopped reading")
                            break
                    else:
                        finished = True
                except Abort:
                    pass
                except OSError:  # servers other than uvicorn may raise on a closed socket
                    pass
                group.cancel_scope.cancel()
            if finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
