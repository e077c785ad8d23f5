"""The official JavaScript clients, run by Node against a live server (tests/js/).

LangGraph's JS client is run by tests/test_langgraph_api.py, beside its Python client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server

JS = Path(__file__).resolve().parent / "js"


def node() -> str:
    """Node with the project's npm packages installed, or a skip (a failure in CI)."""
    found = shutil.which("node")
    reason = None
    if found is None:
        reason = "Node.js is not installed"
    elif not all(
        (JS / "node_modules" / p).is_dir()
        for p in ("@ag-ui/client", "ai", "@langchain/langgraph-sdk")
    ):
        reason = "tests/js has no node_modules: run `npm ci --prefix tests/js` (make test does)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"in CI the JS client tests must run: {reason}")
        pytest.skip(reason)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    settings = test_settings()
    settings.graphs["approval"] = "tests.hitl_graphs:approval"
    settings.graphs["slow"] = "tests.lg_graphs:slow"  # thread_stream.mjs, two clients
    with live_server(create_app(settings)) as url:
        yield url


def test_official_agui_client(server: str) -> None:
    result = subprocess.run(
        [node(), str(JS / "agui.mjs"), server], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    first = summary["first"]
    assert first["outcome"] == "success"
    assert first["events"][0] == "RUN_STARTED" and first["events"][-1] == "RUN_FINISHED"
    for kind in ("TOOL_CALL_START", "TOOL_CALL_RESULT", "TEXT_MESSAGE_CONTENT", "STEP_STARTED"):
        assert kind in first["events"]
    assert {"role": "tool", "content": "42"} in summary["messagesAfterFirst"]
    assert summary["second"]["outcome"] == "success" and summary["second"]["users"] == 2
    assert summary["asked"] == {"outcome": "interrupt", "interrupts": 1}
    assert summary["resumed"] == {"outcome": "success", "text": "approved: yes"}


def test_official_ai_sdk_transport_and_reader(server: str) -> None:
    result = subprocess.run(
        [node(), str(JS / "aisdk.mjs"), server], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    parts = summary["message"]["parts"]
    tool = next(p for p in parts if p["type"] == "tool-calculator")
    assert tool["state"] == "output-available"
    assert tool["input"] == {"expression": "6*7"} and tool["output"] == "42"
    text = next(p for p in parts if p["type"] == "text")
    assert text["text"] == "The calculator tool returned 42." and text["state"] == "done"
    assert summary["reconnect"] is None  # no active stream: 204


def test_official_langgraph_thread_stream(server: str) -> None:
    """``client.threads.stream`` (Agent Protocol v2) over SSE: docs/thread-streams.md."""
    result = subprocess.run(
        [node(), str(JS / "thread_stream.mjs"), f"{server}/langgraph"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    texts = [deltas for deltas in summary["texts"] if deltas]  # not the tool call's message
    assert len(texts) == 1 and len(texts[0]) > 1  # token by token
    assert "".join(texts[0]) == summary["final"] == "The calculator tool returned 42."
    assert summary["calls"] == [
        {"name": "calculator", "input": {"expression": "6*7"}, "output": "42"}
    ]
    assert summary["outputTypes"] == ["human", "ai", "tool", "ai"]
    assert summary["sameEvents"] and summary["deltas"] > 1
    assert summary["lifecycle"] == ["running", "completed"]
    assert summary["asked"] == {"interrupted": True, "payload": {"question": "approve?"}}
    assert summary["answer"] == "approved: yes"
