"""LangGraph stream parts from astream_events (agent_server.protocols.langgraph.parts), judged
against LangGraph's own stream modes (``graph.astream(stream_mode=...)``) on the same
graphs: same events, same payloads, once ids and times are set aside."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import Command, interrupt
from pydantic import BaseModel

from agent_server.chat_model import ScriptedChatModel
from agent_server.protocols.langgraph.parts import Meta, PartOptions, PartTranslator, dumps_part
from agent_server.tools import ToolRegistry
from agent_server.translate import STREAM_MODE, FrameFactory
from graphs.agent import make_graph
from tests.conftest import ROOT

# What differs between two runs of one input, and lc_versions (parts leave it out: see
# agent_server.protocols.langgraph.parts).
VOLATILE = {
    "id", "run_id", "thread_id", "checkpoint_ns", "langgraph_checkpoint_ns", "tags", "lc_versions",
}  # fmt: skip
VOLATILE_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normal(value: Any) -> Any:
    """A payload with what differs between two runs of one input removed."""
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, str):
        return VOLATILE_PATTERN.sub("<uuid>", value)
    return value


def with_checkpointer(builder: StateGraph) -> Any:  # type: ignore[type-arg]
    return builder.compile(checkpointer=InMemorySaver())


def agent() -> Any:
    return make_graph(ToolRegistry.from_sources(ROOT / "tools"), ScriptedChatModel())


def nested() -> Any:
    inner = agent()
    return with_checkpointer(
        StateGraph(MessagesState).add_node("research", inner).add_edge(START, "research")
    )


def writer() -> Any:
    async def report(state: MessagesState) -> dict[str, list[AIMessage]]:
        write = get_stream_writer()
        for step in range(3):
            write({"step": step})
        return {"messages": [AIMessage("done by hand")]}  # a message that was never streamed

    return with_checkpointer(
        StateGraph(MessagesState).add_node("report", report).add_edge(START, "report")
    )


def approval() -> Any:
    def ask(state: MessagesState) -> dict[str, list[AIMessage]]:
        return {"messages": [AIMessage(f"approved: {interrupt({'question': 'ok?'})}")]}

    return with_checkpointer(StateGraph(MessagesState).add_node("ask", ask).add_edge(START, "ask"))


async def ours(
    graph: Any, graph_input: Any, modes: tuple[str, ...], subgraphs: bool, thread: str
) -> list[tuple[str, Any]]:
    options = PartOptions(modes, subgraphs)
    translator = PartTranslator(FrameFactory("run"), options)
    config = {"configurable": {"thread_id": thread}}
    found = []
    async for event in graph.astream_events(
        graph_input,
        config,
        version="v2",
        stream_mode=STREAM_MODE + options.graph_modes(),
        subgraphs=True,
    ):
        for part in translator.translate(event):
            # A part is the SSE event it is sent as: "event: <name>\ndata: <json>\nid: <seq>"
            head, _, rest = part.data.partition(b"\ndata: ")
            data = rest.rpartition(b"\nid: ")[0]
            found.append((head.removeprefix(b"event: ").decode(), orjson.loads(data)))
    return found


async def langgraphs(
    graph: Any, graph_input: Any, modes: tuple[str, ...], subgraphs: bool, thread: str
) -> list[tuple[str, Any]]:
    native = ["messages" if m == "messages-tuple" else m for m in modes]
    config = {"configurable": {"thread_id": thread}}
    found = []
    async for item in graph.astream(graph_input, config, stream_mode=native, subgraphs=subgraphs):
        ns, mode, chunk = item if subgraphs else ((), *item)
        name = f"{mode}|{'|'.join(ns)}" if ns else mode
        found.append((name, orjson.loads(dumps_part(chunk))))
    return found


def by_event(parts: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for name, data in parts:
        key = re.sub(r":[0-9a-f-]{36}", "", name)
        grouped.setdefault(key, []).append(normal(data))
    return grouped


CASES = {
    "agent": (agent, "what is 6*7?", ("values", "updates", "messages-tuple"), False),
    "nested": (nested, "what is 2+2?", ("values", "updates", "messages-tuple"), True),
    "nested-root-only": (nested, "what is 2+2?", ("updates", "messages-tuple"), False),
    "writer": (writer, "go", ("custom", "updates", "messages-tuple", "values"), False),
    "approval": (approval, "deploy?", ("values", "updates"), False),
    "debug": (agent, "1+1", ("debug", "tasks", "checkpoints"), False),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
async def test_parts_match_langgraphs_stream_modes(case: str) -> None:
    make, text, modes, subgraphs = CASES[case]
    graph = make()
    graph_input = {"messages": [{"role": "user", "content": text}]}
    mine = by_event(await ours(graph, graph_input, modes, subgraphs, str(uuid.uuid4())))
    theirs = by_event(await langgraphs(graph, graph_input, modes, subgraphs, str(uuid.uuid4())))
    assert mine.keys() == theirs.keys()
    for name in theirs:
        if name.startswith(("debug", "checkpoints", "tasks")):
            # Timestamps and checkpoint ids differ; the sequence of kinds must not.
            shape = [sorted(p) if isinstance(p, dict) else p for p in theirs[name]]
            assert [sorted(p) if isinstance(p, dict) else p for p in mine[name]] == shape
        else:
            assert mine[name] == theirs[name], name


async def test_resume_parts_match() -> None:
    graph = approval()
    thread = str(uuid.uuid4())
    other = str(uuid.uuid4())
    graph_input = {"messages": [{"role": "user", "content": "deploy?"}]}
    await ours(graph, graph_input, ("values",), False, thread)
    await langgraphs(graph, graph_input, ("values",), False, other)
    resume = Command(resume="yes")
    mine = by_event(await ours(graph, resume, ("values", "messages-tuple"), False, thread))
    theirs = by_event(await langgraphs(graph, resume, ("values", "messages-tuple"), False, other))
    assert mine == theirs
    assert mine["values"][-1]["messages"][-1]["content"] == "approved: yes"


async def test_legacy_messages_mode_accumulates() -> None:
    parts = await ours(agent(), {"messages": [{"role": "user", "content": "hello"}]},
                       ("messages",), False, str(uuid.uuid4()))  # fmt: skip
    names = [name for name, _ in parts]
    assert names[0] == "messages/metadata"
    partial = [data[0]["content"] for name, data in parts if name == "messages/partial"]
    assert partial == sorted(partial, key=len)  # each one the message so far
    assert partial[-1].startswith("You said")
    assert all(data[0]["type"] == "ai" for name, data in parts if name == "messages/partial")


def test_a_part_is_encoded_as_its_sse_event() -> None:
    translator = PartTranslator(FrameFactory("run", start_seq=6), PartOptions(("custom",)))
    part = translator._part("custom", ("sub:1",), {"n": 1})
    assert part.data == b'event: custom|sub:1\ndata: {"n":1}\nid: 7\n\n' and part.seq == 7


class Citation(BaseModel):
    url: str


@pytest.mark.parametrize(
    "message",
    [
        AIMessageChunk(content="a token", id="m1"),
        AIMessageChunk(
            content="",
            id="m1",
            tool_call_chunks=[{"name": "calc", "args": '{"x"', "id": "c1", "index": 0}],
        ),
        AIMessageChunk(content="cited", id="m1", additional_kwargs={"cite": Citation(url="u")}),
        AIMessageChunk(content="odd keys", id="m1", response_metadata={1: "one"}),
        AIMessage(content=[{"type": "text", "text": "blocks"}], id="m2"),
    ],
    ids=["plain", "tool-call-chunk", "model-inside", "int-key", "whole-message"],
)
def test_a_messages_part_is_its_messages_full_serialisation(message: AIMessage) -> None:
    """The token path serialises a message without orjson's options when it can; the
    bytes are those of the general path, whatever the message holds."""
    meta = Meta({"langgraph_node": "agent", "tags": []})
    body = dumps_part(message.__dict__)
    expected = b"event: messages\ndata: [%b,%b]\nid: 12\n\n" % (body, meta.json)
    assert meta.part(message, 12) == expected
