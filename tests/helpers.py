"""Small shared helpers for tests (no fixtures with side effects here)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from httpx_sse import connect_sse
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
        data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]
