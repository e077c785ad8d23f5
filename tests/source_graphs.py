"""Graphs for the differential test of the event sources (tests/test_sources.py): one for
each case the translator handles, besides the repository's own graphs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated, Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks.manager import adispatch_custom_event
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt

from agent_server.chat_model import Plan, PlannedToolCall, ScriptedChatModel
from agent_server.tools import tool_timeout


@tool
def add(a: int, b: int) -> int:
    """Add two numbers (a sync tool: it runs in a worker thread)."""
    return a + b


@tool
async def times(a: int, b: int) -> int:
    """Multiply two numbers."""
    await asyncio.sleep(0.001)
    return a * b


@tool
async def explode(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"exploded: {reason}")


@tool
async def sleepy(seconds: float) -> str:
    """Sleeps (for the tool timeout)."""
    await asyncio.sleep(seconds)
    return "woke"


@tool
async def progress(steps: int) -> str:
    """Reports progress through the stream writer, and once through a dispatched event."""
    write = get_stream_writer()
    for step in range(steps):
        write({"name": "progress", "data": {"step": step, "total": steps}})
        await asyncio.sleep(0.001)
    write("plain payload")
    await adispatch_custom_event("dispatched", {"via": "callbacks"})
    return "done"


@tool
def handoff(note: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
    """Returns a Command that updates the state with its own message."""
    return Command(
        update={"messages": [ToolMessage(f"handed off: {note}", tool_call_id=tool_call_id)]}
    )


class Planner(ScriptedChatModel):
    """Calls the tools the first user message names (``a+b``, ``boom``...), then answers."""

    def plan(self, messages: Sequence[BaseMessage], tool_names: Sequence[str]) -> Plan:
        if isinstance(messages[-1], ToolMessage):
            return Plan(text="All done: " + ", ".join(str(m.content) for m in messages[-3:]))
        text = str(messages[-1].content)
        calls = {
            "parallel": [
                PlannedToolCall("add", {"a": 2, "b": 3}),
                PlannedToolCall("times", {"a": 4, "b": 5}),
                PlannedToolCall("add", {"a": 10, "b": 20}),
            ],
            "boom": [PlannedToolCall("explode", {"reason": "asked"})],
            "slow": [PlannedToolCall("sleepy", {"seconds": 5})],
            "progress": [PlannedToolCall("progress", {"steps": 3})],
            "handoff": [PlannedToolCall("handoff", {"note": "over"})],
        }.get(text)
        if calls is None:
            return Plan(text=f"You said {text}.")
        return Plan(tool_calls=calls)


TOOLS = [add, times, explode, sleepy, progress, handoff]


def react(model: BaseChatModel | None = None) -> Any:
    model = model or Planner()

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.bind_tools(TOOLS).ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node(
        "tools", ToolNode(TOOLS, handle_tool_errors=True, awrap_tool_call=tool_timeout(0.2))
    )
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "agent")
    return builder.compile()


tools_agent = react()

# Tokens from a subgraph: the agent as the node "inner" of an outer graph.
nested = StateGraph(MessagesState).add_node("inner", react()).add_edge(START, "inner").compile()


def _sync_answer(state: MessagesState) -> dict[str, Any]:
    # A sync node calling invoke: the model still streams (callbacks on a worker thread).
    return {"messages": [ScriptedChatModel().invoke(state["messages"])]}


sync_node = StateGraph(MessagesState).add_node("answer", _sync_answer)
sync_node = sync_node.add_edge(START, "answer").compile()


def _approve(state: MessagesState) -> dict[str, Any]:
    answer = interrupt({"question": "approve?"})
    return {"messages": [AIMessage(content=f"approved: {answer}")]}


interrupting = StateGraph(MessagesState).add_node("ask", _approve).add_edge(START, "ask")
interrupting = interrupting.compile()


async def _quiet_model(state: MessagesState) -> dict[str, Any]:
    model = ScriptedChatModel().with_config(tags=["nostream"])
    return {"messages": [await model.ainvoke(state["messages"])]}


nostream = StateGraph(MessagesState).add_node("answer", _quiet_model)
nostream = nostream.add_edge(START, "answer").compile()


async def _handwritten(state: MessagesState) -> dict[str, Any]:
    # No model at all: an AI message returned whole (one token frame, as LangGraph's
    # messages mode sends it).
    return {"messages": [AIMessage(content="written by hand", id="hand-1")]}


unstreamed = StateGraph(MessagesState).add_node("write", _handwritten)
unstreamed = unstreamed.add_edge(START, "write").compile()


class BlockModel(BaseChatModel):
    """Streams content blocks: reasoning first, then text, as reasoning models do."""

    @property
    def _llm_type(self) -> str:
        return "blocks"

    def _chunks(self) -> Iterator[AIMessageChunk]:
        for piece in ("think", "ing..."):
            yield AIMessageChunk(content=[{"type": "reasoning", "reasoning": piece, "index": 0}])
        for piece in ("The", " answer", " is", " 42."):
            yield AIMessageChunk(content=[{"type": "text", "text": piece, "index": 1}])
        yield AIMessageChunk(
            content="",
            usage_metadata={"input_tokens": 3, "output_tokens": 6, "total_tokens": 9},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        merged = None
        for chunk in self._chunks():
            merged = chunk if merged is None else merged + chunk
        assert merged is not None
        return ChatResult(generations=[ChatGeneration(message=merged)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            await asyncio.sleep(0)
            yield ChatGenerationChunk(message=chunk)


async def _think(state: MessagesState) -> dict[str, Any]:
    return {"messages": [await BlockModel().ainvoke(state["messages"])]}


blocks = StateGraph(MessagesState).add_node("think", _think).add_edge(START, "think").compile()


async def _fail(state: MessagesState) -> dict[str, Any]:
    model = ScriptedChatModel()
    async for _ in model.astream(state["messages"]):
        pass
    raise RuntimeError("the node failed")


raising = StateGraph(MessagesState).add_node("fail", _fail).add_edge(START, "fail").compile()


class Talker(ScriptedChatModel):
    """Answers with 200 words, 5 ms apart: a run that is cancelled mid-stream."""

    def plan(self, messages: Sequence[BaseMessage], tool_names: Sequence[str]) -> Plan:
        return Plan(text=" ".join(f"w{i}" for i in range(200)))


async def _ticks(state: MessagesState) -> dict[str, Any]:
    return {"messages": [await Talker(token_delay=0.005).ainvoke(state["messages"])]}


long_answer = StateGraph(MessagesState).add_node("speak", _ticks).add_edge(START, "speak")
long_answer = long_answer.compile()
