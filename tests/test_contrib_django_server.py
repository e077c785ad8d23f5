"""examples/django_app end to end: ``uvicorn examples.django_app.asgi:application`` in two
processes of their own, from the repository root, sharing the Channels Redis layer (and
agent-server's Redis broker) on the local Redis; real ``websockets`` and ``httpx``
clients."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.helpers import dispatched
from tests.live import ROOT, LiveProcess
from tests.services import redis_prefix

APP = "examples.django_app.asgi:application"


PASSWORD = "a-password-for-tests"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveProcess, ...]]:
    logs = tmp_path_factory.mktemp("django")
    with redis_prefix() as (redis_url, prefix):
        env = {
            "AGENT_SERVER_ALLOW_ANONYMOUS": "1",
            "AGENT_SERVER_DATABASE_URL": "memory://",
            "AGENT_SERVER_SHUTDOWN_GRACE": "0",
            "AGENT_SERVER_BROKER_URL": redis_url,
            "AGENT_SERVER_BROKER_PREFIX": prefix,
            "DJANGO_CHANNELS_REDIS_URL": redis_url,
            "DJANGO_CHANNELS_PREFIX": f"{prefix}:",
            "DJANGO_DATA_DIR": str(logs),
        }
        # the example's user database, with one user, made by its manage.py
        make_user = (
            "from django.core.management import call_command\n"
            "from django.contrib.auth.models import User\n"
            "call_command('migrate', verbosity=0)\n"
            f"User.objects.create_superuser('alice', 'alice@example.com', {PASSWORD!r})\n"
        )
        subprocess.run(
            [sys.executable, "-m", "examples.django_app.manage", "shell", "-c", make_user],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
        )
        processes = [LiveProcess.start(APP, env=env, log=logs / f"{n}.log") for n in "ab"]
        try:
            for live in processes:
                live.wait_ready()
            yield tuple(processes)
        finally:
            for live in processes:
                live.stop()


def ws_url(live: LiveProcess) -> str:
    return live.url.replace("http", "ws") + "/ws/agent/"


def open_socket(live: LiveProcess, cookie: str | None = None) -> Any:
    # The example checks the page's origin (AllowedHostsOriginValidator), as a site must
    # for a socket authenticated by its session cookie.
    headers = {"Cookie": cookie} if cookie else None
    return connect(ws_url(live), origin=live.url, additional_headers=headers)  # type: ignore[arg-type]


def log_in(client: httpx.Client, base: str) -> str:
    """Alice logs in with Django's own login form; her session cookie, as a header."""
    form = client.get(base + "/admin/login/").text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token is not None
    done = client.post(
        base + "/admin/login/?next=/",
        data={"username": "alice", "password": PASSWORD, "next": "/",
              "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": base + "/admin/login/"},
    )  # fmt: skip
    assert done.status_code == 302, done.text
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


async def messages(ws: ClientConnection) -> AsyncIterator[dict[str, Any]]:
    while True:
        data = json.loads(await asyncio.wait_for(ws.recv(), 10))
        for item in data if isinstance(data, list) else [data]:
            if item["type"] != "ping":
                yield item


async def next_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async for message in messages(ws):
        if message["type"] == kind:
            return message
    raise AssertionError("unreachable")


async def frames_until_done(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = []
    async for message in messages(ws):
        if "seq" in message:
            frames.append(message)
            if message["type"] in ("done", "error"):
                return frames
    return frames


def test_the_page_and_the_sse_view(servers: tuple[LiveProcess, ...]) -> None:
    base = servers[0].url
    with httpx.Client(timeout=30) as client:
        page = client.get(base + "/")
        query = {"graph": "agent", "message": "2+2"}
        with connect_sse(client, "GET", base + "/sse/agent/", params=query) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = [(event.id, event.data) for event in dispatched(source)]
        run_id = events[0][0].split(":")[0]
        with connect_sse(
            client, "GET", base + "/sse/agent/", headers={"Last-Event-ID": f"{run_id}:2"}
        ) as source:
            rest = [(event.id, event.data) for event in dispatched(source)]
        ended = client.get(base + "/sse/agent/", headers={"Last-Event-ID": events[-2][0]})
        unknown = client.get(base + "/sse/agent/", params={"graph": "nope", "message": "x"})
        invalid = client.get(base + "/sse/agent/", params={"graph": "agent"})
    assert page.status_code == 200 and "/ws/agent/" in page.text and "/sse/agent/" in page.text
    assert events[-1][1] == "[DONE]"
    frames = [json.loads(data) for _, data in events[:-1]]
    assert [event_id for event_id, _ in events[:-1]] == [
        f"{run_id}:{n}" for n in range(1, len(frames) + 1)
    ]
    assert any(f["type"] == "tool_end" and f["output"] == "4" for f in frames)
    assert rest == events[2:]  # exactly what followed seq 2
    assert ended.status_code == 204
    assert unknown.status_code == 404 and unknown.json()["code"] == "graph_not_found"
    assert invalid.status_code == 422 and invalid.json()["code"] == "validation_error"


async def test_the_websocket_protocol_on_a_real_server(servers: tuple[LiveProcess, ...]) -> None:
    a = servers[0]
    async with open_socket(a) as ws:
        await ws.send(json.dumps({"type": "run", "graph": "agent", "message": "2+2"}))
        accepted = await next_of(ws, "run_accepted")
        frames = await frames_until_done(ws)
        await ws.send("not json")
        error = await next_of(ws, "error")
    assert frames[0]["run_id"] == accepted["run_id"] and frames[-1]["type"] == "done"
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert error["code"] == "invalid_json"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(a), origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403


async def test_a_room_across_two_processes(servers: tuple[LiveProcess, ...]) -> None:
    a, b = servers
    thread = f"room-{uuid.uuid4().hex[:8]}"
    async with open_socket(a) as watcher, open_socket(b) as starter:
        await watcher.send(json.dumps({"type": "join", "thread_id": thread}))
        assert len((await next_of(watcher, "presence"))["members"]) == 1
        await starter.send(json.dumps({"type": "join", "thread_id": thread}))
        arrived = await next_of(watcher, "presence")  # through the group, from process b
        assert arrived["event"] == "join" and len(arrived["members"]) == 2
        await starter.send(
            json.dumps(
                {
                    "type": "run",
                    "graph": "agent",
                    "message": '/long_task {"steps": 4, "delay": 0.1}',
                    "thread_id": thread,
                }
            )
        )
        started, watched = await asyncio.gather(
            frames_until_done(starter), frames_until_done(watcher)
        )
    assert watched == started  # every frame, in order, in the other process
    assert sum(f["type"] == "custom" for f in watched) == 4 and watched[-1]["type"] == "done"


async def test_resume_from_the_log_of_another_process(servers: tuple[LiveProcess, ...]) -> None:
    a, b = servers
    async with open_socket(b) as starter, open_socket(a) as late:
        await starter.send(json.dumps({"type": "run", "graph": "agent", "message": "2+2"}))
        run_id = (await next_of(starter, "run_accepted"))["run_id"]
        everything = await frames_until_done(starter)
        await late.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 2}))
        rest = await frames_until_done(late)
    assert rest == everything[2:]


async def test_a_logged_in_user_owns_her_runs(servers: tuple[LiveProcess, ...]) -> None:
    a = servers[0]
    thread = f"alice-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=30) as client:
        cookie = log_in(client, a.url)
        page = client.get(a.url + "/").text
    assert "Logged in as alice" in page
    async with open_socket(a, cookie) as alice, open_socket(a) as anonymous:
        run = {"type": "run", "graph": "agent", "message": "2+2", "thread_id": thread}
        await alice.send(json.dumps(run))
        run_id = (await next_of(alice, "run_accepted"))["run_id"]
        assert (await frames_until_done(alice))[-1]["type"] == "done"
        for message in ({"type": "join", "thread_id": thread}, {**run, "message": "mine now"}):
            await anonymous.send(json.dumps(message))
            assert (await next_of(anonymous, "error"))["code"] == "forbidden"
    with httpx.Client(timeout=30) as client:
        foreign = client.get(a.url + "/sse/agent/", headers={"Last-Event-ID": f"{run_id}:1"})
        client.cookies.update(dict(part.split("=", 1) for part in cookie.split("; ")))
        with connect_sse(
            client, "GET", a.url + "/sse/agent/", headers={"Last-Event-ID": f"{run_id}:1"}
        ) as source:
            rest = [event.data for event in dispatched(source)]
    assert foreign.status_code == 403 and foreign.json()["code"] == "forbidden"
    assert rest[-1] == "[DONE]" and json.loads(rest[0])["seq"] == 2


def test_logs_are_clean(servers: tuple[LiveProcess, ...]) -> None:
    for live in servers:
        output = live.output()
        assert "Traceback" not in output, output
        assert "agent-server ready" in output  # the Lifespan wrapper started it
