"""``agent-server``: serve, run a graph in the terminal, list graphs and tools."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging.config
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_server.console import ConsoleRenderer
from agent_server.logs import log_config
from agent_server.settings import Settings, parse_graph_specs

logger = logging.getLogger("agent_server.cli")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--graph",
        action="append",
        default=[],
        metavar="NAME=REF",
        help="register a graph (repeatable); REF is path/file.py:attr or pkg.module:attr",
    )
    parser.add_argument("--tools-dir", type=Path, help="directory scanned for tool plugins")
    parser.add_argument("--model", help="'scripted' (offline default) or 'openai:<model>'")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-server", description="Run LangGraph agents and stream what they do."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--reload", action="store_true", help="restart on code changes")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (needs a shared broker, e.g. redis://)",
    )
    serve.add_argument("--shared-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--log-level", help="log level (default info)")
    serve.add_argument(
        "--log-json",
        action="store_true",
        default=None,
        help="write logs as one JSON object per line",
    )
    _common(serve)

    run = commands.add_parser("run", help="run a graph once and stream its frames here")
    run.add_argument("graph_name", metavar="GRAPH", help="name of a registered graph")
    run.add_argument("message", help="the user message")
    run.add_argument("--thread", help="thread id, to continue a conversation")
    run.add_argument("--json", action="store_true", help="print one JSON frame per line")
    _common(run)

    graphs = commands.add_parser("graphs", help="list the registered graphs")
    _common(graphs)
    tools = commands.add_parser("tools", help="list the registered tools")
    _common(tools)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag in ("host", "port", "tools_dir", "model", "log_level", "log_json"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    if args.graph:
        overrides["graphs"] = parse_graph_specs(args.graph)
    return Settings(**overrides)


# A run allocates a few hundred short-lived objects per token, while the server holds
# many long-lived ones (loaded graphs, run logs); with the default threshold (700) the
# collector rescans them so often that it doubled the per-token cost of 20 concurrent
# streams (docs/performance.md). The server owns its process, so it tunes the collector.
GC_THRESHOLDS = (50_000, 20, 50)


# Descriptors a worker holds besides client connections: the listening socket, logs,
# database and Redis pools, the event loop's own (about 15 with memory:// storage).
FD_RESERVE = 50


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the default soft limit, often 1024,
    would bound the connections long before ``max_connections``), and say what it is."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, max_connections + FD_RESERVE)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            logger.info("file-descriptor limit raised from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("file-descriptor limit stays %d: %s", soft, exc)
    else:
        logger.info("file-descriptor limit %d", soft)
    if soft != resource.RLIM_INFINITY and soft - FD_RESERVE < max_connections:
        logger.warning(
            "the file-descriptor limit (%d) is below max_connections (%d) + %d: this worker "
            "has room for only about %d connections, and past that new ones are closed "
            "unanswered as they are accepted; raise the hard limit (ulimit -Hn, "
            "LimitNOFILE=) or lower AGENT_SERVER_MAX_CONNECTIONS",
            soft,
            max_connections,
            FD_RESERVE,
            max(soft - FD_RESERVE, 0),
        )


def _serve(settings: Settings, reload: bool, *, shared_port: bool = False) -> int:
    import uvicorn

    from agent_server.app import create_app
    from agent_server.http_protocol import HttpProtocol
    from agent_server.server import Server
    from agent_server.ws_protocol import WebSocketProtocol

    gc.set_threshold(*GC_THRESHOLDS)
    print(f"agent-server on http://{settings.host}:{settings.port}/", flush=True)
    raise_fd_limit(settings.max_connections)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": log_config(settings.log_level, json=settings.log_json),
        "loop": "uvloop",
        # httptools, with bounds on slow headers and bodies and an accept-time cap on
        # connections (agent_server/http_protocol.py reads the cap from limit_concurrency).
        "http": HttpProtocol,
        "limit_concurrency": settings.max_connections,
        # Runs are drained before connections close (agent_server/server.py); this only
        # bounds what is left, e.g. a client that stopped reading.
        "timeout_graceful_shutdown": 3,
        # Protocol-level pings find dead peers; pages rely on the application heartbeat
        # (browsers cannot see these). Oversize messages are refused by the app with a
        # reason (1009); uvicorn's own cap sits just above it.
        # uvicorn's WebSocket protocol, compressing with a context only while a socket
        # streams (agent_server/ws_protocol.py): an idle socket holds no zlib state.
        "ws": WebSocketProtocol,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_interval,
        "ws_max_size": settings.ws_max_message_bytes + 64 * 1024,
    }
    if reload:
        # The reloader imports the app in a fresh process: hand the settings over by env.
        env = settings.model_dump(mode="json", exclude={"openai_api_key", "openai_base_url"})
        for key, value in env.items():
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            os.environ[f"AGENT_SERVER_{key.upper()}"] = text
        uvicorn.run("agent_server.app:create_app", factory=True, reload=True, **options)
        return 0
    app = create_app(settings)
    server = Server(uvicorn.Config(app, **options), app, grace=settings.shutdown_grace)
    server.run(sockets=[reuse_port_socket(settings.host, settings.port)] if shared_port else None)
    return 0


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that sibling workers bind too; the kernel spreads connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve_workers(argv: Sequence[str], settings: Settings, workers: int) -> int:
    """N ``serve`` processes on one port (SO_REUSEPORT), each with its drained shutdown.

    Runs and threads must be shared between them, so a ``memory://`` broker is refused.
    The parent forwards SIGTERM/SIGINT to every worker, waits for them, and stops them
    all if one dies.
    """
    import signal
    import subprocess

    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        print(
            "agent-server: --workers needs a shared broker: set AGENT_SERVER_BROKER_URL to "
            "redis://host:port/db (with memory:// each worker would see only its own runs)",
            file=sys.stderr,
        )
        return 2
    if settings.database_url.startswith("memory://"):
        print(
            "agent-server: --workers needs a shared database (SQLite or PostgreSQL)",
            file=sys.stderr,
        )
        return 2
    child_argv = [a for a in argv if not a.startswith("--workers")]
    if "--workers" in argv:  # "--workers N" as two arguments
        index = list(argv).index("--workers")
        child_argv = list(argv[:index]) + list(argv[index + 2 :])
    command = [sys.executable, "-m", "agent_server.cli", *child_argv, "--shared-port"]
    children = [subprocess.Popen(command) for _ in range(workers)]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            return 0
        if any(code is not None for code in codes):
            forward(signal.SIGTERM, None)  # one died: stop the rest rather than limp on
        time.sleep(0.2)


async def _run(
    settings: Settings, graph: str, message: str, thread: str | None, as_json: bool
) -> int:
    from agent_server.app import open_state
    from agent_server.runs import Run

    async with open_state(settings) as state:
        if graph not in state.graphs:
            known = ", ".join(state.graphs.names()) or "none"
            print(f"agent-server: unknown graph {graph!r} (available: {known})", file=sys.stderr)
            return 2
        run = Run(
            graph=state.graphs.get(graph),
            input={"messages": [{"role": "user", "content": message}]},
            thread_id=thread or str(uuid.uuid4()),
        )
        state.runs.submit(run)
        renderer = ConsoleRenderer(sys.stdout)
        failed = False
        async for batch in run.follow():
            for entry in batch:
                failed = failed or entry.frame.type == "error"
                if as_json:
                    sys.stdout.write(entry.data.decode() + "\n")
                else:
                    renderer.write(entry.frame)
        sys.stdout.flush()
        return 1 if failed else 0


async def _list(settings: Settings, what: str) -> int:
    from agent_server.tools import ToolRegistry

    tools = ToolRegistry.from_sources(
        settings.tools_dir, entry_point_group=settings.tools_entry_point_group
    )
    if what == "tools":
        for tool in tools.describe():
            summary = (tool["description"] or "").strip().splitlines()
            print(f"{tool['name']}: {summary[0] if summary else ''}")
        errors = tools.errors
    else:
        from agent_server.app import open_state

        async with open_state(
            settings.model_copy(update={"database_url": "memory://"}), tools=tools
        ) as state:
            for entry in state.graphs:
                print(
                    f"{entry.name}: {entry.ref}"
                    + (f" ({entry.description})" if entry.description else "")
                )
            errors = [*state.graphs.errors]
    for error in errors:
        print(f"skipped {error.source}: {error.error}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # `python -m agent_server.cli`, `uvicorn` and `langgraph dev` make the project directory
    # importable; the console script does not, and `pkg.module:attr` graph references to the
    # project's own packages would fail under it alone.
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"agent-server: {exc}", file=sys.stderr)
        return 2
    logging.config.dictConfig(log_config(settings.log_level, json=settings.log_json))
    if args.command == "serve":
        if args.workers > 1:
            if args.reload:
                print("agent-server: --reload and --workers do not mix", file=sys.stderr)
                return 2
            return _serve_workers(
                list(argv if argv is not None else sys.argv[1:]), settings, args.workers
            )
        return _serve(settings, args.reload, shared_port=args.shared_port)
    try:
        if args.command == "run":
            return asyncio.run(
                _run(settings, args.graph_name, args.message, args.thread, args.json)
            )
        return asyncio.run(_list(settings, args.command))
    except ValueError as exc:  # a configuration the app rejects, e.g. an unknown model spec
        print(f"agent-server: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, as Unix tools do
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
