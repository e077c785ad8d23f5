"""The uvicorn server, with a shutdown that drains runs before connections close.

uvicorn, on SIGTERM, stops listening, then waits for open connections (forever, unless
``timeout_graceful_shutdown`` is set) and only *then* runs the app's lifespan shutdown.
A streaming connection never ends by itself, so the lifespan is too late to end runs
gracefully. This server drains first: new runs get 503, running ones have
``shutdown_grace`` seconds to finish, the rest are cancelled with an ``error`` frame of
code ``shutdown``; every SSE stream thereby ends with that frame and ``[DONE]``, and
uvicorn's own shutdown then finds the connections finished.

Order on SIGTERM, as a client sees it: the listening socket is closed at once (a new
connection is refused); a connection that is already open (keep-alive) still gets
answers during the drain: 503 ``shutting_down`` for new runs and ``/healthz``. After the
drain, streams have ``FLUSH_SECONDS`` to write their last frames; every WebSocket is
then closed with 1012 and its client's close awaited (up to ``FLUSH_SECONDS`` again), so
it ends with a complete closing handshake, not a reset; a connection whose
client stopped reading (its bytes stay unsent) is then aborted rather than waited for,
so a stalled reader delays the exit by that second, not by ``timeout_graceful_shutdown``.
uvicorn re-raises the signal after a graceful shutdown: the process ends *by* SIGTERM.

Stalled clients while running. When an SSE send times out (``send_timeout``), uvicorn
closes the connection, but its transport's close waits until the unsent bytes are
written: a client that never reads would hold the socket and those bytes for ever. Once
a second this server aborts closing connections whose unsent bytes have not moved for
``send_timeout``.

Slow clients. The same once-a-second tick closes connections whose request headers or
body take longer than ``header_timeout`` / ``body_timeout`` (agent_server/http_protocol.py
holds the reasons); under ``--reload`` (uvicorn's own server) these bounds do not apply.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from agent_server.http_protocol import close_late, reset
from agent_server.ws import close_all

logger = logging.getLogger("agent_server.server")

# After the drain, how long streams may take to write their last frames.
FLUSH_SECONDS = 1.0


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, *, grace: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace = grace
        # closing connection -> (unsent bytes, since when unchanged)
        self._closing: dict[Any, tuple[int, float]] = {}

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # uvicorn ticks every 0.1 s
            self._abort_stalled_closing()
            self._close_slow()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting connections while runs drain
        state = getattr(self.app.state, "agent_server", None)
        if state is not None:
            await state.runs.drain(self.grace)
            # WebSockets: their followers send the runs' last frames, then each socket
            # is closed with 1012 and its client's close awaited.
            await state.connections.settle(FLUSH_SECONDS)
            close_all(state.sessions)
            await self._closed(WebSocketsSansIOProtocol, FLUSH_SECONDS)
            await self._flush(FLUSH_SECONDS)
        self._guard_shutdowns()
        await super().shutdown(sockets)

    def _guard_shutdowns(self) -> None:
        """uvicorn's shutdown asks every connection to shut down in one loop, and its
        WebSocket protocol raises (``InvalidState``) for a socket whose client is closing
        it already: that aborts the whole shutdown (the lifespan's cleanup skipped, exit
        code 1). Each connection's ``shutdown`` is wrapped so that such a connection is
        dropped instead (no connection is accepted any more at this point)."""
        connections = self.server_state.connections
        for connection in list(connections):
            connection.shutdown = functools.partial(  # type: ignore[method-assign]
                _shut_down, connection, connection.shutdown, connections
            )

    async def _closed(self, kind: type, limit: float) -> None:
        """Wait (up to ``limit``) until no connection of this kind is left open."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and any(
            isinstance(connection, kind) for connection in self.server_state.connections
        ):
            await asyncio.sleep(0.02)

    def _unsent(self) -> list[tuple[Any, asyncio.WriteTransport, int]]:
        """Open connections with bytes waiting for their client to read."""
        found = []
        for connection in self.server_state.connections:
            transport = getattr(connection, "transport", None)
            if transport is not None and (size := transport.get_write_buffer_size()):
                found.append((connection, transport, size))
        return found

    async def _flush(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while (unsent := self._unsent()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for _, transport, _ in unsent:
            reset(transport)
        if unsent:
            logger.info("aborted %d connections whose clients stopped reading", len(unsent))

    def _close_slow(self) -> None:
        state = getattr(self.app.state, "agent_server", None)
        if state is None:
            return
        settings = state.settings
        now = asyncio.get_running_loop().time()
        closed = close_late(
            self.server_state.connections, now, settings.header_timeout, settings.body_timeout
        )
        for what, count in closed.items():
            if count:
                logger.info("closed %d connections whose request %s came too slowly", count, what)

    def _abort_stalled_closing(self) -> None:
        state = getattr(self.app.state, "agent_server", None)
        if state is None:
            return
        now = time.monotonic()
        closing: dict[Any, tuple[int, float]] = {}
        for connection, transport, size in self._unsent():
            if not transport.is_closing():
                continue
            before = self._closing.get(connection)
            if before is None or before[0] != size:
                closing[connection] = (size, now)
            elif now - before[1] >= state.settings.send_timeout:
                logger.info("aborted a connection whose client stopped reading")
                reset(transport)
            else:
                closing[connection] = before
        self._closing = closing


def _shut_down(connection: Any, shutdown: Callable[[], None], connections: set[Any]) -> None:
    try:
        shutdown()
    except Exception as exc:
        logger.info("dropped a connection that could not shut down cleanly: %s", exc)
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()
        connections.discard(connection)
