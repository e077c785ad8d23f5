"""Runs: LangGraph's run routes over the run manager."""

from __future__ import annotations

import uuid
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.types import Command
from starlette.requests import Request
from starlette.responses import Response

from agent_server.auth import user_id
from agent_server.protocols.langgraph.assistants import assistant_id_of, resolve_assistant
from agent_server.protocols.langgraph.http import (
    APIError,
    endpoint,
    iso,
    json_response,
    parse,
    thread_config,
    truthy,
)
from agent_server.protocols.langgraph.parts import PartOptions
from agent_server.protocols.langgraph.schemas import RunBatch, RunCreate
from agent_server.protocols.langgraph.stream import (
    resume_from,
    stream,
    thread_events,
    thread_position,
    wanted_modes,
)
from agent_server.protocols.langgraph.threads import interrupt_json, open_thread
from agent_server.runs import RemoteRun, Run, RunStatus
from agent_server.serving import finished_unless_gone
from agent_server.sse import SSEResponse
from agent_server.state import AppState
from agent_server.webhooks import WebhookRefused

STATUS = {
    RunStatus.PENDING: "pending",
    RunStatus.RUNNING: "running",
    RunStatus.SUCCESS: "success",
    RunStatus.ERROR: "error",
    RunStatus.TIMEOUT: "timeout",
    RunStatus.INTERRUPTED: "interrupted",
    RunStatus.CANCELLED: "interrupted",  # LangGraph's name for a cancelled run
}


def run_json(run: Run | RemoteRun | dict[str, Any]) -> dict[str, Any]:
    described = run if isinstance(run, dict) else run.describe()
    metadata = {}
    kwargs: dict[str, Any] = {}
    strategy = None
    assistant_id = assistant_id_of(described["graph"])
    if isinstance(run, Run):
        metadata = dict(run.config.get("metadata") or {})
        assistant_id = str(metadata.get("assistant_id") or assistant_id)
        strategy = run.multitask_strategy
        for key in ("owner", "run_id", "thread_id", "user_id"):
            metadata.pop(key, None)
        kwargs = {
            "config": {k: v for k, v in run.config.items() if k != "callbacks"},
            "stream_mode": list(run.parts.modes) if run.parts else [],
            "subgraphs": run.parts.subgraphs if run.parts else False,
            **run.stream_kwargs,
        }
    updated = described.get("ended_at") or described.get("started_at") or described["created_at"]
    return {
        "run_id": described["run_id"],
        "thread_id": described["thread_id"],
        "assistant_id": assistant_id,
        "created_at": iso(described["created_at"]),
        "updated_at": iso(updated),
        "status": STATUS.get(RunStatus(described["status"]), "error"),
        "metadata": metadata,
        "multitask_strategy": strategy,
        "kwargs": kwargs,
        "langsmith_session_name": None,
    }


async def checkpoint_before(run: Run, run_ids: set[str]) -> CheckpointTuple | None:
    """The thread's newest checkpoint that none of ``run_ids`` wrote."""
    checkpointer = run.graph.graph.checkpointer
    if isinstance(checkpointer, BaseCheckpointSaver):
        async for found in checkpointer.alist(thread_config(run.thread_id)):
            if found.metadata.get("run_id") not in run_ids:
                return found
    return None


async def forget_run(run: Run) -> None:
    """A rolled-back run's checkpoints: the thread goes back to where it was before it,
    with a checkpoint of that state on top (the checkpointers cannot delete single
    checkpoints)."""
    checkpointer = run.graph.graph.checkpointer
    if not isinstance(checkpointer, BaseCheckpointSaver):
        return
    found = await checkpoint_before(run, {run.run_id})
    if found is None:
        await checkpointer.adelete_thread(run.thread_id)  # the run made it all
    else:
        await run.graph.graph.aupdate_state(found.config, None)


async def rollback_before(run: Run, replaced: set[str]) -> None:
    """Start ``run`` from the thread's last checkpoint before the runs it replaced."""
    checkpointer = run.graph.graph.checkpointer
    if not isinstance(checkpointer, BaseCheckpointSaver) or not replaced:
        return
    found = await checkpoint_before(run, replaced)
    if found is None:
        await checkpointer.adelete_thread(run.thread_id)  # the replaced runs made it all
        return
    configurable = dict(run.config.get("configurable") or {})
    configurable["checkpoint_id"] = found.config["configurable"]["checkpoint_id"]
    run.config = {**run.config, "configurable": configurable}


async def create_run(
    request: Request,
    state: AppState,
    body: RunCreate,
    thread_id: str | None,
    *,
    background: bool = False,
) -> Run | RemoteRun:
    """Validate and start a run of the LangGraph API (``thread_id`` None: stateless)."""
    user = user_id(request.scope)
    assistant, entry = await resolve_assistant(state, body.assistant_id, user)
    if body.webhook is not None:  # the SSRF guard (agent_server/webhooks.py): 422, no run
        try:
            await state.webhooks.check(body.webhook)
        except WebhookRefused as exc:
            raise APIError(422, f"Webhook URL refused: {exc}", "webhook_refused") from None
    stateless = thread_id is None
    if thread_id is None:
        thread_id = str(uuid.uuid4())
        await state.threads.create(thread_id, user, {"graph_id": entry.name}, entry.name)
    else:
        try:
            await open_thread(state, thread_id, request)
        except APIError as exc:
            if exc.status != 404 or body.if_not_exists != "create":
                raise
            await state.threads.create(thread_id, user, {}, entry.name)
    if body.command is not None:
        fields = body.command.model_dump(exclude_none=True)
        graph_input: Any = Command(**fields)
    else:
        graph_input = body.input
    # The assistant's current version first, the run's own fields over it (LangGraph's).
    config: dict[str, Any] = {
        k: v for k, v in {**assistant["config"], **(body.config or {})}.items() if k != "callbacks"
    }
    configurable = {
        **(assistant["config"].get("configurable") or {}),
        **((body.config or {}).get("configurable") or {}),
    }
    configurable.update({k: v for k, v in (body.checkpoint or {}).items() if k != "thread_id"})
    if body.checkpoint_id:
        configurable["checkpoint_id"] = body.checkpoint_id
    config["configurable"] = configurable
    run_id = str(uuid.uuid4())
    config["metadata"] = {
        **(config.get("metadata") or {}),
        **(body.metadata or {}),
        "graph_id": entry.name,
        "assistant_id": assistant["assistant_id"],
        "run_id": run_id,
        "thread_id": thread_id,
        **({"user_id": user} if user is not None else {}),
    }
    stream_kwargs: dict[str, Any] = {}
    if body.context is not None or assistant.get("context"):
        stream_kwargs["context"] = {**(assistant.get("context") or {}), **(body.context or {})}
    if body.interrupt_before is not None:
        stream_kwargs["interrupt_before"] = body.interrupt_before
    if body.interrupt_after is not None:
        stream_kwargs["interrupt_after"] = body.interrupt_after
    if body.durability is not None:
        stream_kwargs["durability"] = body.durability
    run = Run(
        graph=entry,
        input=graph_input,
        thread_id=thread_id,
        config=config,  # type: ignore[arg-type]
        run_id=run_id,
        owner=user,
        on_disconnect=body.on_disconnect,
        parts=PartOptions(tuple(dict.fromkeys(body.stream_mode)), body.stream_subgraphs),
        stream_kwargs=stream_kwargs,
    )
    strategy = body.multitask_strategy
    if strategy == "rollback":
        replaced = {r.run_id for r in state.runs.thread_runs(thread_id) if not r.finished}

        async def prepare(run: Run) -> None:
            await rollback_before(run, replaced)

        run.prepare = prepare
        strategy = "interrupt"
    await state.threads.touch(
        thread_id,
        graph=entry.name,
        metadata={"graph_id": entry.name, "assistant_id": assistant["assistant_id"]},
    )
    delay = body.after_seconds or 0.0
    if background and state.runs.broker.shared and run.prepare is None:
        return await state.runs.enqueue(run, strategy, delay=delay, webhook=body.webhook)
    state.runs.submit(run, strategy, delay=delay, webhook=body.webhook)
    run.multitask_strategy = body.multitask_strategy
    await state.runs.accepted(run)
    if stateless and body.on_completion == "delete":
        state.runs.spawn(delete_when_done(state, run), f"delete-thread-{thread_id}")
    return run


async def delete_when_done(state: AppState, run: Run) -> None:
    await run.wait()
    await state.runs.settled(run)
    await state.checkpointer.adelete_thread(run.thread_id)
    await state.threads.delete(run.thread_id)


@endpoint
async def stream_thread_run(request: Request, state: AppState) -> Response:
    body = await parse(request, state, RunCreate)
    run = await create_run(request, state, body, request.path_params["thread_id"])
    return stream(state, run, cancel_on_disconnect=body.on_disconnect == "cancel")


@endpoint
async def stream_stateless_run(request: Request, state: AppState) -> Response:
    body = await parse(request, state, RunCreate)
    run = await create_run(request, state, body, None)
    return stream(state, run, cancel_on_disconnect=body.on_disconnect == "cancel", stateless=True)


@endpoint
async def create_background_run(request: Request, state: AppState) -> Response:
    body = await parse(request, state, RunCreate)
    thread_id = request.path_params["thread_id"]
    run = await create_run(request, state, body, thread_id, background=True)
    path = f"/threads/{thread_id}/runs/{run.run_id}"
    return json_response(run_json(run), 200, **{"Content-Location": path})


@endpoint
async def create_stateless_background_run(request: Request, state: AppState) -> Response:
    body = await parse(request, state, RunCreate)
    run = await create_run(request, state, body, None, background=True)
    return json_response(run_json(run), 200, **{"Content-Location": f"/runs/{run.run_id}"})


@endpoint
async def create_run_batch(request: Request, state: AppState) -> Response:
    """Stateless background runs, each on a thread of its own (deleted after it unless
    ``on_completion="keep"``). Every body is validated before any run starts."""
    batch = await parse(request, state, RunBatch)
    runs = [await create_run(request, state, body, None, background=True) for body in batch.root]
    return json_response([run_json(run) for run in runs])


async def final_values(state: AppState, run: Run | RemoteRun) -> Any:
    """What ``/wait`` and ``/join`` return: the thread's last values (with
    ``__interrupt__`` when it stopped on one), or ``__error__``."""
    if run.status in (RunStatus.ERROR, RunStatus.TIMEOUT) or (
        run.status == RunStatus.CANCELLED and isinstance(run, Run)
    ):
        last = run.final if isinstance(run, Run) else None
        code = getattr(last, "code", "error")
        message = getattr(last, "message", "the run failed")
        return {"__error__": {"error": code, "message": message}}
    if isinstance(run, Run) and run.final is not None:
        values = run.values
        interrupts = run.interrupts
        if interrupts and isinstance(values, dict):
            values = {
                **values,
                "__interrupt__": [
                    {"value": getattr(f, "value", None), "id": getattr(f, "interrupt_id", None)}
                    for f in interrupts
                ],
            }
        return values
    snapshot = await run.graph.graph.aget_state(thread_config(run.thread_id))
    values = snapshot.values
    if snapshot.interrupts and isinstance(values, dict):
        values = {**values, "__interrupt__": [interrupt_json(i) for i in snapshot.interrupts]}
    return values


async def wait_for(request: Request, state: AppState, run: Run | RemoteRun, cancel: bool) -> Any:
    if not await finished_unless_gone(request, run):
        if cancel:
            run.cancel("cancelled", "the client disconnected")
        return None
    await state.runs.settled(run)
    return await final_values(state, run)


@endpoint
async def wait_thread_run(request: Request, state: AppState) -> Response:
    body = await parse(request, state, RunCreate)
    thread_id = request.path_params["thread_id"]
    run = await create_run(request, state, body, thread_id)
    values = await wait_for(request, state, run, body.on_disconnect == "cancel")
    path = f"/threads/{thread_id}/runs/{run.run_id}"
    return json_response(values, 200, **{"Content-Location": path, "Location": f"{path}/join"})


@endpoint
async def wait_stateless_run(request: Request, state: AppState) -> Response:
    body = await parse(request, state, RunCreate)
    run = await create_run(request, state, body, None)
    values = await wait_for(request, state, run, body.on_disconnect == "cancel")
    return json_response(values, 200, **{"Content-Location": f"/runs/{run.run_id}"})


async def thread_run(request: Request, state: AppState) -> Run | RemoteRun:
    thread_id = request.path_params["thread_id"]
    run_id = request.path_params["run_id"]
    await open_thread(state, thread_id, request)
    run = await state.runs.find(run_id)
    if run is None or run.thread_id != thread_id:
        if await state.runs.is_gone(run_id):
            raise APIError(410, f"Run {run_id} has finished and its log was dropped", "run_gone")
        raise APIError(404, f"Run with ID {run_id} not found", "run_not_found")
    state.runs.check_run(run, user_id(request.scope))
    return run


@endpoint
async def list_runs(request: Request, state: AppState) -> Response:
    thread_id = request.path_params["thread_id"]
    await open_thread(state, thread_id, request)
    params = request.query_params
    try:
        limit = int(params.get("limit", 10))
        offset = int(params.get("offset", 0))
    except ValueError:
        raise APIError(422, "limit and offset must be integers", "validation_error") from None
    status = params.get("status")
    runs = []
    for described in reversed(await state.runs.all_thread_runs(thread_id)):
        run = state.runs.get(described["run_id"])
        found = run_json(run if run is not None else described)
        if status is None or found["status"] == status:
            runs.append(found)
    return json_response(runs[offset : offset + limit])


@endpoint
async def get_run(request: Request, state: AppState) -> Response:
    return json_response(run_json(await thread_run(request, state)))


@endpoint
async def join_run(request: Request, state: AppState) -> Response:
    run = await thread_run(request, state)
    values = await wait_for(request, state, run, truthy(request, "cancel_on_disconnect"))
    return json_response(values)


@endpoint
async def join_run_stream(request: Request, state: AppState) -> Response:
    run = await thread_run(request, state)
    return stream(
        state,
        run,
        after=resume_from(request),
        modes=wanted_modes(request),
        cancel_on_disconnect=truthy(request, "cancel_on_disconnect"),
    )


@endpoint
async def join_thread_stream(request: Request, state: AppState) -> Response:
    """Every run on the thread as it happens (``threads.joinStream``): the runs of this
    worker, each ended by a ``run_done`` metadata event. ``stream_mode=lifecycle`` (or
    LangGraph's own ``stream_modes``) keeps only those metadata events."""
    thread_id = request.path_params["thread_id"]
    await open_thread(state, thread_id, request)
    params = request.query_params
    wanted = {m for key in ("stream_mode", "stream_modes") for m in params.getlist(key) if m}
    unknown = wanted - {"run_modes", "lifecycle", "state_update"}
    if unknown:
        raise APIError(422, f"Invalid stream mode: {sorted(unknown)[0]}", "validation_error")
    lifecycle = "lifecycle" in wanted and "run_modes" not in wanted
    return SSEResponse(
        thread_events(state, thread_id, thread_position(request), lifecycle),
        send_timeout=state.streams.send_timeout,
    )


@endpoint
async def cancel_run(request: Request, state: AppState) -> Response:
    run = await thread_run(request, state)
    action = request.query_params.get("action", "interrupt")
    if action not in ("interrupt", "rollback"):
        raise APIError(422, "action must be 'interrupt' or 'rollback'", "validation_error")
    if run.finished:  # LangGraph's status for it
        raise APIError(404, f"Run {run.run_id} is already {STATUS[run.status]}", "run_finished")
    run.cancel("cancelled", "cancelled by request")
    if action == "rollback":
        await state.runs.settled(run)
        if isinstance(run, Run):
            await forget_run(run)
    if not truthy(request, "wait"):
        return Response(status_code=202)
    await state.runs.settled(run)
    return json_response(await final_values(state, run))


@endpoint
async def delete_run(request: Request, state: AppState) -> Response:
    run = await thread_run(request, state)
    if not run.finished:
        raise APIError(409, f"Run {run.run_id} is still {STATUS[run.status]}", "run_active")
    await state.runs.settled(run)
    await state.runs.forget(run)
    return Response(status_code=204)
