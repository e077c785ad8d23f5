"""Frames as Server-Sent Events.

Decisions (read before changing):

- Each frame is one event, ``id: <seq>`` and ``data: <json>``, with **no** ``event:``
  name, so ``EventSource.onmessage`` and the simplest readers get every frame. The stream
  ends with ``data: [DONE]``. Lines end in a bare ``\\n``: some clients (AG-UI's) fail
  on ``\\r\\n``.
- We write our own small ASGI response rather than use sse-starlette: measured here
  (``bench/sse_transport.py``, ``docs/performance.md``) it costs about three times as
  much per frame, and the per-frame cost is what bounds a token stream. What we keep
  from it: a concurrent watch for ``http.disconnect``, so a client that leaves is noticed
  at once, not at the next write, and comment pings on idle streams.
- A batch of frames that were ready together is written with one ``send``, and a
  :class:`~agent_server.pacing.Pacer` spaces writes so bursts form batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import nullcontext

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agent_server.pacing import Pacer
from agent_server.runs import LogEntry, Run

logger = logging.getLogger("agent_server.sse")

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


def format_events(batch: Iterable[LogEntry], id_prefix: bytes = b"") -> bytes:
    """One SSE event per frame, joined so a batch goes out in one write."""
    return b"".join(
        b"id: %b%d\ndata: %b\n\n" % (id_prefix, entry.frame.seq, entry.data) for entry in batch
    )


async def run_events(
    run: Run,
    *,
    after: int = 0,
    ping_interval: float,
    pacer: Pacer | None = None,
    id_prefix: bytes = b"",
) -> AsyncIterator[bytes]:
    """The SSE body for a run: its frames after ``after``, live, then ``[DONE]``."""
    with pacer.stream() if pacer else nullcontext():
        async for batch in run.follow(after, heartbeat=ping_interval):
            yield format_events(batch, id_prefix) if batch else PING
            if pacer is not None and batch and not run.finished:
                await asyncio.sleep(pacer.window())
    yield DONE


class SSEResponse(Response):
    """Streams an async iterator of ready-made SSE bytes; notices disconnects at once."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        on_disconnect: Callable[[], object] | None = None,
    ) -> None:
        # Like Starlette's StreamingResponse, this does not call Response.__init__: the
        # body is an iterator, not bytes to render.
        self.body_iterator = body
        self.status_code = status_code
        self.background = None
        self.on_disconnect = on_disconnect
        self.init_headers({**HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": raw_headers}
        )
        disconnected = False

        async def watch_disconnect(scope: anyio.CancelScope) -> None:
            nonlocal disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    scope.cancel()
                    return

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch_disconnect, group.cancel_scope)
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:
            disconnected = True
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if disconnected and self.on_disconnect is not None:
            self.on_disconnect()
