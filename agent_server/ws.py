"""The WebSocket endpoint ``/ws``: several runs, rooms and human-in-the-loop on one socket.

Client messages are JSON objects with a ``type`` (see :data:`ClientMessage`); server
messages are the protocol's frames, plus a few socket-level messages (``run_accepted``,
``subscribed``, ``unsubscribed``, ``presence``, ``ping``, ``pong``, ``error``). See
docs/protocol.md, "WebSocket".

Decisions (read before changing):

- A socket follows a run with one task per run: it reads the run's log like an SSE
  subscriber and sends each batch as one message: a frame object, or a JSON array of
  frames when several were ready at once (that is the write coalescing of SSE; a
  client handles both shapes). Pacing is shared with SSE (:mod:`agent_server.streams`).
- Bad input gets an ``error`` message naming the problem, and the socket stays open.
  Only a message over the size limit (1009), a flood beyond the rate limit (1008), a
  failed authentication (1008, after accepting: a close before accepting reaches the
  browser as a bare HTTP 403), silence past the idle timeout (4001) and a client too
  slow to keep up (4008) close it.
- Close codes follow one convention: 4000-4499 mean "reconnect and resume",
  4500-4999 "do not reconnect" (as Centrifugo does); standard codes keep their meaning.
- ``resume`` answers an interrupt by starting the continuation as a new run on the same
  thread (``Command(resume=value)``), with its own ``run_id`` and ``run_start``.
- The protocol does not know what carries it: a :class:`Session` takes a ``send_text``
  and a ``close`` callable and is fed messages with :meth:`Session.receive`. Starlette's
  WebSocket (:func:`websocket_endpoint`, below) and the Django Channels consumer
  (:mod:`agent_server.contrib.django`) are two thin transports over it. Accepting the
  socket and authenticating its user are the transport's job, so that each can use its
  framework's own (a bearer token here, the Django session there).
- Rooms fan out in-process (and across workers through the broker) by default; a
  transport with its own fan-out overrides :meth:`Session.join`, :meth:`Session.leave`,
  :meth:`Session.watch` and :meth:`Session.unwatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import orjson
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketState

from agent_server.auth import SUBPROTOCOL, User
from agent_server.brokers import BrokerUnavailable
from agent_server.connections import Connection, ConnectionManager, SendText, try_send
from agent_server.cursors import MAX_SEQ
from agent_server.fanout import Hubs
from agent_server.graphs import UnknownGraphError
from agent_server.runs import (
    Forbidden,
    RemoteRun,
    Run,
    RunManager,
    RunRejected,
    SubscriberTooSlow,
)
from agent_server.schemas import THREAD_ID_PATTERN, ClientId, RunConfig
from agent_server.state import AppState
from agent_server.streams import StreamError
from agent_server.ws_protocol import SEND_SHARED, SendShared

logger = logging.getLogger("agent_server.ws")

CLOSE_POLICY = 1008  # authentication failed; rate limit exceeded
CLOSE_TOO_BIG = 1009
CLOSE_IDLE = 4001  # no message or pong within the idle timeout: reconnect
CLOSE_SLOW = 4008  # could not keep up with its runs: reconnect and resume from the log
CLOSE_RESTART = 1012  # the server is shutting down (after its runs' last frames)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunMessage(_Message):
    type: Literal["run"]
    graph: str = Field(min_length=1)
    input: Any = None
    message: str | None = None
    thread_id: str | None = Field(None, pattern=THREAD_ID_PATTERN)
    client_run_id: str | None = Field(None, max_length=200)
    config: RunConfig = Field(default_factory=lambda: RunConfig())
    timeout: float | None = Field(None, gt=0, le=86_400)
    multitask_strategy: Literal["reject", "enqueue", "interrupt"] = "reject"

    def graph_input(self) -> Any:
        if self.message is not None:
            return {"messages": [{"role": "user", "content": self.message}]}
        return self.input


class CancelMessage(_Message):
    type: Literal["cancel"]
    run_id: ClientId


class ResumeMessage(_Message):
    type: Literal["resume"]
    run_id: ClientId | None = None
    thread_id: ClientId | None = None
    graph: str | None = None
    value: Any = None
    client_run_id: str | None = Field(None, max_length=200)


class SubscribeMessage(_Message):
    type: Literal["subscribe", "unsubscribe"]
    run_id: ClientId | None = None
    thread_id: ClientId | None = None
    after: int = Field(0, ge=0, le=MAX_SEQ)  # cursors.parse_seq's bound


class RoomMessage(_Message):
    type: Literal["join", "leave"]
    thread_id: str = Field(pattern=THREAD_ID_PATTERN)


class PingMessage(_Message):
    type: Literal["ping", "pong"]
    id: Any = None


ClientMessage = Annotated[
    RunMessage | CancelMessage | ResumeMessage | SubscribeMessage | RoomMessage | PingMessage,
    Field(discriminator="type"),
]
CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_TYPES = ("run", "cancel", "resume", "subscribe", "unsubscribe", "join", "leave", "ping")


class ClientError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Close = Callable[[int, str], Awaitable[None]]


class TokenBucket:
    """``rate`` messages per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Session:
    """One socket's protocol, whatever carries it: messages in, frames and replies out.

    A transport accepts and authenticates the socket, then calls :meth:`open`, feeds
    each client message to :meth:`receive` while :attr:`closing` is ``None``, and calls
    :meth:`end` once the socket is gone, however it went.
    """

    # Runs reach the socket through their hubs (agent_server/fanout.py); a transport
    # with a fan-out of its own (the Channels groups) turns this off.
    fanout = True

    def __init__(
        self,
        state: AppState,
        *,
        send_text: SendText,
        close: Close,
        user: User | None,
        send_shared: SendShared | None = None,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.connections: ConnectionManager = state.connections
        self.connection = Connection(
            send_text=send_text,
            user=user,
            send_timeout=state.streams.send_timeout,
            send_shared=send_shared,
        )
        self._close = close
        self.bucket = TokenBucket(self.settings.ws_rate_limit, self.settings.ws_rate_burst)
        self.reserved: set[str] = set()  # runs this socket will follow once acknowledged
        self.explicit: set[str] = set()  # runs it started or subscribed to by run id
        self.last_heard = time.monotonic()
        # Runs reach this socket through their hubs (agent_server/fanout.py), unless the
        # transport fans out by itself.
        self.hubs: Hubs | None = self.connections.hubs if self.fanout else None
        self.closing: tuple[int, str] | None = None  # set once the session is closing
        self.closed = False  # the close was sent
        self.ended = False

    async def open(self) -> None:
        """Register the socket (rooms, fan-out, cleanup) and start the heartbeat."""
        self.state.sessions[self.connection.client_id] = self
        self.connections.add(self.connection)
        if self.connections.heartbeats is not None:
            self.connections.heartbeats.add(self)

    async def receive(self, raw: str | bytes) -> None:
        """One client message: the size and rate limits, then the protocol."""
        if self.closing is not None:
            return
        self.last_heard = time.monotonic()
        limit = self.settings.ws_max_message_bytes
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if size > limit:
            self.closing = (CLOSE_TOO_BIG, f"message of {size} bytes exceeds {limit}")
        elif not self.bucket.take():
            self.closing = (CLOSE_POLICY, "rate limit exceeded")
        else:
            await self.handle(raw)
        if self.closing is not None:
            await self.end()

    async def end(self) -> None:
        """Forget the socket everywhere and stop its tasks, then send the close the
        session decided on, if any (cleanup first: nothing is sent after the close)."""
        if self.ended:
            return
        self.ended = True
        if self.connections.heartbeats is not None:
            self.connections.heartbeats.discard(self)
        await self.connections.remove(self.connection)
        self.state.sessions.pop(self.connection.client_id, None)
        if self.closing is not None:
            await self.close_now(*self.closing)

    async def handle(self, raw: str | bytes) -> None:
        request_type: str | None = None
        client_run_id: str | None = None
        try:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ClientError("invalid_json", "message is not valid JSON") from None
            if not isinstance(data, dict):
                raise ClientError("invalid_message", "message must be a JSON object")
            request_type = data.get("type") if isinstance(data.get("type"), str) else None
            client_run_id = data.get("client_run_id")
            if request_type not in CLIENT_TYPES and request_type != "pong":
                raise ClientError(
                    "unknown_type",
                    f"unknown message type {data.get('type')!r}; expected one of "
                    + ", ".join(CLIENT_TYPES),
                )
            try:
                message = CLIENT_MESSAGE.validate_python(data)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"][1:]) or "message"
                raise ClientError("invalid_message", f"{where}: {first['msg']}") from None
            await self.dispatch(message)
        except ClientError as exc:
            await self.error(exc.code, exc.message, request_type, client_run_id)
        except Forbidden as exc:
            await self.error("forbidden", exc.message, request_type, client_run_id)
        except UnknownGraphError as exc:
            await self.error("graph_not_found", str(exc), request_type, client_run_id)
        except RunRejected as exc:
            await self.error(exc.code, exc.message, request_type, client_run_id)
        except BrokerUnavailable as exc:
            await self.error("broker_unavailable", str(exc), request_type, client_run_id)

    async def error(
        self, code: str, message: str, request: str | None, client_run_id: str | None
    ) -> None:
        body: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if request is not None:
            body["request"] = request
        if client_run_id is not None:
            body["client_run_id"] = client_run_id
        await self.send(body)

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            await self.connection.send(message)
        except TimeoutError:
            await self.close_soon(CLOSE_SLOW, "too slow to keep up; reconnect and resume")

    # -- dispatch --------------------------------------------------------------------

    async def dispatch(self, message: BaseModel) -> None:
        if isinstance(message, RunMessage):
            await self.start(message)
        elif isinstance(message, CancelMessage):
            run = await self.find_run(message.run_id)
            if run.finished:
                raise ClientError("run_finished", f"run {run.run_id} is already {run.status}")
            run.cancel("cancelled", "cancelled by the client")
        elif isinstance(message, ResumeMessage):
            await self.resume(message)
        elif isinstance(message, SubscribeMessage):
            await self.subscription(message)
        elif isinstance(message, RoomMessage):
            await self.check_thread(message.thread_id)
            if message.type == "join":
                await self.join(message.thread_id)
            else:
                await self.leave(message.thread_id)
        elif isinstance(message, PingMessage) and message.type == "ping":
            await self.send({"type": "pong", "id": message.id, "ts": _now_ms()})

    async def find_run(self, run_id: str) -> Run | RemoteRun:
        run = await self.state.runs.find(run_id)
        if run is None:
            gone = await self.state.runs.is_gone(run_id)
            raise ClientError(
                "run_gone" if gone else "run_not_found",
                f"run {run_id} {'was dropped' if gone else 'does not exist'}",
            )
        self.state.runs.check_run(run, self.connection.user_id)
        return run

    async def start(self, message: RunMessage) -> None:
        has_input = "input" in message.model_fields_set
        if has_input == (message.message is not None):
            raise ClientError("invalid_message", "give exactly one of 'input' or 'message'")
        entry = self.state.graphs.get(message.graph)
        if message.thread_id is not None:
            await self.state.runs.load_thread_owner(message.thread_id, entry)
        config: dict[str, Any] = message.config.model_dump()
        run = Run(
            graph=entry,
            input=message.graph_input(),
            thread_id=message.thread_id or str(uuid.uuid4()),
            config=config,  # type: ignore[arg-type]
            timeout=message.timeout,
            owner=self.connection.user_id,
            on_disconnect="continue",
        )
        await self.submit(run, message.multitask_strategy, message.client_run_id)

    async def resume(self, message: ResumeMessage) -> None:
        runs = self.state.runs
        if message.run_id is not None:
            previous: Run | RemoteRun | None = await self.find_run(message.run_id)
            assert previous is not None
            thread_id = previous.thread_id
        elif message.thread_id is not None:
            thread_id = message.thread_id
            await self.check_thread(thread_id, message.graph)
            previous = runs.latest_on_thread(thread_id)
        else:
            raise ClientError("invalid_message", "resume needs 'run_id' or 'thread_id'")
        graph_name = message.graph or (previous.graph.name if previous else None)
        if graph_name is None:
            raise ClientError("invalid_message", f"thread {thread_id!r} unknown here: give 'graph'")
        entry = self.state.graphs.get(graph_name)
        snapshot = await entry.graph.aget_state({"configurable": {"thread_id": thread_id}})
        if not snapshot.interrupts:
            raise ClientError(
                "not_interrupted", f"thread {thread_id!r} is not waiting on an interrupt"
            )
        run = Run(
            graph=entry,
            input=Command(resume=message.value),
            thread_id=thread_id,
            owner=self.connection.user_id,
            on_disconnect="continue",
        )
        await self.submit(run, "reject", message.client_run_id)

    async def submit(self, run: Run, strategy: Any, client_run_id: str | None) -> None:
        self.reserved.add(run.run_id)  # the room fan-out must not race our acknowledgement
        try:
            self.state.runs.submit(run, strategy)
            accepted: dict[str, Any] = {
                "type": "run_accepted",
                "run_id": run.run_id,
                "thread_id": run.thread_id,
                "graph": run.graph.name,
            }
            if client_run_id is not None:
                accepted["client_run_id"] = client_run_id
            await self.send(accepted)
            self.explicit.add(run.run_id)
            self.follow(run)
        finally:
            self.reserved.discard(run.run_id)

    async def subscription(self, message: SubscribeMessage) -> None:
        if (message.run_id is None) == (message.thread_id is None):
            raise ClientError("invalid_message", "give exactly one of 'run_id' or 'thread_id'")
        if message.type == "subscribe":
            if message.run_id is not None:
                run = await self.find_run(message.run_id)
                if run.finished and not run.lost and message.after > run.last_seq:
                    raise ClientError("invalid_message", f"after={message.after} is beyond the log")
                self.explicit.add(run.run_id)
                self.follow(run, message.after)
                await self.send({"type": "subscribed", "run_id": run.run_id})
            else:
                assert message.thread_id is not None
                await self.check_thread(message.thread_id)
                await self.watch(message.thread_id)
                await self.send({"type": "subscribed", "thread_id": message.thread_id})
            return
        if message.run_id is not None:
            self.explicit.discard(message.run_id)
            task = self.connection.followers.pop(message.run_id, None)
            if task is not None:
                task.cancel()
            await self.send({"type": "unsubscribed", "run_id": message.run_id})
        else:
            assert message.thread_id is not None
            await self.unwatch(message.thread_id)
            await self.send({"type": "unsubscribed", "thread_id": message.thread_id})

    # -- rooms and thread subscriptions ------------------------------------------------

    async def join(self, thread_id: str) -> None:
        """Enter the thread's room: presence, and every run on it, whoever started it."""
        await self.connections.join(self.connection, thread_id)
        self.follow_thread(thread_id)

    async def leave(self, thread_id: str) -> None:
        await self.connections.leave(self.connection, thread_id)
        self.unfollow_thread(thread_id)

    async def watch(self, thread_id: str) -> None:
        """Every run on the thread, without presence (``subscribe`` with ``thread_id``)."""
        self.connection.threads.add(thread_id)
        self.connections.watch(self.connection, thread_id)
        self.follow_thread(thread_id)

    async def unwatch(self, thread_id: str) -> None:
        self.connections.unwatch(self.connection, thread_id)
        self.unfollow_thread(thread_id)

    # -- following runs ----------------------------------------------------------------

    async def check_thread(self, thread_id: str, graph: str | None = None) -> None:
        """Ownership, learning the owner from the thread's checkpoints if need be."""
        runs = self.state.runs
        latest = runs.latest_on_thread(thread_id)
        name = graph or (latest.graph.name if latest else None)
        if name is None and len(self.state.graphs) == 1:
            name = self.state.graphs.names()[0]
        entry = self.state.graphs.graphs.get(name) if name else None
        await runs.load_thread_owner(thread_id, entry)
        runs.check_thread(thread_id, self.connection.user_id)

    def unfollow_thread(self, thread_id: str) -> None:
        """Stop the runs this socket followed only because it watched the thread."""
        if thread_id in self.connection.rooms or thread_id in self.connection.threads:
            return
        for run in self.state.runs.thread_runs(thread_id):
            if run.run_id not in self.explicit:
                task = self.connection.followers.pop(run.run_id, None)
                if task is not None:
                    task.cancel()

    def follow_thread(self, thread_id: str) -> None:
        for run in self.state.runs.thread_runs(thread_id):
            if not run.finished:
                self.follow(run)

    def follow(self, run: Run | RemoteRun, after: int = 0) -> None:
        """Send the run's frames after ``after`` to this socket: through the run's hub
        (agent_server/fanout.py), or on its own until it has caught up with the hub."""
        if run.run_id in self.connection.followers:
            return
        if self.hubs is None or self.hubs.join(run, self, after) is None:
            self.follow_alone(run, after)

    def follow_alone(self, run: Run | RemoteRun, after: int) -> None:
        task = self.connection.spawn(self.pump(run, after), f"ws-follow-{run.run_id}")
        self.connection.followers[run.run_id] = task

    async def pump(self, run: Run | RemoteRun, after: int) -> None:
        streams = self.state.streams
        try:
            with streams.stream():
                async for batch in run.follow(
                    after, max_lag=streams.max_lag, max_batch=streams.max_batch
                ):
                    await self.connection.send_frames([entry.data for entry in batch])
                    streams.frames_sent += len(batch)
                    if run.finished:
                        continue
                    # Caught up with the run's hub: it takes over (fanout.py).
                    hubs = self.hubs
                    if hubs is not None and hubs.join(run, self, batch[-1].seq, create=False):
                        return
                    await streams.pace()
        except (SubscriberTooSlow, TimeoutError):
            streams.dropped_slow += 1
            await self.close_soon(CLOSE_SLOW, "too slow to keep up; reconnect and resume")
        except StreamError as exc:
            # The socket stays; this run's stream ends. ``subscribe`` with ``after``
            # resumes it (once the broker is back; on another worker).
            await self.send(
                {"type": "error", "code": exc.code, "message": str(exc), "run_id": run.run_id}
            )
        except Exception:
            # The socket went away (its transport calls end()) or sending failed.
            logger.debug("stopped following run %s", run.run_id, exc_info=True)
        finally:
            if self.connection.followers.get(run.run_id) is asyncio.current_task():
                del self.connection.followers[run.run_id]

    async def close_soon(self, code: int, reason: str) -> None:
        """Close at once (from a helper task, or a send that timed out); the transport
        then sees the socket go and calls :meth:`end`."""
        self.closing = (code, reason)
        await self.close_now(code, reason)

    async def close_now(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # the peer may be gone already
            await self._close(code, reason)

    async def ping(self) -> None:
        """The application ``ping`` (agent_server/heartbeats.py), unless the socket is
        backed up: then its frames are waiting already."""
        ping = orjson.dumps({"type": "ping", "ts": _now_ms()}).decode()
        await try_send(self.connection.send_text, ping)

    def expire(self) -> None:
        """Silent past the idle timeout (agent_server/heartbeats.py): close."""
        idle = self.settings.ws_idle_timeout
        reason = f"idle timeout: nothing received for {idle:g} s"
        self.connection.spawn(self.close_soon(CLOSE_IDLE, reason), "ws-idle")


def close_all(sessions: dict[str, Session]) -> None:
    """At shutdown, after the runs' last frames: close every socket with 1012. The server
    then waits for the clients' closes (agent_server/server.py), so that each socket
    ends with a complete closing handshake; uvicorn's own shutdown would close the TCP
    connection right after its close frame, and the client's answer would meet a reset."""
    for session in list(sessions.values()):
        if session.closing is None:
            session.closing = (CLOSE_RESTART, "server shutting down; reconnect")
            session.connection.spawn(session.close_now(*session.closing), "ws-shutdown")


async def receive_message(websocket: WebSocket) -> str | bytes | None:
    """The client's next message, text or bytes; None once the socket is gone."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    text: str | None = message.get("text")
    return text if text is not None else message.get("bytes") or b""


def origin_allowed(origin: str, host: str, allowed: list[str]) -> bool:
    """A browser's WebSocket from a page on another origin is refused unless listed (a
    WebSocket is not covered by CORS: the server must check ``Origin`` itself)."""
    if "*" in allowed or origin in allowed:
        return True
    return origin.split("://", 1)[-1] == host  # the server's own pages


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def fan_out(connections: ConnectionManager, sessions: dict[str, Session]) -> Any:
    """A ``RunManager.on_submit`` callback: rooms and thread subscribers see every run."""

    def on_submit(run: Run) -> None:
        for connection in connections.watching(run.thread_id):
            session = sessions.get(connection.client_id)
            if session is None or run.run_id in session.reserved:
                continue
            # A watcher who joined before the thread had an owner sees nothing of it
            # once somebody else's run has made it theirs.
            if session.state.runs.owned_thread(run.thread_id, connection.user_id):
                session.follow(run)

    return on_submit


def fan_out_remote(
    runs: RunManager, connections: ConnectionManager, sessions: dict[str, Session]
) -> Any:
    """A ``RunManager.on_remote_submit`` callback: rooms span workers. The run is looked
    up once for all of this worker's watchers, which then join its one hub together."""

    async def follow(run_id: str, watchers: list[Session]) -> None:
        run = await runs.find(run_id)
        if run is None:
            return
        for session in watchers:
            if not session.ended and runs.owned_thread(run.thread_id, session.connection.user_id):
                session.follow(run)

    def on_remote_submit(run_id: str, thread_id: str) -> None:
        watchers = [
            session
            for connection in connections.watching(thread_id)
            if (session := sessions.get(connection.client_id)) is not None
        ]
        if watchers:
            connections.spawn(follow(run_id, watchers), f"ws-remote-{run_id}")

    return on_remote_submit


async def websocket_endpoint(websocket: WebSocket) -> None:
    """``/ws`` on Starlette: accept, authenticate (see :class:`~agent_server.auth.AuthMiddleware`),
    check the page's origin, then feed the session until the socket goes."""
    state: AppState = websocket.app.state.agent_server
    # Only a protocol the client offered may be selected (RFC 6455): a client that
    # sends its token as ``bearer.<token>`` offers ``agent-server.v1`` beside it.
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    auth_error = websocket.scope.get("auth_error")
    if auth_error:
        await websocket.close(CLOSE_POLICY, f"unauthorized: {auth_error}")
        return
    origin = websocket.headers.get("origin")
    if origin is not None and not origin_allowed(
        origin, websocket.headers.get("host", ""), state.settings.cors_origins
    ):
        await websocket.close(CLOSE_POLICY, f"origin not allowed: {origin}")
        return

    async def close(code: int, reason: str) -> None:
        if websocket.client_state is WebSocketState.CONNECTED:
            await websocket.close(code, reason)

    user = websocket.scope.get("user")
    session = Session(
        state,
        send_text=websocket.send_text,
        close=close,
        user=user if isinstance(user, User) else None,
        send_shared=websocket.scope["extensions"].get(SEND_SHARED),
    )
    await session.open()
    try:
        while session.closing is None:
            raw = await receive_message(websocket)
            if raw is None:
                break
            await session.receive(raw)
    finally:
        await session.end()
