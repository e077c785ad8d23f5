"""Django's users as agent-server's: the logged-in user owns the threads it starts.

An anonymous visitor is refused (the WebSocket is accepted, then closed with 1008; the
SSE view answers 401), as the standalone server refuses a missing token, unless the
Django setting ``AGENT_SERVER_ALLOW_ANONYMOUS`` is true: anonymous visitors then share
the threads nobody owns, as every caller does on a server without authentication.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from agent_server.auth import User


def agent_user(user: Any) -> User | None:
    """The agent-server user of a Django user; None when anonymous (or no user at all).

    The id is the user's primary key (a username can change; the owner must not).
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return User(str(user.pk), {"username": user.get_username()})


def anonymous_allowed() -> bool:
    return bool(getattr(settings, "AGENT_SERVER_ALLOW_ANONYMOUS", False))
