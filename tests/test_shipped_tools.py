"""The tools shipped in the repository's ``tools/`` directory, loaded as the server loads them."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict
from zoneinfo import ZoneInfo

import pytest
from langchain_core.tools import BaseTool, ToolException
from langgraph.graph import END, START, StateGraph
from pydantic import ValidationError

from agent_server.tools import ToolRegistry

TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return ToolRegistry.from_sources(TOOLS_DIR, entry_point_group=None, missing_ok=False)


def test_all_shipped_tools_load(registry: ToolRegistry) -> None:
    assert registry.errors == []
    assert {"calculator", "current_time", "long_task"} <= set(registry.names())
    for entry in registry.describe():
        assert entry["description"], entry["name"]
        assert entry["args_schema"]["type"] == "object"


# -- calculator -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 ^ 10", "1024"),
        ("2 ** 3 ** 2", "512"),
        ("-3 ** 2", "-9"),
        ("-(-4) + +1", "5"),
        ("8 / 2", "4"),
        ("7 // 2", "3"),
        ("7 % 3", "1"),
        ("0.1 + 0.2", "0.3"),
        ("1 / 3", "0.333333333333"),
        ("2 ** -2", "0.25"),
        ("1.5e3 * 2", "3000"),
        (" 10 - 2.5 ", "7.5"),
    ],
)
def test_calculator(registry: ToolRegistry, expression: str, expected: str) -> None:
    assert registry.get("calculator").invoke({"expression": expression}) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("__import__('os')", "unsupported"),
        ("(1).__class__", "unsupported"),
        ("abs(-1)", "unsupported"),
        ("x + 1", "unsupported"),
        ("True + 1", "unsupported"),
        ("[1, 2]", "unsupported"),
        ("9 ** 9 ** 9", "exponent too large"),
        ("2 ** 5000", "exponent too large"),
        ("999999 ** 999", "too large"),
        ("10.0 ** 400", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "invalid expression"),
        ("1" * 2000, "too long"),
    ],
)
def test_calculator_rejects(registry: ToolRegistry, expression: str, message: str) -> None:
    with pytest.raises(ToolException, match=message):
        registry.get("calculator").invoke({"expression": expression})


# -- current_time ---------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "Asia/Kolkata"])
def test_current_time(registry: ToolRegistry, zone: str) -> None:
    result = registry.get("current_time").invoke({"timezone": zone})
    parsed = datetime.fromisoformat(result)
    now = datetime.now(ZoneInfo(zone))
    assert parsed.utcoffset() == now.utcoffset()
    assert abs(parsed - now) < timedelta(seconds=5)


def test_current_time_defaults_to_utc(registry: ToolRegistry) -> None:
    parsed = datetime.fromisoformat(registry.get("current_time").invoke({}))
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe", "../etc/passwd", ""])
def test_current_time_unknown_zone(registry: ToolRegistry, zone: str) -> None:
    with pytest.raises(ToolException, match="unknown time zone"):
        registry.get("current_time").invoke({"timezone": zone})


# -- long_task ------------------------------------------------------------------------------


class State(TypedDict):
    result: str


def graph_calling(long_task: BaseTool) -> Any:
    async def work(state: State) -> State:
        return {"result": await long_task.ainvoke({"steps": 3, "delay": 0})}

    builder = StateGraph(State)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_edge("work", END)
    return builder.compile()


async def test_long_task_streams_progress_in_a_graph(registry: ToolRegistry) -> None:
    graph = graph_calling(registry.get("long_task"))
    chunks = [chunk async for chunk in graph.astream({"result": ""}, stream_mode="custom")]
    assert [chunk["name"] for chunk in chunks] == ["progress"] * 3
    assert [chunk["data"]["step"] for chunk in chunks] == [1, 2, 3]
    assert all(chunk["data"]["tool"] == "long_task" for chunk in chunks)
    assert all(chunk["data"]["total"] == 3 for chunk in chunks)
    assert all(isinstance(chunk["data"]["message"], str) for chunk in chunks)


async def test_long_task_in_a_graph_without_custom_stream(registry: ToolRegistry) -> None:
    graph = graph_calling(registry.get("long_task"))
    assert await graph.ainvoke({"result": ""}) == {"result": "long_task finished 3 steps"}


async def test_long_task_outside_a_graph(registry: ToolRegistry) -> None:
    result = await registry.get("long_task").ainvoke({"steps": 2, "delay": 0})
    assert result == "long_task finished 2 steps"


@pytest.mark.parametrize("args", [{"steps": 0}, {"steps": 51}, {"delay": -1}, {"delay": 6}])
async def test_long_task_bounds(registry: ToolRegistry, args: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        await registry.get("long_task").ainvoke(args)


def test_long_task_schema_shows_bounds(registry: ToolRegistry) -> None:
    (entry,) = [entry for entry in registry.describe() if entry["name"] == "long_task"]
    steps = entry["args_schema"]["properties"]["steps"]
    assert (steps["minimum"], steps["maximum"], steps["default"]) == (1, 50, 5)


async def test_agent_bounds_tool_calls_with_the_tool_timeout() -> None:
    """A tool past AGENT_SERVER_TOOL_TIMEOUT fails like any tool; the agent carries on."""
    from agent_server.chat_model import ScriptedChatModel
    from agent_server.frames import Done, ToolError
    from agent_server.settings import Settings
    from graphs.agent import make_graph
    from tests.helpers import entry, run_frames, user

    settings = Settings(tool_timeout=0.2, database_url="memory://")
    graph = make_graph(ToolRegistry.from_sources(TOOLS_DIR), ScriptedChatModel(), settings)
    frames = await run_frames(entry(graph), user('/long_task {"steps": 1, "delay": 5}'))
    error = next(f for f in frames if isinstance(f, ToolError))
    assert error.name == "long_task" and "timed out after 0.2 s" in error.error
    assert error.tool_call_id
    assert isinstance(frames[-1], Done)
    answer = "".join(f.content for f in frames if f.type == "token")
    assert "long_task" in answer and "timed out" in answer
