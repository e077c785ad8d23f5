"""In-process streaming for notebooks, scripts and tests: the server's frames, no server.

``stream()`` runs a graph through the same :class:`~agent_server.runs.Run` (and so the
same translator) as the server, so its frames are the server's frames; a test checks
they match what SSE delivers, ``ts`` and ids aside. Notebooks allow top-level
``async for``; ``stream_sync()`` is the plain iterator for scripts.

State lives in a :class:`Session` (graphs, tools, model, an in-memory checkpointer):
threads continue across calls in one session. The module keeps one default session,
created on first use: a notebook's kernel is its lifespan.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel

from agent_server.chat_model import load_chat_model
from agent_server.console import ConsoleRenderer
from agent_server.frames import BaseFrame, Custom, Token, ToolEnd, ToolError, ToolStart
from agent_server.graphs import GraphEntry, load_graph
from agent_server.runs import Run
from agent_server.settings import Settings
from agent_server.tools import ToolRegistry


def load_tools(tools_dir: str | Path = "tools") -> ToolRegistry:
    """The tools of a directory (and installed plugins); ``register()`` adds more."""
    return ToolRegistry.from_sources(Path(tools_dir))


class Session:
    """Graphs, tools, a model and a checkpointer shared by in-process runs."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tools: ToolRegistry | None = None,
        model: BaseChatModel | None = None,
    ) -> None:
        self.settings = settings or Settings(database_url="memory://")
        self.tools = tools or load_tools(self.settings.tools_dir)
        self.model = model or load_chat_model(self.settings.model)
        self.checkpointer = InMemorySaver()
        self._graphs: dict[tuple[str, int], GraphEntry] = {}

    async def entry(
        self, graph: str | Pregel[Any, Any, Any, Any], tools: ToolRegistry, model: BaseChatModel
    ) -> GraphEntry:
        if isinstance(graph, Pregel):
            if graph.checkpointer is None:
                graph = graph.copy(update={"checkpointer": self.checkpointer})
            return GraphEntry(name=graph.name or "graph", ref="<in-process>", graph=graph)
        key = (graph, id(tools))
        if key not in self._graphs:
            ref = self.settings.graphs.get(graph)
            if ref is None:
                known = ", ".join(self.settings.graphs) or "none"
                raise KeyError(f"unknown graph {graph!r} (available: {known})")
            compiled, description = await load_graph(
                ref,
                base_dir=Path.cwd(),
                tools=tools,
                model=model,
                settings=self.settings,
                checkpointer=self.checkpointer,
            )
            self._graphs[key] = GraphEntry(graph, ref, compiled, description)
        return self._graphs[key]


_default: Session | None = None


def session() -> Session:
    global _default
    if _default is None:
        _default = Session()
    return _default


async def stream(
    graph: str | Pregel[Any, Any, Any, Any],
    message: str | None = None,
    *,
    input: Any = None,
    thread_id: str | None = None,
    tools: ToolRegistry | None = None,
    model: BaseChatModel | None = None,
) -> AsyncIterator[BaseFrame]:
    """The frames of one run, in-process: ``async for frame in stream("agent", "hi")``."""
    current = session()
    tools = tools or current.tools
    entry = await current.entry(graph, tools, model or current.model)
    run = Run(
        graph=entry,
        input={"messages": [{"role": "user", "content": message}]}
        if message is not None
        else input,
        thread_id=thread_id or str(uuid.uuid4()),
    )
    task = asyncio.ensure_future(run.execute())
    try:
        async for batch in run.follow():
            for item in batch:
                yield item.frame
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def stream_sync(
    graph: str | Pregel[Any, Any, Any, Any], message: str | None = None, **kwargs: Any
) -> Iterator[BaseFrame]:
    """:func:`stream` as a plain iterator, for scripts (runs an event loop in a thread)."""
    frames: queue.Queue[BaseFrame | BaseException | None] = queue.Queue()

    async def pump() -> None:
        try:
            async for frame in stream(graph, message, **kwargs):
                frames.put(frame)
        except BaseException as exc:
            frames.put(exc)
        finally:
            frames.put(None)

    worker = threading.Thread(target=lambda: asyncio.run(pump()), daemon=True)
    worker.start()
    while (item := frames.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
    worker.join()


def print_stream(frames: Iterable[BaseFrame]) -> list[BaseFrame]:
    """Print frames as they come (tokens as text, tool calls as lines); return them."""
    import sys

    renderer = ConsoleRenderer(sys.stdout)
    seen = []
    for frame in frames:
        renderer.write(frame)
        seen.append(frame)
    return seen


async def show(frames: AsyncIterable[BaseFrame]) -> list[BaseFrame]:
    """Render a stream live in Jupyter (text as it arrives, tool calls as collapsible
    blocks); print it elsewhere. Returns the frames."""
    ipython: Any = None
    try:
        from IPython import get_ipython

        ipython = get_ipython()
    except ImportError:
        pass
    if ipython is None:
        import sys

        renderer = ConsoleRenderer(sys.stdout)
        seen = []
        async for frame in frames:
            renderer.write(frame)
            seen.append(frame)
        return seen
    from IPython import display as ipd

    html: Any = ipd.HTML
    handle: Any = ipd.display(html(""), display_id=True)  # type: ignore[no-untyped-call]
    seen = []
    async for frame in frames:
        seen.append(frame)
        handle.update(html(render_html(seen)))
    return seen


def render_html(frames: list[BaseFrame]) -> str:
    """Frames as HTML: text, and a ``<details>`` block per tool call."""
    from html import escape

    from agent_server.frames import dumps

    parts: list[str] = []
    text: list[str] = []
    tools: dict[str, int] = {}

    def flush() -> None:
        if text:
            parts.append(f"<div style='white-space:pre-wrap'>{escape(''.join(text))}</div>")
            text.clear()

    for frame in frames:
        if isinstance(frame, Token):
            text.append(frame.content)
        elif isinstance(frame, ToolStart):
            flush()
            tools[frame.tool_call_id or str(len(parts))] = len(parts)
            arguments = escape(dumps(frame.input).decode())
            parts.append(f"<details open><summary>🔧 {escape(frame.name)}</summary>"
                         f"<pre>{arguments}</pre></details>")  # fmt: skip
        elif isinstance(frame, ToolEnd | ToolError):
            index = tools.get(frame.tool_call_id or "")
            result = frame.error if isinstance(frame, ToolError) else frame.output
            body = escape(result if isinstance(result, str) else dumps(result).decode())
            block = f"<pre>→ {body}</pre></details>"
            if index is not None:
                parts[index] = parts[index].removesuffix("</details>") + block
        elif isinstance(frame, Custom):
            flush()
            parts.append(f"<div><small>⋯ {escape(frame.name)}: "
                         f"{escape(dumps(frame.data).decode())}</small></div>")  # fmt: skip
    flush()
    return "".join(parts)
