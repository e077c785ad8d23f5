"""The LangGraph API, judged by LangGraph's own Python client (langgraph-sdk).

The same tests run against LangGraph's dev server when ``LANGGRAPH_API_URL`` names one
(``make test-langgraph-dev`` starts it with tests/langgraph_dev/langgraph.json, which
serves the same graphs): that is how we know they test LangGraph's protocol and not
our reading of it. Tests marked ``ours`` check what only agent-server offers (native
frames of the same run, auth); they are skipped there.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import httpx_sse
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import ConflictError, NotFoundError, PermissionDeniedError

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.helpers import adispatched
from tests.live import live_server
from tests.test_js_clients import JS, node

UPSTREAM = os.environ.get("LANGGRAPH_API_URL")
ours = pytest.mark.skipif(UPSTREAM is not None, reason="agent-server only")

GRAPHS = {
    "agent": "tests.lg_graphs:agent",
    "slow": "tests.lg_graphs:slow",
    "nested": "tests.lg_graphs:nested",
    "approval": "tests.hitl_graphs:approval",
}


@contextmanager
def langgraph_url(graphs: dict[str, str]) -> Iterator[str]:
    """The LangGraph API of a live server on ``graphs``, or LangGraph's own server's when
    ``LANGGRAPH_API_URL`` names one."""
    if UPSTREAM is not None:
        yield UPSTREAM
        return
    with live_server(create_app(test_settings(graphs=graphs))) as base:
        yield f"{base}/langgraph"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """The server's root URL (the native routes live here on agent-server)."""
    if UPSTREAM is not None:
        yield UPSTREAM
        return
    with live_server(create_app(test_settings(graphs=GRAPHS))) as url:
        yield url


@pytest.fixture(scope="module")
def url(base: str) -> str:
    """Where a LangGraph client points."""
    return base if UPSTREAM is not None else f"{base}/langgraph"


def human(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def collect(parts: AsyncIterator[Any]) -> list[tuple[str, Any, str | None]]:
    return [(part.event, part.data, getattr(part, "id", None)) async for part in parts]


def message_chunks(events: list[tuple[str, Any, str | None]]) -> list[dict[str, Any]]:
    return [data[0] for event, data, _ in events if event == "messages"]


async def test_assistants_are_the_registered_graphs(client: Any) -> None:
    found = await client.assistants.search(graph_id="agent")
    assert [a["graph_id"] for a in found] == ["agent"]
    by_id = await client.assistants.get(found[0]["assistant_id"])
    assert by_id["graph_id"] == "agent"
    graph = await client.assistants.get_graph("agent")
    assert {node["id"] for node in graph["nodes"]} >= {"__start__", "agent", "tools"}
    schemas = await client.assistants.get_schemas(found[0]["assistant_id"])
    assert "messages" in schemas["input_schema"]["properties"]
    with pytest.raises(NotFoundError):
        await client.assistants.get(str(uuid.uuid4()))


async def test_tool_calling_stream_in_messages_tuple_and_updates(client: Any) -> None:
    thread = await client.threads.create()
    events = await collect(
        client.runs.stream(
            thread["thread_id"],
            "agent",
            input=human("what is 6*7?"),
            stream_mode=["messages-tuple", "updates"],
            stream_resumable=True,  # LangGraph's server sends event ids only then
        )
    )
    kinds = [event for event, _, _ in events]
    assert kinds[0] == "metadata" and "run_id" in events[0][1]
    assert set(kinds) == {"metadata", "messages", "updates"}
    ids = [event_id for _, _, event_id in events]
    assert all(ids)
    if UPSTREAM is None:  # LangGraph's server repeats ids within a millisecond (documented)
        assert len(set(ids)) == len(ids)

    chunks = message_chunks(events)
    call_chunks = [c for chunk in chunks for c in chunk.get("tool_call_chunks") or []]
    assert call_chunks[0]["name"] == "calculator"
    assert "".join(c["args"] or "" for c in call_chunks) == '{"expression": "6*7"}'
    tool_results = [c for c in chunks if c["type"] == "tool"]
    assert [(m["name"], m["content"]) for m in tool_results] == [("calculator", "42")]
    # Every message part carries LangGraph's metadata, naming its node.
    metadata = [data[1] for event, data, _ in events if event == "messages"]
    assert {m["langgraph_node"] for m in metadata} == {"agent", "tools"}

    final_id = chunks[-1]["id"]
    text = "".join(c["content"] for c in chunks if c["id"] == final_id)
    assert "42" in text
    updates = [data for event, data, _ in events if event == "updates"]
    assert [list(u) for u in updates] == [["agent"], ["tools"], ["agent"]]
    assert updates[-1]["agent"]["messages"][-1]["content"] == text

    # The thread remembers the turn: a second one sees the whole conversation.
    values = await client.runs.wait(thread["thread_id"], "agent", input=human("thanks"))
    kinds = [m["type"] for m in values["messages"]]
    assert kinds == ["human", "ai", "tool", "ai", "human", "ai"]
    state = await client.threads.get_state(thread["thread_id"])
    assert state["values"]["messages"] == values["messages"]
    assert state["next"] == [] and state["checkpoint"]["thread_id"] == thread["thread_id"]
    history = await client.threads.get_history(thread["thread_id"], limit=100)
    assert history[0]["checkpoint"]["checkpoint_id"] == state["checkpoint"]["checkpoint_id"]
    assert [len(h["values"].get("messages", [])) for h in history][:3] == [6, 5, 4]
    got = await client.threads.get(thread["thread_id"])
    assert got["status"] == "idle" and len(got["values"]["messages"]) == 6


async def test_values_mode_streams_the_state(client: Any) -> None:
    thread = await client.threads.create(metadata={"purpose": "values"})
    events = await collect(
        client.runs.stream(thread["thread_id"], "agent", input=human("2+2"), stream_mode="values")
    )
    values = [data for event, data, _ in events if event == "values"]
    assert [len(v["messages"]) for v in values] == [1, 2, 3, 4]
    found = await client.threads.search(metadata={"purpose": "values"})
    assert thread["thread_id"] in [t["thread_id"] for t in found]


async def test_subgraph_parts_carry_their_namespace(client: Any) -> None:
    thread = await client.threads.create()
    events = await collect(
        client.runs.stream(
            thread["thread_id"],
            "nested",
            input=human("what is 6*7?"),
            stream_mode=["updates", "messages-tuple"],
            stream_subgraphs=True,
        )
    )
    names = {event.split(":")[0] for event, _, _ in events}
    assert names == {"metadata", "updates", "updates|research", "messages|research"}
    inner = [d for e, d, _ in events if e.startswith("updates|research:")]
    assert [next(iter(u)) for u in inner] == ["agent", "tools", "agent"]
    assert [next(iter(d)) for e, d, _ in events if e == "updates"] == ["research"]
    without = await collect(
        client.runs.stream(thread["thread_id"], "nested", input=human("2+2"), stream_mode="updates")
    )
    assert {e for e, _, _ in without} == {"metadata", "updates"}


async def test_events_debug_and_legacy_messages_modes(client: Any) -> None:
    thread = await client.threads.create()
    events = await collect(
        client.runs.stream(
            thread["thread_id"],
            "agent",
            input=human("hello"),
            stream_mode=["events", "debug", "messages"],
        )
    )
    raw = [d for e, d, _ in events if e == "events"]
    assert {"on_chain_start", "on_chat_model_stream", "on_chain_end"} <= {r["event"] for r in raw}
    debug = [d for e, d, _ in events if e == "debug"]
    assert {"checkpoint", "task", "task_result"} <= {d["type"] for d in debug}
    partial = [d[0] for e, d, _ in events if e == "messages/partial"]
    assert partial and partial[-1]["type"] == "ai"
    assert partial[-1]["content"].startswith("You said")
    assert any(e == "messages/metadata" for e, _, _ in events)


async def test_interrupt_then_resume_with_a_command(client: Any) -> None:
    thread = await client.threads.create()
    events = await collect(
        client.runs.stream(
            thread["thread_id"],
            "approval",
            input=human("deploy?"),
            stream_mode=["values", "updates"],
        )
    )
    interrupt_updates = [d for e, d, _ in events if e == "updates" and "__interrupt__" in d]
    assert interrupt_updates[0]["__interrupt__"][0]["value"] == {"question": "approve?"}
    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == ["ask"]
    assert state["interrupts"][0]["value"] == {"question": "approve?"}
    assert state["tasks"][0]["interrupts"][0]["value"] == {"question": "approve?"}
    assert (await client.threads.get(thread["thread_id"]))["status"] == "interrupted"

    events = await collect(
        client.runs.stream(
            thread["thread_id"],
            "approval",
            command={"resume": "yes"},
            stream_mode="values",
        )
    )
    last = [d for e, d, _ in events if e == "values"][-1]
    assert last["messages"][-1]["content"] == "approved: yes"
    assert (await client.threads.get(thread["thread_id"]))["status"] == "idle"


async def test_background_run_joined_dropped_and_rejoined_loses_nothing(client: Any) -> None:
    thread = await client.threads.create()
    words = " ".join(f"word{i}" for i in range(60))
    run = await client.runs.create(
        thread["thread_id"],
        "slow",
        input=human(words),
        stream_mode=["messages-tuple"],
        stream_resumable=True,
    )
    assert run["status"] in ("pending", "running")
    seen: list[tuple[str, Any, str | None]] = []
    # "-1" replays from the start, as useStream rejoins (without it, LangGraph's server
    # sends only what happens after the join).
    async for part in client.runs.join_stream(
        thread["thread_id"], run["run_id"], last_event_id="-1"
    ):
        seen.append((part.event, part.data, part.id))
        if len(message_chunks(seen)) >= 10:
            break  # the client drops mid-run
    last_id = seen[-1][2]
    assert last_id is not None
    rest = await collect(
        client.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id=last_id)
    )
    assert rest and rest[0][0] != "metadata"
    chunks = message_chunks(seen) + message_chunks(rest)
    text = "".join(c["content"] for c in chunks)
    state = await client.threads.get_state(thread["thread_id"])
    assert text == state["values"]["messages"][-1]["content"]  # every token exactly once
    assert "word59" in text
    ids = [i for _, _, i in seen + rest]
    if UPSTREAM is None:
        assert len(ids) == len(set(ids))
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"
    listed = await client.runs.list(thread["thread_id"])
    assert [r["run_id"] for r in listed] == [run["run_id"]]


async def test_cancel_and_reject(client: Any) -> None:
    thread = await client.threads.create()
    words = " ".join(f"word{i}" for i in range(200))
    run = await client.runs.create(thread["thread_id"], "slow", input=human(words))
    with pytest.raises(ConflictError):
        await client.runs.create(
            thread["thread_id"], "slow", input=human("again"), multitask_strategy="reject"
        )
    await client.runs.cancel(thread["thread_id"], run["run_id"], wait=True)
    cancelled = await client.runs.get(thread["thread_id"], run["run_id"])
    assert cancelled["status"] == "interrupted"
    assert (await client.threads.get(thread["thread_id"]))["status"] != "busy"


async def test_interrupt_strategy_and_interrupt_before(client: Any) -> None:
    thread = await client.threads.create()
    words = " ".join(f"word{i}" for i in range(200))
    first = await client.runs.create(thread["thread_id"], "slow", input=human(words))
    second = await client.runs.create(
        thread["thread_id"], "slow", input=human("now"), multitask_strategy="interrupt"
    )
    await client.runs.join(thread["thread_id"], second["run_id"])
    assert (await client.runs.get(thread["thread_id"], first["run_id"]))["status"] == "interrupted"
    assert (await client.runs.get(thread["thread_id"], second["run_id"]))["status"] == "success"

    paused = await client.threads.create()
    await client.runs.wait(
        paused["thread_id"], "agent", input=human("what is 6*7?"), interrupt_before=["tools"]
    )
    state = await client.threads.get_state(paused["thread_id"])
    assert state["next"] == ["tools"]
    assert (await client.threads.get(paused["thread_id"]))["status"] == "interrupted"
    values = await client.runs.wait(paused["thread_id"], "agent", input=None)
    assert values["messages"][-1]["content"] == "The calculator tool returned 42."


async def test_enqueued_runs_take_turns(client: Any) -> None:
    thread = await client.threads.create()
    first = await client.runs.create(thread["thread_id"], "slow", input=human("one two three"))
    second = await client.runs.create(
        thread["thread_id"], "slow", input=human("four"), multitask_strategy="enqueue"
    )
    await client.runs.join(thread["thread_id"], second["run_id"])
    state = await client.threads.get_state(thread["thread_id"])
    humans = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
    assert humans == ["one two three", "four"]
    assert (await client.runs.get(thread["thread_id"], first["run_id"]))["status"] == "success"
    await client.runs.delete(thread["thread_id"], first["run_id"])
    listed = await client.runs.list(thread["thread_id"])
    assert [r["run_id"] for r in listed] == [second["run_id"]]
    with pytest.raises(NotFoundError):
        await client.runs.get(thread["thread_id"], first["run_id"])


async def test_stateless_runs(client: Any) -> None:
    events = await collect(
        client.runs.stream(None, "agent", input=human("3*3"), stream_mode="updates")
    )
    assert [list(d) for e, d, _ in events if e == "updates"] == [["agent"], ["tools"], ["agent"]]
    values = await client.runs.wait(None, "agent", input=human("hello"))
    assert values["messages"][-1]["type"] == "ai"


async def test_thread_lifecycle_and_errors(client: Any) -> None:
    thread_id = str(uuid.uuid4())
    created = await client.threads.create(thread_id=thread_id, metadata={"owner": "me"})
    assert created["thread_id"] == thread_id and created["status"] == "idle"
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=thread_id)
    same = await client.threads.create(thread_id=thread_id, if_exists="do_nothing")
    assert same["thread_id"] == thread_id
    await client.threads.delete(thread_id)
    with pytest.raises(NotFoundError):
        await client.threads.get(thread_id)
    with pytest.raises(httpx.HTTPStatusError) as missing:  # the SDK's wait raises httpx's
        await client.runs.wait(str(uuid.uuid4()), "agent", input=human("hi"))
    assert missing.value.response.status_code == 404
    created_on_the_fly = str(uuid.uuid4())
    values = await client.runs.wait(
        created_on_the_fly, "agent", input=human("hi"), if_not_exists="create"
    )
    assert values["messages"][0]["content"] == "hi"


def test_official_js_client(url: str) -> None:
    """@langchain/langgraph-sdk's Client, the one under useStream (tests/js/langgraph.mjs)."""
    result = subprocess.run(
        [node(), str(JS / "langgraph.mjs"), url], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    calling = summary["toolCalling"]
    assert calling["assistant"] == ["agent"]
    assert calling["events"] == ["metadata", "messages", "updates"]
    assert calling["toolName"] == "calculator"
    assert calling["toolArgs"] == '{"expression": "6*7"}'
    assert calling["toolResults"] == ["42"]
    assert calling["text"] == "The calculator tool returned 42."
    assert calling["updates"] == ["agent", "tools", "agent"]
    assert calling["stateTypes"] == ["human", "ai", "tool", "ai"]
    assert summary["interruptFlow"] == {
        "question": {"question": "approve?"},
        "answer": "approved: yes",
        "status": "idle",
    }
    join = summary["join"]
    assert join["exactlyOnce"] and join["status"] == "success"
    if UPSTREAM is None:  # each event once across the rejoin (not so upstream: see above)
        assert len(set(join["ids"])) == len(join["ids"])
    assert join["lastEventId"] in join["ids"]


def test_sync_client(url: str) -> None:
    client = get_sync_client(url=url, api_key=None)
    thread = client.threads.create()
    parts = list(
        client.runs.stream(
            thread["thread_id"], "agent", input=human("1+1"), stream_mode="messages-tuple"
        )
    )
    assert parts[0].event == "metadata"
    assert any(p.event == "messages" and p.data[0]["type"] == "tool" for p in parts)


@ours
async def test_the_same_run_streams_native_frames_too(client: Any, base: str) -> None:
    """A LangGraph client's run is an ordinary run: native clients watch it as frames,
    exactly the frames a native run of the same input produces."""
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "agent", input=human("what is 6*7?"))
    await client.runs.join(thread["thread_id"], run["run_id"])
    async with httpx.AsyncClient(base_url=base) as http:
        native = await frames_of(http, f"/runs/{run['run_id']}/stream")
        started = await http.post(
            "/runs", json={"graph": "agent", "message": "what is 6*7?", "thread_id": "native-1"}
        )
        reference = await frames_of(http, f"/runs/{started.json()['run_id']}/stream")
    assert "part" not in {f["type"] for f in native}
    assert comparable(native) == comparable(reference)


async def frames_of(http: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    frames = []
    async with httpx_sse.aconnect_sse(http, "GET", path) as source:
        async for event in adispatched(source):
            if event.data == "[DONE]":
                break
            frames.append(event.json())
    return frames


def comparable(frames: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must agree between two runs of one input: not ids, times or durations."""
    volatile = {"run_id", "seq", "ts", "thread_id", "message_id", "duration_ms", "tool_call_id"}
    return [tuple(sorted((k, str(v)) for k, v in f.items() if k not in volatile)) for f in frames]


@ours
async def test_bad_requests_get_langgraph_errors(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        thread = (await http.post("/threads", json={})).json()
        bad = await http.post(
            f"/threads/{thread['thread_id']}/runs/stream",
            json={"assistant_id": "agent", "stream_mode": ["nonsense"]},
        )
        assert bad.status_code == 422 and "stream_mode" in bad.json()["detail"]
        broken = await http.post("/threads", content=b"{nope")
        assert broken.status_code == 400 and broken.json()["detail"]
        missing = await http.post("/threads/none/runs/wait", json={"assistant_id": "nope"})
        assert missing.status_code == 404
        joined = await http.get(f"/threads/{thread['thread_id']}/runs/{uuid.uuid4()}/stream")
        assert joined.status_code == 404
        resumed = await http.get(
            f"/threads/{thread['thread_id']}/runs/{uuid.uuid4()}/stream",
            headers={"Last-Event-ID": "x"},
        )
        assert resumed.status_code == 404


@ours
async def test_bad_ids_and_cursors_are_refused_in_langgraph_shape(url: str) -> None:
    """Regressions: a NUL in an id or in stored metadata reached PostgreSQL and was a 500
    there; 4,301-digit and non-ASCII digits in ``Last-Event-ID`` were 500s (issue 14)."""
    huge = "9" * 4301
    async with httpx.AsyncClient(base_url=url) as http:
        thread = (await http.post("/threads", json={})).json()["thread_id"]
        refused = [
            await http.get("/threads/a%00b"),
            await http.get(f"/threads/{thread}/state/a%00b"),
            await http.post("/threads", json={"thread_id": "a\x00b"}),
            await http.post("/threads", json={"metadata": {"k": "a\x00b"}}),
            await http.post("/threads/search", json={"ids": ["x" * 129]}),
            await http.post(f"/threads/{thread}/history", json={"before": "a\x00b"}),
            await http.get(f"/threads/{thread}/stream", headers={"Last-Event-ID": f"{huge}-1"}),
            await http.get(
                f"/threads/{thread}/stream", headers={"Last-Event-ID": "1-\u00b2".encode("latin-1")}
            ),
        ]
    for response in refused:
        assert response.status_code == 422, response.text
        assert response.json()["detail"] and response.json()["code"] in (
            "validation_error",
            "bad_event_id",
        )


@ours
def test_threads_belong_to_their_user() -> None:
    settings = test_settings(graphs=GRAPHS, auth="api_keys", api_keys={"alice": "ka", "bob": "kb"})
    with live_server(create_app(settings)) as base:
        alice = get_sync_client(url=f"{base}/langgraph", api_key="ka")  # as X-Api-Key
        bob = get_sync_client(url=f"{base}/langgraph", headers={"Authorization": "Bearer kb"})
        thread = alice.threads.create(metadata={"topic": "secret"})
        alice.runs.wait(thread["thread_id"], "agent", input=human("hi"))
        with pytest.raises(PermissionDeniedError):
            bob.threads.get_state(thread["thread_id"])
        with pytest.raises(httpx.HTTPStatusError) as refused:
            bob.runs.wait(thread["thread_id"], "agent", input=human("mine now"))
        assert refused.value.response.status_code == 403
        assert bob.threads.search(metadata={"topic": "secret"}) == []
        assert len(alice.threads.search(metadata={"topic": "secret"})) == 1
        anonymous = httpx.get(f"{base}/langgraph/threads/{thread['thread_id']}")
        assert anonymous.status_code == 401


@ours
async def test_a_client_that_leaves_cancels_with_on_disconnect_cancel(client: Any) -> None:
    thread = await client.threads.create()
    words = " ".join(f"word{i}" for i in range(300))
    stream = client.runs.stream(
        thread["thread_id"],
        "slow",
        input=human(words),
        stream_mode="messages-tuple",
        on_disconnect="cancel",
    )
    async for part in stream:
        if part.event == "messages":
            break
    await stream.aclose()
    for _ in range(100):
        runs = await client.runs.list(thread["thread_id"])
        if runs and runs[0]["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert runs[0]["status"] == "interrupted"


async def kept_then_running(client: Any) -> tuple[str, dict[str, Any]]:
    """A thread with one finished turn ("kept") and a long run whose input is already in
    the thread's state."""
    thread = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread, "slow", input=human("kept"))
    words = " ".join(f"word{i}" for i in range(200))
    run = await client.runs.create(thread, "slow", input=human(words))
    async for part in client.runs.join_stream(thread, run["run_id"], stream_mode="values"):
        if part.event == "values":
            break
    return thread, run


async def human_turns(client: Any, thread_id: str) -> list[str]:
    state = await client.threads.get_state(thread_id)
    return [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]


async def test_rollback_replaces_the_active_run_and_its_state(client: Any) -> None:
    thread_id, _ = await kept_then_running(client)
    second = await client.runs.create(
        thread_id, "slow", input=human("instead"), multitask_strategy="rollback"
    )
    await client.runs.join(thread_id, second["run_id"])
    assert await human_turns(client, thread_id) == ["kept", "instead"]


async def test_cancel_with_rollback_restores_the_state_before_the_run(client: Any) -> None:
    thread_id, run = await kept_then_running(client)
    await client.runs.cancel(thread_id, run["run_id"], wait=True, action="rollback")
    assert await human_turns(client, thread_id) == ["kept"]


async def test_thread_stream_follows_each_run_on_the_thread(client: Any) -> None:
    thread = await client.threads.create()
    thread_id = thread["thread_id"]
    first = await client.runs.create(
        thread_id, "slow", input=human("one two"), stream_mode="values", stream_resumable=True
    )
    events: list[tuple[str, Any, str | None]] = []
    second_id = None
    async for part in await client.threads.join_stream(thread_id, last_event_id="0"):
        events.append((part.event, part.data, part.id))
        done = [d["run_id"] for e, d, _ in events if e == "metadata" and d.get("status")]
        if done == [first["run_id"]] and second_id is None:
            second = await client.runs.create(
                thread_id, "slow", input=human("three"), stream_mode="values",
                stream_resumable=True,
            )  # fmt: skip
            second_id = second["run_id"]
        if len(done) == 2:
            break
    starts = [d["run_id"] for e, d, _ in events if e == "metadata" and "status" not in d]
    assert starts == [first["run_id"], second_id]
    finished = [d for e, d, _ in events if e == "metadata" and "status" in d]
    assert finished == [
        {"status": "run_done", "run_id": first["run_id"]},
        {"status": "run_done", "run_id": second_id},
    ]
    values = [d for e, d, _ in events if e == "values"]
    assert values[-1]["messages"][-1]["content"].startswith("You said")
    ids = [i for _, _, i in events]
    assert all(ids) and len(set(ids)) == len(ids)


async def test_thread_stream_resumes_after_its_last_id(client: Any) -> None:
    thread_id = (await client.threads.create())["thread_id"]
    run_ids = []
    for text in ("one", "two"):
        run = await client.runs.create(
            thread_id, "agent", input=human(text), stream_mode="updates", stream_resumable=True
        )
        await client.runs.join(thread_id, run["run_id"])
        run_ids.append(run["run_id"])

    async def until_done(last_event_id: str, runs: int) -> list[tuple[str, Any, str | None]]:
        seen = []
        async for part in await client.threads.join_stream(thread_id, last_event_id=last_event_id):
            seen.append((part.event, part.data, part.id))
            if sum(e == "metadata" and "status" in d for e, d, _ in seen) == runs:
                return seen
        return seen

    everything = await until_done("0", 2)
    first_done = next(i for e, d, i in everything if e == "metadata" and "status" in d)
    assert first_done is not None
    rest = await until_done(first_done, 1)
    cut = [event_id for _, _, event_id in everything].index(first_done) + 1
    assert rest == everything[cut:]  # exactly what came after it
    assert {d.get("run_id") for e, d, _ in rest if e == "metadata"} == {run_ids[1]}


async def test_copy_a_thread_with_its_state_and_history(client: Any) -> None:
    original = (await client.threads.create(metadata={"topic": "copy"}))["thread_id"]
    await client.runs.wait(original, "agent", input=human("what is 6*7?"))
    copied = await client.threads.copy(original)
    copy_id = copied["thread_id"]
    assert copy_id != original and copied["metadata"]["topic"] == "copy"
    state = await client.threads.get_state(copy_id)
    assert state["values"] == (await client.threads.get_state(original))["values"]
    history = await client.threads.get_history(copy_id, limit=100)
    assert len(history) == len(await client.threads.get_history(original, limit=100))
    # Independent: a turn on the copy leaves the original as it was.
    await client.runs.wait(copy_id, "agent", input=human("thanks"))
    assert len((await client.threads.get_state(copy_id))["values"]["messages"]) == 6
    assert len((await client.threads.get_state(original))["values"]["messages"]) == 4


@ours  # LangGraph's dev server refuses keep_latest (422: "not supported in in-memory")
async def test_prune_keeps_the_latest_checkpoint_or_deletes(client: Any) -> None:
    kept, gone = [(await client.threads.create())["thread_id"] for _ in range(2)]
    for thread_id in (kept, gone):
        await client.runs.wait(thread_id, "agent", input=human("what is 6*7?"))
    before = await client.threads.get_state(kept)
    assert (await client.threads.prune([kept], strategy="keep_latest"))["pruned_count"] == 1
    assert len(await client.threads.get_history(kept, limit=100)) == 1
    assert (await client.threads.get_state(kept))["values"] == before["values"]
    values = await client.runs.wait(kept, "agent", input=human("thanks"))  # still works
    assert len(values["messages"]) == 6
    pruned = await client.threads.prune([gone, str(uuid.uuid4())])
    assert pruned["pruned_count"] == 1
    with pytest.raises(NotFoundError):
        await client.threads.get(gone)


async def test_prune_deletes_threads(client: Any) -> None:
    thread_id = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread_id, "agent", input=human("hi"))
    assert (await client.threads.prune([thread_id]))["pruned_count"] == 1
    with pytest.raises(NotFoundError):
        await client.threads.get(thread_id)


async def test_batch_of_stateless_runs(client: Any) -> None:
    runs = await client.runs.create_batch(
        [
            {"assistant_id": "agent", "input": human("what is 6*7?"), "on_completion": "keep"},
            {"assistant_id": "agent", "input": human("hello"), "on_completion": "keep"},
        ]
    )
    assert len(runs) == 2 and len({r["thread_id"] for r in runs}) == 2
    for run, expected in zip(runs, ("42", "hello"), strict=True):
        await client.runs.join(run["thread_id"], run["run_id"])
        state = await client.threads.get_state(run["thread_id"])
        assert expected in state["values"]["messages"][-1]["content"]
        assert (await client.runs.get(run["thread_id"], run["run_id"]))["status"] == "success"


@ours  # LangGraph's in-memory runtime does not sweep thread TTLs
def test_threads_expire_after_their_ttl() -> None:
    settings = test_settings(graphs=GRAPHS, ttl_sweep_interval=0.05)
    with live_server(create_app(settings)) as base:
        client = get_sync_client(url=f"{base}/langgraph", api_key=None)
        brief = client.threads.create(ttl=0.002)["thread_id"]  # 120 ms without activity
        kept = client.threads.create()["thread_id"]
        client.runs.wait(brief, "agent", input=human("hi"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.threads.get(brief)
            except NotFoundError:
                break
            time.sleep(0.05)
        with pytest.raises(NotFoundError):
            client.threads.get(brief)
        assert client.threads.get(kept)["thread_id"] == kept
