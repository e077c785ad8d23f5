"""Find, load and hold the graphs the server runs.

A graph reference is ``path/to/file.py:attr`` or ``package.module:attr``. The attribute
may be a compiled graph, an uncompiled ``StateGraph`` (compiled here), or a factory
(sync or async) returning either. A factory is called once, at load time, with the
keyword arguments it names among: ``tools`` (the :class:`~agent_server.tools.ToolRegistry`),
``model`` (the configured chat model), ``settings`` and ``config`` (an empty
``RunnableConfig``, for factories written for LangGraph's server).

A graph compiled without a checkpointer gets the server's, as LangGraph's own server
does, so threads and interrupts work for any graph a user drops in; likewise the
server's store (:mod:`agent_server.stores`), for ``get_store()`` and a node's ``store``.
A graph that fails to load is reported with its reference and error and skipped: one
broken file never stops the server.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from langgraph.store.base import BaseStore

from agent_server._importer import import_ref
from agent_server.settings import Settings
from agent_server.tools import PluginError, ToolRegistry

logger = logging.getLogger("agent_server.graphs")

AnyGraph = Pregel[Any, Any, Any, Any]


class UnknownGraphError(KeyError):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.available = available

    def __str__(self) -> str:
        known = ", ".join(self.available) or "none"
        return f"unknown graph {self.name!r} (available: {known})"


@dataclass
class GraphEntry:
    name: str
    ref: str
    graph: AnyGraph
    description: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ref": self.ref,
            "description": self.description,
            "nodes": [node for node in self.graph.nodes if not node.startswith("__")],
        }


@dataclass
class GraphRegistry:
    graphs: dict[str, GraphEntry] = field(default_factory=dict)
    errors: list[PluginError] = field(default_factory=list)

    def get(self, name: str) -> GraphEntry:
        try:
            return self.graphs[name]
        except KeyError:
            raise UnknownGraphError(name, list(self.graphs)) from None

    def add(self, entry: GraphEntry) -> None:
        self.graphs[entry.name] = entry

    def names(self) -> list[str]:
        return list(self.graphs)

    def __contains__(self, name: object) -> bool:
        return name in self.graphs

    def __iter__(self) -> Iterator[GraphEntry]:
        return iter(self.graphs.values())

    def __len__(self) -> int:
        return len(self.graphs)

    def describe(self) -> list[dict[str, Any]]:
        return [entry.describe() for entry in self.graphs.values()]


async def load_graph(
    ref: str,
    *,
    base_dir: Path,
    tools: ToolRegistry,
    model: BaseChatModel | None,
    settings: Settings,
    checkpointer: BaseCheckpointSaver[Any] | None,
    store: BaseStore | None = None,
) -> tuple[AnyGraph, str]:
    """Resolve one reference to a compiled graph (with a checkpointer) and a description."""
    target = import_ref(ref, base_dir)
    description = _first_line(inspect.getdoc(target)) if callable(target) else ""
    if not isinstance(target, Pregel | StateGraph) and callable(target):
        offered: dict[str, Any] = {
            "tools": tools,
            "model": model,
            "settings": settings,
            "config": {},
        }
        kwargs: dict[str, Any] = {}
        for param in inspect.signature(target).parameters.values():
            if param.name in offered:
                kwargs[param.name] = offered[param.name]
            elif param.default is inspect.Parameter.empty and param.kind not in (
                param.VAR_POSITIONAL,
                param.VAR_KEYWORD,
            ):
                raise TypeError(
                    f"factory {ref} takes {param.name!r}; a factory may take only "
                    f"{', '.join(offered)}"
                )
        if kwargs.get("model", True) is None:
            raise TypeError(f"factory {ref} needs a model but none is configured")
        target = target(**kwargs)
        if inspect.isawaitable(target):
            target = await target
    if isinstance(target, StateGraph):
        target = target.compile(checkpointer=checkpointer, store=store)
    if not isinstance(target, Pregel):
        raise TypeError(f"{ref} is {type(target).__name__}, not a LangGraph graph")
    if target.checkpointer is None and checkpointer is not None:
        target = target.copy(update={"checkpointer": checkpointer})
    if target.store is None and store is not None:
        target = target.copy(update={"store": store})
    return target, description


async def load_graphs(
    refs: Mapping[str, str],
    *,
    base_dir: Path,
    tools: ToolRegistry,
    model: BaseChatModel | None,
    settings: Settings,
    checkpointer: BaseCheckpointSaver[Any] | None,
    store: BaseStore | None = None,
) -> GraphRegistry:
    registry = GraphRegistry()
    for name, ref in refs.items():
        try:
            graph, description = await load_graph(
                ref,
                base_dir=base_dir,
                tools=tools,
                model=model,
                settings=settings,
                checkpointer=checkpointer,
                store=store,
            )
        # SystemExit too: a module-level sys.exit() (a script) must not stop the server,
        # as for tool files.
        except (Exception, SystemExit) as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.warning("graph %r (%s) failed to load and is skipped: %s", name, ref, error)
            logger.debug("graph load failure", exc_info=True)
            registry.errors.append(PluginError(source=f"graph {name} = {ref}", error=error))
            continue
        registry.add(GraphEntry(name=name, ref=ref, graph=graph, description=description))
    return registry


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""
