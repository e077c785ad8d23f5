"""Crons: LangGraph's ``/runs/crons`` routes over :mod:`agent_server.crons`, and how a due
cron starts its run.

- A cron keeps the run fields it was created with (its *payload*: ``input``, ``config``,
  ``context``, ``webhook``, stream options...) and its own ``metadata``; each of its runs
  is started from them as a background run (``POST /runs``, or ``/threads/{id}/runs``
  for a thread's cron) with the cron's metadata and ``config.configurable.cron_id``, on
  the shared queue when there is one. A stateless cron's run gets a new thread, deleted
  after the run unless ``on_run_completed`` is ``keep``.
- The scheduler acts as the cron's owner: the run is started with the request scope the
  authentication middleware would have left for that user, so ownership is checked as
  for a run the user started themselves.
- A thread's cron whose thread has been deleted is deleted at its next due time (as
  LangGraph's database deletes it with the thread).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from agent_server.auth import User, user_id
from agent_server.crons import next_run, zone
from agent_server.protocols.langgraph.assistants import resolve_assistant
from agent_server.protocols.langgraph.http import APIError, endpoint, iso, json_response, parse
from agent_server.protocols.langgraph.runs import create_run
from agent_server.protocols.langgraph.schemas import (
    CronCount,
    CronCreate,
    CronPatch,
    CronSearch,
    RunCreate,
)
from agent_server.protocols.langgraph.threads import open_thread
from agent_server.protocols.langgraph.webhooks import check_webhook
from agent_server.runs import Forbidden, RunRejected
from agent_server.state import AppState

logger = logging.getLogger("agent_server.crons")

# A cron's own fields; every other field of its body is a run field (its payload).
SCHEDULE_FIELDS = frozenset({"schedule", "timezone", "end_time", "enabled", "on_run_completed"})


def cron_json(cron: dict[str, Any], select: list[str] | None = None) -> dict[str, Any]:
    found = {
        "cron_id": cron["cron_id"],
        "assistant_id": cron["assistant_id"],
        "thread_id": cron["thread_id"],
        "on_run_completed": cron["on_run_completed"],
        "end_time": iso(cron["end_time"]),
        "schedule": cron["schedule"],
        "timezone": cron["timezone"],
        "created_at": iso(cron["created_at"]),
        "updated_at": iso(cron["updated_at"]),
        "payload": {**cron["payload"], "metadata": cron["metadata"]},
        "user_id": cron["owner"],
        "next_run_date": iso(cron["next_run_at"]) if cron["enabled"] else None,
        "metadata": cron["metadata"],
        "enabled": cron["enabled"],
    }
    return found if not select else {key: found[key] for key in select if key in found}


def epoch(value: datetime | None) -> float | None:
    """An end time as epoch seconds (a naive one is UTC, as LangGraph reads it)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def schedule_of(schedule: str, timezone: str | None, end_time: float | None) -> float | None:
    """The next due time from now; 422 for a bad schedule or timezone."""
    try:
        zone(timezone)
        return next_run(schedule, timezone, end_time, time.time())
    except ValueError as exc:
        raise APIError(422, str(exc), "validation_error") from None


def stored(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` if every database can hold it (PostgreSQL's jsonb refuses NUL)."""
    try:
        encoded = orjson.dumps(payload)
    except TypeError as exc:
        raise APIError(422, f"payload: {exc}", "validation_error") from None
    if b"\\u0000" in encoded:
        raise APIError(422, "text must not contain NUL characters", "validation_error")
    return payload


async def owned(state: AppState, request: Request) -> dict[str, Any]:
    """The cron the path names, if it is the caller's (another user's is not found)."""
    cron_id = request.path_params["cron_id"]
    cron = await state.crons.get(cron_id)
    user = user_id(request.scope)
    if cron is None or (user is not None and cron["owner"] != user):
        raise APIError(404, f"Cron '{cron_id}' not found", "cron_not_found")
    return cron


async def create(request: Request, state: AppState, thread_id: str | None) -> Response:
    body = await parse(request, state, CronCreate)
    user = user_id(request.scope)
    assistant, entry = await resolve_assistant(state, body.assistant_id, user)
    if thread_id is not None:
        await open_thread(state, thread_id, request)  # 404, or 403 for another user's
    if body.webhook is not None:
        await check_webhook(state, body.webhook)
    end_time = epoch(body.end_time)
    next_run_at = schedule_of(body.schedule, body.timezone, end_time)
    cron_id = str(uuid.uuid4())
    payload = body.model_dump(
        mode="json", exclude_unset=True, exclude={*SCHEDULE_FIELDS, "metadata"}
    )
    config = payload.setdefault("config", {})
    config["configurable"] = {**(config.get("configurable") or {}), "cron_id": cron_id}
    payload["assistant_id"] = assistant["assistant_id"]
    now = time.time()
    cron = {
        "cron_id": cron_id,
        "owner": user,
        "assistant_id": assistant["assistant_id"],
        "graph": entry.name,
        "thread_id": thread_id,
        "schedule": body.schedule,
        "timezone": body.timezone,
        "end_time": end_time,
        "payload": stored(payload),
        "metadata": body.metadata or {},
        "enabled": body.enabled,
        "on_run_completed": None if thread_id else body.on_run_completed or "delete",
        "created_at": now,
        "updated_at": now,
        "next_run_at": next_run_at,
    }
    await state.crons.create(cron)
    return json_response(cron_json(cron))


@endpoint
async def create_cron(request: Request, state: AppState) -> Response:
    return await create(request, state, None)


@endpoint
async def create_thread_cron(request: Request, state: AppState) -> Response:
    return await create(request, state, request.path_params["thread_id"])


@endpoint
async def get_cron(request: Request, state: AppState) -> Response:
    return json_response(cron_json(await owned(state, request)))


@endpoint
async def delete_cron(request: Request, state: AppState) -> Response:
    cron = await owned(state, request)
    await state.crons.delete(cron["cron_id"])
    return Response(status_code=204)


@endpoint
async def patch_cron(request: Request, state: AppState) -> Response:
    body = await parse(request, state, CronPatch)
    fields = body.model_fields_set
    if not fields:
        raise APIError(400, "Request body cannot be empty", "validation_error")
    cron = await owned(state, request)
    changes: dict[str, Any] = {"updated_at": time.time()}
    for key in ("schedule", "enabled", "on_run_completed"):
        if getattr(body, key) is not None:
            changes[key] = getattr(body, key)
    if "timezone" in fields:
        changes["timezone"] = body.timezone
    if "end_time" in fields:
        changes["end_time"] = epoch(body.end_time)
    if body.metadata is not None:
        changes["metadata"] = {**cron["metadata"], **body.metadata}
    run_fields = fields - SCHEDULE_FIELDS - {"metadata"}
    if run_fields:
        if body.webhook is not None:
            await check_webhook(state, body.webhook)
        payload = {**cron["payload"], **body.model_dump(mode="json", include=run_fields)}
        RunCreate.model_validate(payload)  # still a run's fields (else 422)
        changes["payload"] = stored(payload)
    updated = {**cron, **changes}
    if {"schedule", "timezone", "end_time"} & changes.keys() or (
        body.enabled and not cron["enabled"]
    ):
        changes["next_run_at"] = schedule_of(
            updated["schedule"], updated["timezone"], updated["end_time"]
        )
    found = await state.crons.update(cron["cron_id"], changes)
    if found is None:  # deleted meanwhile
        raise APIError(404, f"Cron '{cron['cron_id']}' not found", "cron_not_found")
    return json_response(cron_json(found))


async def filters_of(state: AppState, request: Request, body: CronCount) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if body.assistant_id is not None:  # a graph's name stands for its default assistant
        try:
            assistant, _ = await resolve_assistant(state, body.assistant_id, user_id(request.scope))
            filters["assistant_id"] = assistant["assistant_id"]
        except APIError:
            filters["assistant_id"] = body.assistant_id  # matches no cron
    if body.thread_id is not None:
        filters["thread_id"] = body.thread_id
    if body.metadata:
        filters["metadata"] = body.metadata
    return filters


@endpoint
async def search_crons(request: Request, state: AppState) -> Response:
    body = await parse(request, state, CronSearch)
    filters = await filters_of(state, request, body)
    if body.enabled is not None:
        filters["enabled"] = body.enabled
    found = await state.crons.search(
        user_id(request.scope),
        filters,
        limit=body.limit,
        offset=body.offset,
        sort_by=body.sort_by or "created_at",
        sort_order=body.sort_order or "desc",
    )
    return json_response([cron_json(cron, list(body.select or ())) for cron in found])


@endpoint
async def count_crons(request: Request, state: AppState) -> Response:
    body = await parse(request, state, CronCount)
    filters = await filters_of(state, request, body)
    return json_response(len(await state.crons.search(user_id(request.scope), filters)))


def as_user(owner: str | None) -> Request:
    """A request scope as the authentication middleware leaves it for ``owner``."""
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/", "headers": []}
    if owner is not None:
        scope["user"] = User(owner)
    return Request(scope)


async def fire(state: AppState, cron: dict[str, Any]) -> None:
    """Start the run of a cron whose due time this worker has claimed."""
    body = RunCreate.model_validate({**cron["payload"], "metadata": cron["metadata"]})
    if cron["thread_id"] is None:
        body.on_completion = cron["on_run_completed"] or "delete"
    try:
        run = await create_run(
            as_user(cron["owner"]), state, body, cron["thread_id"], background=True
        )
    except APIError as exc:
        if exc.code == "thread_not_found":
            await state.crons.delete(cron["cron_id"])
            logger.warning("cron %s deleted: its thread is gone", cron["cron_id"])
        else:
            logger.warning("cron %s: its run was refused (%s)", cron["cron_id"], exc.detail)
        return
    except (RunRejected, Forbidden) as exc:
        logger.warning("cron %s: its run was refused (%s)", cron["cron_id"], exc)
        return
    logger.info("cron %s started run %s", cron["cron_id"], run.run_id)
