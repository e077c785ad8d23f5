"""Threads, their state and history: checkpoints read through the thread's graph, plus
the records of :mod:`agent_server.threads`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import StateSnapshot
from starlette.requests import Request
from starlette.responses import Response

from agent_server.auth import user_id
from agent_server.graphs import GraphEntry
from agent_server.protocols.langgraph.http import (
    APIError,
    endpoint,
    iso,
    json_response,
    parse,
    thread_config,
    truthy,
)
from agent_server.protocols.langgraph.schemas import (
    HistoryQuery,
    StateAt,
    StateUpdate,
    ThreadCreate,
    ThreadSearch,
    ThreadTTL,
    ThreadUpdate,
)
from agent_server.runs import FINISHED, Forbidden
from agent_server.state import AppState


async def checkpointed(state: AppState, thread_id: str) -> Any:
    """The thread's latest checkpoint tuple, if it has any."""
    checkpointer = state.checkpointer
    if not isinstance(checkpointer, BaseCheckpointSaver):
        return None
    return await checkpointer.aget_tuple(thread_config(thread_id))


async def open_thread(state: AppState, thread_id: str, request: Request) -> dict[str, Any]:
    """The thread's record, made up from its checkpoints for a thread started by a
    native route; 404 if it does not exist, 403 if it is another user's."""
    user = user_id(request.scope)
    record = await state.threads.get(thread_id)
    if record is None:
        found = await checkpointed(state, thread_id)
        if found is None and not state.runs.thread_runs(thread_id):
            raise APIError(404, f"Thread with ID {thread_id} not found", "thread_not_found")
        metadata = dict(found.metadata) if found is not None else {}
        created = (
            datetime.fromisoformat(found.checkpoint["ts"]).timestamp()
            if found is not None
            else state.runs.thread_runs(thread_id)[0].created_at
        )
        record = {
            "thread_id": thread_id,
            "owner": metadata.get("owner"),
            "metadata": {k: v for k, v in metadata.items() if k in ("graph_id", "assistant_id")},
            "graph": metadata.get("graph_id"),
            "created_at": created,
            "updated_at": created,
        }
        latest = state.runs.latest_on_thread(thread_id)
        if record["graph"] is None and latest is not None:
            record["graph"] = latest.graph.name
    owner = record["owner"]
    if owner is not None and owner != user:
        raise Forbidden(f"thread {thread_id!r} belongs to another user")
    await state.runs.load_thread_owner(thread_id, thread_graph(state, record))
    state.runs.check_thread(thread_id, user)
    return record


def thread_graph(state: AppState, record: dict[str, Any]) -> GraphEntry | None:
    name = record.get("graph") or record["metadata"].get("graph_id")
    if name in state.graphs.graphs:
        return state.graphs.get(name)
    names = state.graphs.names()
    return state.graphs.get(names[0]) if len(names) == 1 else None


def interrupt_json(item: Any) -> dict[str, Any]:
    return {"value": getattr(item, "value", item), "id": getattr(item, "id", None)}


def checkpoint_json(config: RunnableConfig | None) -> dict[str, Any] | None:
    if not config:
        return None
    configurable = config.get("configurable") or {}
    return {
        "thread_id": configurable.get("thread_id"),
        "checkpoint_ns": configurable.get("checkpoint_ns", ""),
        "checkpoint_id": configurable.get("checkpoint_id"),
        "checkpoint_map": configurable.get("checkpoint_map"),
    }


def snapshot_json(snapshot: StateSnapshot) -> dict[str, Any]:
    return {
        "values": snapshot.values,
        "next": list(snapshot.next),
        "tasks": [
            {
                "id": task.id,
                "name": task.name,
                "path": list(task.path),
                "error": None if task.error is None else repr(task.error),
                "interrupts": [interrupt_json(i) for i in task.interrupts],
                "checkpoint": checkpoint_json(task.state) if isinstance(task.state, dict) else None,
                "state": snapshot_json(task.state)
                if isinstance(task.state, StateSnapshot)
                else None,
                "result": task.result,
            }
            for task in snapshot.tasks
        ],
        "checkpoint": checkpoint_json(snapshot.config),
        "metadata": snapshot.metadata,
        "created_at": snapshot.created_at,
        "parent_checkpoint": checkpoint_json(snapshot.parent_config),
        "interrupts": [interrupt_json(i) for i in snapshot.interrupts],
        "checkpoint_id": (checkpoint_json(snapshot.config) or {}).get("checkpoint_id"),
        "parent_checkpoint_id": (checkpoint_json(snapshot.parent_config) or {}).get(
            "checkpoint_id"
        ),
    }


async def thread_json(state: AppState, record: dict[str, Any]) -> dict[str, Any]:
    """A thread as LangGraph returns it: status and values read now."""
    thread_id = record["thread_id"]
    values: Any = None
    interrupts: dict[str, list[dict[str, Any]]] = {}
    has_next = False
    entry = thread_graph(state, record)
    if entry is not None:
        snapshot = await entry.graph.aget_state(thread_config(thread_id))
        if snapshot.created_at is not None:
            values = snapshot.values
            has_next = bool(snapshot.next)
            for task in snapshot.tasks:
                if task.interrupts:
                    interrupts[task.id] = [interrupt_json(i) for i in task.interrupts]
    runs = await state.runs.all_thread_runs(thread_id)
    latest = runs[-1] if runs else None
    if latest is not None and latest["status"] not in FINISHED:
        status = "busy"
    elif interrupts or has_next:  # an interrupt, interrupt_before/after, or a cancel
        status = "interrupted"
    elif latest is not None and latest["status"] in ("error", "timeout"):
        status = "error"
    else:
        status = "idle"
    return {
        "thread_id": thread_id,
        "created_at": iso(record["created_at"]),
        "updated_at": iso(record["updated_at"]),
        "state_updated_at": iso(record["updated_at"]),
        "metadata": record["metadata"],
        "status": status,
        "values": values,
        "interrupts": interrupts,
        "config": {},
        "error": None,
    }


@endpoint
async def create_thread(request: Request, state: AppState) -> Response:
    body = await parse(request, state, ThreadCreate)
    thread_id = body.thread_id or str(uuid.uuid4())
    user = user_id(request.scope)
    if body.thread_id is not None and (
        await checkpointed(state, thread_id) is not None or state.runs.thread_runs(thread_id)
    ):
        record: dict[str, Any] | None = None  # exists already, without a record
    else:
        record = await state.threads.create(thread_id, user, body.metadata or {}, None)
    if record is None:
        if body.if_exists == "raise":
            raise APIError(409, f"Thread with ID {thread_id} already exists", "thread_exists")
        record = await open_thread(state, thread_id, request)
    else:
        await set_ttl(state, thread_id, body.ttl)
    return json_response(await thread_json(state, record))


async def set_ttl(state: AppState, thread_id: str, ttl: ThreadTTL | None) -> None:
    """The thread's expiry (agent_server.thread_ttl): ``ttl``, or the default on creation."""
    default = state.settings.thread_ttl_minutes
    if ttl is not None:
        await state.thread_ttl.set(thread_id, ttl.ttl, ttl.strategy)
    elif default is not None:
        await state.thread_ttl.set(thread_id, default, "delete")


@endpoint
async def get_thread(request: Request, state: AppState) -> Response:
    record = await open_thread(state, request.path_params["thread_id"], request)
    return json_response(await thread_json(state, record))


@endpoint
async def patch_thread(request: Request, state: AppState) -> Response:
    thread_id = request.path_params["thread_id"]
    body = await parse(request, state, ThreadUpdate)
    record = await open_thread(state, thread_id, request)
    if await state.threads.get(thread_id) is None:
        await state.threads.create(thread_id, record["owner"], record["metadata"], record["graph"])
    await state.threads.touch(thread_id, metadata=body.metadata or {})
    if body.ttl is not None:
        await state.thread_ttl.set(thread_id, body.ttl.ttl, body.ttl.strategy)
    return json_response(await thread_json(state, await open_thread(state, thread_id, request)))


@endpoint
async def search_threads(request: Request, state: AppState) -> Response:
    query = await parse(request, state, ThreadSearch)
    records = await state.threads.search(
        user_id(request.scope),
        metadata=query.metadata or {},
        ids=query.ids,
        limit=query.limit if query.status is None and query.values is None else 100_000,
        offset=query.offset if query.status is None and query.values is None else 0,
        sort_by=query.sort_by,
        sort_order=query.sort_order,
    )
    threads = [await thread_json(state, record) for record in records]
    if query.status is not None or query.values is not None:
        wanted = query.values or {}
        threads = [
            t
            for t in threads
            if (query.status is None or t["status"] == query.status)
            and all(
                isinstance(t["values"], dict) and t["values"].get(k) == v for k, v in wanted.items()
            )
        ][query.offset : query.offset + query.limit]
    return json_response(threads)


@endpoint
async def delete_thread(request: Request, state: AppState) -> Response:
    thread_id = request.path_params["thread_id"]
    await open_thread(state, thread_id, request)
    for run in state.runs.thread_runs(thread_id):
        run.cancel("cancelled", "its thread was deleted")
    await state.checkpointer.adelete_thread(thread_id)
    await state.threads.delete(thread_id)
    await state.thread_ttl.clear(thread_id)
    return Response(status_code=204)


EMPTY_STATE: dict[str, Any] = {
    "values": {},
    "next": [],
    "tasks": [],
    "metadata": None,
    "created_at": None,
    "checkpoint": None,
    "parent_checkpoint": None,
    "interrupts": [],
    "checkpoint_id": None,
    "parent_checkpoint_id": None,
}


async def thread_state_graph(
    state: AppState, thread_id: str, request: Request
) -> GraphEntry | None:
    """The graph whose state the thread holds; None before its first run."""
    return thread_graph(state, await open_thread(state, thread_id, request))


async def state_at(
    state: AppState, request: Request, configurable: dict[str, Any], subgraphs: bool
) -> Response:
    """The thread's state at a checkpoint (the latest without one)."""
    thread_id = request.path_params["thread_id"]
    entry = await thread_state_graph(state, thread_id, request)
    if entry is None:
        return json_response(EMPTY_STATE)
    configurable = {k: v for k, v in configurable.items() if k != "thread_id"}
    snapshot = await entry.graph.aget_state(
        thread_config(thread_id, **configurable), subgraphs=subgraphs
    )
    return json_response(snapshot_json(snapshot))


@endpoint
async def get_state(request: Request, state: AppState) -> Response:
    checkpoint_id = request.path_params.get("checkpoint_id")
    configurable = {"checkpoint_id": checkpoint_id} if checkpoint_id else {}
    return await state_at(state, request, configurable, truthy(request, "subgraphs"))


@endpoint
async def post_state_checkpoint(request: Request, state: AppState) -> Response:
    body = await parse(request, state, StateAt)
    return await state_at(state, request, body.checkpoint, body.subgraphs)


@endpoint
async def update_state(request: Request, state: AppState) -> Response:
    thread_id = request.path_params["thread_id"]
    body = await parse(request, state, StateUpdate)
    record = await open_thread(state, thread_id, request)
    entry = thread_graph(state, record)
    if entry is None:
        raise APIError(
            400,
            f"Thread '{thread_id}' has no assigned graph ID: start a run on it first",
            "thread_has_no_graph",
        )
    busy = [r.run_id for r in state.runs.thread_runs(thread_id) if not r.finished]
    if busy:
        raise APIError(409, f"Thread {thread_id} has in-flight runs: {busy}", "thread_busy")
    configurable: dict[str, Any] = dict(body.checkpoint or {})
    configurable.pop("thread_id", None)
    if body.checkpoint_id:
        configurable["checkpoint_id"] = body.checkpoint_id
    config = thread_config(thread_id, **configurable)
    user = user_id(request.scope)
    if user is not None:
        config["metadata"] = {"owner": user}
    try:
        updated = await entry.graph.aupdate_state(config, body.values, as_node=body.as_node)
    except Exception as exc:  # an unknown node, values the state refuses...
        raise APIError(400, str(exc) or type(exc).__name__, "invalid_update") from None
    await state.threads.touch(thread_id)
    checkpoint = checkpoint_json(updated)
    return json_response(
        {
            "checkpoint": checkpoint,
            "configurable": checkpoint,
            "checkpoint_id": (checkpoint or {}).get("checkpoint_id"),
        }
    )


async def history(
    state: AppState, thread_id: str, request: Request, query: HistoryQuery
) -> Response:
    entry = await thread_state_graph(state, thread_id, request)
    if entry is None:
        return json_response([])
    configurable = {k: v for k, v in (query.checkpoint or {}).items() if k != "thread_id"}
    before: RunnableConfig | None = None
    if isinstance(query.before, str):  # a checkpoint id, a checkpoint or a config: all work
        before = thread_config(thread_id, checkpoint_id=query.before)
    elif query.before:
        fields = query.before.get("configurable", query.before)
        before = {"configurable": {"checkpoint_ns": "", **fields, "thread_id": thread_id}}
    found = [
        snapshot_json(snapshot)
        async for snapshot in entry.graph.aget_state_history(
            thread_config(thread_id, **configurable),
            limit=query.limit,
            before=before,
            filter=query.metadata,
        )
    ]
    return json_response(found)


@endpoint
async def post_history(request: Request, state: AppState) -> Response:
    query = await parse(request, state, HistoryQuery)
    return await history(state, request.path_params["thread_id"], request, query)


@endpoint
async def get_history(request: Request, state: AppState) -> Response:
    params = request.query_params
    query = HistoryQuery.model_validate({k: params[k] for k in ("limit", "before") if k in params})
    return await history(state, request.path_params["thread_id"], request, query)


# -- runs ----------------------------------------------------------------------------
