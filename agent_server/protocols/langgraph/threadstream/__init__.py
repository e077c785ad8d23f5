"""LangGraph's thread-centric streaming (Agent Protocol v2, ``client.threads.stream``),
over the same runs, threads and checkpoints as the rest of the LangGraph API
(docs/thread-streams.md).

A client sends commands to a thread (``POST /threads/{id}/commands``, or a WebSocket at
``/threads/{id}/stream/events``) and reads the thread's events, filtered by channel and
namespace, as SSE (``POST /threads/{id}/stream/events``) or on the WebSocket. Nothing
here executes graphs: runs are LangGraph API runs of the run manager, and events are
read from their logs.

- :mod:`.events`: channels and events, translated from a run's log (seq, shapes);
- :mod:`.history`: a thread's runs in order, and where each sits in the seq space;
- :mod:`.feed`: following a thread, for both transports;
- :mod:`.commands`: the commands;
- :mod:`.schemas`: what clients send;
- :mod:`.sse` and :mod:`.websocket`: the two transports.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route, WebSocketRoute

from agent_server.protocols.langgraph.threadstream.sse import commands, stream_events
from agent_server.protocols.langgraph.threadstream.websocket import thread_socket


def thread_stream_routes() -> list[BaseRoute]:
    """The protocol's routes, for the LangGraph API's mount."""
    return [
        Route("/threads/{thread_id}/commands", commands, methods=["POST"]),
        Route("/threads/{thread_id}/stream/events", stream_events, methods=["POST"]),
        WebSocketRoute("/threads/{thread_id}/stream/events", thread_socket),
    ]


__all__ = ["thread_stream_routes"]
