"""Commands: what a client asks of a thread, answered with a result or a protocol error.

The same handlers serve ``POST /threads/{id}/commands`` and the WebSocket; the
transports only add the subscriptions (a WebSocket's own).

Decisions (read before changing):

- Runs are LangGraph API runs (:func:`~agent_server.protocols.langgraph.runs.create_run`):
  the run manager's limits, per-thread strategies (``enqueue`` by default, as LangGraph's
  server), auth, thread records. They ask for the ``values``, ``updates``, ``tasks`` and
  ``checkpoints`` parts of every namespace besides the native frames (:mod:`.events`).
- ``run.start`` on a thread that does not exist creates it (the SDKs make the id); with
  an ``input`` on a thread waiting on an interrupt it resumes it with that input, as
  LangGraph's server does. ``config.configurable.checkpoint_id`` forks from that
  checkpoint.
- ``input.respond`` resumes with ``Command(resume={interrupt_id: response, ...})``: every
  interrupt named must be pending on the thread (``no_such_interrupt``). It is a new
  run on the thread, as every continuation here.
- ``input.inject`` (root namespace) adds the message to the thread's conversation as the
  input of a run queued after the active one (``multitask_strategy="enqueue"``); a graph
  without a ``messages`` channel cannot take one (``not_supported``).
- ``state.get`` / ``state.listCheckpoints`` / ``state.fork`` read the thread's
  checkpoints through its graph; ``listCheckpoints`` serves the root namespace only
  (subgraph checkpoints are keyed by LangGraph task ids, which our namespaces omit).
- ``meta.applied_through_seq`` is where the thread's events stand once the command is
  applied: for a command that starts a run, the seq just before that run's first event,
  so a client that resumes from it receives the whole run and nothing older.
- A protocol error is an ``{"type": "error", ...}`` reply with status 200 over HTTP;
  what the HTTP layer refuses (a body that is not a command, another user's thread, a
  full queue) also gets its HTTP status (see :mod:`.sse`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from langchain_core.runnables import RunnableConfig
from langchain_protocol import CommandResponse, ErrorCode, ErrorResponse, ResultData
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Send, StateSnapshot
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from agent_server.auth import user_id
from agent_server.brokers import BrokerUnavailable
from agent_server.graphs import GraphEntry, UnknownGraphError
from agent_server.protocols.langgraph.http import APIError, thread_config
from agent_server.protocols.langgraph.runs import create_run
from agent_server.protocols.langgraph.schemas import RunCreate
from agent_server.protocols.langgraph.threads import open_thread, thread_graph
from agent_server.protocols.langgraph.threadstream.events import RunTranslator
from agent_server.protocols.langgraph.threadstream.history import ThreadRuns, thread_runs
from agent_server.protocols.langgraph.threadstream.schemas import (
    AgentGetTree,
    InputInject,
    InputRespond,
    ListCheckpoints,
    RunStart,
    StateFork,
    StateGet,
)
from agent_server.runs import Forbidden, LogEntry, RemoteRun, Run, RunRejected
from agent_server.state import AppState

# The LangGraph parts a run of this protocol adds to its frames (see .events).
RUN_MODES = ["values", "updates", "tasks", "checkpoints"]
INTERRUPT_SETTLE = 5.0  # seconds input.respond waits for the interrupted run's end
P = TypeVar("P", bound=BaseModel)


class CommandError(Exception):
    """A protocol error; ``status`` is the HTTP status over ``POST .../commands``."""

    def __init__(
        self,
        error: ErrorCode,
        message: str,
        status: int = 200,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass
class Caller:
    """Who sends a command to which thread: the request (or the WebSocket's handshake,
    as a request: only its scope is read) carries the user."""

    state: AppState
    thread_id: str
    request: Request

    @property
    def user(self) -> str | None:
        return user_id(self.request.scope)

    @property
    def history(self) -> ThreadRuns:
        return thread_runs(self.state)


def success(command_id: int, result: dict[str, Any], applied: int) -> CommandResponse:
    return {
        "type": "success",
        "id": command_id,
        "result": cast(ResultData, result),
        "meta": {"applied_through_seq": applied},
    }


def failure(command_id: int | None, error: ErrorCode, message: str) -> ErrorResponse:
    return {"type": "error", "id": command_id, "error": error, "message": message}


def params(model: type[P], data: dict[str, Any]) -> P:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise CommandError("invalid_argument", f"params.{where}: {first['msg']}") from None


# -- the thread, its graph, its runs -------------------------------------------------------


async def thread_record(caller: Caller) -> dict[str, Any] | None:
    """The thread's record (``None``: no such thread yet); another user's: refused."""
    try:
        return await open_thread(caller.state, caller.thread_id, caller.request)
    except APIError as exc:
        if exc.status == 404:
            return None
        raise CommandError("invalid_argument", exc.detail) from None
    except Forbidden as exc:
        raise CommandError("permission_denied", exc.message, 403) from None


async def thread_entry(caller: Caller) -> tuple[dict[str, Any], GraphEntry]:
    record = await thread_record(caller)
    entry = thread_graph(caller.state, record) if record is not None else None
    if record is None or entry is None:
        raise CommandError("no_such_run", f"thread {caller.thread_id!r} has no run yet")
    return record, entry


def assistant_of(record: dict[str, Any], entry: GraphEntry) -> str:
    return str((record.get("metadata") or {}).get("assistant_id") or entry.name)


async def start(caller: Caller, fields: dict[str, Any]) -> Run | RemoteRun:
    """A LangGraph API run on the thread with this protocol's parts (see above)."""
    fields = {
        "stream_mode": RUN_MODES,
        "stream_subgraphs": True,
        "if_not_exists": "create",
        "on_completion": "keep",
        "multitask_strategy": "enqueue",
        **fields,
    }
    try:
        body = RunCreate.model_validate(fields)
        return await create_run(caller.request, caller.state, body, caller.thread_id)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise CommandError("invalid_argument", f"{where}: {first['msg']}") from None
    except (APIError, UnknownGraphError) as exc:
        message = exc.detail if isinstance(exc, APIError) else str(exc)
        if isinstance(exc, APIError) and exc.status == 403:
            raise CommandError("permission_denied", message, 403) from None
        raise CommandError("invalid_argument", message) from None
    except Forbidden as exc:
        raise CommandError("permission_denied", exc.message, 403) from None
    except RunRejected as exc:
        if exc.status == 409:  # a busy thread and multitask_strategy "reject"
            raise CommandError("invalid_argument", exc.message) from None
        raise CommandError("unknown_error", exc.message, exc.status, exc.retry_after) from None
    except BrokerUnavailable as exc:
        raise CommandError("unknown_error", str(exc), 503, 2) from None


async def started(caller: Caller, run: Run | RemoteRun) -> int:
    return await caller.history.head(caller.thread_id, before=run.run_id)


async def pending_interrupts(caller: Caller, entry: GraphEntry, *, settle: bool) -> set[str]:
    """The ids of the interrupts the thread waits on. A thread with an active run waits
    on none; with ``settle``, the run is first given a moment to end (a client answers
    an interrupt as soon as it sees it, a hair before its run's last frame)."""
    latest = caller.state.runs.latest_on_thread(caller.thread_id)
    if latest is not None and not latest.finished:
        if not settle:
            return set()
        try:
            async with asyncio.timeout(INTERRUPT_SETTLE):
                await latest.wait()
        except TimeoutError:
            return set()
    snapshot = await entry.graph.aget_state(thread_config(caller.thread_id))
    return {i.id for i in snapshot.interrupts}


def checkpointer(caller: Caller, entry: GraphEntry) -> BaseCheckpointSaver[Any]:
    saver = entry.graph.checkpointer
    return saver if isinstance(saver, BaseCheckpointSaver) else caller.state.checkpointer


async def checkpoint_exists(caller: Caller, entry: GraphEntry, checkpoint_id: str) -> bool:
    config = thread_config(caller.thread_id, checkpoint_id=checkpoint_id)
    return await checkpointer(caller, entry).aget_tuple(config) is not None


# -- the commands ------------------------------------------------------------------------

Result = tuple[dict[str, Any], int]


async def run_start(caller: Caller, data: dict[str, Any]) -> Result:
    p = params(RunStart, data)
    config = dict(p.config or {})
    configurable = dict(config.get("configurable") or {})
    fork = configurable.pop("checkpoint_id", None)
    config["configurable"] = configurable
    fields: dict[str, Any] = {
        "assistant_id": p.assistant_id,
        "config": config,
        "metadata": p.metadata,
        "multitask_strategy": p.multitask_strategy or p.multitaskStrategy or "enqueue",
    }
    record = await thread_record(caller)
    entry = thread_graph(caller.state, record) if record is not None else None
    if fork is not None:
        if not isinstance(fork, str) or not fork:
            raise CommandError("invalid_argument", "config.configurable.checkpoint_id: a string")
        if entry is None or not await checkpoint_exists(caller, entry, fork):
            raise CommandError("no_such_checkpoint", f"no checkpoint {fork!r} on this thread")
        fields["checkpoint_id"] = fork
    if (
        p.input is not None
        and entry is not None
        and await pending_interrupts(caller, entry, settle=False)
    ):
        fields["command"] = {"resume": p.input}  # as LangGraph's server: input resumes
    else:
        fields["input"] = p.input
    run = await start(caller, fields)
    return {"run_id": run.run_id}, await started(caller, run)


def goto(value: Any) -> Any:
    """The protocol's ``Goto`` (a node, ``{node, input}``, or a list) as LangGraph's."""
    if isinstance(value, list):
        return [goto(item) for item in value]
    if isinstance(value, dict):
        if not isinstance(value.get("node"), str):
            raise CommandError("invalid_argument", "params.goto: {node, input} needs a node")
        return Send(value["node"], value.get("input"))
    if value is not None and not isinstance(value, str):
        raise CommandError("invalid_argument", "params.goto: a node, {node, input} or a list")
    return value


async def input_respond(caller: Caller, data: dict[str, Any]) -> Result:
    p = params(InputRespond, data)
    if p.responses:
        answers = {r.interrupt_id: r.response for r in p.responses}
    elif p.interrupt_id is not None:
        answers = {p.interrupt_id: p.response}
    else:
        raise CommandError("invalid_argument", "params: give interrupt_id or responses")
    record, entry = await thread_entry(caller)
    pending = await pending_interrupts(caller, entry, settle=True)
    for interrupt_id in answers:
        if interrupt_id not in pending:
            raise CommandError(
                "no_such_interrupt", f"no pending interrupt {interrupt_id!r} on this thread"
            )
    command: dict[str, Any] = {"resume": answers}
    if p.update is not None:
        command["update"] = p.update
    if p.goto is not None:
        command["goto"] = goto(p.goto)
    run = await start(
        caller,
        {
            "assistant_id": assistant_of(record, entry),
            "command": command,
            "config": p.config,
            "metadata": p.metadata,
        },
    )
    return {}, await started(caller, run)


async def input_inject(caller: Caller, data: dict[str, Any]) -> Result:
    p = params(InputInject, data)
    if p.namespace:
        raise CommandError("not_supported", "messages are injected at the root namespace only")
    record, entry = await thread_entry(caller)
    if "messages" not in getattr(entry.graph, "channels", {}):
        raise CommandError("not_supported", f"graph {entry.name!r} has no messages channel")
    message = p.message.model_dump(exclude_none=True)
    run = await start(
        caller, {"assistant_id": assistant_of(record, entry), "input": {"messages": [message]}}
    )
    return {}, await started(caller, run)


async def state_get(caller: Caller, data: dict[str, Any]) -> Result:
    p = params(StateGet, data)
    applied = await caller.history.head(caller.thread_id)
    record = await thread_record(caller)
    entry = thread_graph(caller.state, record) if record is not None else None
    if entry is None:
        if p.namespace:
            raise CommandError("no_such_namespace", "the thread has no subgraph state")
        return {"values": {}}, applied
    snapshot = await entry.graph.aget_state(
        thread_config(caller.thread_id), subgraphs=bool(p.namespace)
    )
    for segment in p.namespace:
        name = segment.partition(":")[0]
        inner = next(
            (
                t.state
                for t in snapshot.tasks
                if t.name == name and isinstance(t.state, StateSnapshot)
            ),
            None,
        )
        if inner is None:
            raise CommandError("no_such_namespace", f"no running subgraph {p.namespace!r}")
        snapshot = inner
    values = snapshot.values if isinstance(snapshot.values, dict) else {}
    if p.keys is not None:
        values = {k: v for k, v in values.items() if k in p.keys}
    result: dict[str, Any] = {"values": values}
    configurable = (snapshot.config or {}).get("configurable") or {}
    if configurable.get("checkpoint_id"):
        result["checkpoint"] = {"id": configurable["checkpoint_id"]}
        if configurable.get("checkpoint_ns"):
            result["checkpoint"]["ns"] = configurable["checkpoint_ns"]
    return result, applied


def _checkpoint_id(config: RunnableConfig | None) -> str | None:
    value = ((config or {}).get("configurable") or {}).get("checkpoint_id")
    return value if isinstance(value, str) else None


async def state_list_checkpoints(caller: Caller, data: dict[str, Any]) -> Result:
    p = params(ListCheckpoints, data)
    if p.namespace:
        raise CommandError("not_supported", "checkpoints are listed for the root namespace only")
    applied = await caller.history.head(caller.thread_id)
    record = await thread_record(caller)
    entry = thread_graph(caller.state, record) if record is not None else None
    if entry is None:
        if p.before is not None:
            raise CommandError("no_such_checkpoint", f"no checkpoint {p.before!r}")
        return {"checkpoints": []}, applied
    before: RunnableConfig | None = None
    if p.before is not None:
        if not await checkpoint_exists(caller, entry, p.before):
            raise CommandError("no_such_checkpoint", f"no checkpoint {p.before!r}")
        before = thread_config(caller.thread_id, checkpoint_id=p.before)
    found = [
        snapshot
        async for snapshot in entry.graph.aget_state_history(
            thread_config(caller.thread_id), limit=p.limit + 1, before=before
        )
    ]
    summaries = []
    for index, snapshot in enumerate(found[: p.limit]):
        metadata = {k: v for k, v in (snapshot.metadata or {}).items() if k != "owner"}
        summary: dict[str, Any] = {
            "id": _checkpoint_id(snapshot.config),
            "timestamp": snapshot.created_at,
            "step": metadata.get("step", -1),
            "metadata": metadata,
        }
        parent = found[index + 1] if index + 1 < len(found) else None
        if (
            parent is not None
            and _checkpoint_id(parent.config) == _checkpoint_id(snapshot.parent_config)
            and len(parent.tasks) == 1
        ):
            summary["node_name"] = parent.tasks[0].name  # the node that wrote this one
        summaries.append(summary)
    return {"checkpoints": summaries}, applied


async def state_fork(caller: Caller, data: dict[str, Any]) -> Result:
    p = params(StateFork, data)
    record = await thread_record(caller)
    entry = thread_graph(caller.state, record) if record is not None else None
    if (
        record is None
        or entry is None
        or not await checkpoint_exists(caller, entry, p.checkpoint_id)
    ):
        raise CommandError("no_such_checkpoint", f"no checkpoint {p.checkpoint_id!r}")
    run = await start(
        caller,
        {
            "assistant_id": assistant_of(record, entry),
            "input": p.input,
            "config": p.config,
            "checkpoint_id": p.checkpoint_id,
        },
    )
    return {"run_id": run.run_id, "thread_id": caller.thread_id}, await started(caller, run)


async def agent_get_tree(caller: Caller, data: dict[str, Any]) -> Result:
    p = params(AgentGetTree, data)
    state = caller.state
    applied = await caller.history.head(caller.thread_id)
    await thread_record(caller)  # ownership
    run: Run | RemoteRun | None = None
    if p.run_id is not None:
        run = await state.runs.find(p.run_id)
        if run is not None and run.thread_id != caller.thread_id:
            run = None
    else:
        slots = await caller.history.slots(caller.thread_id)
        run = await caller.history.find(slots[-1]) if slots else None
    if run is None:
        raise CommandError("no_such_run", f"no run {p.run_id or ''} on this thread".strip())
    if isinstance(run, Run):
        entries = list(run.log)
    else:
        entries = [LogEntry.unwire(*e) for e in await state.runs.broker.read(run.run_id, 0, None)]
    translator = RunTranslator(0)
    translator.feed(entries)
    return {"tree": tree(translator)}, applied


def tree(translator: RunTranslator) -> dict[str, Any]:
    """The run's namespaces as ``AgentTreeNode``s, the root first."""
    nodes: dict[tuple[str, ...], dict[str, Any]] = {
        (): {"namespace": [], "status": translator.status, "graph_name": translator.graph}
    }
    for namespace in sorted(translator.namespaces, key=len):
        node = {
            "namespace": list(namespace),
            "status": translator.namespaces[namespace],
            "graph_name": namespace[-1],
        }
        nodes[namespace] = node
        nodes.get(namespace[:-1], nodes[()]).setdefault("children", []).append(node)
    return nodes[()]


Handler = Callable[[Caller, dict[str, Any]], Awaitable[Result]]
COMMANDS: dict[str, Handler] = {
    "run.start": run_start,
    "input.respond": input_respond,
    "input.inject": input_inject,
    "state.get": state_get,
    "state.listCheckpoints": state_list_checkpoints,
    "state.fork": state_fork,
    "agent.getTree": agent_get_tree,
}
# Served on a WebSocket (its subscriptions) and answered not_supported over HTTP, where
# the event stream request itself is the subscription.
SUBSCRIPTION_COMMANDS = frozenset(
    {"subscription.subscribe", "subscription.unsubscribe", "subscription.reconnect"}
)


async def execute(caller: Caller, command_id: int, method: str, data: dict[str, Any]) -> Result:
    """Run one command (not a subscription one); raises :class:`CommandError`."""
    handler = COMMANDS.get(method)
    if handler is None:
        if method in SUBSCRIPTION_COMMANDS:
            raise CommandError(
                "not_supported",
                f"{method} is for a WebSocket; over HTTP the event stream request "
                "(POST .../stream/events) is the subscription",
            )
        raise CommandError("unknown_command", f"unknown command {method!r}")
    try:
        return await handler(caller, data)
    except Forbidden as exc:
        raise CommandError("permission_denied", exc.message, 403) from None
    except BrokerUnavailable as exc:
        raise CommandError("unknown_error", str(exc), 503, 2) from None
