"""Graphs for the LangGraph API tests, importable by agent-server and by LangGraph's own
dev server alike (tests/langgraph_dev/langgraph.json), so one suite runs against both."""

from __future__ import annotations

from pathlib import Path

from langgraph.graph import START, MessagesState, StateGraph

from agent_server.chat_model import ScriptedChatModel
from agent_server.tools import ToolRegistry
from graphs.agent import make_graph
from tests.hitl_graphs import approval

ROOT = Path(__file__).resolve().parent.parent

# The example agent with the repository's tools and the offline model.
agent = make_graph(ToolRegistry.from_sources(ROOT / "tools"), ScriptedChatModel())
# No tools, and 20 ms between tokens: a run that is still streaming when a test acts.
slow = make_graph(ToolRegistry(), ScriptedChatModel(token_delay=0.02))

# The agent as a subgraph: a node named "research" of an outer graph.
nested = (
    StateGraph(MessagesState)
    .add_node(
        "research", make_graph(ToolRegistry.from_sources(ROOT / "tools"), ScriptedChatModel())
    )
    .add_edge(START, "research")
    .compile()
)

__all__ = ["agent", "approval", "nested", "slow"]
