"""A FastAPI service with agent-server mounted under /agents."""
