"""A long run with large tokens, for the slow-consumer part of ``bench/concurrency.py``.

One node calls an offline model up to ``SLOW_CALLS`` times (default 1,000); each call
streams ``SLOW_TOKENS`` tokens (default 32) of ``SLOW_TOKEN_BYTES`` bytes (default 8,192).
The first ``SLOW_BURST_BYTES`` (default 4 MB) stream as fast as the server runs them; the
rest at an LLM's pace, ``SLOW_TOKEN_DELAY`` seconds apart (default 0.02: 50 tokens/s).
Cancel the run when it has served its purpose.

Why a burst of large tokens: over loopback Linux grows the server's send buffer to about
2.8 MB (64 KB segments), so a client that stops reading is noticed only after that much
has been written to it; with ~230-byte frames and 50 other streams sharing the CPU that
would take minutes. Why the pace afterwards: once its client is stuck, the run should
cost the server about what one real model stream costs, so that a benchmark measures
the stuck client and not a 51st run that produces frames flat out.

The answers are not kept in the state: the cost per token stays flat however long the
run goes (one huge answer would be merged chunk by chunk, quadratically), and the
checkpoints stay tiny.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypedDict

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agent_server.chat_model import Plan, ScriptedChatModel

CALLS = int(os.environ.get("SLOW_CALLS", "1000"))
TOKENS = int(os.environ.get("SLOW_TOKENS", "32"))
TOKEN_BYTES = int(os.environ.get("SLOW_TOKEN_BYTES", "8192"))
BURST_BYTES = int(os.environ.get("SLOW_BURST_BYTES", str(4 * 1024 * 1024)))
TOKEN_DELAY = float(os.environ.get("SLOW_TOKEN_DELAY", "0.02"))


class BlobModel(ScriptedChatModel):
    def plan(self, messages: Sequence[BaseMessage], tool_names: Sequence[str]) -> Plan:
        word = "x" * (TOKEN_BYTES - 1)
        return Plan(text=" ".join(word for _ in range(TOKENS)))


class SlowState(TypedDict, total=False):
    calls: int


def make_graph() -> CompiledStateGraph:
    """A graph that streams up to ``CALLS * TOKENS`` large tokens, then ends."""
    burst, paced = BlobModel(), BlobModel(token_delay=TOKEN_DELAY)
    burst_calls = -(-BURST_BYTES // (TOKENS * TOKEN_BYTES))  # ceiling
    prompt = [HumanMessage("go")]

    async def talk(state: SlowState, config: RunnableConfig) -> SlowState:
        for call in range(CALLS):
            model = burst if call < burst_calls else paced
            await model.ainvoke(prompt, config)
        return {"calls": CALLS}

    builder = StateGraph(SlowState)
    builder.add_node("talk", talk)
    builder.add_edge(START, "talk")
    builder.add_edge("talk", END)
    return builder.compile()
