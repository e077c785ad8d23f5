"""The default event source (callbacks + stream modes) against the oracle (astream_events
v2): the same frames, field by field, for every graph of the repository and a corpus
of every case the translator handles (agent_server/sources.py).

Each case runs twice, once per source, on fresh threads. Compared field by field,
except what differs between any two executions of one graph, whatever the source:
``ts`` and ``duration_ms`` (clock readings), and the ids a run mints (its run and
thread ids, LangChain's message ids, LangGraph's task, checkpoint and interrupt ids),
which are replaced by their order of first appearance.

Two mechanisms produce frames: callbacks (tokens, tool frames, dispatched custom events,
usage) and the graph's stream modes (stream-writer output, values and updates,
unstreamed messages, interrupts, the LangGraph API's pass-through parts). Most cases
are compared frame by frame in one order, ``seq`` included. Where two things happen
concurrently, the order between them is decided by scheduling, and the sources
schedule differently: astream_events' own handler awaits a ``gather`` on every callback,
which lets queued work run in between, where the inline handler does not yield:

- a stream-mode chunk (a stream writer's output, a subgraph's first ``values``) is
  queued by LangGraph and delivered when the graph next yields, while a callback of the
  same moment (a tool's end, a subgraph model's first token) is immediate;
- parallel tool calls run concurrently, and a sync tool's callbacks come from a worker
  thread, handed to the loop.

Cases marked ``concurrent`` are therefore compared activity by activity, each in its
own order: the stream-mode frames, each tool call's frames (by ``tool_call_id``), and
everything else; a frame missing, added or changed anywhere still fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from agent_server.chat_model import ScriptedChatModel
from agent_server.protocols.langgraph.parts import PartOptions, PartTranslator
from agent_server.runs import Run
from agent_server.sources import EventSource
from agent_server.tools import ToolRegistry
from agent_server.translate import EventTranslator
from tests import sample_graphs, source_graphs
from tests.conftest import ROOT
from tests.helpers import entry, user

os.environ.setdefault("BENCH_TOKENS", "300")
from bench.bench_graph import make_graph as make_bench_graph
from graphs.agent import make_graph as make_agent
from graphs.rag import make_graph as make_rag

TOOLS = ToolRegistry.from_sources(ROOT / "tools")


@dataclass
class Case:
    name: str
    graph: Any
    turns: list[Any]
    concurrent: bool = False
    parts: PartOptions | None = None
    cancel_after_tokens: int | None = None


CASES = [
    # Every graph of the repository.
    Case("agent: calculator", make_agent(TOOLS, ScriptedChatModel()), [user("what is 12*(3+4)?")]),
    Case("agent: plain answer", make_agent(TOOLS, ScriptedChatModel()), [user("hello there")]),
    Case("agent: clock", make_agent(TOOLS, ScriptedChatModel()), [user("/current_time {}")]),
    Case(
        "agent: long_task progress",
        make_agent(TOOLS, ScriptedChatModel()),
        [user('/long_task {"steps": 3, "delay": 0.01}')],
        concurrent=True,
    ),
    Case("agent: two turns", make_agent(TOOLS, ScriptedChatModel()), [user("2+2?"), user("3*3?")]),
    Case("rag", make_rag(ScriptedChatModel()), [user("how do I resume a stream?")]),
    Case(
        "bench: parallel tools, long answer",
        make_bench_graph(TOOLS),
        [user("go")],
        concurrent=True,
    ),
    # The translator's cases.
    Case(
        "parallel tool calls, a sync tool",
        source_graphs.tools_agent,
        [user("parallel")],
        concurrent=True,
    ),
    Case("a failing tool", source_graphs.tools_agent, [user("boom")]),
    Case("a tool timeout", source_graphs.tools_agent, [user("slow")]),
    Case(
        "stream writer and dispatched events",
        source_graphs.tools_agent,
        [user("progress")],
        concurrent=True,
    ),
    Case("a tool returning a Command", source_graphs.tools_agent, [user("handoff")]),
    Case("tokens from a subgraph", source_graphs.nested, [user("parallel")], concurrent=True),
    Case("a sync node calling invoke", source_graphs.sync_node, [user("what is 6*7?")]),
    Case(
        "an interrupt and its resume",
        source_graphs.interrupting,
        [user("go"), Command(resume="yes")],
    ),
    Case("a nostream model", source_graphs.nostream, [user("hello")]),
    Case("an AI message never streamed", source_graphs.unstreamed, [user("hello")]),
    Case("reasoning and text content blocks", source_graphs.blocks, [user("think")]),
    Case("a run that raises", source_graphs.raising, [user("hello")]),
    Case("a graph failing after a token", sample_graphs.failing, [user("x")]),
    Case(
        "a cancelled run",
        source_graphs.long_answer,
        [user("talk")],
        cancel_after_tokens=20,
    ),
    # The LangGraph API's parts ride on the same source.
    Case(
        "LangGraph parts: messages-tuple, values, updates, subgraphs",
        source_graphs.nested,
        [user("parallel")],
        parts=PartOptions(("messages-tuple", "values", "updates"), subgraphs=True),
        concurrent=True,
    ),
    Case(
        "LangGraph parts: legacy messages, custom, debug, tasks, checkpoints",
        make_agent(TOOLS, ScriptedChatModel()),
        [user('/long_task {"steps": 2, "delay": 0.01}')],
        parts=PartOptions(("messages", "custom", "debug", "tasks", "checkpoints")),
        concurrent=True,
    ),
]

# Ids that any execution mints afresh: UUIDs (alone or inside LangChain's "lc_run--" ids
# and LangGraph's "node:<task id>" namespaces), LangGraph's interrupt ids (32 hex digits).
MINTED = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{32}\b"
)
CLOCKS = frozenset({"ts", "duration_ms", "created_at", "timestamp"})
# a clock read by a tool (current_time): the two runs may straddle a second
WALL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?")


class Ids:
    """Minted ids by order of first appearance."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, match: re.Match[str]) -> str:
        return self.seen.setdefault(match.group(0), f"<id{len(self.seen)}>")


def normal(value: Any, ids: Ids) -> Any:
    if isinstance(value, str):
        return WALL_TIME.sub("<time>", MINTED.sub(ids, value))
    if isinstance(value, list):
        return [normal(item, ids) for item in value]
    if isinstance(value, dict):
        return {normal(k, ids): normal(v, ids) for k, v in value.items() if k not in CLOCKS}
    return value


def as_json(data: bytes) -> dict[str, Any]:
    """A log entry as JSON: a frame, or a LangGraph part's SSE event taken apart."""
    if data.startswith(b"event: "):
        head, _, rest = data.partition(b"\ndata: ")
        body, _, seq = rest.rpartition(b"\nid: ")
        return {"part": head[7:].decode(), "data": orjson.loads(body), "seq": int(seq)}
    decoded: dict[str, Any] = orjson.loads(data)
    return decoded


@dataclass
class Recorded:
    frames: list[dict[str, Any]] = field(default_factory=list)
    streamed: list[bool] = field(default_factory=list)  # made from a stream-mode chunk?


@pytest.fixture
def from_stream_modes(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[int]]:
    """Records which frames (by ``id()``) the stream-mode mechanism made."""
    made: set[int] = set()

    def recording(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        def stream_chunk(self: Any, *args: Any) -> list[Any]:
            frames = original(self, *args)
            made.update(id(frame) for frame in frames)
            return frames

        return stream_chunk

    for cls in (EventTranslator, PartTranslator):
        monkeypatch.setattr(cls, "stream_chunk", recording(cls.stream_chunk))
    yield made


async def execute(case: Case, source: EventSource, streamed_ids: set[int]) -> Recorded:
    graph = case.graph
    if graph.checkpointer is None:
        graph = graph.copy(update={"checkpointer": InMemorySaver()})
    thread = str(uuid.uuid4())
    recorded = Recorded()
    streamed_ids.clear()  # ids of frames gone since may be reused
    for turn in case.turns:
        run = Run(graph=entry(graph), input=turn, thread_id=thread, source=source, parts=case.parts)
        if case.cancel_after_tokens is None:
            await run.execute()
        else:
            run.task = asyncio.create_task(run.execute())
            async for _ in run.follow(parts=True):
                if sum(e.type == "token" for e in run.log) >= case.cancel_after_tokens:
                    run.cancel("cancelled", "cancelled by the test")
                    break
            await asyncio.gather(run.task, return_exceptions=True)
        for item in run.log:
            recorded.frames.append(as_json(item.data))
            recorded.streamed.append(id(item) in streamed_ids or id(item._frame) in streamed_ids)
            if item.part is not None:  # a token's LangGraph part, compared as an entry
                recorded.frames.append(as_json(item.part))
                recorded.streamed.append(False)
    return recorded


def normalised(frames: list[dict[str, Any]], keep_seq: bool) -> list[Any]:
    ids = Ids()
    return [normal({k: v for k, v in f.items() if keep_seq or k != "seq"}, ids) for f in frames]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_the_default_source_yields_the_oracles_frames(
    case: Case, from_stream_modes: set[int]
) -> None:
    oracle = await execute(case, "events", from_stream_modes)
    lean = await execute(case, "callbacks", from_stream_modes)
    if case.cancel_after_tokens is not None:
        # Where a cancel lands depends on timing: both end cancelled, after the same frames.
        for recorded in (oracle, lean):
            assert recorded.frames[-1]["code"] == "cancelled"
            assert sum(f["type"] == "token" for f in recorded.frames) >= case.cancel_after_tokens
        common = min(len(oracle.frames), len(lean.frames)) - 1
        assert normalised(lean.frames[:common], True) == normalised(oracle.frames[:common], True)
        return
    assert len(lean.frames) == len(oracle.frames), _kinds(lean, oracle)
    if not case.concurrent:
        assert normalised(lean.frames, True) == normalised(oracle.frames, True)
        return
    mine, theirs = activities(lean), activities(oracle)
    assert sorted(mine) == sorted(theirs)
    for activity, frames in mine.items():
        assert normalised(frames, False) == normalised(theirs[activity], False), activity
    # The run's envelope does not move: run_start first, one terminal frame last.
    assert lean.frames[0]["type"] == "run_start" and oracle.frames[0]["type"] == "run_start"
    assert lean.frames[-1]["type"] == oracle.frames[-1]["type"]


def activities(recorded: Recorded) -> dict[str, list[dict[str, Any]]]:
    """Frames by concurrent activity (see the module docstring), each in arrival order."""
    found: dict[str, list[dict[str, Any]]] = {}
    for frame, streamed in zip(recorded.frames, recorded.streamed, strict=True):
        if streamed:
            key = "stream modes"
        elif frame.get("type") in ("tool_start", "tool_end", "tool_error"):
            key = f"tool call {frame['tool_call_id']}"
        else:
            key = "the rest"
        found.setdefault(key, []).append(frame)
    return found


def _kinds(lean: Recorded, oracle: Recorded) -> str:
    def kinds(recorded: Recorded) -> list[str]:
        return [f.get("type") or f.get("part", "") for f in recorded.frames]

    return f"callbacks: {kinds(lean)}\nevents:    {kinds(oracle)}"


def test_the_corpus_covers_every_case_of_the_translator() -> None:
    """Each frame type (and each LangGraph part kind asked for) appears in some case."""
    names = " | ".join(case.name for case in CASES)
    for needed in ("parallel", "failing tool", "timeout", "subgraph", "writer", "interrupt",
                   "nostream", "never streamed", "Command", "reasoning", "cancelled",
                   "raises"):  # fmt: skip
        assert needed in names
