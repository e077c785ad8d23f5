"""A human-in-the-loop graph for the tests: it asks for approval, then answers."""

from __future__ import annotations

from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import interrupt


def _ask(state: MessagesState) -> dict[str, list[AIMessage]]:
    answer = interrupt({"question": "approve?"})
    return {"messages": [AIMessage(content=f"approved: {answer}")]}


approval = StateGraph(MessagesState).add_node("ask", _ask).add_edge(START, "ask").compile()
