"""Tools from MCP servers, registered like any plugin.

At start-up :func:`connect_servers` starts every configured server (:mod:`.config`) at
once, each bounded by ``AGENT_SERVER_MCP_CONNECT_TIMEOUT``, lists its tools and
registers them in the :class:`~agent_server.tools.ToolRegistry`; the graphs see them as
any other tool, and their calls stream as ``tool_start`` / ``tool_end`` /
``tool_error`` frames. langchain-mcp-adapters turns each MCP tool into a LangChain
tool (schema, result conversion, MCP error results); the official ``mcp`` package
speaks the protocol. What they do not do is here, by hand:

- **One session per server for the server's lifetime.** The adapters open a session
  (for stdio: a process) per call unless given one; a session is kept here instead,
  held by a task of its own (:meth:`MCPServer._hold`): the SDK's transports are anyio
  task groups, which must be entered and left by the same task, and a session opened
  inside a tool call would otherwise belong to that call's task. Every tool's call goes
  to :meth:`MCPServer.call` through an adapter interceptor that never calls on to the
  adapter's own per-call session.
- **Restarts.** A session found dead when a call is sent (the stdio process exited, the
  HTTP server forgot the session) is reopened at once and the call sent again: it
  never reached the server. A call in flight when the server dies fails. After that
  first immediate restart, consecutive failures back off (1, 2, 4... up to 30 s);
  a call meanwhile fails at once, saying when the next attempt is due. A call that
  succeeds resets the count.
- **Failures are results.** A dead server, a failed restart or a timeout answers the
  call with an MCP error result, so it reaches the graph like any MCP error result: a
  ``ToolMessage`` with status ``error``, a ``tool_error`` frame, and the run goes on
  (whatever the graph's ``handle_tool_errors``).
- **Time-outs.** Every call is bounded by ``AGENT_SERVER_TOOL_TIMEOUT`` here too, not
  only in graphs that use :func:`~agent_server.tools.tool_timeout`.
- **Progress.** A progress notification during a call becomes a LangChain custom event
  ``progress`` (``adispatch_custom_event``) with ``tool``, ``tool_call_id``,
  ``progress`` and, when given, ``total`` and ``message``: a ``custom`` frame. The MCP
  SDK awaits the callback in the session's receive loop before it reads the call's
  result, and the event goes through the tool run's own callbacks, so both event
  sources put it between the tool's ``tool_start`` and its ``tool_end``.
- **Log messages** from a server are logged on ``agent_server.mcp`` with its name, not
  streamed to clients.
- **No orphans.** A stdio server runs under :mod:`.guard`, which ends it (and its
  children) when agent-server goes, even by SIGKILL.
- **Names.** A tool whose name is taken (by a tool file, an entry point or an earlier
  server in the configuration) is registered as ``<server>_<name>`` and the clash is
  logged; local tools keep their names, as with entry points. Text-only results are
  handed on as text (the adapters return content blocks with random ids); structured
  content stays the ``ToolMessage``'s artifact.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio
from langchain_core.callbacks import adispatch_custom_event
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.tools import BaseTool, InjectedToolArg, StructuredTool, ToolException
from langchain_mcp_adapters.interceptors import (
    MCPToolCallRequest,
    MCPToolCallResult,
    ToolCallInterceptor,
)
from langchain_mcp_adapters.sessions import Connection, create_session
from langchain_mcp_adapters.tools import convert_mcp_tool_to_langchain_tool
from mcp import ClientSession, McpError, types
from mcp.shared.session import ProgressFnT

from agent_server.mcp.config import ServerSpec, load_specs
from agent_server.settings import Settings
from agent_server.tools import ToolRegistry

__all__ = ["MCPServer", "connect_servers"]

logger = logging.getLogger("agent_server.mcp")

GUARD = Path(__file__).with_name("guard.py")
BACKOFF_CAP = 30.0  # seconds between restart attempts of a server that keeps failing
CLOSE_TIMEOUT = 5.0  # a session's close: the SDK gives a stdio server 2 s, then signals
MAX_PAGES = 100  # tools/list pages

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emergency": logging.CRITICAL,
}


def restart_delay(failures: int) -> float:
    """Seconds before the next start after ``failures`` consecutive failures: the first
    restart is immediate, then 1, 2, 4... up to :data:`BACKOFF_CAP`."""
    if failures <= 1:
        return 0.0
    return float(min(BACKOFF_CAP, 2 ** (failures - 2)))


class _StartFailed(Exception):
    """A session that could not be opened; its message is the reason, said once."""


def _reason(exc: BaseException) -> str:
    """One line for the log and the tool's error: the first leaf of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, _StartFailed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=True)


def _number(value: float) -> float | int:
    """``3`` rather than ``3.0`` in frames: MCP sends every progress as a float."""
    return int(value) if float(value).is_integer() else value


@dataclass(eq=False)
class _Held:
    """An open session and the task that holds it (see :meth:`MCPServer._hold`)."""

    session: ClientSession
    keeper: asyncio.Task[None]
    closing: asyncio.Event  # set to close it
    ended: asyncio.Event  # set once the keeper is done, however it ended


class MCPServer:
    """One configured MCP server: its session, kept open and reopened, and its calls."""

    def __init__(self, spec: ServerSpec, *, connect_timeout: float, call_timeout: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.restarts = 0
        self.tools: list[BaseTool] = []
        self._held: _Held | None = None
        self._dying: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._down_because = ""
        self._closed = False

    def __repr__(self) -> str:
        return f"MCPServer({self.name!r}, {self.spec.transport}: {self.spec.describe()})"

    @property
    def session(self) -> ClientSession | None:
        """The open session; None while the server is down (or before it started)."""
        return self._held.session if self._held is not None else None

    # -- the session ----------------------------------------------------------------------

    def connection(self) -> Connection:
        """The adapters' connection settings; a stdio command runs under the guard."""
        session_kwargs: dict[str, Any] = {"logging_callback": self._log_message}
        spec = self.spec
        if spec.transport == "stdio":
            command, args = spec.command, list(spec.args)
            if os.name == "posix":
                command, args = sys.executable, ["-I", str(GUARD), str(os.getpid()), command, *args]
            return {
                "transport": "stdio",
                "command": command,
                "args": args,
                "env": spec.env,
                "cwd": spec.cwd,
                "session_kwargs": session_kwargs,
            }
        return {
            "transport": "streamable_http",
            "url": spec.url,
            "headers": spec.headers,
            # A call's answer may be silent for as long as the tool is allowed to run.
            "sse_read_timeout": timedelta(seconds=max(300.0, self.call_timeout + 5)),
            "session_kwargs": session_kwargs,
        }

    def _check_command(self) -> None:
        """A missing executable, said plainly (under the guard it would only show as a
        closed connection)."""
        spec = self.spec
        if spec.transport != "stdio":
            return
        if os.sep in spec.command:
            path = Path(spec.cwd or ".") / spec.command
            found = path.is_file() and os.access(path, os.X_OK)
        else:
            # (without PATH in its env, the child searches the PATH it inherits, as here)
            search = (spec.env or {}).get("PATH")
            found = shutil.which(spec.command, path=search) is not None
        if not found:
            raise FileNotFoundError(f"command {spec.command!r} not found")

    async def _log_message(self, params: types.LoggingMessageNotificationParams) -> None:
        source = f" ({params.logger})" if params.logger else ""
        logger.log(
            LOG_LEVELS.get(params.level, logging.INFO),
            "MCP server %r%s: %s",
            self.name,
            source,
            params.data,
        )

    async def _hold(
        self, opened: asyncio.Future[ClientSession], closing: asyncio.Event, ended: asyncio.Event
    ) -> None:
        """Open the session, hand it over, keep it until ``closing``: one task enters and
        leaves the SDK's task groups. A transport that fails meanwhile (a write to a dead
        process) ends this task, and ``ended`` tells the calls waiting on the session."""
        try:
            async with create_session(self.connection()) as session:
                await session.initialize()
                opened.set_result(session)
                await closing.wait()
        except asyncio.CancelledError:
            if not opened.done():
                opened.cancel()
            raise
        except BaseException as exc:  # an anyio task group's ExceptionGroup too
            if not opened.done():
                opened.set_exception(_StartFailed(_reason(exc)))
            else:
                self._lost(ended, f"its session ended: {_reason(exc)}")
        finally:
            ended.set()

    async def _open(self) -> None:
        """Open a new session (the caller bounds the time) and hold it."""
        self._check_command()
        opened: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
        closing, ended = asyncio.Event(), asyncio.Event()
        # A context of its own: a restart happens inside some tool call, whose run and
        # callbacks must not stick to the session's tasks.
        keeper = asyncio.create_task(
            self._hold(opened, closing, ended),
            name=f"mcp-{self.name}",
            context=contextvars.Context(),
        )
        try:
            session = await opened
        except BaseException:
            closing.set()
            keeper.cancel()
            self._let_go(keeper)
            raise
        self._release()
        self._held = _Held(session, keeper, closing, ended)

    def _let_go(self, keeper: asyncio.Task[None]) -> None:
        """Let ``keeper`` close its session; :meth:`close` waits for it."""
        self._dying.add(keeper)
        keeper.add_done_callback(self._dying.discard)

    def _release(self) -> None:
        if self._held is not None:
            self._held.closing.set()
            self._let_go(self._held.keeper)
            self._held = None

    async def start(self) -> list[types.Tool]:
        """Open the session and list the tools, within ``connect_timeout``; raises."""
        async with asyncio.timeout(self.connect_timeout):
            await self._open()
            assert self._held is not None
            tools: list[types.Tool] = []
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                page = await self._held.session.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.nextCursor
                if not cursor:
                    break
        return tools

    def _lost(self, ended: asyncio.Event, why: str) -> None:
        """The session that ``ended`` belongs to is dead: drop it, count a failure."""
        if self._held is None or self._held.ended is not ended:
            return  # noticed already, or an old session
        self._release()
        self._failures += 1
        self._retry_at = time.monotonic() + restart_delay(self._failures)
        self._down_because = why
        if not self._closed:
            logger.warning(
                "MCP server %r stopped (%s); it is restarted on its next call", self.name, why
            )

    async def _live(self) -> _Held:
        """The open session, or a new one (bounded back-off); raises ConnectionError."""
        if self._held is not None:
            return self._held
        async with self._lock:
            if self._held is not None:
                return self._held
            if self._closed:
                raise ConnectionError(f"MCP server {self.name!r} is shut down")
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise ConnectionError(
                    f"MCP server {self.name!r} is down ({self._down_because}); "
                    f"next restart attempt in {wait:.1f} s"
                )
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await self._open()
            except Exception as exc:
                self._failures += 1
                self._retry_at = time.monotonic() + restart_delay(self._failures)
                self._down_because = _reason(exc)
                logger.warning(
                    "MCP server %r could not be restarted: %s", self.name, self._down_because
                )
                raise ConnectionError(
                    f"MCP server {self.name!r} could not be restarted: {self._down_because}"
                ) from None
            assert self._held is not None
            self.restarts += 1
            logger.info("MCP server %r restarted (%d restarts)", self.name, self.restarts)
            return self._held

    async def _send(
        self, held: _Held, name: str, arguments: dict[str, Any], progress: ProgressFnT | None
    ) -> types.CallToolResult | None:
        """The call on ``held``'s session; None if the session ended under it (the SDK
        would leave such a call waiting until its time-out)."""
        request = asyncio.ensure_future(
            held.session.call_tool(
                name,
                arguments,
                read_timeout_seconds=timedelta(seconds=self.call_timeout),
                progress_callback=progress,
            )
        )
        ended = asyncio.ensure_future(held.ended.wait())
        try:
            await asyncio.wait({request, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not request.done():  # the session ended first, or this call is cancelled
                request.cancel()
        return request.result() if request.done() and not request.cancelled() else None

    async def call(
        self, name: str, arguments: dict[str, Any], progress: ProgressFnT | None = None
    ) -> types.CallToolResult:
        """Call tool ``name``; every failure comes back as an error result (see above)."""
        for attempt in (1, 2):
            try:
                held = await self._live()
            except ConnectionError as exc:
                return _error_result(str(exc))
            try:
                result = await self._send(held, name, arguments, progress)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                # Dead before the request left: it never reached the server; send it again.
                self._lost(held.ended, "its connection is closed")
                if attempt == 1:
                    continue
                return _error_result(f"MCP server {self.name!r} is not reachable")
            except McpError as exc:
                error = exc.error
                if error.code == types.CONNECTION_CLOSED:
                    self._lost(held.ended, "its connection closed during a call")
                    return _error_result(f"MCP server {self.name!r} went away during the call")
                if error.code == 408 and error.message.startswith("Timed out"):
                    return _error_result(f"tool {name!r} timed out after {self.call_timeout:g} s")
                if "session terminated" in error.message.lower():
                    self._lost(held.ended, "it ended the session")
                    if attempt == 1:
                        continue
                return _error_result(f"MCP server {self.name!r}: {error.message}")
            if result is None:
                self._lost(held.ended, "its session ended during a call")
                return _error_result(f"MCP server {self.name!r} went away during the call")
            self._failures = 0
            return result
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._closed = True
        self._release()
        if self._dying:
            _, pending = await asyncio.wait(set(self._dying), timeout=CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    # -- tools ----------------------------------------------------------------------------

    def langchain_tool(self, tool: types.Tool, *, prefixed: bool) -> BaseTool:
        """The adapters' tool for ``tool`` (named ``<server>_<name>`` when ``prefixed``),
        its calls sent through :meth:`call`."""
        name = f"{self.name}_{tool.name}" if prefixed else tool.name
        converted = convert_mcp_tool_to_langchain_tool(
            None,
            tool,
            connection=self.connection(),
            tool_interceptors=[self._interceptor(name)],
            server_name=self.name,
            tool_name_prefix=prefixed,
        )
        assert isinstance(converted, StructuredTool) and converted.coroutine is not None
        converted.coroutine = _text_results(converted.coroutine)
        if callable(converted.handle_tool_error):
            converted.handle_tool_error = _text_errors(converted.handle_tool_error)
        converted.metadata = {**(converted.metadata or {}), "mcp_server": self.name}
        return converted

    def _interceptor(self, tool_name: str) -> ToolCallInterceptor:
        async def intercept(
            request: MCPToolCallRequest,
            handler: Callable[[MCPToolCallRequest], Awaitable[MCPToolCallResult]],
        ) -> MCPToolCallResult:
            # Runs in the tool's own task and context: its run's callbacks are here.
            config = ensure_config()
            tool_call_id = getattr(request.runtime, "tool_call_id", None)
            progress = _progress_events(tool_name, tool_call_id, config)
            return await self.call(request.name, request.args, progress)

        return intercept


def _text_results(
    call: Callable[..., Awaitable[tuple[Any, Any]]],
) -> Callable[..., Awaitable[tuple[Any, Any]]]:
    """The adapters' tool coroutine, with content made of text blocks only joined into
    one string (their blocks carry random ids that mean nothing to a client)."""

    async def call_tool(
        runtime: Annotated[object | None, InjectedToolArg()] = None, **arguments: Any
    ) -> tuple[Any, Any]:
        content, artifact = await call(runtime=runtime, **arguments)
        return _text(content), artifact

    return call_tool


def _text(content: Any) -> Any:
    """Content made of text blocks only, as one string."""
    if isinstance(content, list) and all(
        isinstance(block, dict) and block.get("type") == "text" for block in content
    ):
        return "\n".join(str(block.get("text", "")) for block in content)
    return content


def _text_errors(handle: Callable[[ToolException], Any]) -> Callable[[ToolException], Any]:
    """The adapters' handler of MCP error results (content blocks), as text."""

    def handle_tool_error(error: ToolException) -> Any:
        return _text(handle(error))

    return handle_tool_error


def _progress_events(tool: str, tool_call_id: str | None, config: RunnableConfig) -> ProgressFnT:
    async def report(progress: float, total: float | None, message: str | None) -> None:
        data: dict[str, Any] = {
            "tool": tool,
            "tool_call_id": tool_call_id,
            "progress": _number(progress),
        }
        if total is not None:
            data["total"] = _number(total)
        if message is not None:
            data["message"] = message
        # Outside any run (tool.ainvoke with no callbacks) nobody listens: RuntimeError.
        with contextlib.suppress(RuntimeError):
            await adispatch_custom_event("progress", data, config=config)

    return report


async def _start(server: MCPServer) -> list[types.Tool] | None:
    try:
        return await server.start()
    except Exception as exc:
        logger.warning(
            "MCP server %r (%s) skipped: %s", server.name, server.spec.describe(), _reason(exc)
        )
        await server.close()
        return None


def _register(server: MCPServer, tools: list[types.Tool], registry: ToolRegistry) -> None:
    source = f"MCP server {server.name}"
    for tool in tools:
        name, prefixed = tool.name, False
        if name in registry and registry.source_of(name) != source:
            prefixed, name = True, f"{server.name}_{tool.name}"
            logger.warning(
                "MCP tool %r of server %r clashes with the tool from %s: registered as %r",
                tool.name,
                server.name,
                registry.source_of(tool.name),
                name,
            )
            if name in registry and registry.source_of(name) != source:
                logger.warning(
                    "MCP tool %r of server %r skipped: %r is taken too (by %s)",
                    tool.name,
                    server.name,
                    name,
                    registry.source_of(name),
                )
                continue
        lc_tool = server.langchain_tool(tool, prefixed=prefixed)
        server.tools.append(lc_tool)
        registry.register(lc_tool, source=source)
    logger.info(
        "MCP server %r (%s): %d tools: %s",
        server.name,
        server.spec.transport,
        len(server.tools),
        ", ".join(t.name for t in server.tools) or "none",
    )


@asynccontextmanager
async def connect_servers(
    settings: Settings, registry: ToolRegistry
) -> AsyncIterator[list[MCPServer]]:
    """Start the configured servers (in parallel), register their tools in ``registry``;
    on exit, unregister them and close every session. Yields the servers that started."""
    specs, errors = load_specs(settings.mcp_config, settings.mcp_servers)
    for error in errors:
        logger.warning("MCP server skipped: %s: %s", error.source, error.error)
    servers = [
        MCPServer(
            spec, connect_timeout=settings.mcp_connect_timeout, call_timeout=settings.tool_timeout
        )
        for spec in specs
    ]
    listed = await asyncio.gather(*(_start(server) for server in servers))
    started: list[MCPServer] = []
    try:
        for server, tools in zip(servers, listed, strict=True):
            if tools is not None:
                _register(server, tools, registry)
                started.append(server)
        yield started
    finally:
        for server in started:
            for tool in server.tools:
                if tool in registry:
                    registry.unregister(tool.name)
        with contextlib.suppress(Exception):
            await asyncio.gather(*(server.close() for server in started))
