"""Integrations with other frameworks. Each needs an optional extra and is never
imported by the core: ``agent_server.contrib.django`` needs ``agent-server[django]``."""
