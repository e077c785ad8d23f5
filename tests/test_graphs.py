"""Loading graphs by reference: files, modules, factories, checkpointers, broken graphs."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel
from langgraph.types import Command

from agent_server._importer import import_ref
from agent_server.chat_model import ScriptedChatModel
from agent_server.graphs import (
    GraphEntry,
    GraphRegistry,
    UnknownGraphError,
    load_graph,
    load_graphs,
)
from agent_server.settings import Settings
from agent_server.tools import ToolRegistry
from tests.helpers import run_frames, types, user

ROOT = Path(__file__).resolve().parent.parent

# A graph as a user writes it: compiled, without a checkpointer.
ECHO = """
from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph


def echo(state: MessagesState) -> dict:
    return {"messages": [AIMessage(f"echo: {state['messages'][-1].content}")]}


builder = StateGraph(MessagesState).add_node("echo", echo).add_edge(START, "echo")
graph = builder.compile()
"""


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def thread() -> RunnableConfig:
    return {"configurable": {"thread_id": str(uuid.uuid4())}}


@pytest.fixture
def saver() -> InMemorySaver:
    return InMemorySaver()


@pytest.fixture
def tools() -> ToolRegistry:
    return ToolRegistry.from_sources(ROOT / "tools", entry_point_group=None)


@pytest.fixture
def model() -> BaseChatModel:
    return ScriptedChatModel()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    return Settings(database_url="memory://")


@pytest.fixture
def load(
    tmp_path: Path,
    saver: InMemorySaver,
    tools: ToolRegistry,
    model: BaseChatModel,
    settings: Settings,
) -> Any:
    async def load(
        refs: dict[str, str], *, model: BaseChatModel | None = model, checkpointer: Any = saver
    ) -> GraphRegistry:
        return await load_graphs(
            refs,
            base_dir=tmp_path,
            tools=tools,
            model=model,
            settings=settings,
            checkpointer=checkpointer,
        )

    return load


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A uniquely named, importable package in tmp_path (removed from sys.modules after)."""
    name = f"user_pkg_{uuid.uuid4().hex[:8]}"
    write(tmp_path / name / "__init__.py", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


# -- references ---------------------------------------------------------------------------


async def test_file_reference_to_a_compiled_graph(
    tmp_path: Path, load: Any, saver: InMemorySaver
) -> None:
    path = write(tmp_path / "sub" / "echo.py", ECHO)
    registry = await load({"rel": "sub/echo.py:graph", "abs": f"{path}:graph"})
    assert registry.errors == []
    assert registry.names() == ["rel", "abs"]
    entry = registry.get("rel")
    assert isinstance(entry.graph, Pregel)
    assert entry.ref == "sub/echo.py:graph"
    # One file is one module, however it is referred to.
    assert entry.graph.nodes.keys() == registry.get("abs").graph.nodes.keys()
    result = await entry.graph.ainvoke(user("hello"), thread())
    assert result["messages"][-1].content == "echo: hello"


async def test_package_module_reference(tmp_path: Path, package: str, load: Any) -> None:
    write(tmp_path / package / "graphs.py", ECHO + "\nclass Holder:\n    graph = graph\n")
    registry = await load(
        {"mod": f"{package}.graphs:graph", "nested": f"{package}.graphs:Holder.graph"}
    )
    assert registry.errors == []
    assert registry.get("mod").graph.nodes.keys() == registry.get("nested").graph.nodes.keys()
    result = await registry.get("mod").graph.ainvoke(user("hi"), thread())
    assert result["messages"][-1].content == "echo: hi"


async def test_an_uncompiled_state_graph_is_compiled(
    tmp_path: Path, load: Any, saver: InMemorySaver
) -> None:
    write(tmp_path / "echo.py", ECHO)
    registry = await load({"echo": "echo.py:builder"})
    graph = registry.get("echo").graph
    assert isinstance(graph, Pregel)
    assert graph.checkpointer is saver
    result = await graph.ainvoke(user("built"), thread())
    assert result["messages"][-1].content == "echo: built"


# -- factories ----------------------------------------------------------------------------

FACTORIES = """
from langgraph.graph import START, MessagesState, StateGraph

CALLS = []


def _builder():
    return StateGraph(MessagesState).add_node("noop", lambda s: {}).add_edge(START, "noop")


def sync_factory(tools, model, settings, config):
    '''A sync factory.

    More text that is not the description.
    '''
    CALLS.append({"tools": tools, "model": model, "settings": settings, "config": config})
    return _builder().compile()


async def async_factory(model, *, retries=3, **extra):
    '''An async factory.'''
    CALLS.append({"model": model, "retries": retries, "extra": extra})
    return _builder()


def no_arguments():
    CALLS.append({})
    return _builder().compile()


def needs_database(db):
    return _builder().compile()


def needs_model(model):
    return _builder().compile()


def returns_a_string():
    return "not a graph"
"""


async def test_factories_get_what_they_name(
    tmp_path: Path,
    load: Any,
    saver: InMemorySaver,
    tools: ToolRegistry,
    model: BaseChatModel,
    settings: Settings,
) -> None:
    path = write(tmp_path / "factories.py", FACTORIES)
    registry = await load(
        {
            "sync": "factories.py:sync_factory",
            "async": "factories.py:async_factory",
            "plain": "factories.py:no_arguments",
        }
    )
    assert registry.errors == []
    calls = import_ref(f"{path}:CALLS")
    assert calls == [
        {"tools": tools, "model": model, "settings": settings, "config": {}},
        {"model": model, "retries": 3, "extra": {}},
        {},
    ]
    assert calls[0]["tools"] is tools and calls[0]["settings"] is settings
    for entry in registry:
        assert entry.graph.checkpointer is saver  # also for the graph compiled here
    assert registry.get("sync").description == "A sync factory."
    assert registry.get("async").description == "An async factory."
    assert registry.get("plain").description == ""


async def test_factory_errors_are_reported(tmp_path: Path, load: Any) -> None:
    write(tmp_path / "factories.py", FACTORIES)
    registry = await load(
        {
            "db": "factories.py:needs_database",
            "model": "factories.py:needs_model",
            "string": "factories.py:returns_a_string",
        },
        model=None,
    )
    assert len(registry) == 0
    errors = {error.source: error.error for error in registry.errors}
    assert errors.keys() == {
        "graph db = factories.py:needs_database",
        "graph model = factories.py:needs_model",
        "graph string = factories.py:returns_a_string",
    }
    db_error = errors["graph db = factories.py:needs_database"]
    assert db_error.startswith("TypeError: ") and "'db'" in db_error
    assert "tools, model, settings, config" in db_error
    assert "needs a model" in errors["graph model = factories.py:needs_model"]
    assert "str, not a LangGraph graph" in errors["graph string = factories.py:returns_a_string"]


# -- user state types ---------------------------------------------------------------------

# `from __future__ import annotations` turns every annotation into a string that pydantic,
# dataclasses and LangGraph resolve through sys.modules[cls.__module__].
STATES = """
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Annotated, TypedDict

from langgraph.graph import START, StateGraph
from pydantic import BaseModel


class Item(BaseModel):
    name: str


class PydanticState(BaseModel):
    items: list[Item] = []
    count: int = 0


def add_pydantic(state: PydanticState) -> dict:
    return {"items": [*state.items, Item(name="new")], "count": state.count + 1}


@dataclass
class DataclassState:
    names: list[str] = field(default_factory=list)
    count: int = 0


def add_dataclass(state: DataclassState) -> dict:
    return {"names": [*state.names, "new"], "count": state.count + 1}


class DictState(TypedDict):
    names: Annotated[list[str], operator.add]
    count: int


def add_dict(state: DictState) -> dict:
    return {"names": ["new"], "count": state["count"] + 1}


def _graph(state, node):
    return StateGraph(state).add_node("add", node).add_edge(START, "add").compile()


pydantic_graph = _graph(PydanticState, add_pydantic)
dataclass_graph = _graph(DataclassState, add_dataclass)
dict_graph = _graph(DictState, add_dict)
"""


async def test_future_annotations_with_user_state_types(tmp_path: Path, load: Any) -> None:
    path = write(tmp_path / "states.py", STATES)
    registry = await load(
        {
            "pydantic": "states.py:pydantic_graph",
            "dataclass": "states.py:dataclass_graph",
            "dict": "states.py:dict_graph",
        }
    )
    assert registry.errors == []
    item = import_ref(f"{path}:Item")
    assert isinstance(item, type) and item.__module__ in sys.modules

    result = await registry.get("pydantic").graph.ainvoke({"items": [{"name": "a"}]}, thread())
    assert [i.name for i in result["items"]] == ["a", "new"] and result["count"] == 1
    result = await registry.get("dataclass").graph.ainvoke({"names": ["a"]}, thread())
    assert result == {"names": ["a", "new"], "count": 1}
    result = await registry.get("dict").graph.ainvoke({"names": ["a"], "count": 5}, thread())
    assert result == {"names": ["a", "new"], "count": 6}


# -- checkpointers ------------------------------------------------------------------------

OWN_SAVER = """
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

SAVER = InMemorySaver()
builder = StateGraph(MessagesState).add_node("noop", lambda s: {}).add_edge(START, "noop")
graph = builder.compile(checkpointer=SAVER)
"""


async def test_the_server_checkpointer_is_attached_only_when_missing(
    tmp_path: Path, load: Any, saver: InMemorySaver
) -> None:
    write(tmp_path / "echo.py", ECHO)
    path = write(tmp_path / "own.py", OWN_SAVER)
    registry = await load({"bare": "echo.py:graph", "own": "own.py:graph"})
    assert registry.get("bare").graph.checkpointer is saver
    assert registry.get("own").graph.checkpointer is import_ref(f"{path}:SAVER")
    # The user's module-level graph object itself is left alone.
    assert import_ref(f"{tmp_path / 'echo.py'}:graph").checkpointer is None  # type: ignore[attr-defined]


async def test_without_a_server_checkpointer_the_graph_is_unchanged(
    tmp_path: Path, load: Any
) -> None:
    write(tmp_path / "echo.py", ECHO)
    registry = await load({"bare": "echo.py:graph"}, checkpointer=None)
    assert registry.get("bare").graph.checkpointer is None


# -- broken graphs ------------------------------------------------------------------------


async def test_broken_graphs_are_reported_and_skipped(tmp_path: Path, load: Any) -> None:
    write(tmp_path / "echo.py", ECHO)
    write(tmp_path / "syntax.py", "def broken(:\n")
    write(tmp_path / "raises.py", "raise RuntimeError('boom at import')\n")
    write(tmp_path / "exits.py", "import sys\nsys.exit('a script, not a graph')\n")
    write(tmp_path / "number.py", "graph = 42\n")
    refs = {
        "syntax": "syntax.py:graph",
        "raises": "raises.py:graph",
        "exits": "exits.py:graph",
        "missing_attr": "echo.py:nope",
        "missing_file": "missing.py:graph",
        "missing_module": "no_such_package_xyz.graphs:graph",
        "number": "number.py:graph",
        "no_colon": "echo.py",
        "good": "echo.py:graph",
    }
    registry = await load(refs)
    assert registry.names() == ["good"]
    assert [error.source for error in registry.errors] == [
        f"graph {name} = {ref}" for name, ref in refs.items() if name != "good"
    ]
    errors = {error.source.split()[1]: error.error for error in registry.errors}
    assert errors["syntax"].startswith("SyntaxError: ") and "syntax.py" in errors["syntax"]
    assert errors["raises"] == "RuntimeError: boom at import"
    assert "a script, not a graph" in errors["exits"]
    assert errors["missing_attr"] == "AttributeError: 'echo.py' has no attribute 'nope'"
    assert errors["missing_file"].startswith("FileNotFoundError: ")
    assert "missing.py" in errors["missing_file"]
    assert errors["missing_module"].startswith("ModuleNotFoundError: ")
    assert errors["number"] == "TypeError: number.py:graph is int, not a LangGraph graph"
    assert "expected 'path/file.py:attr'" in errors["no_colon"]
    # A module that failed to import is not left half-initialised in sys.modules.
    assert not any(
        getattr(module, "__file__", None) == str(tmp_path / "raises.py")
        for module in list(sys.modules.values())
    )


async def test_load_graph_raises_for_a_single_reference(
    tmp_path: Path, saver: InMemorySaver, tools: ToolRegistry, settings: Settings
) -> None:
    write(tmp_path / "echo.py", ECHO)
    graph, description = await load_graph(
        "echo.py:graph",
        base_dir=tmp_path,
        tools=tools,
        model=None,
        settings=settings,
        checkpointer=saver,
    )
    assert graph.checkpointer is saver and description == ""
    with pytest.raises(AttributeError, match="nope"):
        await load_graph(
            "echo.py:nope",
            base_dir=tmp_path,
            tools=tools,
            model=None,
            settings=settings,
            checkpointer=saver,
        )


# -- the registry -------------------------------------------------------------------------


async def test_unknown_graph_error_lists_the_available_names(tmp_path: Path, load: Any) -> None:
    write(tmp_path / "echo.py", ECHO)
    registry = await load({"a": "echo.py:graph", "b": "echo.py:builder"})
    with pytest.raises(UnknownGraphError) as caught:
        registry.get("c")
    assert isinstance(caught.value, KeyError)
    assert caught.value.name == "c" and caught.value.available == ["a", "b"]
    assert str(caught.value) == "unknown graph 'c' (available: a, b)"
    assert str(UnknownGraphError("c", [])) == "unknown graph 'c' (available: none)"


async def test_describe(tmp_path: Path, load: Any) -> None:
    write(tmp_path / "echo.py", ECHO)
    write(tmp_path / "factories.py", FACTORIES)
    registry = await load({"echo": "echo.py:graph", "sync": "factories.py:sync_factory"})
    assert "echo" in registry and "other" not in registry and len(registry) == 2
    assert [entry.name for entry in registry] == ["echo", "sync"]
    assert registry.describe() == [
        {"name": "echo", "ref": "echo.py:graph", "description": "", "nodes": ["echo"]},
        {
            "name": "sync",
            "ref": "factories.py:sync_factory",
            "description": "A sync factory.",
            "nodes": ["noop"],
        },
    ]


# -- running loaded graphs ----------------------------------------------------------------


async def test_a_run_through_the_shipped_agent(load: Any) -> None:
    registry = await load({"agent": str(ROOT / "graphs" / "agent.py") + ":make_graph"})
    entry = registry.get("agent")
    assert entry.description == "A tool-calling agent over every registered tool."
    assert registry.describe()[0]["nodes"] == ["agent", "tools"]
    frames: list[Any] = await run_frames(entry, user("what is 12*(3+4)?"))
    kinds = types(frames)
    assert kinds[0] == "run_start" and kinds[-1] == "done"
    assert "error" not in kinds
    start = next(f for f in frames if f.type == "tool_start")
    end = next(f for f in frames if f.type == "tool_end")
    assert (start.name, end.output) == ("calculator", "84")
    assert "84" in "".join(f.content for f in frames if f.type == "token")


APPROVAL = """
from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import interrupt


def ask(state: MessagesState) -> dict:
    answer = interrupt({"question": "approve?"})
    return {"messages": [AIMessage(f"approved: {answer}")]}


graph = StateGraph(MessagesState).add_node("ask", ask).add_edge(START, "ask").compile()
"""


async def test_interrupt_and_resume_with_the_server_checkpointer(
    tmp_path: Path, load: Any, saver: InMemorySaver
) -> None:
    write(tmp_path / "approval.py", APPROVAL)
    registry = await load({"approval": "approval.py:graph"})
    graph = registry.get("approval").graph
    config = thread()

    first = await graph.ainvoke(user("deploy"), config)
    assert [i.value for i in first["__interrupt__"]] == [{"question": "approve?"}]
    pending = (await graph.aget_state(config)).interrupts
    assert [i.value for i in pending] == [{"question": "approve?"}]

    second = await graph.ainvoke(Command(resume="yes"), config)
    assert [m.content for m in second["messages"]] == ["deploy", "approved: yes"]
    assert (await graph.aget_state(config)).interrupts == ()


async def test_an_interrupted_run_ends_with_interrupt_then_done(tmp_path: Path, load: Any) -> None:
    write(tmp_path / "approval.py", APPROVAL)
    entry: GraphEntry = (await load({"approval": "approval.py:graph"})).get("approval")
    frames: list[Any] = await run_frames(entry, user("deploy"))
    assert types(frames) == ["run_start", "interrupt", "done"]
    assert frames[1].value == {"question": "approve?"} and frames[1].resumable
