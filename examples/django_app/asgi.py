"""The example's ASGI application: ``uvicorn examples.django_app.asgi:application``.

HTTP goes to Django; WebSockets at ``/ws/agent/`` to agent-server's consumer, with the
Django user from the session cookie (``AuthMiddlewareStack``) and the page's origin
checked against ``ALLOWED_HOSTS``. :class:`~agent_server.contrib.django.Lifespan` opens
agent-server's state at start-up and drains its runs at shutdown.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
django_application = get_asgi_application()  # sets Django up before the imports below

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from agent_server.contrib.django import AgentConsumer, Lifespan  # noqa: E402

application = Lifespan(
    ProtocolTypeRouter(
        {
            "http": django_application,
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter([path("ws/agent/", AgentConsumer.as_asgi())]))
            ),
        }
    )
)
