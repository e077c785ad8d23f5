"""The official JavaScript clients, run by Node against a live server (tests/js/)."""

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
    elif not (JS / "node_modules" / "@ag-ui" / "client").is_dir():
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
