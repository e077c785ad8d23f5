"""The embedding API (agent_server/embed.py) in a FastAPI app of the test's own, served by
real uvicorn: host routes start runs on the mounted app's run manager, with the host's
user as their owner."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from httpx_sse import connect_sse
from starlette.applications import Starlette
from starlette.requests import Request

import agent_server
from agent_server import AppState, RunManager
from tests.conftest import test_settings
from tests.helpers import dispatched, sse_json
from tests.live import live_server

KEYS = {"alice": "key-a", "bob": "key-b"}


async def host_user(x_user: Annotated[str | None, Header()] = None) -> str:
    """The host's own auth, as a FastAPI dependency (here: a header names the user)."""
    if x_user not in KEYS:
        raise HTTPException(401, "who are you?")
    return x_user


State = Annotated[AppState, Depends(agent_server.get_state)]
Runs = Annotated[RunManager, Depends(agent_server.get_run_manager)]
UserId = Annotated[str, Depends(host_user)]


def host_app(agents: Starlette) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with agent_server.lifespan(agents) as state:
            yield {"agent_server": state}

    app = FastAPI(lifespan=lifespan, exception_handlers=agent_server.error_handlers)
    app.mount("/agents", agents)

    @app.post("/chat")
    async def chat(body: dict[str, Any], user: UserId, state: State) -> Any:
        run = await agent_server.start_run(
            state, body.get("graph", "agent"), body["message"], owner=user,
            thread_id=body.get("thread_id"),
        )  # fmt: skip
        return agent_server.sse_response(run)

    @app.post("/answer")
    async def answer(body: dict[str, Any], user: UserId, state: State) -> dict[str, Any]:
        run = await agent_server.start_run(state, "agent", input=body["input"], owner=user)
        frames = [frame async for frame in run]
        return {
            "run_id": run.run_id,
            "classes": [type(frame).__name__ for frame in frames],
            "text": "".join(f.content for f in frames if isinstance(f, agent_server.Token)),
            "described": await run.wait(),
        }

    @app.get("/runs/{run_id}")
    async def describe(run_id: str, runs: Runs) -> dict[str, Any]:
        run = runs.get(run_id)
        if run is None:
            raise HTTPException(404, "no such run here")
        return {"owner": run.owner, "status": run.status.value}

    return app


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Starlette]]:
    settings = test_settings(auth="api_keys", api_keys=KEYS, shutdown_grace=0)
    agents = agent_server.create_app(settings)
    with live_server(host_app(agents)) as url:
        yield url, agents


@pytest.fixture
def url(served: tuple[str, Starlette]) -> str:
    return served[0]


def test_host_route_streams_a_run_owned_by_the_host_user(url: str) -> None:
    with httpx.Client(timeout=30) as client:
        frames = sse_json(
            client, "POST", f"{url}/chat", json={"message": "2+2"}, headers={"X-User": "alice"}
        )
        assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
        assert frames[0]["type"] == "run_start" and frames[-1]["type"] == "done"
        assert any(f["type"] == "tool_end" and f["output"] == "4" for f in frames)
        run_id = frames[0]["run_id"]
        # the same run manager as the mounted routes, which know alice by her key
        mine = client.get(f"{url}/agents/runs/{run_id}", headers={"Authorization": "Bearer key-a"})
        theirs = client.get(
            f"{url}/agents/runs/{run_id}", headers={"Authorization": "Bearer key-b"}
        )
        replay = sse_json(
            client,
            "GET",
            f"{url}/agents/runs/{run_id}/stream",
            headers={"Authorization": "Bearer key-a", "Last-Event-ID": "2"},
        )
        host_view = client.get(f"{url}/runs/{run_id}").json()
    assert mine.status_code == 200 and mine.json()["status"] == "success"
    assert theirs.status_code == 403 and theirs.json()["code"] == "forbidden"
    assert replay == frames[2:]
    assert host_view == {"owner": "alice", "status": "success"}


def test_frames_of_a_run_iterated_in_a_host_route(url: str) -> None:
    question = {"messages": [{"role": "user", "content": "what is 6*7?"}]}
    with httpx.Client(timeout=30) as client:
        body = client.post(
            f"{url}/answer", json={"input": question}, headers={"X-User": "bob"}
        ).json()
    assert body["classes"][0] == "RunStart" and body["classes"][-1] == "Done"
    assert "ToolEnd" in body["classes"] and "42" in body["text"]
    assert body["described"]["status"] == "success"
    assert body["described"]["last_seq"] == len(body["classes"])


def test_another_users_thread_and_bad_input_get_json_errors(url: str) -> None:
    alice, bob = {"X-User": "alice"}, {"X-User": "bob"}
    with httpx.Client(timeout=30) as client:
        sse_json(client, "POST", f"{url}/chat", json={"message": "hi", "thread_id": "embed-a"},
                   headers=alice)  # fmt: skip
        foreign = client.post(
            f"{url}/chat", json={"message": "hi", "thread_id": "embed-a"}, headers=bob
        )
        bad_thread = client.post(
            f"{url}/chat", json={"message": "hi", "thread_id": "no spaces"}, headers=alice
        )
        no_graph = client.post(
            f"{url}/chat", json={"message": "hi", "graph": "nope"}, headers=alice
        )
        nobody = client.post(f"{url}/chat", json={"message": "hi"})
    assert foreign.status_code == 403 and foreign.json()["code"] == "forbidden"
    assert bad_thread.status_code == 422 and bad_thread.json()["code"] == "validation_error"
    assert "thread_id" in bad_thread.json()["message"]
    assert no_graph.status_code == 404 and no_graph.json()["code"] == "graph_not_found"
    assert nobody.status_code == 401  # the host's own auth, its own error format


def test_a_client_that_leaves_cancels_the_run(url: str, served: tuple[str, Starlette]) -> None:
    state: AppState = served[1].state.agent_server
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client,
            "POST",
            f"{url}/chat",
            json={"graph": "ticker", "message": "x"},
            headers={"X-User": "alice"},
        ) as source,  # fmt: skip
    ):
        run_id = source.response.headers["x-run-id"]
        for event in dispatched(source):
            if json.loads(event.data)["type"] == "custom":
                break
    run = state.runs.get(run_id)
    assert run is not None
    for _ in range(100):
        if run.finished:
            break
        time.sleep(0.05)
    assert run.status.value == "cancelled"


def test_get_state_without_a_started_agent_server_says_what_to_do() -> None:
    request = Request({"type": "http", "app": Starlette(), "headers": []})
    with pytest.raises(RuntimeError, match=r"agent_server\.lifespan"):
        agent_server.get_state(request)


def test_the_host_lifespan_starts_and_stops_agent_server() -> None:
    agents = agent_server.create_app(test_settings(shutdown_grace=0))
    with live_server(host_app(agents)) as url:
        state: AppState = agents.state.agent_server
        with httpx.Client(timeout=30) as client:
            started = client.post(f"{url}/agents/runs", json={"graph": "ticker", "message": "x"})
        run = state.runs.get(started.json()["run_id"])
        assert run is not None and not run.finished
    # the host's shutdown ran ours: runs drained, the rest cancelled with ``shutdown``
    assert run.finished and not state.runs.accepting
    last = run.log[-1].frame
    assert last.type == "error" and getattr(last, "code", None) == "shutdown"
