"""In-process streaming: the server's frames without a server."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

import httpx
from httpx_sse import connect_sse
from langchain_core.tools import tool

import agent_server
from agent_server.app import create_app
from agent_server.frames import parse_frame
from agent_server.notebook import render_html
from tests.conftest import test_settings
from tests.helpers import dispatched
from tests.live import live_server

VOLATILE = {"ts", "run_id", "message_id", "tool_call_id", "duration_ms", "thread_id"}


def comparable(frames: list[Any]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        data = {k: v for k, v in frame.model_dump().items() if k not in VOLATILE}
        out.append(data)
    return out


async def test_in_process_frames_equal_the_frames_over_sse() -> None:
    with live_server(create_app(test_settings())) as url, httpx.Client(timeout=30) as client:
        for message in ("what is 6*7?", "hello there", '/long_task {"steps": 1, "delay": 0}'):
            local = [frame async for frame in agent_server.stream("agent", message)]
            body = {"graph": "agent", "message": message}
            with connect_sse(client, "POST", f"{url}/runs/stream", json=body) as source:
                remote = [parse_frame(e.data) for e in dispatched(source) if e.data != "[DONE]"]
            assert comparable(local) == comparable(remote)


def test_stream_sync_threads_and_print_stream() -> None:
    first = list(agent_server.stream_sync("agent", "hello", thread_id="nb-thread"))
    assert first[-1].type == "done"
    output = io.StringIO()
    with redirect_stdout(output):
        frames = agent_server.print_stream(
            agent_server.stream_sync("agent", "2+2", thread_id="nb-thread")
        )
    assert "→ calculator" in output.getvalue() and "returned 4" in output.getvalue()
    done = frames[-1]
    assert done.type == "done" and done.usage.input_tokens > first[-1].usage.input_tokens


async def test_a_tool_registered_later_is_used_at_once() -> None:
    tools = agent_server.load_tools()

    @tool
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    tools.register(shout)
    frames = [f async for f in agent_server.stream("agent", '/shout {"text": "hey"}', tools=tools)]
    end = next(f for f in frames if f.type == "tool_end")
    assert end.name == "shout" and end.output == "HEY"
    html = render_html(frames)
    assert "<details open><summary>🔧 shout</summary>" in html and "HEY" in html


async def test_show_prints_outside_jupyter() -> None:
    output = io.StringIO()
    with redirect_stdout(output):
        frames = await agent_server.show(agent_server.stream("agent", "hi there"))
    assert frames[-1].type == "done" and "hi there" in output.getvalue()
