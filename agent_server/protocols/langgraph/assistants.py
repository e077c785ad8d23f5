"""Assistants: every registered graph is one, as LangGraph's server makes a default
assistant per graph (same ids, so a client's stored assistant id keeps working)."""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agent_server.cursors import BadCursor, parse_seq
from agent_server.graphs import GraphEntry
from agent_server.protocols.langgraph.http import APIError, endpoint, iso, json_response, parse
from agent_server.protocols.langgraph.schemas import AssistantSearch
from agent_server.state import AppState

NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")  # LangGraph's


def assistant_id_of(graph: str) -> str:
    return str(uuid.uuid5(NAMESPACE_GRAPH, graph))


def graph_of(state: AppState, assistant_id: str) -> GraphEntry:
    """An assistant is a registered graph, named by the graph or by its assistant id."""
    graphs = state.graphs
    if assistant_id in graphs.graphs:
        return graphs.get(assistant_id)
    for name in graphs.names():
        if assistant_id_of(name) == assistant_id:
            return graphs.get(name)
    raise APIError(404, f"Assistant '{assistant_id}' not found", "assistant_not_found")


def assistant_json(state: AppState, entry: GraphEntry) -> dict[str, Any]:
    started = iso(state.started_at)
    return {
        "assistant_id": assistant_id_of(entry.name),
        "graph_id": entry.name,
        "config": {},
        "context": {},
        "metadata": {"created_by": "system"},
        "name": entry.name,
        "description": entry.description or None,
        "version": 1,
        "created_at": started,
        "updated_at": started,
    }


@endpoint
async def search_assistants(request: Request, state: AppState) -> Response:
    query = await parse(request, state, AssistantSearch)
    found = [assistant_json(state, state.graphs.get(name)) for name in state.graphs.names()]
    if query.graph_id is not None:
        found = [a for a in found if a["graph_id"] == query.graph_id]
    if query.name is not None:
        found = [a for a in found if query.name.lower() in a["name"].lower()]
    if query.metadata:
        found = [
            a for a in found if all(a["metadata"].get(k) == v for k, v in query.metadata.items())
        ]
    if query.sort_by is not None:
        found.sort(key=lambda a: a[query.sort_by or ""], reverse=query.sort_order == "desc")
    return json_response(found[query.offset : query.offset + query.limit])


@endpoint
async def get_assistant(request: Request, state: AppState) -> Response:
    return json_response(assistant_json(state, graph_of(state, request.path_params["id"])))


@endpoint
async def get_assistant_graph(request: Request, state: AppState) -> Response:
    entry = graph_of(state, request.path_params["id"])
    xray: bool | int = False
    raw = request.query_params.get("xray", "false").lower()
    if raw in ("true", "1"):
        xray = True
    else:
        with contextlib.suppress(BadCursor):
            xray = parse_seq(raw, "xray")
    drawable = await entry.graph.aget_graph(xray=xray)
    return json_response(drawable.to_json())


@endpoint
async def get_assistant_schemas(request: Request, state: AppState) -> Response:
    entry = graph_of(state, request.path_params["id"])
    graph = entry.graph

    def schema(read: Callable[[], Any]) -> Any:
        try:
            with warnings.catch_warnings():  # config schemas are deprecated, still asked for
                warnings.simplefilter("ignore")
                return read()
        except Exception:  # a graph whose schema cannot be described
            return None

    return json_response(
        {
            "graph_id": entry.name,
            "input_schema": schema(graph.get_input_jsonschema),
            "output_schema": schema(graph.get_output_jsonschema),
            "state_schema": schema(lambda: graph.get_output_jsonschema()),
            "config_schema": schema(graph.get_config_jsonschema),
            "context_schema": schema(graph.get_context_jsonschema),
        }
    )


# -- threads -------------------------------------------------------------------------
