"""Fault injection with real processes (issue 14, "Proven").

- ``cluster.py``: ``RedisServer``, ``PostgresCluster``, ``Worker`` and ``Cluster`` (both
  services and N workers): private processes on free ports under a temp dir, never the
  shared services; start, stop, kill, restart, freeze (Redis).
- ``clients.py``: ``SseFollower`` and ``WsFollower``, asyncio clients that record every
  frame, ``[DONE]`` and connection (a ``Recording``), resuming per a ``Reconnect`` policy;
  ``gather`` waits for many of them.
- ``checks.py``: ``assert_complete``, ``assert_complete_or_clear_error``,
  ``assert_in_order``: what every client must have seen.
- ``graphs.py``: ``tokens`` (N tokens, a pause between them) and ``quiet``.
- ``conftest.py``: the module-scoped ``cluster`` fixture and ``running`` (restarts what a
  previous test left down).
"""
