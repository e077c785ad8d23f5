"""Graphs for the fault tests, loaded by reference as a user's graphs are.

``tokens`` streams a model's answer slowly enough to be interrupted anywhere: it waits
``delay`` seconds, then its model streams ``tokens`` words ``pause`` seconds apart (all
three from ``config["configurable"]``). ``quiet`` sends nothing for ``seconds`` (default
5) and then ends, for heartbeat and idle-stream checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import START, MessagesState, StateGraph

from agent_server.chat_model import Plan, ScriptedChatModel


class CountingModel(ScriptedChatModel):
    """Answers ``w0 w1 ... w<count-1>``, one streamed token per word."""

    count: int = 100

    def plan(self, messages: Sequence[BaseMessage], tool_names: Sequence[str]) -> Plan:
        return Plan(text=" ".join(f"w{i}" for i in range(self.count)))


async def _speak(state: MessagesState, config: RunnableConfig) -> dict[str, list[AIMessage]]:
    options = config.get("configurable", {})
    await asyncio.sleep(float(options.get("delay", 0.0)))
    model = CountingModel(
        count=int(options.get("tokens", 100)), token_delay=float(options.get("pause", 0.01))
    )
    return {"messages": [await model.ainvoke(state["messages"], config)]}


tokens = StateGraph(MessagesState).add_node("speak", _speak).add_edge(START, "speak").compile()


async def _wait(state: MessagesState, config: RunnableConfig) -> dict[str, list[AIMessage]]:
    await asyncio.sleep(float(config.get("configurable", {}).get("seconds", 5.0)))
    return {"messages": []}


quiet = StateGraph(MessagesState).add_node("wait", _wait).add_edge(START, "wait").compile()
