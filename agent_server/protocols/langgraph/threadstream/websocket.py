"""The WebSocket transport: ``/threads/{id}/stream/events``, commands in and replies and
events out on one socket.

Decisions (read before changing):

- Every text frame the server sends is exactly one JSON object: a command's reply or
  one event. The SDKs treat anything else as a broken stream, so ``/ws``'s batching of
  frames into JSON arrays is not used; the events of a batch are sent back to back,
  paced as every stream is (:mod:`agent_server.streams`), so that they leave in as few
  socket writes as the peer allows.
- Every command is served (:mod:`.commands`), plus this socket's subscriptions:
  ``subscription.subscribe`` (with ``since`` or ``since_event_id`` to resume: the Python
  SDK opens one socket per event stream and resumes that way), ``unsubscribe`` and
  ``reconnect``. Each subscription replays the thread's matching events, then follows
  it live; an event matching two subscriptions of one socket is sent for each (the SDKs
  drop repeats by ``event_id``).
- Close codes are 4000 + the HTTP status the SSE route would answer, which the SDKs read
  as "do not retry" for a 4xx other than 408 and 429: 4401 unauthorized, 4403 another
  user's thread or a page ``Origin`` not in ``AGENT_SERVER_CORS_ORIGINS`` (as ``/ws``
  checks it), 4422 a bad thread id, 4413 a message over ``AGENT_SERVER_WS_MAX_MESSAGE_BYTES``.
  Reconnect-and-resume cases: 4408 a client too slow to keep up (or that stopped
  reading), 4429 more messages than the rate limit, 1013 a broker outage that outlasted
  its bound (after an ``{"type": "error", "id": null}`` message), 1012 shutdown
  (uvicorn's). A socket is accepted before it is refused, so that the browser sees the
  code. A thread that does not exist yet is not refused: ``run.start`` on this socket
  creates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketState

from agent_server.auth import SUBPROTOCOL
from agent_server.cursors import BadCursor, parse_id
from agent_server.protocols.langgraph.http import APIError
from agent_server.protocols.langgraph.parts import dumps_part
from agent_server.protocols.langgraph.threadstream.commands import (
    Caller,
    CommandError,
    execute,
    failure,
    params,
    success,
    thread_record,
)
from agent_server.protocols.langgraph.threadstream.events import EventFilter
from agent_server.protocols.langgraph.threadstream.feed import Batch, thread_events
from agent_server.protocols.langgraph.threadstream.history import thread_runs
from agent_server.protocols.langgraph.threadstream.schemas import (
    Command,
    EventStreamRequest,
    Reconnect,
    Unsubscribe,
)
from agent_server.protocols.langgraph.threadstream.sse import resume_after
from agent_server.runs import Forbidden, SubscriberTooSlow
from agent_server.state import AppState
from agent_server.streams import StreamError
from agent_server.ws import TokenBucket, origin_allowed, receive_message
from agent_server.ws_protocol import SEND_SHARED, SendShared

logger = logging.getLogger("agent_server.protocols.langgraph.threadstream")

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SLOW = 4408
CLOSE_TOO_BIG = 4413
CLOSE_INVALID = 4422
CLOSE_RATE = 4429
CLOSE_TRY_AGAIN = 1013


class ThreadSocket:
    """One socket on one thread: its commands, subscriptions and sends."""

    def __init__(self, state: AppState, websocket: WebSocket, caller: Caller) -> None:
        self.state = state
        self.websocket = websocket
        self.caller = caller
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self.bucket = TokenBucket(state.settings.ws_rate_limit, state.settings.ws_rate_burst)
        self._sending = asyncio.Lock()
        self.closed = False
        self.send_shared: SendShared | None = websocket.scope["extensions"].get(SEND_SHARED)

    def take(self, batch: Batch) -> bool:
        """A feed's batch written at once, if the socket can take it so (feed.py)."""
        send_shared = self.send_shared
        return (
            send_shared is not None
            and not self.closed
            and not self._sending.locked()
            and send_shared(batch.frames())
        )

    async def send(self, messages: list[bytes]) -> None:
        """Each message its own text frame, back to back; a peer that does not take
        them within the send timeout is closed (4408: it reconnects and resumes). A
        feed's batch goes out framed once for every socket (feed.py), when the socket
        can take it at once."""
        if isinstance(messages, Batch) and self.take(messages):
            return
        async with self._sending:
            if self.closed:
                return
            try:
                async with asyncio.timeout(self.state.streams.send_timeout):
                    for message in messages:
                        await self.websocket.send_text(message.decode())
            except TimeoutError:
                self.state.streams.dropped_slow += 1
                await self._close(CLOSE_SLOW, "too slow to keep up; reconnect and resume")
            except Exception:  # the peer went away: its receive loop ends the socket
                logger.debug("a thread stream socket went away", exc_info=True)
                self.closed = True

    async def reply(self, message: Mapping[str, Any]) -> None:
        await self.send([dumps_part(message)])  # state values hold LangChain messages

    async def close(self, code: int, reason: str) -> None:
        async with self._sending:
            await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):  # the peer may be gone already
                await self.websocket.close(code, _reason(reason))

    def end(self) -> None:
        for task in self.subscriptions.values():
            task.cancel()
        self.subscriptions.clear()

    # -- messages ------------------------------------------------------------------------

    async def receive(self, raw: str | bytes) -> None:
        settings = self.state.settings
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if size > settings.ws_max_message_bytes:
            await self.close(CLOSE_TOO_BIG, f"message of {size} bytes exceeds the limit")
            return
        if not self.bucket.take():
            await self.close(CLOSE_RATE, "rate limit exceeded")
            return
        command_id: int | None = None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await self.reply(failure(None, "invalid_argument", "a command must be JSON"))
            return
        if isinstance(data, dict) and type(data.get("id")) is int:
            command_id = data["id"]
        try:
            command = Command.model_validate(data)
        except ValidationError:
            message = "a command is {id: an integer, method: a string, params: an object}"
            await self.reply(failure(command_id, "invalid_argument", message))
            return
        try:
            result, applied = await self.dispatch(command)
        except CommandError as exc:
            await self.reply(failure(command.id, exc.error, exc.message))
            return
        await self.reply(success(command.id, result, applied))

    async def dispatch(self, command: Command) -> tuple[dict[str, Any], int]:
        method, data = command.method, command.params
        history = thread_runs(self.state)
        if method == "subscription.subscribe":
            request = params(EventStreamRequest, data)
            return {"subscription_id": self.subscribe(request)}, await history.head(
                self.caller.thread_id
            )
        if method == "subscription.unsubscribe":
            found = self.subscriptions.pop(params(Unsubscribe, data).subscription_id, None)
            if found is None:
                raise CommandError("no_such_subscription", "no such subscription on this socket")
            found.cancel()
            return {}, await history.head(self.caller.thread_id)
        if method == "subscription.reconnect":
            return await self.reconnect(params(Reconnect, data))
        return await execute(self.caller, command.id, method, data)

    async def reconnect(self, request: Reconnect) -> tuple[dict[str, Any], int]:
        state = self.state
        if request.run_id is not None:
            run = await state.runs.find(request.run_id)
            if run is None or run.thread_id != self.caller.thread_id:
                raise CommandError("no_such_run", f"no run {request.run_id!r} on this thread")
        head = await thread_runs(state).head(self.caller.thread_id)
        if not request.channels:  # subscriptions live with their socket: none to restore
            return {"restored": False}, head
        if request.last_event_id and not request.since_event_id:
            request.since_event_id = request.last_event_id
        subscription = self.subscribe(request)
        return {"restored": True, "subscription_id": subscription}, head

    def subscribe(self, request: EventStreamRequest) -> str:
        try:
            after = resume_after(request, None)
        except APIError as exc:
            raise CommandError("invalid_argument", exc.detail) from None
        wanted = EventFilter(request.channels, request.namespaces, request.depth)
        events = thread_events(
            self.state,
            thread_runs(self.state),
            self.caller.thread_id,
            after,
            wanted,
            self.caller.user,
            sink=self.take,
        )
        subscription = uuid.uuid4().hex
        task = asyncio.create_task(self.pump(events), name=f"thread-stream-{subscription}")
        self.subscriptions[subscription] = task
        return subscription

    async def pump(self, events: AsyncIterator[list[bytes]]) -> None:
        thread_id = self.caller.thread_id
        try:
            async for batch in events:
                if batch:
                    await self.send(batch)
                if self.closed:
                    return
        except SubscriberTooSlow:
            self.state.streams.dropped_slow += 1
            await self.close(CLOSE_SLOW, "too slow to keep up; reconnect and resume")
        except StreamError as exc:
            logger.warning("ended a stream of thread %s: %s", thread_id, exc)
            await self.reply(failure(None, "unknown_error", f"{exc.code}: {exc}"))
            await self.close(CLOSE_TRY_AGAIN, exc.code)
        except Forbidden as exc:
            await self.close(CLOSE_FORBIDDEN, exc.message)
        except Exception:
            logger.exception("the stream of thread %s failed", thread_id)
            await self.close(1011, "internal error")


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes."""
    return text.encode()[:120].decode(errors="ignore")


async def thread_socket(websocket: WebSocket) -> None:
    """``/threads/{thread_id}/stream/events`` (WebSocket): accept, check the caller, the
    page's origin and the thread, then serve commands until the socket goes."""
    state: AppState = websocket.app.state.agent_server
    # As /ws: a browser sending its token as the ``bearer.<token>`` subprotocol offers
    # ``agent-server.v1`` beside it, and only an offered protocol may be selected.
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    if websocket.scope.get("auth_error"):
        await websocket.close(CLOSE_UNAUTHORIZED, "unauthorized")
        return
    origin = websocket.headers.get("origin")
    if origin is not None and not origin_allowed(
        origin, websocket.headers.get("host", ""), state.settings.cors_origins
    ):
        await websocket.close(CLOSE_FORBIDDEN, _reason(f"origin not allowed: {origin}"))
        return
    try:
        thread_id = parse_id(websocket.path_params["thread_id"], "thread_id")
    except BadCursor as exc:
        await websocket.close(CLOSE_INVALID, _reason(str(exc)))
        return
    # The commands read the caller from a request: the handshake's scope, as one.
    request = Request({**websocket.scope, "type": "http", "method": "GET"})
    caller = Caller(state, thread_id, request)
    try:
        await thread_record(caller)
    except CommandError as exc:
        await websocket.close(CLOSE_FORBIDDEN, _reason(exc.message))
        return
    socket = ThreadSocket(state, websocket, caller)
    try:
        while not socket.closed:
            raw = await receive_message(websocket)
            if raw is None:
                break
            await socket.receive(raw)
    finally:
        socket.end()
