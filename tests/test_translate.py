"""The astream_events v2 translation, checked against real LangGraph graphs."""

from __future__ import annotations

import dataclasses

import orjson
from langchain_core.callbacks.manager import adispatch_custom_event
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import interrupt
from pydantic import BaseModel

from agent_server.chat_model import ScriptedChatModel
from agent_server.frames import (
    Custom,
    Done,
    Error,
    Interrupt,
    RunStart,
    Token,
    ToolEnd,
    ToolError,
    ToolStart,
    encode,
    parse_frame,
)
from tests.helpers import run_frames, types, user


class Point(BaseModel):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    width: int


@tool
def echo(text: str) -> str:
    """Echo the text."""
    return f"echo:{text}"


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"exploded: {reason}")


@tool
def as_message() -> AIMessage:
    """Returns a message object."""
    return AIMessage(content="inner message")


@tool
def as_document() -> Document:
    """Returns a Document."""
    return Document(page_content="doc text", metadata={"source": "a.txt"})


@tool
def as_model() -> Point:
    """Returns a pydantic model."""
    return Point(x=1, y=2)


@tool
def as_bytes() -> bytes:
    """Returns bytes."""
    return b"\x00\xffdata"


@tool
async def reporter(steps: int) -> str:
    """Reports progress via both custom-event mechanisms."""
    writer = get_stream_writer()
    for step in range(steps):
        writer({"name": "progress", "data": {"step": step}})
    writer("plain payload")
    await adispatch_custom_event("dispatched", {"via": "callbacks"})
    return "reported"


ALL_TOOLS = [echo, explode, as_message, as_document, as_model, as_bytes, reporter]


def react(tools: list = ALL_TOOLS):  # type: ignore[no-untyped-def]
    model = ScriptedChatModel()

    async def agent(state: MessagesState) -> dict:  # type: ignore[type-arg]
        return {"messages": [await model.bind_tools(tools).ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "agent")
    return builder.compile()


def check_envelope(frames: list) -> None:  # type: ignore[type-arg]
    assert isinstance(frames[0], RunStart)
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    assert len({f.run_id for f in frames}) == 1
    assert frames[-1].type in {"done", "error"}
    assert sum(f.type in {"done", "error"} for f in frames) == 1
    for frame in frames:  # every frame survives the wire
        assert parse_frame(encode(frame)).type == frame.type


async def test_text_answer_streams_tokens_and_usage() -> None:
    frames = await run_frames(react(), user("hello there"))
    check_envelope(frames)
    tokens = [f for f in frames if isinstance(f, Token)]
    assert len(tokens) > 3
    assert "hello there" in "".join(t.content for t in tokens)
    assert {t.node for t in tokens} == {"agent"}
    assert all(t.namespace == [] for t in tokens)
    assert len({t.message_id for t in tokens}) == 1 and tokens[0].message_id
    done = frames[-1]
    assert isinstance(done, Done)
    assert done.usage.output_tokens == len(tokens)
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert done.duration_ms > 0


async def test_parallel_tool_calls_are_correlated_by_id() -> None:
    frames = await run_frames(react(), user('/echo {"text": "one"}\n/echo {"text": "two"}'))
    check_envelope(frames)
    starts = [f for f in frames if isinstance(f, ToolStart)]
    ends = [f for f in frames if isinstance(f, ToolEnd)]
    assert len(starts) == len(ends) == 2
    assert all(s.tool_call_id for s in starts)
    assert len({s.tool_call_id for s in starts}) == 2
    by_id = {s.tool_call_id: s.input["text"] for s in starts}
    for end in ends:
        assert end.output == f"echo:{by_id[end.tool_call_id]}"
        assert end.duration_ms is not None and end.duration_ms >= 0
        assert end.name == "echo"
    assert {s.node for s in starts} == {"tools"}
    answer = "".join(f.content for f in frames if isinstance(f, Token))
    assert "echo:one" in answer and "echo:two" in answer


async def test_tool_that_raises_gives_tool_error_and_run_continues() -> None:
    frames = await run_frames(react(), user('/explode {"reason": "boom"}'))
    check_envelope(frames)
    start = next(f for f in frames if isinstance(f, ToolStart))
    error = next(f for f in frames if isinstance(f, ToolError))
    assert error.tool_call_id == start.tool_call_id
    assert error.name == "explode"
    assert "exploded: boom" in error.error
    assert not any(isinstance(f, ToolEnd) for f in frames)
    assert isinstance(frames[-1], Done)


async def test_tool_outputs_are_json_safe() -> None:
    message = "\n".join(
        f"/{name} {{}}" for name in ("as_message", "as_document", "as_model", "as_bytes")
    )
    frames = await run_frames(react(), user(message))
    check_envelope(frames)
    ends = {f.name: orjson.loads(encode(f))["output"] for f in frames if isinstance(f, ToolEnd)}
    assert set(ends) == {"as_message", "as_document", "as_model", "as_bytes"}
    for output in ends.values():
        assert output  # ToolNode stringifies non-str results into the ToolMessage content


async def test_raw_objects_in_frames_encode() -> None:
    """Outputs reaching frames un-stringified (a tool called directly) still encode."""

    async def node(state: MessagesState) -> dict:  # type: ignore[type-arg]
        for t in (as_message, as_document, as_model, as_bytes):
            await t.ainvoke({})
        return {}

    graph = StateGraph(MessagesState).add_node("n", node).add_edge(START, "n").compile()
    frames = await run_frames(graph, user("x"))
    check_envelope(frames)
    outputs = {f.name: orjson.loads(encode(f))["output"] for f in frames if isinstance(f, ToolEnd)}
    assert outputs["as_message"]["content"] == "inner message"
    assert outputs["as_document"]["page_content"] == "doc text"
    assert outputs["as_model"] == {"x": 1, "y": 2}
    assert outputs["as_bytes"]["type"] == "bytes"
    assert all(f.tool_call_id is None for f in frames if isinstance(f, ToolStart))


async def test_custom_events_from_stream_writer_and_dispatch() -> None:
    # astream_events' own handler awaits a gather on every dispatched event, which lets
    # the graph's stream deliver the writer's output first: this order is that source's
    # (tests/test_sources.py compares the default source with it, per mechanism).
    frames = await run_frames(react(), user('/reporter {"steps": 2}'), source="events")
    check_envelope(frames)
    customs = [(f.name, f.data) for f in frames if isinstance(f, Custom)]
    # Stream-writer output is queued by LangGraph while callback events are immediate, so
    # only the order within each mechanism is guaranteed.
    assert [c for c in customs if c[0] != "dispatched"] == [
        ("progress", {"step": 0}),
        ("progress", {"step": 1}),
        ("custom", "plain payload"),
    ]
    assert ("dispatched", {"via": "callbacks"}) in customs
    kinds = types(frames)  # all of it arrives while the tool runs
    first, last = kinds.index("custom"), len(kinds) - kinds[::-1].index("custom") - 1
    assert kinds.index("tool_start") < first and last < kinds.index("tool_end")


async def test_subgraph_tokens_carry_namespace() -> None:
    inner = react()
    outer = (
        StateGraph(MessagesState).add_node("research", inner).add_edge(START, "research").compile()
    )
    frames = await run_frames(outer, user('/echo {"text": "deep"}'))
    check_envelope(frames)
    tokens = [f for f in frames if isinstance(f, Token)]
    assert tokens and all(t.namespace == ["research"] for t in tokens)
    assert {t.node for t in tokens} == {"agent"}
    start = next(f for f in frames if isinstance(f, ToolStart))
    assert start.namespace == ["research"] and start.tool_call_id


async def test_interrupt_ends_with_interrupt_then_done() -> None:
    def ask(state: MessagesState) -> dict:  # type: ignore[type-arg]
        answer = interrupt({"question": "approve?"})
        return {"messages": [("user", str(answer))]}

    graph = StateGraph(MessagesState).add_node("ask", ask).add_edge(START, "ask").compile()
    frames = await run_frames(graph, user("x"))
    check_envelope(frames)
    assert types(frames)[-2:] == ["interrupt", "done"]
    pending = frames[-2]
    assert isinstance(pending, Interrupt)
    assert pending.value == {"question": "approve?"}
    assert pending.resumable and pending.interrupt_id


async def test_graph_failure_ends_with_error_frame() -> None:
    def broken(state: MessagesState) -> dict:  # type: ignore[type-arg]
        raise RuntimeError("node broke")

    graph = StateGraph(MessagesState).add_node("b", broken).add_edge(START, "b").compile()
    frames = await run_frames(graph, user("x"))
    check_envelope(frames)
    last = frames[-1]
    assert isinstance(last, Error)
    assert last.code == "run_error"
    assert last.message == "node broke"
    assert "Traceback" not in last.message


async def test_nostream_models_are_not_streamed() -> None:
    model = ScriptedChatModel().with_config(tags=["nostream"])

    async def agent(state: MessagesState) -> dict:  # type: ignore[type-arg]
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState).add_node("agent", agent).add_edge(START, "agent").compile()
    frames = await run_frames(graph, user("quiet please"))
    # not streamed token by token; the finished message arrives whole, as in LangGraph's
    # messages mode
    tokens = [f for f in frames if isinstance(f, Token)]
    assert len(tokens) == 1 and "quiet please" in tokens[0].content
    assert isinstance(frames[-1], Done)


async def test_messages_returned_without_streaming_become_one_token() -> None:
    def scripted(state: MessagesState) -> dict:  # type: ignore[type-arg]
        return {"messages": [AIMessage(content="a canned answer", id="canned-1")]}

    graph = StateGraph(MessagesState).add_node("canned", scripted).add_edge(START, "canned")
    compiled = graph.compile()
    frames = await run_frames(compiled, user("x"), thread_id="canned-thread")
    tokens = [f for f in frames if isinstance(f, Token)]
    assert [(t.content, t.message_id, t.node) for t in tokens] == [
        ("a canned answer", "canned-1", "canned")
    ]


async def test_streamed_and_earlier_messages_are_not_repeated() -> None:
    """A subgraph node hands back the whole state (old turns included): no repeats."""
    from tests.helpers import entry

    outer = entry(
        StateGraph(MessagesState).add_node("inner", react()).add_edge(START, "inner").compile()
    )
    first = await run_frames(outer, user("hello"), thread_id="repeat")
    second = await run_frames(outer, user("again"), thread_id="repeat")
    for frames, word in ((first, "hello"), (second, "again")):
        tokens = [f for f in frames if isinstance(f, Token)]
        assert len({t.message_id for t in tokens}) == 1
        assert word in "".join(t.content for t in tokens)
