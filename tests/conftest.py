from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_client

from agent_server.app import create_app
from agent_server.settings import Settings
from tests.live import live_server

ROOT = Path(__file__).resolve().parent.parent


def test_settings(**overrides: object) -> Settings:
    """Settings for a test server: the repo's tools and graphs, memory checkpoints."""
    values: dict[str, object] = {
        "database_url": "memory://",
        "tools_dir": ROOT / "tools",
        "graphs": {
            "agent": str(ROOT / "graphs/agent.py") + ":make_graph",
            "failing": "tests.sample_graphs:failing",
            "ticker": "tests.sample_graphs:ticker",
            "quiet": "tests.sample_graphs:quiet",
        },
        "ping_interval": 0.1,
        "max_body_bytes": 10_000,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A live server (real uvicorn, loopback) shared by a test module."""
    with live_server(create_app(test_settings())) as url:
        yield url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fuzz suite's figures (tests/test_fuzz.py), whatever the capture mode."""
    fuzzing = sys.modules.get("tests.fuzzing")
    if fuzzing is not None and fuzzing.REPORT.sent:
        terminalreporter.write_line(fuzzing.REPORT.line())


@pytest.fixture
async def client(url: str) -> AsyncIterator[Any]:
    """langgraph-sdk's async client on a module's ``url`` (the LangGraph API it tests)."""
    client = get_client(url=url, api_key=None)
    try:
        yield client
    finally:
        await client.aclose()
