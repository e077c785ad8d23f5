"""agent-server in a Django site, over Django Channels (``pip install agent-server[django]``).

- :class:`AgentConsumer`: the WebSocket protocol of ``/ws`` (docs/protocol.md) as a
  Channels consumer, the connected Django user as the owner, rooms over the Channels
  layer's groups.
- :func:`stream_run`: ``GET /runs/stream`` (SSE, ``EventSource``) as a Django async view.
- :class:`Lifespan`: wrap the ASGI application so that the agent-server state is opened
  at start-up and closed at shutdown; :data:`runtime` holds it.

See docs/embedding.md and examples/django_app/.
"""

try:
    import channels  # noqa: F401
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "agent_server.contrib.django needs Django and Channels: pip install 'agent-server[django]'"
    ) from exc

from agent_server.contrib.django.consumers import AgentConsumer
from agent_server.contrib.django.runtime import Lifespan, runtime
from agent_server.contrib.django.views import stream_run

__all__ = ["AgentConsumer", "Lifespan", "runtime", "stream_run"]
