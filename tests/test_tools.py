from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from langchain_core.tools import BaseTool, InjectedToolCallId, StructuredTool, tool
from pydantic import BaseModel, Field

from agent_server.tools import PluginError, ToolRegistry, UnknownToolError

GROUP = "agent_server.tools"


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def tool_source(*names: str) -> str:
    return "from langchain_core.tools import tool\n" + "".join(
        f"\n@tool\ndef {name}(x: int) -> str:\n    '''Tool {name}.'''\n    return '{name}'\n"
        for name in names
    )


@tool
def echo(text: str) -> str:
    """Repeat the text."""
    return text


@tool
def shout(text: str) -> str:
    """Repeat the text loudly."""
    return text.upper()


# -- registration and lookup ----------------------------------------------------------------


def test_register_get_and_order() -> None:
    registry = ToolRegistry()
    assert registry.register(echo) is echo
    registry.register(shout, source="test")
    assert registry.names() == ["echo", "shout"]
    assert registry.get("shout") is shout
    assert list(registry) == [echo, shout]
    assert len(registry) == 2
    assert "echo" in registry and echo in registry and "nope" not in registry
    assert registry.source_of("echo") == "<registered>"
    assert registry.source_of("shout") == "test"


def test_register_as_decorator() -> None:
    registry = ToolRegistry()

    @registry.register
    @tool
    def ping() -> str:
        """Answer pong."""
        return "pong"

    assert isinstance(ping, BaseTool)
    assert registry.get("ping") is ping


def test_register_replaces_same_name_and_unregister() -> None:
    registry = ToolRegistry()
    registry.register(echo)
    registry.register(shout)
    other_echo = StructuredTool.from_function(lambda text: text, name="echo", description="d")
    registry.register(other_echo)
    assert registry.get("echo") is other_echo
    assert echo not in registry
    assert registry.names() == ["echo", "shout"]  # keeps its place
    registry.unregister("echo")
    assert registry.names() == ["shout"]
    with pytest.raises(UnknownToolError):
        registry.unregister("echo")


def test_register_rejects_plain_function() -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="@tool"):
        ToolRegistry().register(plain)  # type: ignore[type-var]


def test_get_tools_selection_and_unknown_names() -> None:
    registry = ToolRegistry()
    registry.register(echo)
    registry.register(shout)
    assert registry.get_tools() == [echo, shout]
    assert registry.get_tools(["shout", "echo"]) == [shout, echo]
    with pytest.raises(UnknownToolError) as info:
        registry.get_tools(["echo", "missing", "gone"])
    assert isinstance(info.value, KeyError)
    assert info.value.names == ["missing", "gone"]
    message = str(info.value)
    assert "'missing'" in message and "'gone'" in message and "echo, shout" in message
    with pytest.raises(UnknownToolError, match=r"available: echo, shout"):
        registry.get("nope")


def test_describe_json_schema() -> None:
    class SearchArgs(BaseModel):
        query: str = Field(description="What to look for.")
        limit: int = 10

    class Search(BaseTool):
        name: str = "search"
        description: str = "Search the web."
        args_schema: type[BaseModel] = SearchArgs

        def _run(self, query: str, limit: int = 10) -> str:
            return query

    @tool
    def reply(text: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
        """Reply to the user."""
        return text

    structured = StructuredTool.from_function(
        lambda a, b: a + b, name="add", description="Add two numbers."
    )
    registry = ToolRegistry()
    for item in (echo, Search(), reply, structured):
        registry.register(item)
    described = {entry["name"]: entry for entry in registry.describe()}
    assert described["echo"]["description"] == "Repeat the text."
    assert described["echo"]["args_schema"]["properties"]["text"]["type"] == "string"
    assert described["echo"]["args_schema"]["required"] == ["text"]
    search = described["search"]["args_schema"]
    assert search["properties"]["query"]["description"] == "What to look for."
    assert search["properties"]["limit"]["default"] == 10
    # Injected arguments are filled by the runtime, not by the model.
    assert list(described["reply"]["args_schema"]["properties"]) == ["text"]
    assert set(described["add"]["args_schema"]["properties"]) == {"a", "b"}


# -- discovery from files -------------------------------------------------------------------


def test_discovers_files_and_packages(tmp_path: Path) -> None:
    write(tmp_path / "b_tools.py", tool_source("beta", "gamma") + "alias = beta\n")
    write(tmp_path / "a_tools.py", tool_source("alpha"))
    write(tmp_path / "pkg" / "__init__.py", "from .impl import delta\n")
    write(tmp_path / "pkg" / "impl.py", tool_source("delta"))
    write(tmp_path / "_private.py", tool_source("hidden"))
    write(tmp_path / "notes.txt", "not python")
    write(tmp_path / "plain_dir" / "x.py", tool_source("no_init"))
    write(tmp_path / "helpers.py", "VALUE = 1\n")

    registry = ToolRegistry.from_sources(tmp_path, entry_point_group=None)

    assert registry.names() == ["alpha", "beta", "gamma", "delta"]
    assert registry.errors == []
    assert registry.source_of("alpha") == str(tmp_path / "a_tools.py")
    assert registry.source_of("delta") == str(tmp_path / "pkg")
    assert registry.get("beta").invoke({"x": 1}) == "beta"


def test_broken_files_are_recorded_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "good.py", tool_source("good"))
    write(tmp_path / "syntax.py", "def broken(:\n")
    write(tmp_path / "raises.py", "raise RuntimeError('no API key')\n")
    write(tmp_path / "missing_dep.py", "import no_such_module_xyz\n")

    with caplog.at_level(logging.WARNING, logger="agent_server.tools"):
        registry = ToolRegistry.from_sources(tmp_path, entry_point_group=None)

    assert registry.names() == ["good"]
    errors = {Path(error.source).name: error.error for error in registry.errors}
    assert set(errors) == {"syntax.py", "raises.py", "missing_dep.py"}
    assert errors["syntax.py"].startswith("SyntaxError: ")
    assert errors["raises.py"] == "RuntimeError: no API key"
    assert "no_such_module_xyz" in errors["missing_dep.py"]
    assert all("\n" not in error for error in errors.values())
    assert str(tmp_path / "raises.py") in caplog.text and "no API key" in caplog.text


def test_later_file_wins_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.py", tool_source("same"))
    write(tmp_path / "b.py", tool_source("same"))
    with caplog.at_level(logging.WARNING, logger="agent_server.tools"):
        registry = ToolRegistry.from_sources(tmp_path, entry_point_group=None)
    assert registry.source_of("same") == str(tmp_path / "b.py")
    assert str(tmp_path / "a.py") in caplog.text and str(tmp_path / "b.py") in caplog.text


def test_missing_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent_server.tools"):
        registry = ToolRegistry.from_sources(tmp_path / "nope", entry_point_group=None)
    assert len(registry) == 0 and registry.errors == [] and caplog.text == ""

    with caplog.at_level(logging.WARNING, logger="agent_server.tools"):
        registry.discover(tmp_path / "nope", entry_point_group=None, missing_ok=False)
    assert registry.errors == [] and "does not exist" in caplog.text


def test_rediscovery_is_idempotent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.py", tool_source("alpha"))
    registry = ToolRegistry.from_sources(tmp_path, entry_point_group=None)
    with caplog.at_level(logging.WARNING, logger="agent_server.tools"):
        registry.discover(tmp_path, entry_point_group=None)
    assert registry.names() == ["alpha"] and caplog.text == ""


# -- discovery from entry points ------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where tests install distributions by writing dist-info."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        if name.startswith("demo_tools"):
            del sys.modules[name]
    importlib.invalidate_caches()


def install(site: Path, dist: str, package_source: str, entry_points: str) -> None:
    write(site / dist / "__init__.py", package_source)
    info = site / f"{dist}-0.1.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    write(info / "entry_points.txt", f"[{GROUP}]\n{textwrap.dedent(entry_points)}")
    importlib.invalidate_caches()


def test_entry_points(site: Path, tmp_path: Path) -> None:
    package = tool_source("ep_one", "ep_two", "ep_three", "ep_four") + textwrap.dedent(
        """
        TOOLS = [ep_two, ep_three]

        def make_tools():
            return [ep_four]
        """
    )
    install(
        site,
        "demo_tools_pkg",
        package,
        """
        one = demo_tools_pkg:ep_one
        many = demo_tools_pkg:TOOLS
        factory = demo_tools_pkg:make_tools
        module = demo_tools_pkg
        """,
    )

    registry = ToolRegistry.from_sources(None)

    assert registry.errors == []
    assert set(registry.names()) == {"ep_one", "ep_two", "ep_three", "ep_four"}
    source = registry.source_of("ep_one")
    assert source == "entry point one = demo_tools_pkg:ep_one (dist demo_tools_pkg)"
    assert registry.get("ep_four").invoke({"x": 1}) == "ep_four"


def test_broken_entry_points_are_recorded(site: Path) -> None:
    package = tool_source("fine") + "NOT_TOOLS = [1, 2]\nEMPTY = []\n"
    install(
        site,
        "demo_tools_bad",
        package,
        """
        good = demo_tools_bad:fine
        missing = demo_tools_bad:does_not_exist
        wrong = demo_tools_bad:NOT_TOOLS
        empty = demo_tools_bad:EMPTY
        absent = demo_tools_absent_module:thing
        """,
    )

    registry = ToolRegistry.from_sources(None)

    assert registry.names() == ["fine"]
    errors = {error.source.split(" = ")[0]: error.error for error in registry.errors}
    assert set(errors) == {
        "entry point missing",
        "entry point wrong",
        "entry point empty",
        "entry point absent",
    }
    assert errors["entry point missing"].startswith("AttributeError: ")
    assert "non-tools" in errors["entry point wrong"]
    assert errors["entry point absent"].startswith("ModuleNotFoundError: ")
    assert (
        PluginError(
            source="entry point missing = demo_tools_bad:does_not_exist (dist demo_tools_bad)",
            error=errors["entry point missing"],
        )
        in registry.errors
    )


def test_local_file_shadows_entry_point(
    site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install(
        site,
        "demo_tools_shadow",
        tool_source("shared", "only_installed"),
        "m = demo_tools_shadow\n",
    )
    local = write(tmp_path / "local" / "mine.py", tool_source("shared"))

    with caplog.at_level(logging.WARNING, logger="agent_server.tools"):
        registry = ToolRegistry.from_sources(local.parent)

    assert registry.source_of("shared") == str(local)
    assert registry.source_of("only_installed").startswith("entry point m = ")
    assert registry.names() == ["shared", "only_installed"]
    assert "shadowed" in caplog.text and str(local) in caplog.text
