"""A minimal Django project with agent-server over Django Channels (docs/embedding.md)."""
