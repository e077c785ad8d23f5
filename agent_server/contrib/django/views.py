"""``GET /runs/stream`` as a Django async view: Server-Sent Events for ``EventSource``.

Same query parameters, events, ids (``<run_id>:<seq>``), ``Last-Event-ID`` resumption,
204 at the end, headers and JSON errors as the standalone route (docs/protocol.md,
"SSE"); the parsing and the stream are the standalone route's own functions.

Decisions (read before changing):

- The body is a ``StreamingHttpResponse`` over an async iterator, which Django streams
  under ASGI. When the client leaves, Django cancels the response; the iterator's
  ``finally`` then applies ``on_disconnect`` as the standalone route does (with the
  reconnect grace for ``cancel``).
- Django writes through the ASGI server without a send timeout of ours: a client that
  stops reading is bounded by the subscriber lag (``AGENT_SERVER_SUBSCRIBER_MAX_LAG``)
  and by the server's own write buffering, not by ``AGENT_SERVER_SEND_TIMEOUT``.
- Middleware that buffers responses (``GZipMiddleware``) defeats streaming: leave this
  view out of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from pydantic import ValidationError
from starlette.responses import Response

from agent_server.contrib.django.auth import agent_user, anonymous_allowed
from agent_server.contrib.django.runtime import runtime
from agent_server.graphs import UnknownGraphError
from agent_server.runs import Forbidden, RemoteRun, Run, RunRejected
from agent_server.schemas import RequestError, error_response, validation_error_response
from agent_server.serving import (
    client_gone,
    launch_run,
    reconnecting_run,
    run_request_from_query,
    stream_headers,
)
from agent_server.sse import HEADERS, run_events
from agent_server.state import AppState


async def stream_run(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Start a run from the query (or resume one from ``Last-Event-ID``) and stream it."""
    if request.method != "GET":
        return _django(error_response(405, "method_not_allowed", "use GET"))
    auser = getattr(request, "auser", None)  # set by Django's AuthenticationMiddleware
    user = agent_user(await auser() if auser is not None else None)
    if user is None and not anonymous_allowed():
        return _django(error_response(401, "unauthorized", "log in first"))
    state = await runtime.state()
    owner = user.id if user is not None else None
    try:
        resume = request.headers.get("Last-Event-ID")
        if resume:  # EventSource reconnecting: never start a new run
            found = await reconnecting_run(state, resume, owner)
            if found is None:
                return HttpResponse(status=204)
            run, after = found
        else:
            query: str = request.META.get("QUERY_STRING", "")
            body = run_request_from_query(request.GET, len(query), state.settings.max_body_bytes)
            run = await launch_run(state, body, owner)
            run.on_disconnect = body.on_disconnect or "cancel"
            after = 0
    except RequestError as exc:
        return _django(exc.response())
    except ValidationError as exc:
        return _django(validation_error_response(exc))
    except UnknownGraphError as exc:
        return _django(error_response(404, "graph_not_found", str(exc)))
    except Forbidden as exc:
        return _django(error_response(403, "forbidden", exc.message))
    except RunRejected as exc:
        response = _django(error_response(exc.status, exc.code, exc.message))
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    return _stream(state, run, after)


def _stream(state: AppState, run: Run | RemoteRun, after: int) -> StreamingHttpResponse:
    gone = client_gone(run, run.on_disconnect, state.settings.reconnect_grace)

    async def body() -> AsyncIterator[bytes]:
        ended = False
        try:
            async for chunk in run_events(
                run, state.streams, after=after, id_prefix=run.run_id.encode() + b":"
            ):
                yield chunk
            ended = True
        finally:
            if not ended:
                gone()

    response = StreamingHttpResponse(body(), content_type="text/event-stream; charset=utf-8")
    headers: dict[str, Any] = {**HEADERS, **stream_headers(run)}
    headers.pop("Connection")  # hop-by-hop: the server's business
    for name, value in headers.items():
        response[name] = value
    return response


def _django(response: Response) -> HttpResponse:
    """One of agent-server's JSON error responses, as Django's."""
    return HttpResponse(
        bytes(response.body), status=response.status_code, content_type=response.media_type
    )
