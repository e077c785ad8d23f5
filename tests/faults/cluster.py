"""Real processes for fault injection: a private Redis, a private PostgreSQL, workers.

Decisions (read before changing):

- Never the shared services (127.0.0.1:6379, :5432): a fault test restarts and kills its
  services, which would break every other test and session using them. Each service
  here runs on a free port with its data under a temp dir, and goes with it.
- PostgreSQL refuses to run as root and the tests run as root: ``initdb`` and ``pg_ctl``
  run as the ``postgres`` OS user (``runuser``) on a directory that user owns. ``fsync``
  is off: a stop in ``immediate`` mode kills the server as a crash would, but the machine
  does not crash, so the page cache holds what was written and crash recovery still
  replays the WAL; syncing would only slow every test down.
- Workers run in the temp dir (not the repository), so the repository's
  ``agent_server.toml`` adds no graphs; the code under test comes from ``PYTHONPATH``.
  Their output goes to a log file whose tail a failing test shows (``describe()``).
- Every process started here is registered and stopped at interpreter exit as well, so
  an error between a start and its fixture's teardown leaves nothing running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = "/usr/bin/redis-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")

_live: set[Service] = set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} missing)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.05)
    return False


class Service:
    """Something started here that must not outlive the tests."""

    name = "service"

    def stop(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        self.stop()

    def describe(self) -> str:
        return self.name

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()


@atexit.register
def _stop_everything() -> None:
    for service in list(_live):
        with contextlib.suppress(Exception):
            service.cleanup()


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


class RedisServer(Service):
    """Its own ``redis-server`` on a free port, data in ``directory``.

    ``persistent=True`` keeps every write in an append-only file synced at each write
    (``--appendonly yes --appendfsync always``), so a restart keeps the keys; without it
    (``--save "" --appendonly no``, what docs/deploy.md's example runs) a restart loses
    every key. Both are what operators run.
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.name = "redis"
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running, "redis is already running"
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.persistent
            else ["--save", "", "--appendonly", "no"]
        )
        command = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--logfile", str(self.log), "--daemonize", "no",
            *persistence,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        _live.add(self)
        if not _wait_port(self.port, 10):
            raise RuntimeError(f"redis did not start on {self.port}:\n{tail(self.log)}")

    def stop(self) -> None:
        """A clean stop (SIGTERM: redis syncs its AOF when it has one, then exits)."""
        if self.process is not None:
            self.thaw()
            _terminate(self.process, 10)
        _live.discard(self)

    def freeze(self) -> None:
        """SIGSTOP: Redis hangs (connections stay open, nothing is answered), as under a
        long fork, swapping or a stalled disk; :meth:`thaw` resumes it."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: whatever was not written yet is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        _live.discard(self)

    def restart(self, down_seconds: float = 0.0, *, kill: bool = False) -> None:
        self.kill() if kill else self.stop()
        time.sleep(down_seconds)
        self.start()

    def describe(self) -> str:
        return f"redis {self.url} (persistent={self.persistent}):\n{tail(self.log, 15)}"


def _as_postgres(*command: str | Path) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *map(str, command)]


class PostgresCluster(Service):
    """A private PostgreSQL 15 cluster in ``directory`` (owned by the ``postgres`` user),
    listening on 127.0.0.1 and a free port, trust auth, one database ``database``."""

    def __init__(self, directory: Path, *, database: str = "agents") -> None:
        self.name = "postgres"
        self.directory = directory
        self.database = database
        self.port = free_port()
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        directory.mkdir(parents=True, exist_ok=True)
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        # Temp dirs above it are root's (0700): postgres must be able to reach its own.
        temp = Path(tempfile.gettempdir())
        for parent in directory.parents:
            if temp not in parent.parents:
                break
            parent.chmod(parent.stat().st_mode | 0o711)

    def _run(self, *command: str | Path, timeout: float = 60) -> None:
        result = subprocess.run(
            _as_postgres(*command), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{tail(self.log)}"
            )

    def start(self) -> None:
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._run(
                PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--no-sync", "--no-instructions",
            )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.directory} -c fsync=off -c max_connections=200"
        )
        _live.add(self)
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options,
                  "-w", "-t", "30", "start")  # fmt: skip
        if fresh:
            admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
                connection.execute(f'CREATE DATABASE "{self.database}"')

    @property
    def running(self) -> bool:
        return self._pid() is not None

    def _pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """``fast`` disconnects clients and shuts down cleanly; ``immediate`` kills the
        server processes (crash recovery at the next start)."""
        self.thaw()
        if self.running:
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def _processes(self) -> list[int]:
        """The postmaster and its children (the backends, the background workers)."""
        pid = self._pid()
        if pid is None:
            return []
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]

    def freeze(self) -> None:
        """SIGSTOP to every server process: PostgreSQL hangs (connections stay open and new
        ones are accepted by the kernel, nothing is answered), as under a stalled disk or
        a partition that drops packets; :meth:`thaw` resumes it."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if getattr(self, "frozen", False):
            for pid in self._processes():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
            self.frozen = False

    def restart(
        self, down_seconds: float = 0.0, mode: Literal["fast", "immediate"] = "fast"
    ) -> None:
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        pid = self._pid()
        if pid is not None:  # pg_ctl failed: the postmaster takes its children with it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _live.discard(self)

    def describe(self) -> str:
        return f"postgres {self.url}:\n{tail(self.log, 15)}"


class Worker(Service):
    """An ``agent-server serve`` process on its own port (kept across restarts)."""

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        broker_url: str,
        database_url: str,
        prefix: str,
        graphs: dict[str, str],
        settings: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.log = directory / f"worker-{name}.log"
        self.graphs = graphs
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AGENT_SERVER_BROKER_URL": broker_url,
            "AGENT_SERVER_DATABASE_URL": database_url,
            "AGENT_SERVER_BROKER_PREFIX": prefix,
            "AGENT_SERVER_LOG_LEVEL": "warning",
            "AGENT_SERVER_TOOLS_DIR": str(directory / "no-tools"),
            **(settings or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "no-tools").mkdir(exist_ok=True)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running, f"worker {self.name} is already running"
        command = [sys.executable, "-m", "agent_server.cli", "serve", "--port", str(self.port)]
        for graph, ref in self.graphs.items():
            command += ["--graph", f"{graph}={ref}"]
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"\n--- start {self.starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _live.add(self)

    def wait_ready(self, timeout: float = 60) -> float:
        """Wait for ``GET /healthz`` to answer 200; returns the seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if not self.running:
                raise RuntimeError(f"worker {self.name} exited:\n{tail(self.log)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - began
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready in {timeout} s:\n{tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL: no drain, no final frames; its runs are for the others to end."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def term(self) -> None:
        """SIGTERM (the drained shutdown); :meth:`wait` for the exit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def restart(self, timeout: float = 60) -> float:
        """Kill if running, start again on the same port; returns the seconds to ready."""
        self.kill()
        self.start()
        return self.wait_ready(timeout)

    def stop(self) -> None:
        if self.process is not None:
            _terminate(self.process, 20)
        _live.discard(self)

    def cleanup(self) -> None:
        self.kill()  # nothing to drain for: the test is over
        _live.discard(self)

    def describe(self) -> str:
        state = "running" if self.running else f"exited {self.process and self.process.poll()}"
        return f"worker {self.name} {self.url} pid {self.pid} ({state}):\n{tail(self.log)}"


class Cluster(Service):
    """A private Redis and PostgreSQL and ``workers`` workers sharing them (``a``, ``b``...).

    ``settings`` are ``AGENT_SERVER_*`` variables for every worker. Leaves nothing behind:
    processes stopped and the temp dir removed, on any exit.
    """

    def __init__(
        self,
        graphs: dict[str, str],
        *,
        workers: int = 2,
        persistent_redis: bool = False,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.name = "cluster"
        self.directory = Path(tempfile.mkdtemp(prefix="agent-server-faults-"))
        self.redis = RedisServer(self.directory / "redis", persistent=persistent_redis)
        self.postgres = PostgresCluster(self.directory / "postgres")
        self.prefix = f"faults-{uuid.uuid4().hex[:8]}"
        self.workers = [
            Worker(
                chr(ord("a") + i),
                self.directory / "workers",
                broker_url=self.redis.url,
                database_url=self.postgres.url,
                prefix=self.prefix,
                graphs=graphs,
                settings=settings,
            )
            for i in range(workers)
        ]
        _live.add(self)

    def start(self) -> None:
        self.redis.start()
        self.postgres.start()
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            worker.wait_ready()

    def ensure_running(self) -> None:
        """Start again whatever a previous test left down."""
        if not self.redis.running:
            self.redis.start()
        if not self.postgres.running:
            self.postgres.start()
        down = [worker for worker in self.workers if not worker.running]
        for worker in down:
            worker.start()
        for worker in down:
            worker.wait_ready()

    def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.cleanup()

    def cleanup(self) -> None:
        self.stop()
        for service in (self.redis, self.postgres):
            with contextlib.suppress(Exception):
                service.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)
        _live.discard(self)

    def describe(self) -> str:
        parts = [w.describe() for w in self.workers]
        return "\n\n".join([*parts, self.redis.describe(), self.postgres.describe()])
