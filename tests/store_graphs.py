"""A graph that reads and writes the store during a run, importable by agent-server and
by LangGraph's own dev server alike (tests/langgraph_dev/langgraph.json), and the
offline embeddings both servers index the store with."""

from __future__ import annotations

import uuid

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.store.base import BaseStore

from agent_server.stores import HashingEmbeddings

embeddings = HashingEmbeddings()


async def remember(state: MessagesState, config: RunnableConfig, *, store: BaseStore) -> dict:
    """Recall the user's memories closest to what they said, then remember it too."""
    configurable = config.get("configurable") or {}
    user = configurable.get("user") or (config.get("metadata") or {}).get("user_id") or "anon"
    namespace = (str(user), "memories")
    text = str(state["messages"][-1].content)
    found = await store.asearch(namespace, query=text, limit=1)
    await store.aput(namespace, str(uuid.uuid4()), {"text": text})
    reply = f"I remember: {found[0].value['text']}" if found else "Nothing yet."
    return {"messages": [AIMessage(reply)]}


memory = StateGraph(MessagesState).add_node(remember).add_edge(START, "remember").compile()
