"""Assemble the Starlette app: settings in, lifespan-owned state, routes, JSON errors."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, WebSocketRoute

from agent_server.assistants import open_assistant_records
from agent_server.auth import AuthMiddleware, load_verifier
from agent_server.brokers import BrokerUnavailable, open_broker
from agent_server.chat_model import load_chat_model
from agent_server.checkpoints import open_storage
from agent_server.connections import ConnectionManager
from agent_server.crons import open_cron_records, schedule
from agent_server.fanout import Hubs
from agent_server.graphs import UnknownGraphError, load_graphs
from agent_server.heartbeats import Heartbeats
from agent_server.mcp import connect_servers
from agent_server.mcp import server as mcp_server
from agent_server.metrics import Metrics
from agent_server.protocols import agui, aisdk
from agent_server.protocols.langgraph.assistants import ensure_default_assistants
from agent_server.protocols.langgraph.crons import fire
from agent_server.protocols.langgraph.housekeeping import start_sweepers
from agent_server.protocols.langgraph.routes import langgraph_routes
from agent_server.protocols.langgraph.webhooks import notify
from agent_server.routes import rejected, routes
from agent_server.runs import Forbidden, RunLimits, RunManager, RunRejected
from agent_server.schemas import RequestError, error_response, validation_error_response
from agent_server.settings import Settings
from agent_server.sql import open_database
from agent_server.state import AppState
from agent_server.stores import open_store
from agent_server.streams import Streams
from agent_server.supervise import Supervisor
from agent_server.thread_ttl import open_thread_expiries
from agent_server.threads import open_thread_records
from agent_server.tools import ToolRegistry
from agent_server.webhooks import Webhooks
from agent_server.ws import fan_out, fan_out_remote, websocket_endpoint

logger = logging.getLogger("agent_server")


@asynccontextmanager
async def open_state(
    settings: Settings, *, tools: ToolRegistry | None = None
) -> AsyncIterator[AppState]:
    """Everything a server (or an in-process run) needs, closed again on exit."""
    async with AsyncExitStack() as stack:
        checkpointer, records = await open_storage(settings, stack)
        store = await open_store(settings, checkpointer, stack)
        if tools is None:
            tools = ToolRegistry.from_sources(
                settings.tools_dir, entry_point_group=settings.tools_entry_point_group
            )
        # MCP servers' tools join the registry before graphs are built; the sessions
        # close after the runs have drained (the stack unwinds last).
        await stack.enter_async_context(connect_servers(settings, tools))
        api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        model = load_chat_model(settings.model, api_key=api_key, base_url=settings.openai_base_url)
        graphs = await load_graphs(
            settings.graphs,
            base_dir=Path.cwd(),
            tools=tools,
            model=model,
            settings=settings,
            checkpointer=checkpointer,
            store=store,
        )
        broker = open_broker(settings.broker_url, prefix=settings.broker_prefix)
        stack.push_async_callback(broker.close)
        # Closed after the runs have drained: their webhooks get a few seconds to go.
        webhooks = Webhooks.from_settings(settings)
        stack.push_async_callback(webhooks.close)
        runs = RunManager(
            RunLimits(
                max_concurrent=settings.max_concurrent_runs,
                max_queued=settings.max_queued_runs,
                timeout=settings.run_timeout,
                retention_seconds=settings.retention_seconds,
                retention_runs=settings.retention_runs,
                retention_bytes=settings.retention_bytes,
                broker_wait=settings.broker_wait,
            ),
            broker,
            records,
            event_source=settings.event_source,
        )
        runs.graphs = graphs
        streams = Streams(
            ping_interval=settings.ping_interval,
            flush_interval=settings.flush_interval,
            flush_interval_max=settings.flush_interval_max,
            max_lag=settings.subscriber_max_lag,
            send_timeout=settings.send_timeout,
            retry_ms=settings.sse_retry_ms,
        )
        connections = ConnectionManager(
            broker,
            runs.worker,
            hubs=Hubs(streams),
            heartbeats=Heartbeats(settings.ws_ping_interval, settings.ws_idle_timeout),
            presence_members_max=settings.presence_members_max,
        )
        sessions: dict[str, Any] = {}
        runs.on_submit.append(fan_out(connections, sessions))
        runs.on_remote_submit.append(fan_out_remote(runs, connections, sessions))
        supervisor = Supervisor()
        supervisor.start("janitor", runs.janitor)
        if broker.shared:
            # The heartbeat retries fastest: peers judge this worker by it.
            supervisor.start("heartbeat", runs.keep_alive, cap=1.0)
            supervisor.start("cancels", runs.listen_for_cancels)
            supervisor.start("announcements", runs.listen_for_announcements)
            supervisor.start("queue", runs.pull_jobs)
            supervisor.start("presence", connections.relay_presence)
            supervisor.start("rooms", connections.keep_rooms)
        try:
            state = AppState(
                settings=settings,
                tools=tools,
                graphs=graphs,
                runs=runs,
                checkpointer=checkpointer,
                model=model,
                streams=streams,
                metrics=Metrics(runs, streams, supervisor),
                connections=connections,
                sessions=sessions,
                supervisor=supervisor,
                threads=await open_thread_records(checkpointer),
                store=store,
                assistants=await open_assistant_records(open_database(checkpointer)),
                thread_ttl=await open_thread_expiries(open_database(checkpointer)),
                crons=await open_cron_records(checkpointer),
                webhooks=webhooks,
            )
            runs.on_finish.append(notify(state))
            cron_job = functools.partial(
                schedule, state.crons, functools.partial(fire, state), settings.cron_interval
            )
            supervisor.start("crons", cron_job)
            await ensure_default_assistants(state)
            start_sweepers(state)
            yield state
        finally:
            await supervisor.close()
            await runs.drain(settings.shutdown_grace)
            if connections.heartbeats is not None:
                await connections.heartbeats.stop()
            await connections.close()


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return exc.response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return validation_error_response(exc)


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Forbidden)
    return error_response(403, "forbidden", exc.message)


async def _broker_unavailable(request: Request, exc: Exception) -> Response:
    response = error_response(503, "broker_unavailable", str(exc))
    response.headers["Retry-After"] = "2"
    return response


async def _unknown_graph(request: Request, exc: Exception) -> Response:
    return error_response(404, "graph_not_found", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


# agent-server's errors as JSON responses; a host app that starts runs from its own
# routes registers them too (docs/embedding.md).
error_handlers: dict[Any, Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    RequestError: _request_error,
    RunRejected: rejected,
    Forbidden: _forbidden,
    ValidationError: _validation_error,
    UnknownGraphError: _unknown_graph,
    BrokerUnavailable: _broker_unavailable,
}


def create_app(settings: Settings | None = None, *, tools: ToolRegistry | None = None) -> Starlette:
    """The ASGI app. ``tools`` lets an embedding program share its own tool registry."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_state(settings, tools=tools) as state, mcp_server.serve_mcp(app, state):
            app.state.agent_server = state
            for error in [*state.tools.errors, *state.graphs.errors]:
                logger.warning("plugin skipped: %s: %s", error.source, error.error)
            logger.info(
                "agent-server ready: graphs %s, %d tools, model %s",
                ", ".join(state.graphs.names()) or "(none)",
                len(state.tools),
                settings.model,
            )
            yield

    return Starlette(
        routes=[
            *routes(),
            *agui.routes(),
            *aisdk.routes(),
            WebSocketRoute("/ws", websocket_endpoint),
            *mcp_server.routes(),
            Mount(settings.langgraph_api_prefix, routes=langgraph_routes()),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "Last-Event-ID",
                    "X-Api-Key",
                    "Mcp-Session-Id",  # /mcp (docs/mcp.md)
                    "Mcp-Protocol-Version",
                ],
                expose_headers=[
                    "X-Run-Id",
                    "X-Thread-Id",
                    "Location",
                    "Content-Location",
                    "Retry-After",
                    "Mcp-Session-Id",
                ],
                allow_credentials="*" not in settings.cors_origins,
            ),
            Middleware(AuthMiddleware, verifier=load_verifier(settings)),
        ],
        lifespan=lifespan,
        exception_handlers={
            **error_handlers,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
