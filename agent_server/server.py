"""The uvicorn server, with a shutdown that drains runs before connections close.

uvicorn, on SIGTERM, stops listening, then waits for open connections (forever, unless
``timeout_graceful_shutdown`` is set) and only *then* runs the app's lifespan shutdown.
A streaming connection never ends by itself, so the lifespan is too late to end runs
gracefully. This server drains first: new runs get 503, running ones have
``shutdown_grace`` seconds to finish, the rest are cancelled with an ``error`` frame of
code ``shutdown``; every SSE stream thereby ends with that frame and ``[DONE]``, and
uvicorn's own shutdown then finds the connections finished (a stalled reader is cut by
the send timeout, and at worst by ``timeout_graceful_shutdown``).
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from starlette.applications import Starlette

logger = logging.getLogger("agent_server.server")


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, *, grace: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting connections while runs drain
        state = getattr(self.app.state, "agent_server", None)
        if state is not None:
            await state.runs.drain(self.grace)
        await super().shutdown(sockets)
