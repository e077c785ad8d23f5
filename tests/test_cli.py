"""The real `agent-server` console script, run as a subprocess (each start costs ~1.5 s)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from agent_server.frames import parse_frame
from tests.helpers import dispatched

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "agent-server"

COUNT_GRAPH = """
from langchain_core.messages import AIMessage
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph


def count(state: MessagesState) -> dict:
    report = f"{len(state['messages'])} messages"
    get_stream_writer()({"name": "count", "data": report})
    return {"messages": [AIMessage(report)]}


graph = StateGraph(MessagesState).add_node("count", count).add_edge(START, "count").compile()
"""


def environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AGENT_SERVER_")}
    env.update({"AGENT_SERVER_DATABASE_URL": "memory://", "PYTHONIOENCODING": "utf-8", **extra})
    return env


def cli(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def test_the_console_script_is_installed() -> None:
    assert SCRIPT.is_file(), "install the package: pip install -e '.[dev]'"


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ("", ["serve", "run", "graphs", "tools"]),
        ("serve", ["--host", "--port", "--reload", "--log-level", "--graph", "--tools-dir"]),
        ("run", ["GRAPH", "message", "--thread", "--json", "--graph", "--model"]),
        ("graphs", ["--graph", "--tools-dir", "--model"]),
        ("tools", ["--graph", "--tools-dir", "--model"]),
    ],
)
def test_help(command: str, mentions: list[str]) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: agent-server")
    for word in mentions:
        assert word in result.stdout


def test_graphs_lists_the_configured_and_the_added_graphs(tmp_path: Path) -> None:
    extra = write(tmp_path / "extra.py", COUNT_GRAPH)
    result = cli("graphs", "--graph", f"extra={extra}:graph")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "agent: graphs/agent.py:make_graph (A tool-calling agent over every registered tool.)",
        "rag: graphs/rag.py:make_graph (Answers questions about agent-server from its "
        "documentation (BM25 retrieval).)",
        f"extra: {extra}:graph",
    ]


def test_project_packages_and_langgraph_json_in_the_working_directory(tmp_path: Path) -> None:
    write(tmp_path / "my_project" / "__init__.py", "")
    write(tmp_path / "my_project" / "graphs.py", COUNT_GRAPH)
    write(tmp_path / "helpers.py", "NAME = 'helper'\n")
    # A graph file importing a sibling module of the project, as under `langgraph dev`.
    write(tmp_path / "sibling.py", "from helpers import NAME\n" + COUNT_GRAPH)
    write(tmp_path / "broken.py", "def broken(:\n")
    write(
        tmp_path / "langgraph.json",
        '{"dependencies": ["."], "graphs": {"lg": "./sibling.py:graph"}}',
    )
    result = cli(
        "graphs",
        "--graph",
        "pkg=my_project.graphs:graph",
        "--graph",
        "broken=broken.py:graph",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["lg: ./sibling.py:graph", "pkg: my_project.graphs:graph"]
    assert "skipped graph broken = broken.py:graph: SyntaxError" in result.stderr


def test_tools() -> None:
    result = cli("tools")
    assert result.returncode == 0, result.stderr
    names = [line.partition(":")[0] for line in result.stdout.splitlines()]
    assert {"calculator", "current_time", "long_task"} <= set(names)
    assert "skipped" not in result.stderr


def test_a_broken_tool_file_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "tools" / "bad.py", "def broken(:\n")
    write(
        tmp_path / "tools" / "good.py",
        '''
        from langchain_core.tools import tool


        @tool
        def shout(text: str) -> str:
            """Upper-case the text."""
            return text.upper()
        ''',
    )
    result = cli("tools", "--tools-dir", str(tmp_path / "tools"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["shout: Upper-case the text."]
    assert f"skipped {tmp_path / 'tools' / 'bad.py'}: SyntaxError" in result.stderr


def test_run_prints_tool_lines_and_the_answer() -> None:
    result = cli("run", "agent", "what is 12*(3+4)?")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[agent] run ")
    assert '→ calculator({"expression":"12*(3+4)"})' in lines
    assert any(line.startswith("← calculator: 84") for line in lines)
    assert "84" in lines[-2]  # the answer, before the summary line
    assert lines[-1].startswith("done in ")


def test_run_json_prints_one_frame_per_line() -> None:
    result = cli("run", "agent", "what is 12*(3+4)?", "--json", "--thread", "cli-thread")
    assert result.returncode == 0, result.stderr
    frames: list[Any] = [parse_frame(line) for line in result.stdout.splitlines()]
    assert frames[0].type == "run_start" and frames[-1].type == "done"
    assert frames[0].graph == "agent" and frames[0].thread_id == "cli-thread"
    assert [frame.seq for frame in frames] == list(range(1, len(frames) + 1))
    assert len({frame.run_id for frame in frames}) == 1
    assert any(frame.type == "tool_end" and frame.output == "84" for frame in frames)


def test_run_an_unknown_graph() -> None:
    result = cli("run", "nope", "hi")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "unknown graph 'nope' (available: agent, rag)" in result.stderr


def test_invalid_options_are_one_line_errors() -> None:
    result = cli("graphs", "--graph", "no-equals-sign", "--model", "nope")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "agent-server: invalid graph 'no-equals-sign': expected NAME=REF"
    )
    result = cli("graphs", "--model", "nope")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("agent-server: unknown model spec 'nope'")


def test_thread_memory_persists_across_invocations(tmp_path: Path) -> None:
    count = write(tmp_path / "count.py", COUNT_GRAPH)
    database = tmp_path / "t.sqlite"
    args = ("run", "count", "hello", "--thread", "t1", "--graph", f"count={count}:graph")
    first = cli(*args, AGENT_SERVER_DATABASE_URL=str(database))
    assert first.returncode == 0, first.stderr
    assert "· count: 1 messages" in first.stdout.splitlines()
    assert database.is_file()
    second = cli(*args, AGENT_SERVER_DATABASE_URL=str(database))
    assert second.returncode == 0, second.stderr
    assert "· count: 3 messages" in second.stdout.splitlines()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_streams_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "stderr.log").open("w+") as log:
        server = subprocess.Popen(
            [str(SCRIPT), "serve", "--port", str(port)],
            cwd=ROOT,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, log.seek(0) or log.read()
                try:
                    health = httpx.get(f"{url}/healthz", timeout=1)
                    if health.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not answer within 30 s"
                time.sleep(0.1)
            assert health.json()["graphs"] == 2  # agent and rag

            frames: list[Any] = []
            with (
                httpx.Client(timeout=30) as client,
                connect_sse(
                    client, "POST", f"{url}/runs/stream", json={"graph": "agent", "message": "2+2"}
                ) as source,
            ):
                for sse in dispatched(source):
                    if sse.data == "[DONE]":
                        break
                    frames.append(parse_frame(sse.data))
            assert frames[0].type == "run_start" and frames[-1].type == "done"
            assert [frame.seq for frame in frames] == list(range(1, len(frames) + 1))
            assert any(frame.type == "tool_end" and frame.output == "4" for frame in frames)

            server.send_signal(signal.SIGTERM)
            stdout, _ = server.communicate(timeout=15)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        log.seek(0)
        messages = log.read()
    # uvicorn shuts down gracefully, then re-raises the signal so that the exit status says so.
    assert server.returncode in (0, -signal.SIGTERM)
    assert "Waiting for application shutdown." in messages
    assert "Finished server process" in messages
    assert stdout.splitlines()[0] == f"agent-server on {url}/"
