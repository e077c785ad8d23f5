"""Copying, pruning and expiring threads (``POST /threads/{id}/copy``, ``POST
/threads/prune``, thread TTLs), and the lifespan's sweepers of expired threads and store
items.

Decisions:

- A copy is independent: every checkpoint of every namespace, with its pending writes,
  is written again under the new thread id through the saver's public ``aput`` /
  ``aput_writes`` (the savers have no copy of their own), oldest first, so the copy has
  the same state *and* history, and ids. Its record copies the metadata; the copy
  belongs to the caller.
- ``keep_latest`` keeps the newest checkpoint of each namespace (with its pending
  writes, so an interrupted thread can still be resumed): the saver's own ``aprune``
  where it has one (PostgreSQL), else read, delete the thread, write back. A thread with
  a run in progress is skipped, not pruned under it.
- ``prune`` skips ids that do not exist or are another user's (LangGraph's counts only
  what it pruned); ``pruned_count`` says how many were.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from starlette.requests import Request
from starlette.responses import Response

from agent_server.auth import user_id
from agent_server.protocols.langgraph.http import APIError, endpoint, json_response, parse
from agent_server.protocols.langgraph.schemas import ThreadPrune
from agent_server.protocols.langgraph.threads import open_thread, thread_json
from agent_server.runs import Forbidden
from agent_server.state import AppState
from agent_server.thread_ttl import sweep_threads

logger = logging.getLogger("agent_server.housekeeping")


def _all_namespaces(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def _write_config(thread_id: str, found: CheckpointTuple) -> RunnableConfig:
    configurable = found.config["configurable"]
    parent = (found.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": configurable.get("checkpoint_ns", ""),
            **({"checkpoint_id": parent} if parent else {}),
        }
    }


async def _write(saver: BaseCheckpointSaver[Any], thread_id: str, found: CheckpointTuple) -> None:
    """Write ``found`` (a checkpoint of another thread, or of this one) to ``thread_id``."""
    metadata = dict(found.metadata)
    if "thread_id" in metadata:
        metadata["thread_id"] = thread_id
    checkpoint = found.checkpoint
    written = await saver.aput(
        _write_config(thread_id, found),
        checkpoint,
        metadata,  # type: ignore[arg-type]
        dict(checkpoint["channel_versions"]),
    )
    by_task: dict[str, list[tuple[str, Any]]] = {}
    for task_id, channel, value in found.pending_writes or []:
        by_task.setdefault(task_id, []).append((channel, value))
    for task_id, writes in by_task.items():
        await saver.aput_writes(written, writes, task_id)


async def copy_checkpoints(saver: BaseCheckpointSaver[Any], source: str, target: str) -> None:
    found = [c async for c in saver.alist(_all_namespaces(source))]
    for checkpoint in sorted(found, key=lambda c: c.checkpoint["id"]):
        await _write(saver, target, checkpoint)


async def keep_latest(saver: BaseCheckpointSaver[Any], thread_id: str) -> None:
    try:
        await saver.aprune([thread_id], strategy="keep_latest")
        return
    except NotImplementedError:
        pass
    latest: dict[str, CheckpointTuple] = {}
    async for found in saver.alist(_all_namespaces(thread_id)):
        namespace = found.config["configurable"].get("checkpoint_ns", "")
        if namespace not in latest or found.checkpoint["id"] > latest[namespace].checkpoint["id"]:
            latest[namespace] = found
    await saver.adelete_thread(thread_id)
    for found in latest.values():
        await _write(saver, thread_id, found._replace(parent_config=None))


async def delete_thread_data(state: AppState, thread_id: str) -> None:
    """What ``DELETE /threads/{id}`` does, without the request: its runs cancelled, its
    checkpoints, record and TTL gone; its finished runs forgotten too, so that nothing
    makes the thread up again from them."""
    for run in state.runs.thread_runs(thread_id):
        if run.finished:
            await state.runs.forget(run)
        else:
            run.cancel("cancelled", "its thread was deleted")
    await state.checkpointer.adelete_thread(thread_id)
    await state.threads.delete(thread_id)
    await state.thread_ttl.clear(thread_id)


def busy(state: AppState, thread_id: str) -> bool:
    return any(not run.finished for run in state.runs.thread_runs(thread_id))


@endpoint
async def copy_thread(request: Request, state: AppState) -> Response:
    record = await open_thread(state, request.path_params["thread_id"], request)
    new_id = str(uuid.uuid4())
    copied = await state.threads.create(
        new_id, user_id(request.scope), dict(record["metadata"]), record.get("graph")
    )
    assert copied is not None  # a fresh uuid
    await copy_checkpoints(state.checkpointer, record["thread_id"], new_id)
    return json_response(await thread_json(state, copied))


@endpoint
async def prune_threads(request: Request, state: AppState) -> Response:
    body = await parse(request, state, ThreadPrune)
    pruned = 0
    for thread_id in dict.fromkeys(body.thread_ids):
        try:
            await open_thread(state, thread_id, request)
        except (APIError, Forbidden):
            continue
        if body.strategy == "delete":
            await delete_thread_data(state, thread_id)
        elif busy(state, thread_id):
            continue
        else:
            await keep_latest(state.checkpointer, thread_id)
        pruned += 1
    return json_response({"pruned_count": pruned})


# -- the sweepers ----------------------------------------------------------------------


def start_sweepers(state: AppState) -> None:
    """Supervised lifespan jobs: expired store items and expired threads."""
    interval = state.settings.ttl_sweep_interval

    async def last_active(thread_id: str) -> float | None:
        if busy(state, thread_id):
            return time.time()
        record = await state.threads.get(thread_id)
        return None if record is None else float(record["updated_at"])

    async def expire(thread_id: str, strategy: str) -> None:
        if strategy == "keep_latest":
            await keep_latest(state.checkpointer, thread_id)
        else:
            await delete_thread_data(state, thread_id)

    async def sweep_store() -> None:
        while True:
            await asyncio.sleep(interval)
            sweep = getattr(state.store, "sweep_ttl", None)  # every store of ours has it
            swept = await sweep() if sweep is not None else 0
            if swept:
                logger.info("swept %d expired store items", swept)

    state.supervisor.start("store-ttl", sweep_store, cap=interval)
    state.supervisor.start(
        "thread-ttl",
        lambda: sweep_threads(state.thread_ttl, last_active, expire, interval),
        cap=interval,
    )
