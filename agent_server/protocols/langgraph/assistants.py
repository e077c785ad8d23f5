"""Assistants: every registered graph is one, as LangGraph's server makes a default
assistant per graph (same ids, so a client's stored assistant id keeps working); more
are created, versioned and deleted over the records of :mod:`agent_server.assistants`.
A run of an assistant uses its current version's graph, config and context."""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agent_server.auth import user_id
from agent_server.cursors import BadCursor, parse_seq
from agent_server.graphs import GraphEntry
from agent_server.protocols.langgraph.http import (
    APIError,
    endpoint,
    iso,
    json_response,
    parse,
    truthy,
)
from agent_server.protocols.langgraph.schemas import (
    AssistantCount,
    AssistantCreate,
    AssistantLatest,
    AssistantPatch,
    AssistantSearch,
    AssistantVersions,
)
from agent_server.runs import Forbidden
from agent_server.state import AppState

NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")  # LangGraph's


def assistant_id_of(graph: str) -> str:
    return str(uuid.uuid5(NAMESPACE_GRAPH, graph))


async def ensure_default_assistants(state: AppState) -> None:
    """Each registered graph's default assistant, created unless it exists."""
    for entry in state.graphs:
        await state.assistants.create(
            {
                "assistant_id": assistant_id_of(entry.name),
                "graph_id": entry.name,
                "config": {},
                "context": {},
                "metadata": {"created_by": "system"},
                "name": entry.name,
                "description": entry.description or None,
                "owner": None,
            }
        )


def assistant_json(record: dict[str, Any]) -> dict[str, Any]:
    found = {k: v for k, v in record.items() if k != "owner"}
    found["created_at"] = iso(record.get("created_at"))
    if "updated_at" in record:
        found["updated_at"] = iso(record["updated_at"])
    return found


def visible(record: dict[str, Any], user: str | None) -> bool:
    return user is None or record.get("owner") in (None, user)


async def find_assistant(state: AppState, assistant_id: str, user: str | None) -> dict[str, Any]:
    """The assistant (by id, or by graph name for its default one) if the caller sees it
    and its graph is registered; 404 otherwise."""
    if assistant_id in state.graphs.graphs:
        assistant_id = assistant_id_of(assistant_id)
    record = await state.assistants.get(assistant_id)
    if record is None or not visible(record, user) or record["graph_id"] not in state.graphs:
        raise APIError(404, f"Assistant '{assistant_id}' not found", "assistant_not_found")
    return record


async def resolve_assistant(
    state: AppState, assistant_id: str, user: str | None
) -> tuple[dict[str, Any], GraphEntry]:
    """The assistant a run names, and its current version's graph."""
    record = await find_assistant(state, assistant_id, user)
    return record, state.graphs.get(record["graph_id"])


async def changeable(state: AppState, request: Request) -> dict[str, Any]:
    """The assistant a request changes: the caller's own (see agent_server.assistants)."""
    user = user_id(request.scope)
    record = await find_assistant(state, request.path_params["id"], user)
    if user is not None and record.get("owner") is None:
        raise Forbidden("the default assistants are shared: they cannot be changed with auth on")
    return record


def is_default(record: dict[str, Any]) -> bool:
    """A registered graph's own assistant (its id is the graph's ``uuid5``)."""
    return bool(record["assistant_id"] == assistant_id_of(record["graph_id"]))


def known_graph(state: AppState, graph_id: str | None) -> None:
    if graph_id is not None and graph_id not in state.graphs:
        raise APIError(404, f"Graph '{graph_id}' not found", "graph_not_found")


def _with_context(config: dict[str, Any], context: dict[str, Any] | None) -> dict[str, Any]:
    """LangGraph's rule: an assistant's ``context`` and ``config.configurable`` are one."""
    if config.get("configurable") and context:
        raise APIError(400, "Cannot specify both configurable and context", "invalid_assistant")
    return context if context else dict(config.get("configurable") or {})


async def matching(
    state: AppState, request: Request, query: AssistantCount
) -> list[dict[str, Any]]:
    known_graph(state, query.graph_id)
    user = user_id(request.scope)
    found = [
        r
        for r in await state.assistants.all()
        if r["graph_id"] in state.graphs
        and visible(r, user)
        and (query.graph_id is None or r["graph_id"] == query.graph_id)
        and (query.name is None or query.name.lower() in (r.get("name") or "").lower())
        and all(r["metadata"].get(k) == v for k, v in (query.metadata or {}).items())
    ]
    return found


@endpoint
async def search_assistants(request: Request, state: AppState) -> Response:
    query = await parse(request, state, AssistantSearch)
    found = await matching(state, request, AssistantCount.model_validate(query.model_dump()))
    sort_by = query.sort_by or "created_at"
    found.sort(
        key=lambda a: (
            (str(a.get(sort_by) or "").lower(), a["created_at"])
            if sort_by in ("name", "graph_id", "assistant_id")
            else (a.get(sort_by) or 0, a["assistant_id"])
        ),
        reverse=query.sort_order != "asc",
    )
    page = found[query.offset : query.offset + query.limit]
    headers = {}
    if len(found) > query.offset + query.limit:
        headers["X-Pagination-Next"] = str(query.offset + query.limit)
    return json_response([assistant_json(a) for a in page], 200, **headers)


@endpoint
async def count_assistants(request: Request, state: AppState) -> Response:
    query = await parse(request, state, AssistantCount)
    return json_response(len(await matching(state, request, query)))


@endpoint
async def get_assistant(request: Request, state: AppState) -> Response:
    user = user_id(request.scope)
    return json_response(
        assistant_json(await find_assistant(state, request.path_params["id"], user))
    )


@endpoint
async def create_assistant(request: Request, state: AppState) -> Response:
    body = await parse(request, state, AssistantCreate)
    known_graph(state, body.graph_id)
    config = dict(body.config or {})
    context = _with_context(config, body.context)
    if context:
        config["configurable"] = context
    assistant_id = body.assistant_id or str(uuid.uuid4())
    user = user_id(request.scope)
    record = await state.assistants.create(
        {
            "assistant_id": assistant_id,
            "graph_id": body.graph_id,
            "config": config,
            "context": context,
            "metadata": body.metadata or {},
            "name": body.name or "Untitled",
            "description": body.description,
            "owner": user,
        }
    )
    if record is None:
        existing = await state.assistants.get(assistant_id)
        if body.if_exists == "raise" or existing is None or not visible(existing, user):
            raise APIError(409, f"Assistant {assistant_id} already exists", "assistant_exists")
        record = existing
    return json_response(assistant_json(record))


@endpoint
async def patch_assistant(request: Request, state: AppState) -> Response:
    """A new version: the fields given replace the current ones; metadata is merged."""
    body = await parse(request, state, AssistantPatch)
    record = await changeable(state, request)
    known_graph(state, body.graph_id)
    if is_default(record) and body.graph_id not in (None, record["graph_id"]):
        raise APIError(409, "a graph's default assistant stays on its graph", "assistant_default")
    config = dict(body.config) if body.config else dict(record["config"])
    context = (
        _with_context(body.config or {}, body.context) if body.config or body.context else None
    )
    if context is not None:
        config["configurable"] = context
    fields = {
        "graph_id": body.graph_id or record["graph_id"],
        "config": config,
        "context": context if context is not None else record.get("context") or {},
        "metadata": {**record["metadata"], **(body.metadata or {})},
        "name": body.name if body.name is not None else record.get("name"),
        "description": body.description
        if body.description is not None
        else record.get("description"),
    }
    return json_response(
        assistant_json(await state.assistants.add_version(record["assistant_id"], fields))
    )


@endpoint
async def delete_assistant(request: Request, state: AppState) -> Response:
    record = await changeable(state, request)
    assistant_id = record["assistant_id"]
    if is_default(record):  # the graphs registered at start-up stay assistants
        raise APIError(409, "a graph's default assistant cannot be deleted", "assistant_default")
    if truthy(request, "delete_threads"):
        from agent_server.protocols.langgraph.housekeeping import delete_thread_data

        for thread in await state.threads.search(
            user_id(request.scope),
            metadata={"assistant_id": assistant_id},
            ids=None,
            limit=100_000,
            offset=0,
            sort_by="created_at",
            sort_order="asc",
        ):
            await delete_thread_data(state, thread["thread_id"])
    await state.assistants.delete(assistant_id)
    return Response(status_code=204)


@endpoint
async def get_assistant_versions(request: Request, state: AppState) -> Response:
    body = await parse(request, state, AssistantVersions)
    record = await find_assistant(state, request.path_params["id"], user_id(request.scope))
    versions = [
        {**v, "created_at": iso(v["created_at"])}
        for v in await state.assistants.versions(record["assistant_id"])
        if all(v["metadata"].get(k) == val for k, val in (body.metadata or {}).items())
    ]
    return json_response(versions[body.offset : body.offset + body.limit])


@endpoint
async def set_latest_version(request: Request, state: AppState) -> Response:
    body = await parse(request, state, AssistantLatest)
    record = await changeable(state, request)
    found = await state.assistants.set_latest(record["assistant_id"], body.version)
    if found is None:
        raise APIError(
            404,
            f"Version {body.version} not found for assistant {record['assistant_id']}",
            "version_not_found",
        )
    return json_response(assistant_json(found))


@endpoint
async def get_assistant_graph(request: Request, state: AppState) -> Response:
    _, entry = await resolve_assistant(state, request.path_params["id"], user_id(request.scope))
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
    _, entry = await resolve_assistant(state, request.path_params["id"], user_id(request.scope))
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
