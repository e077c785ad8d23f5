"""The WebSocket protocol as a Django Channels consumer: a thin transport over
:class:`agent_server.ws.Session`, which holds the protocol (messages, runs, cancel,
resume, subscriptions, rooms, limits, heartbeat).

The consumer accepts the socket, then refuses an anonymous visitor with 1008 (see
:mod:`agent_server.contrib.django.auth`): a close before accepting reaches a browser as
a bare HTTP 403 it cannot read. The page's ``Origin`` is Channels' business: wrap the
consumer in ``AllowedHostsOriginValidator``, as for any consumer authenticated by
cookies.
"""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from agent_server.auth import SUBPROTOCOL
from agent_server.contrib.django.auth import agent_user, anonymous_allowed
from agent_server.contrib.django.groups import GroupSession
from agent_server.contrib.django.runtime import runtime
from agent_server.ws import CLOSE_POLICY, Session


class AgentConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """``path("ws/agent/", AgentConsumer.as_asgi())``, inside ``AuthMiddlewareStack``
    so that ``scope["user"]`` is the Django user, who owns the runs it starts."""

    session: Session | None = None

    async def connect(self) -> None:
        offered = self.scope.get("subprotocols") or []
        await self.accept(SUBPROTOCOL if SUBPROTOCOL in offered else None)
        user = agent_user(self.scope.get("user"))
        if user is None and not anonymous_allowed():
            await self.close(CLOSE_POLICY, "unauthorized: log in first")
            return
        state = await runtime.state()
        if self.channel_layer is None:  # no layer: rooms within this process
            self.session = Session(state, send_text=self.send_text, close=self.close, user=user)
        else:
            self.session = GroupSession(
                state,
                send_text=self.send_text,
                close=self.close,
                user=user,
                layer=self.channel_layer,
                channel_name=self.channel_name,
            )
        await self.session.open()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is not None:
            await self.session.receive(text_data if text_data is not None else bytes_data or b"")

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            await self.session.end()

    async def send_text(self, text: str) -> None:
        await self.send(text_data=text)

    # Group messages (agent_server.contrib.django.groups).

    async def agent_server_frames(self, event: dict[str, Any]) -> None:
        if isinstance(self.session, GroupSession):
            await self.session.deliver(event)

    async def agent_server_presence(self, event: dict[str, Any]) -> None:
        if isinstance(self.session, GroupSession):
            await self.session.present(event)
