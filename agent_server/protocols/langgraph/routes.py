"""The LangGraph server's HTTP API (the part its SDKs use), over our runs and threads.

Mounted at ``settings.langgraph_api_prefix`` (``/langgraph`` by default): a client of
LangGraph's server points there (``get_client(url="http://host:8000/langgraph")``).

Decisions (read before changing):

- Nothing here executes graphs: a LangGraph run is a :class:`~agent_server.runs.Run`
  with :class:`~agent_server.protocols.langgraph.parts.PartOptions`, so limits, per-thread
  strategies, cancel, retention, Redis fan-out and auth are the run manager's. The same
  run can be watched over the native SSE and WebSocket routes (its frames) while a
  LangGraph client streams its parts.
- Event ids are the run log's ``seq``: unique and ordered within a run, so a client
  resuming with ``Last-Event-ID: n`` gets exactly the events after ``n``. The first
  event (``metadata``) is the run's ``run_start`` frame, rendered.
- ``Location`` and ``Content-Location`` are relative to the API root, as LangGraph's
  server sends them: the SDKs join them to the base URL they were given.
- Errors are ``{"detail": ...}`` (LangGraph's shape, which the SDKs print), with our
  ``code`` beside it; statuses are LangGraph's (404, 409, 422).
- ``rollback`` cancels the active run, then starts the new run from the checkpoint
  before the cancelled run's first one (the cancelled run's checkpoints stay in the
  history, unlike LangGraph's server, which deletes them).
- The store, assistant records and thread TTLs live where the checkpoints do (memory,
  SQLite, PostgreSQL): ``store``, :mod:`agent_server.stores`,
  :mod:`agent_server.assistants`, ``housekeeping``. With auth on, a user's store
  namespaces start with their user id, and their assistants are theirs.
- Crons are claimed per due time in the database, so each fires once across workers
  (:mod:`agent_server.crons`); webhooks are checked against the SSRF policy when a run
  is created and again at delivery (:mod:`agent_server.webhooks`); ``after_seconds``
  delays a queued run in the broker (it outlives the worker) or, for a run of this
  worker, in its task (holding no slot).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from agent_server.protocols.langgraph import a2a
from agent_server.protocols.langgraph.assistants import (
    count_assistants,
    create_assistant,
    delete_assistant,
    get_assistant,
    get_assistant_graph,
    get_assistant_schemas,
    get_assistant_versions,
    patch_assistant,
    search_assistants,
    set_latest_version,
)
from agent_server.protocols.langgraph.crons import (
    count_crons,
    create_cron,
    create_thread_cron,
    delete_cron,
    get_cron,
    patch_cron,
    search_crons,
)
from agent_server.protocols.langgraph.housekeeping import copy_thread, prune_threads
from agent_server.protocols.langgraph.runs import (
    cancel_run,
    create_background_run,
    create_run_batch,
    create_stateless_background_run,
    delete_run,
    get_run,
    join_run,
    join_run_stream,
    join_thread_stream,
    list_runs,
    stream_stateless_run,
    stream_thread_run,
    wait_stateless_run,
    wait_thread_run,
)
from agent_server.protocols.langgraph.store import (
    delete_item,
    get_item,
    list_namespaces,
    put_item,
    search_items,
)
from agent_server.protocols.langgraph.threads import (
    create_thread,
    delete_thread,
    get_history,
    get_state,
    get_thread,
    patch_thread,
    post_history,
    post_state_checkpoint,
    search_threads,
    update_state,
)
from agent_server.protocols.langgraph.threadstream import thread_stream_routes


def langgraph_routes() -> list[BaseRoute]:
    return [
        Route("/assistants", create_assistant, methods=["POST"]),
        Route("/assistants/search", search_assistants, methods=["POST"]),
        Route("/assistants/count", count_assistants, methods=["POST"]),
        Route("/assistants/{id}", get_assistant, methods=["GET"]),
        Route("/assistants/{id}", patch_assistant, methods=["PATCH"]),
        Route("/assistants/{id}", delete_assistant, methods=["DELETE"]),
        Route("/assistants/{id}/versions", get_assistant_versions, methods=["POST"]),
        Route("/assistants/{id}/latest", set_latest_version, methods=["POST"]),
        Route("/assistants/{id}/graph", get_assistant_graph, methods=["GET"]),
        Route("/assistants/{id}/schemas", get_assistant_schemas, methods=["GET"]),
        Route("/threads", create_thread, methods=["POST"]),
        Route("/threads/search", search_threads, methods=["POST"]),
        Route("/threads/prune", prune_threads, methods=["POST"]),
        Route("/threads/{thread_id}", get_thread, methods=["GET"]),
        Route("/threads/{thread_id}", patch_thread, methods=["PATCH"]),
        Route("/threads/{thread_id}", delete_thread, methods=["DELETE"]),
        Route("/threads/{thread_id}/copy", copy_thread, methods=["POST"]),
        Route("/threads/{thread_id}/state", get_state, methods=["GET"]),
        Route("/threads/{thread_id}/state", update_state, methods=["POST"]),
        Route("/threads/{thread_id}/state/checkpoint", post_state_checkpoint, methods=["POST"]),
        Route("/threads/{thread_id}/state/{checkpoint_id}", get_state, methods=["GET"]),
        Route("/threads/{thread_id}/history", post_history, methods=["POST"]),
        Route("/threads/{thread_id}/history", get_history, methods=["GET"]),
        Route("/threads/{thread_id}/stream", join_thread_stream, methods=["GET"]),
        Route("/threads/{thread_id}/runs", list_runs, methods=["GET"]),
        Route("/threads/{thread_id}/runs", create_background_run, methods=["POST"]),
        Route("/threads/{thread_id}/runs/stream", stream_thread_run, methods=["POST"]),
        Route("/threads/{thread_id}/runs/wait", wait_thread_run, methods=["POST"]),
        Route("/threads/{thread_id}/runs/crons", create_thread_cron, methods=["POST"]),
        Route("/threads/{thread_id}/runs/{run_id}", get_run, methods=["GET"]),
        Route("/threads/{thread_id}/runs/{run_id}", delete_run, methods=["DELETE"]),
        Route("/threads/{thread_id}/runs/{run_id}/join", join_run, methods=["GET"]),
        Route("/threads/{thread_id}/runs/{run_id}/stream", join_run_stream, methods=["GET"]),
        Route("/threads/{thread_id}/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/runs", create_stateless_background_run, methods=["POST"]),
        Route("/runs/stream", stream_stateless_run, methods=["POST"]),
        Route("/runs/wait", wait_stateless_run, methods=["POST"]),
        Route("/runs/batch", create_run_batch, methods=["POST"]),
        Route("/runs/crons", create_cron, methods=["POST"]),
        Route("/runs/crons/search", search_crons, methods=["POST"]),
        Route("/runs/crons/count", count_crons, methods=["POST"]),
        Route("/runs/crons/{cron_id}", get_cron, methods=["GET"]),
        Route("/runs/crons/{cron_id}", patch_cron, methods=["PATCH"]),
        Route("/runs/crons/{cron_id}", delete_cron, methods=["DELETE"]),
        Route("/store/items", put_item, methods=["PUT"]),
        Route("/store/items", get_item, methods=["GET"]),
        Route("/store/items", delete_item, methods=["DELETE"]),
        Route("/store/items/search", search_items, methods=["POST"]),
        Route("/store/namespaces", list_namespaces, methods=["POST"]),
        Route("/a2a/{assistant_id}", a2a.rpc, methods=["POST"]),
        Route("/a2a/{assistant_id}/.well-known/agent-card.json", a2a.agent_card, methods=["GET"]),
        Route("/a2a/{assistant_id}/.well-known/agent.json", a2a.agent_card, methods=["GET"]),
        *thread_stream_routes(),  # Agent Protocol v2: docs/thread-streams.md
    ]
