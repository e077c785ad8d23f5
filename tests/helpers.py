"""Small shared helpers for tests (no fixtures with side effects here)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx_sse
from httpx_sse import ServerSentEvent, connect_sse
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel

from agent_server.frames import BaseFrame
from agent_server.graphs import GraphEntry
from agent_server.runs import Run
from agent_server.sources import EventSource


def entry(graph: Pregel, name: str = "test") -> GraphEntry:
    if graph.checkpointer is None:
        graph = graph.copy(update={"checkpointer": InMemorySaver()})
    return GraphEntry(name=name, ref=f"test:{name}", graph=graph)


async def run_frames(
    graph: Pregel | GraphEntry,
    input: Any,
    *,
    thread_id: str | None = None,
    source: EventSource = "callbacks",
) -> list[BaseFrame]:
    """Execute a run in-process and return its frames."""
    graph_entry = graph if isinstance(graph, GraphEntry) else entry(graph)
    run = Run(
        graph=graph_entry, input=input, thread_id=thread_id or str(uuid.uuid4()), source=source
    )
    await run.execute()
    return [item.frame for item in run.log]


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def types(frames: list[BaseFrame]) -> list[str]:
    return [frame.type for frame in frames]


def sse_json(client: Any, method: str, url: str, **kwargs: Any) -> list[Any]:
    """The frames of a whole SSE stream (``[DONE]`` checked and left out), via httpx-sse."""
    with connect_sse(client, method, url, **kwargs) as source:
        assert source.response.status_code == 200, source.response.read()
        data = [event.data for event in dispatched(source)]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def dispatched(source: httpx_sse.EventSource) -> Iterator[ServerSentEvent]:
    """The events a browser's ``EventSource`` dispatches.

    Once a stream has carried an ``id:``, httpx-sse also yields every comment block (our
    ``: ping``) as an event with empty data; the SSE spec dispatches nothing for it.
    """
    return (event for event in source.iter_sse() if event.data)


async def adispatched(source: httpx_sse.EventSource) -> AsyncIterator[ServerSentEvent]:
    """:func:`dispatched`, for an async client."""
    async for event in source.aiter_sse():
        if event.data:
            yield event
