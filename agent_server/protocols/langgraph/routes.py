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
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from agent_server.protocols.langgraph.assistants import (
    get_assistant,
    get_assistant_graph,
    get_assistant_schemas,
    search_assistants,
)
from agent_server.protocols.langgraph.runs import (
    cancel_run,
    create_background_run,
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


def langgraph_routes() -> list[BaseRoute]:
    return [
        Route("/assistants/search", search_assistants, methods=["POST"]),
        Route("/assistants/{id}", get_assistant, methods=["GET"]),
        Route("/assistants/{id}/graph", get_assistant_graph, methods=["GET"]),
        Route("/assistants/{id}/schemas", get_assistant_schemas, methods=["GET"]),
        Route("/threads", create_thread, methods=["POST"]),
        Route("/threads/search", search_threads, methods=["POST"]),
        Route("/threads/{thread_id}", get_thread, methods=["GET"]),
        Route("/threads/{thread_id}", patch_thread, methods=["PATCH"]),
        Route("/threads/{thread_id}", delete_thread, methods=["DELETE"]),
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
        Route("/threads/{thread_id}/runs/{run_id}", get_run, methods=["GET"]),
        Route("/threads/{thread_id}/runs/{run_id}", delete_run, methods=["DELETE"]),
        Route("/threads/{thread_id}/runs/{run_id}/join", join_run, methods=["GET"]),
        Route("/threads/{thread_id}/runs/{run_id}/stream", join_run_stream, methods=["GET"]),
        Route("/threads/{thread_id}/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/runs", create_stateless_background_run, methods=["POST"]),
        Route("/runs/stream", stream_stateless_run, methods=["POST"]),
        Route("/runs/wait", wait_stateless_run, methods=["POST"]),
    ]
