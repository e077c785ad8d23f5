"""A ReAct-style agent: the model calls tools until it can answer.

Registered as ``agent`` in ``agent_server.toml``. The server calls ``make_graph`` once
with its tool registry and chat model (the offline scripted model unless
``AGENT_SERVER_MODEL`` names another). Tools are looked up on every turn, so a tool
registered while the server runs (``registry.register(my_tool)`` in a notebook) is
used at once. Every tool call is bounded by ``AGENT_SERVER_TOOL_TIMEOUT``: a tool that
takes longer fails like any tool error, and the model is told.
"""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agent_server.settings import Settings
from agent_server.tools import ToolRegistry, tool_timeout


def make_graph(
    tools: ToolRegistry, model: BaseChatModel, settings: Settings | None = None
) -> CompiledStateGraph:
    """A tool-calling agent over every registered tool."""
    bound = tool_timeout(settings.tool_timeout) if settings is not None else None

    async def agent(state: MessagesState, config: RunnableConfig) -> dict[str, list]:
        bound = model.bind_tools(tools.get_tools())
        return {"messages": [await bound.ainvoke(state["messages"], config)]}

    async def call_tools(state: MessagesState, config: RunnableConfig) -> dict[str, list]:
        # A fresh ToolNode per turn picks up tools registered since the graph was built.
        node = ToolNode(tools.get_tools(), handle_tool_errors=True, awrap_tool_call=bound)
        return await node.ainvoke(state, config)

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", call_tools)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "agent")
    return builder.compile()
