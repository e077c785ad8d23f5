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
- A batch of frames that were ready together is written with one ``send``, and
  :class:`~agent_server.streams.Streams` spaces writes so bursts form batches and
  bounds slow subscribers.
- Every stream starts with ``retry:``, so the browser's reconnect delay is ours.
- A follower of another worker's run whose stream ends while the run goes on (its
  broker stays unreachable past ``broker_wait``: ``broker_unavailable``; this worker
  shuts down: ``shutting_down``) gets an ``error`` frame of that code with ``seq`` 0 and
  no ``id:`` (it is not in the run's log: ``Last-Event-ID`` stays on the last frame
  received), then ``[DONE]``; the client reconnects with ``Last-Event-ID`` and loses
  nothing. The connection is never just dropped, nor ended as if the run had.
- A client whose ``send`` stays blocked for ``send_timeout`` stopped reading: the
  response gives up and throws :class:`SendTimeout` into its body, so that
  :func:`run_events` counts it with the subscribers dropped for lagging
  (``agent_server_subscribers_dropped_slow``) and logs its run. The response is left
  incomplete (uvicorn logs that and closes the connection; a close that waits for the
  unread bytes, see ``agent_server/server.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agent_server.frames import Error, encode, now_ms
from agent_server.runs import LogEntry, RemoteEntry, RemoteRun, Run, SubscriberTooSlow
from agent_server.streams import StreamError, Streams

logger = logging.getLogger("agent_server.sse")

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


def format_events(batch: Iterable[LogEntry | RemoteEntry], id_prefix: bytes = b"") -> bytes:
    """One SSE event per frame, joined so a batch goes out in one write."""
    return b"".join(
        b"id: %b%d\ndata: %b\n\n" % (id_prefix, entry.seq, entry.data) for entry in batch
    )


async def run_events(
    run: Run | RemoteRun,
    streams: Streams,
    *,
    after: int = 0,
    id_prefix: bytes = b"",
    retry: bool = True,
    render: Callable[[list[LogEntry] | list[RemoteEntry]], bytes] | None = None,
    end: bytes = DONE,
    stream_error: Callable[[str, str, str], bytes] | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body for a run: its frames after ``after``, live, then ``end``.

    ``render`` replaces the native events (one per frame, see :func:`format_events`) with
    another format; the LangGraph API's renders its parts, which it then also receives.
    ``stream_error(run_id, code, message)`` renders a stream error in that format (the
    native one is :func:`stream_error_event`).

    A subscriber that falls too far behind gets a comment saying so and the stream ends
    *without* ``[DONE]``: the client reconnects with ``Last-Event-ID`` and resumes.
    """
    # ``retry:`` rides in the first frame's event: a block holding only ``retry:`` is
    # surfaced as an empty event by some clients (httpx-sse).
    prefix = b"retry: %d\n" % streams.retry_ms if retry else b""
    run.subscribers += 1
    with streams.stream():
        try:
            async for batch in run.follow(
                after,
                heartbeat=streams.ping_interval,
                max_lag=streams.max_lag,
                max_batch=streams.max_batch,
                parts=render is not None,
            ):
                if not batch:
                    yield PING
                    continue
                data = format_events(batch, id_prefix) if render is None else render(batch)
                if not data:
                    continue
                yield prefix + data
                prefix = b""
                streams.frames_sent += len(batch)
                if not run.finished:
                    await streams.pace()
        except SubscriberTooSlow as exc:
            streams.dropped_slow += 1
            logger.info("dropped a slow SSE subscriber of run %s: %s", run.run_id, exc)
            yield b": too slow (%b); reconnect with Last-Event-ID to resume\n\n" % str(exc).encode()
            return
        except StreamError as exc:
            logger.warning("ended a stream of run %s: %s", run.run_id, exc)
            yield (stream_error or stream_error_event)(run.run_id, exc.code, str(exc))
        except SendTimeout:
            streams.dropped_slow += 1
            logger.info(
                "dropped an SSE subscriber of run %s: it stopped reading (send blocked %g s)",
                run.run_id,
                streams.send_timeout,
            )
            return
        finally:
            run.subscribers -= 1
    if end:
        yield end


def stream_error_event(run_id: str, code: str, message: str) -> bytes:
    """A stream error as an event without ``id:`` (see the module docstring)."""
    frame = Error(run_id=run_id, seq=0, ts=now_ms(), code=code, message=message)
    return b"data: %b\n\n" % encode(frame)


class SendTimeout(Exception):
    """Thrown into a response body whose client stopped reading (its send timed out)."""


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
        send_timeout: float | None = None,
    ) -> None:
        # Like Starlette's StreamingResponse, this does not call Response.__init__: the
        # body is an iterator, not bytes to render.
        self.body_iterator = body
        self.status_code = status_code
        self.background = None
        self.on_disconnect = on_disconnect
        self.send_timeout = send_timeout
        self.init_headers({**HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        disconnected = False
        timed_out = False
        streaming = True  # the disconnect cancels the body only while it streams
        task = asyncio.current_task()
        assert task is not None

        async def watch_disconnect() -> None:
            nonlocal disconnected
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except asyncio.CancelledError:
                # The response is over. Ending quietly keeps no CancelledError and its
                # traceback (the response's frames) on the task: those are freed now,
                # not at the next full collection.
                return
            disconnected = True
            if streaming:
                task.cancel()

        async def send_body(chunk: bytes, more: bool) -> bool:
            # A client that stopped reading blocks send (uvicorn waits for the socket to
            # drain); past the bound we give up on it.
            try:
                async with asyncio.timeout(self.send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": more})
            except TimeoutError:
                return False
            return True

        # A bare task, not a task group: an idle stream's watcher is most of what the
        # stream costs beside its socket (docs/performance.md, "Idle connections").
        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            try:
                async for chunk in self.body_iterator:
                    if not await send_body(chunk, True):
                        timed_out = True
                        break
                else:
                    timed_out = not await send_body(b"", False)
            except asyncio.CancelledError:
                if not disconnected:
                    raise
                task.uncancel()
            except OSError:  # servers other than uvicorn may raise on a closed socket
                disconnected = True
            streaming = False
            if timed_out:
                await self._send_timed_out()
        finally:
            watcher.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if disconnected and self.on_disconnect is not None:
            self.on_disconnect()

    async def _send_timed_out(self) -> None:
        """Tell the body its client was dropped, so that its producer counts and logs it."""
        athrow = getattr(self.body_iterator, "athrow", None)
        try:
            if athrow is None:
                raise SendTimeout
            await athrow(SendTimeout())
        except SendTimeout:
            logger.info("dropped an SSE client that stopped reading (send timed out)")
        except StopAsyncIteration:
            pass
