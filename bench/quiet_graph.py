"""A run that says nothing for a long time, for the idle SSE streams of
``bench/connections.py``: one node waits ``seconds`` (``configurable``, default an hour)
and ends. Cancel the run when it has served its purpose."""

from __future__ import annotations

import asyncio

from langchain_core.runnables import RunnableConfig
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph


async def wait(state: MessagesState, config: RunnableConfig) -> dict[str, list[str]]:
    await asyncio.sleep(float(config.get("configurable", {}).get("seconds", 3600)))
    return {"messages": []}


def make_graph() -> CompiledStateGraph:
    return StateGraph(MessagesState).add_node("wait", wait).add_edge(START, "wait").compile()
