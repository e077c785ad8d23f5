"""The candidates for a run's event source, measured in one process on the bench graph.

For each, one run of ``bench/bench_graph.py`` (two parallel tool calls, then a long
scripted answer; ``BENCH_TOKENS``, default 3,000), rounds interleaved, best and median:

- ``astream_events`` v2 alone (consuming the events, no translation);
- ``astream`` with LangGraph's ``messages`` stream mode (plus values, updates, custom);
- ``astream`` with values, updates and custom, and an inline callback handler that
  counts tokens (the shape of the default source, without building frames);
- a whole run (``Run.execute``) with each of agent-server's two sources, ``events``
  and ``callbacks``, frames and log included.

It prints tokens/s and CPU µs per token (the process's CPU time over the run).

    python bench/event_sources.py [--tokens 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T = TypeVar("T")


def graph_and_input(tokens: int) -> tuple[Any, Any]:
    os.environ["BENCH_TOKENS"] = str(tokens)
    from langgraph.checkpoint.memory import InMemorySaver

    from agent_server.tools import ToolRegistry
    from bench.bench_graph import make_graph

    graph = make_graph(ToolRegistry.from_sources(ROOT / "tools"))
    graph = graph.copy(update={"checkpointer": InMemorySaver()})
    return graph, {"messages": [{"role": "user", "content": "go"}]}


def config() -> dict[str, Any]:
    return {"configurable": {"thread_id": str(uuid.uuid4())}}


async def events(graph: Any, input: Any) -> None:
    async for _ in graph.astream_events(
        input, config(), version="v2", stream_mode=["values", "updates", "custom"], subgraphs=True
    ):
        pass


async def messages_mode(graph: Any, input: Any) -> None:
    modes = ["messages", "values", "updates", "custom"]
    async for _ in graph.astream(input, config(), stream_mode=modes, subgraphs=True):
        pass


class Counting:
    """The default source's shape: an inline streaming handler seeing every token."""

    run_inline = True
    raise_error = False
    ignore_chain = True
    ignore_agent = ignore_retriever = ignore_retry = ignore_custom_event = False
    ignore_llm = ignore_chat_model = False

    def __init__(self) -> None:
        self.tokens = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.tokens += 1

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[T]) -> AsyncIterator[T]:
        return output

    def tap_output_iter(self, run_id: UUID, output: Iterator[T]) -> Iterator[T]:
        return output


async def inline_handler(graph: Any, input: Any) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    handler = type("Inline", (Counting, BaseCallbackHandler), {})()
    modes = ["values", "updates", "custom"]
    async for _ in graph.astream(
        input, {**config(), "callbacks": [handler]}, stream_mode=modes, subgraphs=True
    ):
        pass


def whole_run(source: str) -> Callable[[Any, Any], Awaitable[None]]:
    async def run(graph: Any, input: Any) -> None:
        from agent_server.graphs import GraphEntry
        from agent_server.runs import Run

        entry = GraphEntry(name="bench", ref="bench", graph=graph, description="")
        await Run(graph=entry, input=input, thread_id=str(uuid.uuid4()), source=source).execute()  # type: ignore[arg-type]

    return run


CANDIDATES: dict[str, Callable[[Any, Any], Awaitable[None]]] = {
    "astream_events v2 (no translation)": events,
    "astream, messages mode": messages_mode,
    "astream + inline callback handler": inline_handler,
    "agent-server run, source=events": whole_run("events"),
    "agent-server run, source=callbacks": whole_run("callbacks"),
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    graph, input = graph_and_input(args.tokens)
    for candidate in CANDIDATES.values():  # warm-up
        await candidate(graph, input)
    rates: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    cpus: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for _ in range(args.rounds):
        for name, candidate in CANDIDATES.items():
            started, cpu = time.perf_counter(), time.process_time()
            await candidate(graph, input)
            rates[name].append(args.tokens / (time.perf_counter() - started))
            cpus[name].append((time.process_time() - cpu) / args.tokens * 1e6)
    print(f"bench graph, {args.tokens} tokens, {args.rounds} rounds interleaved (best / median)")
    for name in CANDIDATES:
        print(
            f"  {name:38s} {max(rates[name]):8.0f} / {statistics.median(rates[name]):6.0f} tok/s"
            f"   {min(cpus[name]):6.1f} / {statistics.median(cpus[name]):6.1f} µs CPU per token"
        )


if __name__ == "__main__":
    asyncio.run(main())
