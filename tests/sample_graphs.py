"""Graphs used by the end-to-end tests, loaded by reference like a user's graphs."""

from __future__ import annotations

import asyncio
import logging

from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph

from agent_server.chat_model import ScriptedChatModel

# Steps the `ticker` graph has completed, so tests can see that a cancelled run stopped.
TICKS: list[int] = []


async def _fail_after_a_token(state: MessagesState) -> dict[str, list[AIMessageChunk]]:
    model = ScriptedChatModel()
    async for _ in model.astream(state["messages"]):
        break  # one token reached the client, then the node fails
    raise RuntimeError("the model backend went away")


failing = (
    StateGraph(MessagesState)
    .add_node("agent", _fail_after_a_token)
    .add_edge(START, "agent")
    .compile()
)


async def _tick(state: MessagesState) -> dict[str, list[str]]:
    writer = get_stream_writer()
    for step in range(200):
        await asyncio.sleep(0.02)
        TICKS.append(step)
        writer({"name": "tick", "data": step})
    return {"messages": []}


ticker = StateGraph(MessagesState).add_node("tick", _tick).add_edge(START, "tick").compile()


async def _quiet(state: MessagesState) -> dict[str, list[str]]:
    await asyncio.sleep(0.5)
    return {"messages": []}


quiet = StateGraph(MessagesState).add_node("wait", _quiet).add_edge(START, "wait").compile()


async def _flood(state: MessagesState, config: RunnableConfig) -> dict[str, list[str]]:
    """``count`` custom frames of about ``size`` bytes, ``interval`` s apart (configurable)."""
    options = config.get("configurable", {})
    count = int(options.get("count", 500))
    size = int(options.get("size", 1000))
    interval = float(options.get("interval", 0.0))
    writer = get_stream_writer()
    for step in range(count):
        writer({"name": "chunk", "data": {"step": step, "fill": "x" * size}})
        await asyncio.sleep(interval)
    return {"messages": []}


flood = StateGraph(MessagesState).add_node("flood", _flood).add_edge(START, "flood").compile()


async def _log_inside(state: MessagesState) -> dict[str, list[str]]:
    log = logging.getLogger("agent_server.test")
    log.warning("inside")
    try:
        raise ValueError("kaboom")
    except ValueError:
        log.exception("failed inside")
    return {"messages": []}


def _log_inside_sync(state: MessagesState) -> dict[str, list[str]]:
    logging.getLogger("agent_server.test").warning("inside a sync node")  # a worker thread
    return {"messages": []}


log_inside = (
    StateGraph(MessagesState)
    .add_node("log", _log_inside)
    .add_node("log_sync", _log_inside_sync)
    .add_edge(START, "log")
    .add_edge("log", "log_sync")
    .compile()
)
