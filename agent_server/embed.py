"""agent-server inside another ASGI app (FastAPI, Starlette): mount it, run its lifespan,
start runs from the host's own routes. See docs/embedding.md.

Decisions (read before changing):

- Starlette, and so FastAPI, does not run a mounted app's lifespan. The host's lifespan
  enters :func:`lifespan`, which runs ours: the state is opened once and, on the way
  out, runs get ``shutdown_grace`` seconds and the rest are cancelled, as in the
  standalone server's lifespan. What a host does not get is ``agent-server serve``'s
  drain *before* uvicorn waits for open connections (agent_server/server.py): under a
  plain ``uvicorn`` a live stream holds the shutdown until
  ``--timeout-graceful-shutdown``, then the lifespan cancels its run.
- A host route's runs are the same :class:`~agent_server.runs.Run` objects, in the same
  run manager, as the mounted routes': ``GET {prefix}/runs/{id}/stream``, the WebSocket's
  rooms and the playground see them.
- A run's owner is a user id the host resolved with its own auth; agent-server never
  sees the host's credentials. The mounted routes authenticate with agent-server's own
  settings (``AGENT_SERVER_AUTH``): a run owned by ``"alice"`` is streamed there only to
  a caller that agent-server also knows as ``"alice"``.
- The state is found per request (the lifespan state the host yields, or the
  agent-server app's own), never in a module global, so two mounted instances stay
  apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from agent_server.frames import BaseFrame
from agent_server.runs import MultitaskStrategy, RemoteRun, Run, RunManager
from agent_server.schemas import RunRequest
from agent_server.serving import launch_run, stream_response
from agent_server.sse import SSEResponse
from agent_server.state import AppState

STATE_KEY = "agent_server"


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[AppState]:
    """Run a mounted agent-server app's lifespan from the host's; yields its state.

    ``yield {"agent_server": state}`` from the host's lifespan so that the host's routes
    can ask for it with :func:`get_state` / :func:`get_run_manager`.
    """
    async with app.router.lifespan_context(app):
        state: AppState = app.state.agent_server
        yield state


def get_state(connection: HTTPConnection) -> AppState:
    """The started agent-server's state (a FastAPI dependency: ``Depends(get_state)``)."""
    state = connection.scope.get("state", {}).get(STATE_KEY)
    if state is None:
        state = getattr(connection.app.state, STATE_KEY, None)
    if not isinstance(state, AppState):
        raise RuntimeError(
            "agent-server is not started for this request: enter agent_server.lifespan(app) "
            'in your app\'s lifespan and yield {"agent_server": state} (docs/embedding.md)'
        )
    return state


def get_run_manager(connection: HTTPConnection) -> RunManager:
    """The run manager every route shares (a FastAPI dependency)."""
    return get_state(connection).runs


@dataclass(frozen=True)
class AgentRun:
    """A run started (or found) by a host's route, with the state that streams it."""

    run: Run | RemoteRun
    state: AppState

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def thread_id(self) -> str:
        return self.run.thread_id

    async def frames(self, after: int = 0) -> AsyncIterator[BaseFrame]:
        """Its frames after seq ``after``, live, up to the terminal ``done`` or ``error``."""
        async for batch in self.run.follow(after):
            for entry in batch:
                yield entry.frame

    def __aiter__(self) -> AsyncIterator[BaseFrame]:
        return self.frames()

    def cancel(self) -> bool:
        """Cancel it; its log ends with ``error`` code ``cancelled``. False if finished."""
        return self.run.cancel("cancelled", "cancelled by request")

    async def wait(self) -> dict[str, Any]:
        """Until it has finished: its description (``status``, ``last_seq``, ...)."""
        await self.state.runs.settled(self.run)
        return self.run.describe()


async def start_run(
    state: AppState,
    graph: str,
    message: str | None = None,
    *,
    input: Any = None,
    thread_id: str | None = None,
    owner: str | None = None,
    config: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    multitask_strategy: MultitaskStrategy = "reject",
) -> AgentRun:
    """Start a run on ``graph``, as ``POST /runs/stream`` would for user ``owner``.

    Give ``message`` (one user turn) or ``input`` (the graph's input). The request is
    checked as the HTTP one is: :class:`pydantic.ValidationError`,
    :class:`~agent_server.graphs.UnknownGraphError`,
    :class:`~agent_server.runs.RunRejected` (busy thread, full queue, shutting down) and
    :class:`~agent_server.runs.Forbidden` (another user's thread) are raised;
    ``agent_server.error_handlers`` turns them into the same JSON errors.
    """
    fields: dict[str, Any] = {
        "graph": graph,
        "thread_id": thread_id,
        "timeout": timeout,
        "multitask_strategy": multitask_strategy,
        "config": dict(config or {}),
    }
    if message is not None:
        fields["message"] = message
    else:
        fields["input"] = input
    run = await launch_run(state, RunRequest.model_validate(fields), owner)
    return AgentRun(run, state)


def sse_response(
    run: AgentRun,
    *,
    after: int = 0,
    on_disconnect: Literal["cancel", "continue"] = "cancel",
) -> SSEResponse:
    """The run's frames as the SSE response of ``POST /runs/stream`` (same events, pings,
    ``[DONE]``, headers and slow-client bounds). A client that leaves cancels the run
    unless ``on_disconnect="continue"``."""
    return stream_response(run.state, run.run, after=after, on_disconnect=on_disconnect)
