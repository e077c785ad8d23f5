"""Graphs used by the end-to-end tests, loaded by reference like a user's graphs."""

from __future__ import annotations

import asyncio

from langchain_core.messages import AIMessageChunk
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
