"""The benchmark's graph: the repository's agent with a model that answers at length.

The first turn calls two tools in parallel (calculator and current_time); after their
results the model streams a long answer (``BENCH_TOKENS`` words, default 2,000), as fast
as it can or, with ``BENCH_TOKEN_DELAY`` seconds between tokens, at a model's pace.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from langchain_core.messages import BaseMessage, ToolMessage
from langgraph.graph.state import CompiledStateGraph

from agent_server.chat_model import Plan, PlannedToolCall, ScriptedChatModel
from agent_server.tools import ToolRegistry
from graphs.agent import make_graph as make_agent

ANSWER_TOKENS = int(os.environ.get("BENCH_TOKENS", "2000"))
TOKEN_DELAY = float(os.environ.get("BENCH_TOKEN_DELAY", "0"))


class LongAnswerModel(ScriptedChatModel):
    def plan(self, messages: Sequence[BaseMessage], tool_names: Sequence[str]) -> Plan:
        if isinstance(messages[-1], ToolMessage):
            words = (f"word{i % 97}" for i in range(ANSWER_TOKENS))
            return Plan(text=" ".join(words))
        return Plan(
            tool_calls=[
                PlannedToolCall("calculator", {"expression": "6*7"}),
                PlannedToolCall("current_time", {"timezone": "UTC"}),
            ]
        )


def make_graph(tools: ToolRegistry) -> CompiledStateGraph:
    """The agent graph over the registry's tools, answering with a long text."""
    return make_agent(tools=tools, model=LongAnswerModel(token_delay=TOKEN_DELAY))


# For LangGraph's own server (bench/langgraph.json), which takes a compiled graph.
graph = make_graph(ToolRegistry.from_sources(Path(__file__).resolve().parent.parent / "tools"))
