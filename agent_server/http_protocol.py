"""uvicorn's httptools protocol with bounds for slow clients and a cap on connections.

uvicorn bounds an *idle* keep-alive connection (``timeout_keep_alive``) but nothing else:
a client that trickles its request headers or body a byte at a time holds its socket,
and its file descriptor, for ever. This protocol records, per connection, what it is
waiting for (``awaiting``: headers or body) and since when; ``Server.on_tick``
(agent_server/server.py) sweeps the open connections once a second with
:func:`close_late`. Decisions, and why:

- **One sweep, not a timer per socket.** Two attributes per connection and one pass a
  second over the set uvicorn already keeps (0.5 ms per 10,000 connections here);
  a ``call_later`` handle per request would cost an allocation and heap operations on
  every request. The price is precision: a bound is enforced within a second after it
  passes.
- **When the clocks start.** Headers: from the connection's start, and on a keep-alive
  connection from the first byte of the next request (between requests uvicorn's
  ``timeout_keep_alive`` applies; a clock started at the end of the previous response
  would turn a quiet keep-alive connection into a 408 racing the client's next request).
  Body: from the end of the headers to the end of the message. A connection whose reading
  uvicorn paused (64 KB of body the app has not taken, or pipelined requests queued
  behind a response) is skipped: then the server, not the client, is the slow party.
- **The body bound is enforced here, not in ``schemas.read_body``**: every route is
  covered, including those that answer without reading their body, after which a
  trickled body kept the connection open (each byte cancels uvicorn's keep-alive timer).
  The app, blocked reading the body, sees a disconnect; ``read_body`` turns that into a
  quiet ``RequestError`` rather than an "unhandled error". An app embedded in another
  server relies on that server's timeouts.
- **What the client gets.** ``408`` with the JSON error shape
  (``{"code": "request_timeout", ...}``) and ``connection: close``, then a close. When a
  response is already under way on the connection (a pipelined request, or an app that
  answers before reading its body), a 408 cannot be written: the connection is reset.
  A body that was still trickling after its response completed is closed quietly.
- **The connection cap** (uvicorn's ``limit_concurrency``, set from
  ``AGENT_SERVER_MAX_CONNECTIONS``) is decided when a connection is accepted: a
  connection accepted while the worker already holds that many (HTTP and WebSocket,
  upgraded or not) has its first request answered ``503`` with
  ``{"code": "too_many_connections", ...}``, ``retry-after: 1`` and ``connection: close``,
  and a WebSocket handshake on it gets the same 503 instead of the upgrade. uvicorn's own
  check is switched off: it refuses requests on *every* connection while the total is at
  the limit (established keep-alive clients and health checks included), answers in plain
  text, and lets WebSocket handshakes through uncounted. A refused connection still
  holds a descriptor until answered (or closed by the header bound), so the process's
  file-descriptor limit must exceed the cap (``agent-server serve`` raises it and warns).
- **httptools only.** ``agent-server serve`` always serves with httptools. uvicorn's h11
  protocol reports parser events rather than callbacks and would need a second
  implementation; nothing here serves with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any, Literal

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from agent_server.schemas import error_response

logger = logging.getLogger("agent_server.http_protocol")

HEADERS: Literal["headers"] = "headers"
BODY: Literal["body"] = "body"

TOO_MANY = "this worker holds its maximum number of connections; retry shortly"
# Past the cap, at most one warning a second: a flood of connections must not flood the log.
_last_cap_warning = -1.0


class HttpProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection; see the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limit_concurrency = None  # replaced by the accept-time cap below
        self.awaiting: Literal["headers", "body"] | None = HEADERS
        self.awaiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.awaiting_since = self.loop.time()
        cap = self.config.limit_concurrency
        if cap is not None and len(self.connections) > cap:
            self.app = refuse_past_cap
            _warn_past_cap(len(self.connections), cap)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.awaiting is None:
            self.awaiting, self.awaiting_since = HEADERS, self.loop.time()

    def on_headers_complete(self) -> None:
        upgrade = self.parser.should_upgrade() and self._should_upgrade()
        self.awaiting, self.awaiting_since = None if upgrade else BODY, self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.awaiting = None
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if self.app is refuse_past_cap:
            self.transport.write(self._error(503, "too_many_connections", TOO_MANY))
            self.transport.close()
            return
        super().handle_websocket_upgrade()

    def time_out(self, header_timeout: float, body_timeout: float) -> None:
        """Answer 408 and close; reset when a response is under way; see the docstring."""
        if self.transport.is_closing():
            return
        what, limit = (
            ("headers", header_timeout) if self.awaiting == HEADERS else ("body", body_timeout)
        )
        self.awaiting = None
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is None or cycle.response_complete:
            if what == "body":  # answered already; the rest of the body is not wanted
                self.transport.close()
                return
        else:
            # The app, if it is waiting for the body, sees a disconnect; its writes are dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started or what == "headers":
                reset(self.transport)  # a 408 would land inside a response
                return
        message = f"request {what} did not arrive within {limit:g} s"
        self.transport.write(self._error(408, "request_timeout", message))
        self.transport.close()

    def _error(self, status: int, code: str, message: str) -> bytes:
        """A complete JSON error response, written outside any ASGI cycle."""
        response = error_response(status, code, message)
        headers = [*self.server_state.default_headers, *response.raw_headers]
        lines = [STATUS_LINE[status]]
        for name, value in [*headers, (b"connection", b"close")]:
            lines += [name, b": ", value, b"\r\n"]
        return b"".join([*lines, b"\r\n", response.body])


def close_late(
    connections: Iterable[object], now: float, header_timeout: float, body_timeout: float
) -> dict[str, int]:
    """Time out the connections past their header or body bound; counts by kind."""
    header_start, body_start = now - header_timeout, now - body_timeout
    late = [
        (connection, awaiting)
        for connection in connections
        if isinstance(connection, HttpProtocol)
        and (awaiting := connection.awaiting) is not None
        and connection.awaiting_since < (header_start if awaiting == HEADERS else body_start)
    ]
    counts = {HEADERS: 0, BODY: 0}
    for connection, awaiting in late:
        if connection.flow.read_paused:
            continue  # the server has not taken what came: not the client's delay
        counts[awaiting] += 1
        connection.time_out(header_timeout, body_timeout)
    return counts


async def refuse_past_cap(
    scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    """The app of a connection accepted past the cap: 503, then uvicorn closes it."""
    response = error_response(503, "too_many_connections", TOO_MANY)
    response.headers["retry-after"] = "1"
    response.headers["connection"] = "close"
    await response(scope, receive, send)  # type: ignore[arg-type]


def _warn_past_cap(open_connections: int, cap: int) -> None:
    global _last_cap_warning
    now = time.monotonic()
    if now - _last_cap_warning >= 1.0:
        _last_cap_warning = now
        logger.warning(
            "refusing new connections: %d open, max_connections is %d", open_connections, cap
        )


def reset(transport: asyncio.WriteTransport) -> None:
    """Abort with a reset (SO_LINGER 0): a plain close would leave the kernel holding the
    unsent bytes in FIN-WAIT-1 for a client that never reads them."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
