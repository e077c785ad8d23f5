"""A slow tool that reports its progress while it runs.

Inside a LangGraph run, each step is sent through the graph's stream writer as
``{"name": "progress", "data": {...}}``, which the server forwards to clients as a
``custom`` frame named ``progress`` (stream mode ``"custom"`` in plain LangGraph).
Outside a graph run there is no stream writer and the progress is simply not reported.
"""

import asyncio
from typing import Annotated

from langchain_core.tools import tool
from langgraph.config import get_stream_writer
from langgraph.types import StreamWriter
from pydantic import Field


@tool
async def long_task(
    steps: Annotated[int, Field(ge=1, le=50)] = 5,
    delay: Annotated[float, Field(ge=0, le=5)] = 0.2,
) -> str:
    """Run a slow job made of several steps, reporting progress after each step.

    Args:
        steps: How many steps to run (1 to 50).
        delay: Seconds each step takes (0 to 5).
    """
    write = _stream_writer()
    for step in range(1, steps + 1):
        await asyncio.sleep(delay)
        write(
            {
                "name": "progress",
                "data": {
                    "tool": "long_task",
                    "step": step,
                    "total": steps,
                    "message": f"step {step} of {steps} done",
                },
            }
        )
    return f"long_task finished {steps} steps"


def _stream_writer() -> StreamWriter:
    # get_stream_writer() raises outside a graph run: RuntimeError with no runnable
    # context at all, KeyError inside one that is not a LangGraph run (tool.ainvoke alone).
    try:
        return get_stream_writer()
    except (RuntimeError, KeyError):
        return lambda chunk: None
