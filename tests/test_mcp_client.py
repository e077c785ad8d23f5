"""agent_server/mcp/client.py and config.py: tools from real MCP servers.

The servers are real: ``tests/mcp_servers/arith.py`` (FastMCP) over stdio and over
Streamable HTTP, and the published ``mcp-server-time`` package as a user installs it;
frames are read over SSE from a live agent-server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from playwright.sync_api import expect

from agent_server.app import create_app
from agent_server.chat_model import ScriptedChatModel
from agent_server.mcp.client import MCPServer, connect_servers, restart_delay
from agent_server.mcp.config import ServerSpec, load_specs
from agent_server.tools import ToolRegistry
from graphs.agent import make_graph
from tests.conftest import ROOT, test_settings
from tests.helpers import dispatched, entry, run_frames, user
from tests.live import live_server
from tests.test_playground import ARGS, CHROMIUM, send, watched_page

ARITH = ROOT / "tests" / "mcp_servers" / "arith.py"
# The published server, run as a user runs it after `pip install mcp-server-time`.
TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"


def stdio(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(ARITH)], **extra}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def has(self, *words: str) -> bool:
        return any(all(word in line for word in words) for line in self.lines)


@pytest.fixture(scope="module")
def logs() -> Iterator[Records]:
    records = Records()
    mcp_logger = logging.getLogger("agent_server.mcp")
    level = mcp_logger.level
    mcp_logger.setLevel(logging.DEBUG)
    mcp_logger.addHandler(records)
    yield records
    mcp_logger.removeHandler(records)
    mcp_logger.setLevel(level)


@pytest.fixture(scope="module")
def remote() -> Iterator[str]:
    """The same FastMCP server over Streamable HTTP (real uvicorn, loopback)."""
    from tests.mcp_servers.arith import build

    with live_server(build().streamable_http_app()) as url:
        yield url + "/mcp"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, remote: str, logs: Records) -> Iterator[str]:
    config = tmp_path_factory.mktemp("mcp") / "mcp.json"
    servers = {
        "arith": stdio(),
        "remote": {"url": remote},
        "time": {"command": str(TIME_SERVER), "args": ["--local-timezone", "UTC"]},
        "missing": {"command": "/nonexistent/mcp-server"},
        "unreachable": {"url": "http://127.0.0.1:9/mcp"},
        "typo": {"comand": "mcp-server"},
    }
    config.write_text(json.dumps({"mcpServers": servers}))
    with live_server(create_app(test_settings(mcp_config=config))) as url:
        yield url


def run(url: str, message: str) -> list[dict[str, Any]]:
    """The frames of one run of the agent over SSE."""
    body = {"graph": "agent", "message": message}
    with (
        httpx.Client(base_url=url, timeout=60) as client,
        connect_sse(client, "POST", "/runs/stream", json=body) as source,
    ):
        assert source.response.status_code == 200
        data = [event.data for event in dispatched(source)]
    assert data[-1] == "[DONE]"
    frames = [json.loads(item) for item in data[:-1]]
    assert frames[-1]["type"] == "done", frames[-1]
    return frames


def between(frames: list[dict[str, Any]], call_id: str) -> list[dict[str, Any]]:
    """The frames between a call's tool_start and its tool_end (or tool_error)."""
    start = next(
        i
        for i, f in enumerate(frames)
        if f["type"] == "tool_start" and f["tool_call_id"] == call_id
    )
    end = next(
        i
        for i, f in enumerate(frames)
        if f["type"] in ("tool_end", "tool_error") and f["tool_call_id"] == call_id
    )
    return frames[start + 1 : end]


def progress_of(frames: list[dict[str, Any]], call_id: str) -> list[dict[str, Any]]:
    return [
        f["data"]
        for f in frames
        if f["type"] == "custom"
        and f["name"] == "progress"
        and f["data"]["tool_call_id"] == call_id
    ]


def test_config_file_and_tables_merge_and_bad_entries_are_reported(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "files": {"command": "npx", "args": ["-y", "server"], "alwaysAllow": ["x"]},
                    "search": {"url": "https://example.com/mcp", "headers": {"A": "b"}},
                    "shared": {"type": "http", "url": "http://127.0.0.1:1/mcp"},
                    "old": {"transport": "sse", "url": "http://127.0.0.1:1/sse"},
                    "off": {"command": "x", "disabled": True},
                    "both": {"command": "x", "url": "http://x/mcp"},
                }
            }
        )
    )
    tables = {"shared": {"command": "from-toml"}, "local": {"command": "srv", "env": {"K": "v"}}}
    specs, errors = load_specs(config, tables)
    by_name = {spec.name: spec for spec in specs}
    assert list(by_name) == ["shared", "local", "files", "search"]
    assert by_name["shared"].transport == "streamable_http"  # the file wins over the table
    assert by_name["local"] == ServerSpec(
        name="local",
        source="agent_server.toml [mcp_servers.local]",
        transport="stdio",
        command="srv",
        env={"K": "v"},
    )
    assert by_name["files"].args == ["-y", "server"]
    assert by_name["search"].headers == {"A": "b"}
    reasons = {error.source.rsplit(" ", 1)[-1]: error.error for error in errors}
    assert "not supported" in reasons["[old]"]
    assert "exactly one of 'command'" in reasons["[both]"]
    _, errors = load_specs(tmp_path / "absent.json", {})
    assert "FileNotFoundError" in errors[0].error
    config.write_text('{"servers": {}}')
    _, errors = load_specs(config, {})
    assert "mcpServers" in errors[0].error


def test_tools_are_registered_with_schemas_clashes_prefixed_bad_servers_skipped(
    server: str, logs: Records
) -> None:
    health = httpx.get(server + "/healthz").json()
    tools = {tool["name"]: tool for tool in httpx.get(server + "/tools").json()["tools"]}
    assert health["status"] == "ok" and health["tools"] == len(tools)
    assert {"add", "count", "fail", "pid", "sleep"} <= tools.keys()  # arith, over stdio
    assert {"remote_add", "remote_count", "remote_fail"} <= tools.keys()  # the same, over HTTP
    assert {"get_current_time", "convert_time"} <= tools.keys()  # the published server
    assert {"calculator", "long_task"} <= tools.keys()  # the tool files are still there
    schema = tools["add"]["args_schema"]
    assert schema["properties"] == {
        "a": {"title": "A", "type": "integer"},
        "b": {"title": "B", "type": "integer"},
    }
    assert schema["required"] == ["a", "b"] and tools["add"]["description"] == "Add two integers."
    assert logs.has("'add'", "'remote'", "clashes", "'remote_add'")
    assert logs.has("'missing'", "skipped", "not found")
    assert logs.has("'unreachable'", "skipped")
    assert logs.has("[typo]", "exactly one of 'command'")


def test_calls_results_progress_and_errors_stream_as_frames(server: str, logs: Records) -> None:
    frames = run(
        server,
        '/add {"a": 2, "b": 3}\n/count {"steps": 3}\n/fail {"reason": "no way"}\n'
        '/remote_count {"steps": 2}',
    )
    starts = {f["name"]: f["tool_call_id"] for f in frames if f["type"] == "tool_start"}
    assert set(starts) == {"add", "count", "fail", "remote_count"}
    ends = {f["name"]: f for f in frames if f["type"] in ("tool_end", "tool_error")}
    assert ends["add"]["type"] == "tool_end"
    assert ends["add"]["output"] == {
        "content": "5",
        "artifact": {"structured_content": {"result": 5}},
    }
    assert ends["fail"]["type"] == "tool_error" and "no way" in ends["fail"]["error"]
    for name, total in (("count", 3), ("remote_count", 2)):
        call_id = starts[name]
        expected = [
            {
                "tool": name,
                "tool_call_id": call_id,
                "progress": step,
                "total": total,
                "message": f"step {step} of {total}",
            }
            for step in range(1, total + 1)
        ]
        assert progress_of(frames, call_id) == expected
        assert progress_of(between(frames, call_id), call_id) == expected  # all inside
        assert ends[name]["output"]["content"] == f"counted to {total}"
    answer = "".join(f["content"] for f in frames if f["type"] == "token")
    assert "The add tool returned 5." in answer and 'The fail tool failed: "' in answer
    # The server's log messages are logged, never streamed.
    assert logs.has("MCP server 'arith'", "counting to 3")
    assert not any("counting to" in json.dumps(f) for f in frames)


def test_published_time_server_from_pypi(server: str) -> None:
    frames = run(server, '/get_current_time {"timezone": "Europe/Paris"}')
    end = next(f for f in frames if f["type"] == "tool_end")
    assert end["name"] == "get_current_time"
    assert json.loads(end["output"])["timezone"] == "Europe/Paris"


async def test_both_event_sources_put_progress_inside_the_call() -> None:
    settings = test_settings(mcp_servers={"arith": stdio()})
    registry = ToolRegistry()
    async with connect_servers(settings, registry):
        graph = entry(make_graph(registry, ScriptedChatModel(), settings), "agent")
        message = user('/count {"steps": 2}')
        shapes = []
        for source in ("callbacks", "events"):
            frames = [f.model_dump() for f in await run_frames(graph, message, source=source)]
            call_id = next(f["tool_call_id"] for f in frames if f.get("name") == "count")
            assert [p["progress"] for p in progress_of(between(frames, call_id), call_id)] == [1, 2]
            shapes.append([f["type"] for f in frames if f["type"] != "token"])
        assert shapes[0] == shapes[1]
    assert "add" not in registry  # unregistered when the sessions closed


async def test_timeouts_deaths_restarts_and_back_off(tmp_path: Path) -> None:
    refuse = tmp_path / "refuse"
    spec = load_specs(None, {"arith": stdio(env={"ARITH_REFUSE_IF": str(refuse)})})[0][0]
    server = MCPServer(spec, connect_timeout=20, call_timeout=1)
    try:
        assert {tool.name for tool in await server.start()} >= {"add", "count", "sleep"}

        async def call(name: str, **args: Any) -> tuple[bool, str]:
            result = await server.call(name, args)
            return result.isError, "".join(getattr(b, "text", "") for b in result.content)

        assert await call("sleep", seconds=30) == (True, "tool 'sleep' timed out after 1 s")
        first_pid = int((await call("pid"))[1])

        # Killed between calls: the next call restarts it and succeeds. (A call sent in
        # the instant between the death and the end of its pipe is "during a call": it
        # fails, and the one after it restarts the server.)
        os.kill(first_pid, signal.SIGKILL)
        while _alive(first_pid):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the end of the pipe reaches the session
        outcome = await call("add", a=1, b=2)
        if outcome[0]:
            assert "went away during the call" in outcome[1]
            outcome = await call("add", a=1, b=2)
        assert outcome == (False, "3")
        second_pid = int((await call("pid"))[1])
        assert second_pid != first_pid and server.restarts == 1

        # Killed during a call: that call fails.
        progressed = asyncio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            progressed.set()

        slow = asyncio.create_task(server.call("count", {"steps": 50, "delay": 0.1}, on_progress))
        await progressed.wait()
        os.kill(second_pid, signal.SIGKILL)
        result = await slow
        assert result.isError and "went away during the call" in result.content[0].text  # type: ignore[union-attr]

        # It cannot start any more: the call that tries fails, and so do the calls
        # during the back-off that follows (or the next attempt, on a slow machine).
        refuse.touch()
        failed, text = await call("add", a=1, b=2)
        assert failed and "could not be restarted" in text
        failed, text = await call("add", a=1, b=2)
        assert failed and ("next restart attempt in" in text or "could not be restarted" in text)
        refuse.unlink()
    finally:
        await server.close()
    assert [restart_delay(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 30, 30]


def _descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid`` (Linux /proc), with their command lines."""
    children: dict[int, list[int]] = {}
    for entry_ in Path("/proc").iterdir():
        if not entry_.name.isdigit():
            continue
        try:
            fields = (entry_ / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry_.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found[child] = (
                (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            continue
        todo.extend(children.get(child, []))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stdio_servers_never_outlive_the_server(tmp_path: Path) -> None:
    """Two real servers (``agent-server serve``, started together to share the start-up
    time), one stopped by SIGTERM, one killed by SIGKILL: no MCP process is left."""
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"arith": stdio()}}))
    env = {**os.environ, "AGENT_SERVER_MCP_CONFIG": str(config)}
    servers: dict[signal.Signals, tuple[subprocess.Popen[bytes], int, Path]] = {}
    try:
        for how in (signal.SIGTERM, signal.SIGKILL):
            port, log = _free_port(), tmp_path / f"{how.name}.log"
            with log.open("wb") as out:
                # In an empty directory: no graphs or tool files to load, only the MCP server.
                process = subprocess.Popen(
                    [sys.executable, "-m", "agent_server.cli", "serve", "--port", str(port)],
                    cwd=tmp_path,
                    env={**env, "AGENT_SERVER_DATABASE_URL": "memory://"},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            servers[how] = (process, port, log)
        below: dict[signal.Signals, dict[int, str]] = {}
        for how, (process, port, log) in servers.items():
            deadline = time.monotonic() + 90
            while True:  # ready means the MCP servers are connected
                assert process.poll() is None, log.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            below[how] = _descendants(process.pid)
            assert any("guard.py" in line for line in below[how].values()), below
            assert any(
                str(ARITH) in line and "guard.py" not in line for line in below[how].values()
            ), below
        for how, (process, _, _) in servers.items():
            process.send_signal(how)
        for how, (process, _, _) in servers.items():
            process.wait(30)
            deadline = time.monotonic() + 20
            while any(_alive(pid) for pid in below[how]) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [line for pid, line in below[how].items() if _alive(pid)], how.name
    finally:
        for process, _, _ in servers.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, as tests/test_playground.py drives it."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI (.ci/run installs it)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_playground_shows_progress_inside_the_tool_cards(chromium: Any, server: str) -> None:
    """An MCP tool's progress and a stream writer's (``long_task``) alike: a bar in the
    card, its total known, and the latest message; nothing below the cards."""
    with watched_page(chromium, server) as page:
        page.goto(server + "/")
        page.wait_for_selector("#status[data-state=open]")
        page.get_by_role("button", name="New thread").click()
        send(page, '/count {"steps": 4}\n/long_task {"steps": 3, "delay": 0}')
        for name, total, last in (
            ("count", 4, "step 4 of 4"),
            ("long_task", 3, "step 3 of 3 done"),
        ):
            card = page.locator("details.tool[data-state=done]").filter(
                has=page.locator("strong", has_text=name)
            )
            card.wait_for()
            bar = card.get_by_role("progressbar", name=f"{name} progress")
            expect(bar).to_have_attribute("max", str(total))
            expect(bar).to_have_attribute("value", str(total))
            expect(card.locator(".progress")).to_have_text(last)
        page.locator(".msg.assistant", has_text="The count tool returned").wait_for()
        assert page.locator("#log > .progress").count() == 0
