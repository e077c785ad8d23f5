"""The process's agent-server for a Django site: one state, opened once, closed at shutdown.

Decisions (read before changing):

- The state is what the standalone server's lifespan builds (``open_state``: settings,
  graphs, tools, checkpointer, run manager, connections), so runs, frames, limits and
  registries are the same, not a re-implementation.
- Django has no lifespan of its own, and Channels' ``ProtocolTypeRouter`` refuses the
  ASGI ``lifespan`` scope. ``asgi.py`` therefore wraps the application in
  :class:`Lifespan`: start-up opens the state, shutdown closes it (running runs get
  ``AGENT_SERVER_SHUTDOWN_GRACE`` seconds, the rest end with ``error`` code
  ``shutdown``). Under a server that sends no lifespan events (daphne, Django's test
  client) the state is opened on first use instead and closed only by
  :meth:`Runtime.stop`; a warning says so.
- The state belongs to the event loop that opened it (its tasks, its events): asking
  for it from another loop is an error, never a silent hang.
- Settings: agent-server's own (``AGENT_SERVER_*`` variables, ``agent_server.toml``),
  with the fields of the Django setting ``AGENT_SERVER`` (a dict) on top.
- With a Channels layer, every run of this process is published to its thread's group
  (:mod:`agent_server.contrib.django.groups`).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_server.app import open_state
from agent_server.contrib.django.groups import GroupPublisher
from agent_server.settings import Settings
from agent_server.state import AppState

logger = logging.getLogger("agent_server.contrib.django")


class Runtime:
    """Holds the agent-server state of this process (see the module docstring)."""

    def __init__(self) -> None:
        self._state: AppState | None = None
        self._stack: AsyncExitStack | None = None
        self._publisher: GroupPublisher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Lock | None = None

    async def start(self, settings: Settings | None = None) -> AppState:
        """Open the state (once; later calls return it). ``settings`` replaces the ones
        read from the environment and the Django setting ``AGENT_SERVER``."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("agent-server was started in another event loop; stop it first")
        if self._starting is None:
            self._loop, self._starting = loop, asyncio.Lock()
        async with self._starting:
            if self._state is None:
                try:
                    await self._open(settings or self.read_settings())
                except BaseException:
                    self._loop = self._starting = None
                    raise
        assert self._state is not None
        return self._state

    async def state(self) -> AppState:
        """The state, opened now if the lifespan did not (see the module docstring)."""
        if self._state is None:
            logger.warning(
                "agent-server starts on first use: without the Lifespan wrapper in asgi.py "
                "its runs are not drained at shutdown"
            )
        return await self.start()

    def read_settings(self) -> Settings:
        overrides: dict[str, Any] = dict(getattr(django_settings, "AGENT_SERVER", {}))
        return Settings(**overrides)

    async def _open(self, settings: Settings) -> None:
        stack = AsyncExitStack()
        state = await stack.enter_async_context(open_state(settings))
        try:
            layer = get_channel_layer()
        except BaseException:
            await stack.aclose()
            raise
        if layer is not None:
            self._publisher = GroupPublisher(layer, state.streams)
            state.runs.on_submit.append(self._publisher)
        self._stack, self._state = stack, state
        for error in [*state.tools.errors, *state.graphs.errors]:
            logger.warning("plugin skipped: %s: %s", error.source, error.error)
        logger.info("agent-server ready: graphs %s", ", ".join(state.graphs.names()) or "(none)")

    async def stop(self) -> None:
        """Drain and close the state; the publishers then send the runs' last frames."""
        stack, publisher = self._stack, self._publisher
        self._state = self._stack = self._publisher = None
        self._loop = self._starting = None
        if stack is not None:
            await stack.aclose()
        if publisher is not None:
            await publisher.close()


runtime = Runtime()


class Lifespan:
    """An ASGI application that opens :data:`runtime` at start-up and closes it at
    shutdown (ASGI ``lifespan`` events), and hands every other scope to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await runtime.start()
                except Exception as exc:
                    logger.exception("agent-server could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
