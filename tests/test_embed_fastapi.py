"""examples/fastapi_app end to end: ``uvicorn examples.fastapi_app.main:app`` in its own
process, from the repository root, with agent-server mounted under ``/agents``: the
host's route, SSE, the WebSocket, the adapters and the playground through the prefix."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from websockets.asyncio.client import connect

from tests.helpers import dispatched, sse_json
from tests.live import LiveProcess, live_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProcess]:
    log = tmp_path_factory.mktemp("fastapi") / "server.log"
    env = {"AGENT_SERVER_DATABASE_URL": "memory://", "AGENT_SERVER_SHUTDOWN_GRACE": "0"}
    with live_process(
        "examples.fastapi_app.main:app", env=env, ready="/agents/healthz", log=log
    ) as live:
        yield live


@pytest.fixture
def url(example: LiveProcess) -> str:
    return example.url


def test_the_host_route_streams_through_the_public_api(url: str) -> None:
    with httpx.Client(timeout=30) as client:
        frames = sse_json(client, "POST", f"{url}/ask", json={"question": "what is 12*(3+4)?"})
        again = sse_json(
            client,
            "POST",
            f"{url}/ask",
            json={"question": "and again", "thread_id": frames[0]["thread_id"]},
        )
        state = client.get(f"{url}/agents/threads/{frames[0]['thread_id']}/state").json()
        empty = client.post(f"{url}/ask", json={"question": ""})
    assert frames[0]["type"] == "run_start" and frames[-1]["type"] == "done"
    assert any(f["type"] == "tool_end" and f["output"] == "84" for f in frames)
    assert again[-1]["type"] == "done"
    assert len(state["values"]["messages"]) >= 6  # both turns, on agent-server's thread
    assert empty.status_code == 422  # FastAPI's own validation of the host's body


def test_routes_and_sse_through_the_prefix(url: str) -> None:
    with httpx.Client(timeout=30) as client:
        redirect = client.get(f"{url}/agents")
        graphs = client.get(f"{url}/agents/graphs").json()
        started = client.post(f"{url}/agents/runs", json={"graph": "agent", "message": "2+2"})
        followed = sse_json(client, "GET", f"{url}/agents/runs/{started.json()['run_id']}/stream")
        query = {"graph": "agent", "message": "2+2"}
        with connect_sse(client, "GET", f"{url}/agents/runs/stream", params=query) as source:
            ids = [event.id for event in dispatched(source) if event.data != "[DONE]"]
        missing = client.get(f"{url}/agents/nowhere")
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("/agents/")
    assert "agent" in [g["name"] for g in graphs["graphs"]]
    assert started.status_code == 202
    assert started.headers["location"] == f"{url}/agents/runs/{started.json()['run_id']}"
    assert followed[0]["type"] == "run_start" and followed[-1]["type"] == "done"
    run_id = ids[0].split(":")[0]
    assert ids == [f"{run_id}:{n}" for n in range(1, len(ids) + 1)]
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_websocket_through_the_prefix(url: str) -> None:
    thread = f"ws-{uuid.uuid4().hex[:8]}"
    async with connect(url.replace("http", "ws") + "/agents/ws") as ws:
        await ws.send(json.dumps({"type": "join", "thread_id": thread}))
        await ws.send(
            json.dumps({"type": "run", "graph": "agent", "message": "2+2", "thread_id": thread})
        )
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1].get("type") not in ("done", "error") or "seq" not in seen[-1]:
            data = json.loads(await asyncio.wait_for(ws.recv(), 10))
            seen.extend(item for item in (data if isinstance(data, list) else [data]))
    kinds = [m["type"] for m in seen]
    assert kinds[0] == "presence" and "run_accepted" in kinds
    frames = [m for m in seen if "seq" in m]
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert any(f["type"] == "tool_end" and f["output"] == "4" for f in frames)


def test_adapters_through_the_prefix(url: str) -> None:
    agui = {
        "threadId": f"agui-{uuid.uuid4().hex[:8]}", "runId": "r-1", "state": {}, "tools": [],
        "context": [], "forwardedProps": {},
        "messages": [{"id": "m-1", "role": "user", "content": "2+2"}],
    }  # fmt: skip
    chat = {
        "id": f"chat-{uuid.uuid4().hex[:8]}",
        "trigger": "submit-message",
        "messages": [{"id": "m-1", "role": "user", "parts": [{"type": "text", "text": "2+2"}]}],
    }
    with httpx.Client(timeout=30) as client:
        agui_events = client.post(f"{url}/agents/ag-ui/agent", json=agui)
        chat_parts = client.post(f"{url}/agents/ai-sdk/agent", json=chat)
    kinds = [
        json.loads(block[6:])["type"]
        for block in agui_events.content.split(b"\n\n")
        if block.startswith(b"data: ")
    ]
    assert kinds[0] == "RUN_STARTED" and kinds[-1] == "RUN_FINISHED"
    parts = [b[6:] for b in chat_parts.content.split(b"\n\n") if b.startswith(b"data: ")]
    assert parts[-1] == b"[DONE]" and json.loads(parts[-2])["type"] == "finish"


def test_the_playground_under_the_prefix(url: str) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI (.ci/run installs it)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        requests: list[str] = []
        sockets: list[str] = []
        problems: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("websocket", lambda w: sockets.append(w.url))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(url + "/agents/")
        page.wait_for_selector("#status[data-state=open]")
        box = page.get_by_role("textbox", name="Message")
        box.fill("what is 12*(3+4)?")
        box.press("Enter")
        card = page.locator("details.tool[data-state=done]")
        card.wait_for()
        assert "84" in card.inner_text()
        page.locator("#transport").select_option("sse")
        box.fill("2+2")
        box.press("Enter")
        page.locator("details.tool[data-state=done]", has_text="4").nth(1).wait_for()
        browser.close()
    assert problems == []
    assert requests and all(r.startswith(f"{url}/agents/") for r in requests)
    assert any(r.startswith(f"{url}/agents/runs/stream?") for r in requests)
    assert sockets and set(sockets) == {url.replace("http", "ws") + "/agents/ws"}


def test_sigterm_runs_the_lifespan_shutdown(tmp_path: Path) -> None:
    """The host's lifespan stops agent-server's: a running run is cancelled and the
    process exits (tests/test_embed.py checks the run's ``shutdown`` frame in-process)."""
    env = {"AGENT_SERVER_DATABASE_URL": "memory://", "AGENT_SERVER_SHUTDOWN_GRACE": "0"}
    with live_process(
        "examples.fastapi_app.main:app", env=env, ready="/agents/healthz", log=tmp_path / "log"
    ) as live:
        with httpx.Client(timeout=30) as client:
            started = client.post(
                f"{live.url}/agents/runs",
                json={"graph": "agent", "message": '/long_task {"steps": 50, "delay": 1}'},
            )
        assert started.status_code == 202
        live.process.send_signal(signal.SIGTERM)
        code = live.process.wait(10)
    output = live.output()
    assert code in (0, -signal.SIGTERM), output
    assert "Waiting for application shutdown." in output
    assert "Application shutdown complete." in output and "Traceback" not in output
