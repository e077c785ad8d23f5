"""Find, load and hold the tools graphs can use.

A tool is any LangChain ``BaseTool`` (``@tool`` functions, ``StructuredTool``, subclasses).
Tools come from two kinds of plugin:

* files in the tools directory: every ``*.py`` file and every package directory (one with
  ``__init__.py``) whose name does not start with ``_`` or ``.``, imported by path in name
  order; every public module-level ``BaseTool`` is taken;
* entry points of the group ``agent_server.tools`` in installed distributions; the loaded
  object may be a tool, a list or tuple of tools, a module, or a zero-argument callable
  returning a tool or a list of them.

Decisions:

* Local files win over installed packages. When a file and an entry point both define a
  tool name, the file's tool is kept and a warning names both sources: the user edits the
  files, and installing a package must never silently replace their tool. Among files,
  and among entry points, the later one wins with a warning (files are loaded in name
  order, so the outcome does not depend on the file system).
* A broken plugin (syntax error, exception at import, an entry point that fails to load
  or yields no tools or non-tools) is logged on ``agent_server.tools`` and appended to
  ``ToolRegistry.errors``, then skipped: ``discover`` never raises, so one broken file
  never stops the server. An empty file is not an error (it may hold helpers); an entry
  point with no tools is, since it exists only to provide them.
* ``register`` replaces a tool of the same name and logs only at debug level: notebooks
  re-run cells that register the same tool again.
* Iterating a registry yields tools, so ``list(registry)`` can be passed wherever LangChain
  wants a list of tools; ``in`` accepts a name or a tool.
* There is no module-level registry: callers create one and pass it down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langgraph.prebuilt.tool_node import AsyncToolCallWrapper, ToolCallRequest
from langgraph.types import Command
from pydantic import BaseModel

from agent_server._importer import import_path

__all__ = ["PluginError", "ToolRegistry", "UnknownToolError"]

logger = logging.getLogger("agent_server.tools")

DEFAULT_ENTRY_POINT_GROUP = "agent_server.tools"

ToolT = TypeVar("ToolT", bound=BaseTool)


@dataclass(frozen=True)
class PluginError:
    """A plugin (tool file, graph, entry point) that failed to load, kept for reporting."""

    source: str
    error: str


class UnknownToolError(KeyError):
    """Raised for tool names that are not registered; the message lists the known ones."""

    def __init__(self, names: Iterable[str], available: Iterable[str]) -> None:
        self.names = list(names)
        self.available = list(available)
        super().__init__(*self.names)

    def __str__(self) -> str:
        # KeyError's own __str__ would show the repr of the first name only.
        unknown = ", ".join(repr(name) for name in self.names)
        known = ", ".join(self.available) or "none"
        noun = "tool" if len(self.names) == 1 else "tools"
        return f"unknown {noun} {unknown} (available: {known})"


@dataclass
class _Entry:
    tool: BaseTool
    source: str


class ToolRegistry:
    """Tools by name, in registration order, with where each came from."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.errors: list[PluginError] = []

    @classmethod
    def from_sources(
        cls,
        tools_dir: Path | None,
        *,
        entry_point_group: str | None = DEFAULT_ENTRY_POINT_GROUP,
        missing_ok: bool = True,
    ) -> ToolRegistry:
        """A registry filled by :meth:`discover`."""
        registry = cls()
        registry.discover(tools_dir, entry_point_group=entry_point_group, missing_ok=missing_ok)
        return registry

    # -- registration ---------------------------------------------------------------------

    def register(self, tool: ToolT, *, source: str = "<registered>") -> ToolT:
        """Add ``tool``, replacing any tool of the same name; returns it (usable as decorator)."""
        if not isinstance(tool, BaseTool):
            raise TypeError(_not_a_tool_message(tool))
        previous = self._entries.get(tool.name)
        if previous is not None and previous.tool is not tool:
            logger.debug(
                "tool %r from %s replaces the one from %s", tool.name, source, previous.source
            )
        self._entries[tool.name] = _Entry(tool, source)
        return tool

    def unregister(self, name: str) -> None:
        if name not in self._entries:
            raise UnknownToolError([name], self._entries)
        del self._entries[name]

    # -- lookup ---------------------------------------------------------------------------

    def get(self, name: str) -> BaseTool:
        try:
            return self._entries[name].tool
        except KeyError:
            raise UnknownToolError([name], self._entries) from None

    def get_tools(self, names: Iterable[str] | None = None) -> list[BaseTool]:
        """The named tools in the order asked (all, in registration order, for ``None``).

        Every unknown name is reported at once, so a misconfigured graph is fixed in one go.
        """
        if names is None:
            return [entry.tool for entry in self._entries.values()]
        wanted = list(names)
        unknown = [name for name in wanted if name not in self._entries]
        if unknown:
            raise UnknownToolError(unknown, self._entries)
        return [self._entries[name].tool for name in wanted]

    def names(self) -> list[str]:
        return list(self._entries)

    def source_of(self, name: str) -> str:
        """The file, entry point or ``register`` call the tool came from."""
        try:
            return self._entries[name].source
        except KeyError:
            raise UnknownToolError([name], self._entries) from None

    def __contains__(self, item: object) -> bool:
        if isinstance(item, BaseTool):
            entry = self._entries.get(item.name)
            return entry is not None and entry.tool is item
        return item in self._entries

    def __iter__(self) -> Iterator[BaseTool]:
        return iter([entry.tool for entry in self._entries.values()])

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names()!r})"

    def describe(self) -> list[dict[str, Any]]:
        """Name, description and JSON schema of the arguments of each tool, for ``GET /tools``.

        The schema is the one the model sees (``tool_call_schema``): injected arguments such
        as ``InjectedToolCallId`` or ``InjectedState`` are left out.
        """
        return [
            {
                "name": entry.tool.name,
                "description": entry.tool.description,
                "args_schema": _args_json_schema(entry.tool),
            }
            for entry in self._entries.values()
        ]

    # -- discovery ------------------------------------------------------------------------

    def discover(
        self,
        tools_dir: Path | None,
        *,
        entry_point_group: str | None = DEFAULT_ENTRY_POINT_GROUP,
        missing_ok: bool = True,
    ) -> None:
        """Load the tools of ``tools_dir`` and of the entry point group (``None``: skip it).

        A missing directory is skipped, with a warning when ``missing_ok`` is false (the
        user configured it explicitly). Failures go to :attr:`errors`; nothing is raised.
        """
        from_files: dict[str, str] = {}
        if tools_dir is not None:
            for path in self._plugin_paths(Path(tools_dir), missing_ok=missing_ok):
                source = str(path)
                try:
                    module = import_path(path)
                except (Exception, SystemExit) as exc:
                    self._record_error(source, exc)
                    continue
                for tool in _module_tools(module):
                    self._add_discovered(tool, source)
                    from_files[tool.name] = source
        if entry_point_group is not None:
            for entry_point in self._entry_points(entry_point_group):
                source = _entry_point_source(entry_point)
                try:
                    tools = _tools_from_object(entry_point.load())
                except (Exception, SystemExit) as exc:
                    self._record_error(source, exc)
                    continue
                for tool in tools:
                    if tool.name in from_files:
                        logger.warning(
                            "tool %r from %s is shadowed by %s (local files win)",
                            tool.name,
                            source,
                            from_files[tool.name],
                        )
                        continue
                    self._add_discovered(tool, source)

    def _plugin_paths(self, tools_dir: Path, *, missing_ok: bool) -> list[Path]:
        if not tools_dir.exists():
            if not missing_ok:
                logger.warning("tools directory %s does not exist; no file tools loaded", tools_dir)
            return []
        if not tools_dir.is_dir():
            self._record_error(str(tools_dir), NotADirectoryError(f"not a directory: {tools_dir}"))
            return []
        paths = [
            path
            for path in tools_dir.iterdir()
            if not path.name.startswith(("_", "."))
            and (
                (path.is_file() and path.suffix == ".py")
                or (path.is_dir() and (path / "__init__.py").is_file())
            )
        ]
        return sorted(paths, key=lambda path: path.name)

    def _entry_points(self, group: str) -> list[metadata.EntryPoint]:
        try:
            return list(metadata.entry_points(group=group))
        except Exception as exc:  # a malformed installed distribution
            self._record_error(f"entry point group {group}", exc)
            return []

    def _add_discovered(self, tool: BaseTool, source: str) -> None:
        previous = self._entries.get(tool.name)
        if previous is not None:
            if previous.tool is tool:  # the same object re-exported by another module
                return
            logger.warning(
                "tool %r from %s replaces the one from %s", tool.name, source, previous.source
            )
        self._entries[tool.name] = _Entry(tool, source)

    def _record_error(self, source: str, exc: BaseException) -> None:
        error = PluginError(source=source, error=_one_line(exc))
        # The traceback points at the line to fix in the user's plugin.
        logger.warning("cannot load tools from %s: %s", source, error.error, exc_info=exc)
        self.errors.append(error)


def _module_tools(module: ModuleType) -> list[BaseTool]:
    """Public module-level tools in definition order, each object once."""
    seen: set[int] = set()
    tools: list[BaseTool] = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or not isinstance(value, BaseTool) or id(value) in seen:
            continue
        seen.add(id(value))
        tools.append(value)
    return tools


def _tools_from_object(obj: object) -> list[BaseTool]:
    """The tools an entry point's object stands for; raise TypeError when there are none."""
    if isinstance(obj, BaseTool):
        return [obj]
    if isinstance(obj, ModuleType):
        tools = _module_tools(obj)
        if not tools:
            raise TypeError(f"module {obj.__name__} defines no tools")
        return tools
    if isinstance(obj, list | tuple):
        return _tool_list(obj, what="list")
    if callable(obj):
        result = obj()
        if isinstance(result, BaseTool):
            return [result]
        if isinstance(result, list | tuple):
            return _tool_list(result, what="list returned by the factory")
        raise TypeError(f"factory returned {type(result).__name__}, expected a tool or a list")
    raise TypeError(f"expected a tool, a list of tools, a module or a factory, got {obj!r}")


def _tool_list(items: list[object] | tuple[object, ...], *, what: str) -> list[BaseTool]:
    if not items:
        raise TypeError(f"empty {what}")
    bad = [item for item in items if not isinstance(item, BaseTool)]
    if bad:
        raise TypeError(f"{what} holds non-tools: {', '.join(repr(item) for item in bad)}")
    return [item for item in items if isinstance(item, BaseTool)]


def _args_json_schema(tool: BaseTool) -> dict[str, Any]:
    schema = tool.tool_call_schema
    if isinstance(schema, dict):  # a tool declared with a JSON schema
        return dict(schema)
    if issubclass(schema, BaseModel):
        return schema.model_json_schema()
    result: dict[str, Any] = schema.schema()  # a pydantic.v1 model
    return result


def _entry_point_source(entry_point: metadata.EntryPoint) -> str:
    dist = entry_point.dist.name if entry_point.dist is not None else "unknown"
    return f"entry point {entry_point.name} = {entry_point.value} (dist {dist})"


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _not_a_tool_message(obj: object) -> str:
    if callable(obj):
        name = getattr(obj, "__name__", repr(obj))
        return (
            f"{name} is not a LangChain tool: decorate it with @tool "
            "(from langchain_core.tools import tool) before registering it"
        )
    return f"expected a LangChain BaseTool, got {type(obj).__name__}; use @tool to make one"


def tool_timeout(seconds: float) -> AsyncToolCallWrapper:
    """A ``ToolNode(awrap_tool_call=...)`` interceptor that bounds every tool call.

    Past ``seconds`` the call's task is cancelled with a message, so the tool sees it
    (LangChain reports it as the tool's error: a ``tool_error`` frame) and the agent
    gets an error ``ToolMessage`` and carries on, as for any failing tool. A sync tool
    runs in a thread that cannot be stopped: its result is abandoned, not its work.
    """

    async def bounded(
        request: ToolCallRequest,
        execute: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        task = asyncio.current_task()
        assert task is not None
        name = request.tool_call["name"]
        message = f"tool {name!r} timed out after {seconds:g} s"
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel(message)

        handle = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            return await execute(request)
        except asyncio.CancelledError:
            if expired and task.uncancel() == 0:
                return ToolMessage(
                    content=message,
                    name=name,
                    tool_call_id=request.tool_call["id"],
                    status="error",
                )
            raise
        finally:
            handle.cancel()

    return bounded
