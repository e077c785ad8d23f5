"""Logging: records carry the run they belong to, as JSON lines or readable text."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_server.logs import log_config
from agent_server.runs import Run, RunManager
from tests import sample_graphs
from tests.conftest import ROOT
from tests.helpers import entry, user

CONFIGURED = ("agent_server", "uvicorn", "uvicorn.access")

Configure = Callable[[bool], io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Applies ``log_config`` (as the CLI does) with its handler writing to a buffer.

    ``dictConfig`` is global: the loggers it configures are put back afterwards.
    """
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
        for name in CONFIGURED
        for logger in [logging.getLogger(name)]
    }

    def apply(as_json: bool) -> io.StringIO:
        buffer = io.StringIO()
        config = log_config("info", json=as_json)
        config["handlers"]["default"]["stream"] = buffer
        logging.config.dictConfig(config)
        return buffer

    try:
        yield apply
    finally:
        for name, (handlers, level, propagate, disabled) in saved.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
            logger.disabled = disabled


async def run_through_manager(graph: Any) -> Run:
    manager = RunManager()
    run = Run(graph=entry(graph), input=user("x"), thread_id=f"t-{uuid.uuid4()}")
    manager.submit(run)
    await run.wait()
    await manager.shutdown()
    return run


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_json_records_inside_a_run_carry_its_ids(configure: Configure) -> None:
    buffer = configure(True)
    logging.getLogger("agent_server.test").warning("outside")
    run = await run_through_manager(sample_graphs.log_inside)
    assert run.status == "success"
    records = {record["message"]: record for record in json_lines(buffer)}

    outside = records["outside"]
    assert "run_id" not in outside and "thread_id" not in outside
    assert outside["level"] == "warning" and outside["logger"] == "agent_server.test"
    assert time.strptime(outside["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    for message in ("inside", "failed inside", "inside a sync node"):
        assert records[message]["run_id"] == run.run_id, message
        assert records[message]["thread_id"] == run.thread_id, message
    failed = records["failed inside"]
    assert failed["level"] == "error"
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("ValueError: kaboom")
    assert "exception" not in records["inside"]


def test_json_records_keep_extra_fields_and_stacks(configure: Configure) -> None:
    buffer = configure(True)
    log = logging.getLogger("agent_server.test")
    log.info("with extras", extra={"graph": "agent", "run_id": "given"}, stack_info=True)
    [record] = json_lines(buffer)
    assert record["graph"] == "agent" and record["run_id"] == "given"  # explicit wins
    assert record["stack"].startswith("Stack (most recent call last):")


async def test_a_failed_runs_traceback_is_logged_with_its_run(configure: Configure) -> None:
    buffer = configure(True)
    run = await run_through_manager(sample_graphs.failing)
    assert run.status == "error"
    [failure] = [r for r in json_lines(buffer) if r["logger"] == "agent_server.runs"]
    assert failure["run_id"] == run.run_id and failure["thread_id"] == run.thread_id
    assert failure["level"] == "error" and run.run_id in failure["message"]
    assert failure["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: the model backend went away" in failure["exception"]


async def test_text_records_name_their_run_on_the_message_line(configure: Configure) -> None:
    buffer = configure(False)
    logging.getLogger("agent_server.test").warning("outside")
    run = await run_through_manager(sample_graphs.log_inside)
    lines = buffer.getvalue().splitlines()

    [outside] = [line for line in lines if line.endswith("agent_server.test: outside")]
    assert "[run " not in outside
    [inside] = [line for line in lines if "agent_server.test: inside [" in line]
    assert inside.endswith(f"agent_server.test: inside [run {run.run_id}]")
    assert "WARNING" in inside
    # with an exception, the run is named on the message line, the traceback follows
    at = next(i for i, line in enumerate(lines) if "agent_server.test: failed inside" in line)
    assert lines[at].endswith(f"failed inside [run {run.run_id}]")
    assert lines[at + 1] == "Traceback (most recent call last):"
    assert "ValueError: kaboom" in lines[at + 2 :]


def test_serve_log_json_writes_json_lines(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AGENT_SERVER_DATABASE_URL": "memory://", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "agent_server.cli", "serve", "--log-json"]
    command += ["--port", str(port), "--graph", "logs=tests.sample_graphs:log_inside"]
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        result = httpx.post(f"{url}/runs/wait", json={"graph": "logs", "message": "x"}, timeout=30)
        assert result.status_code == 200
        run = result.json()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    records = [json.loads(line) for line in stderr.read_text().splitlines()]
    by_message = {record["message"]: record for record in records}
    assert by_message["inside"]["run_id"] == run["run_id"]
    assert by_message["inside"]["thread_id"] == run["thread_id"]
    assert "ValueError: kaboom" in by_message["failed inside"]["exception"]
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any("POST /runs/wait" in r["message"] for r in access)
    assert all("run_id" not in r for r in access)  # requests are not runs
    assert any(r["logger"] == "agent_server" and "ready" in r["message"] for r in records)
    # uvicorn's terminal colouring is not part of a JSON record
    assert not any("color_message" in r for r in records)
