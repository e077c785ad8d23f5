"""Run a stdio MCP server so that it never outlives agent-server.

Started by :mod:`agent_server.mcp.client` as ``python -I guard.py PARENT_PID COMMAND
[ARGS...]`` in place of the configured command; it imports nothing but the standard
library (``-I``: it runs whatever the environment, and never imports agent-server).

Why it exists (read before removing): the MCP SDK starts a stdio server in a new
session (its own process group) and ends it when the session closes: stdin closed,
then SIGTERM and SIGKILL to the group. That covers a clean shutdown, not agent-server
being killed (SIGKILL, the OOM killer, a crash): the server is then reparented and
lives on, and one that does not exit when its stdin closes, or a child of its own
(``npx`` starts ``node``), lives on for ever. ``subprocess``'s ``preexec_fn`` cannot
help: the SDK spawns through anyio, which does not take one. So the guard sits
between the two:

- it asks the kernel for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), and
  checks its parent every second besides (other systems, and the moment before the
  ``prctl``);
- it runs the server as its child with the same stdin, stdout and stderr (nothing is
  copied: the SDK talks to the server directly), in its own process group, the one
  the SDK created for the guard, and lets go of its own ends of the pipes, so that the
  server's death ends the session at once;
- when its parent is gone, or it is told to stop (SIGTERM, SIGINT, SIGHUP: what the
  SDK sends), it sends SIGTERM to the group, waits up to ``GRACE`` seconds for the
  server, then SIGKILL;
- when the server exits by itself, it sends SIGTERM to what is left of the group and
  exits with the server's status: the SDK sees the server's end as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

GRACE = 2.0  # as the SDK's own PROCESS_TERMINATION_TIMEOUT
POLL = 1.0


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # the poll below still notices


def _leads_group() -> bool:
    """Only a guard that leads its process group (as the SDK starts it) signals the
    group; run any other way, it must not hit its caller's group."""
    return os.getpgid(0) == os.getpid()


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    try:
        if _leads_group():
            os.killpg(os.getpid(), signum)
        else:
            child.send_signal(signum)
    except ProcessLookupError:
        pass


def _stop(child: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the group, then SIGKILL after ``GRACE`` seconds; the exit status."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group includes the guard
    _signal_group(child, signal.SIGTERM)
    try:
        child.wait(GRACE)
    except subprocess.TimeoutExpired:
        pass
    except _Stop:
        pass
    _signal_group(child, signal.SIGKILL)  # ends the guard too when it leads the group
    child.wait()
    return 128 + signal.SIGTERM


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not argv[1].isdigit():
        sys.stderr.write("usage: guard.py PARENT_PID COMMAND [ARGS...]\n")
        return 2
    parent = int(argv[1])
    _die_with_parent()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    if os.getppid() != parent:
        return 128 + signal.SIGTERM  # the parent died before the prctl took effect
    try:
        child = subprocess.Popen(argv[2:])
    except OSError as exc:
        sys.stderr.write(f"cannot start MCP server {argv[2]!r}: {exc}\n")
        return 127
    # The pipes are the server's alone: its death closes them, which the SDK reads as the
    # end of the session at once (not when the guard has noticed).
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    try:
        while True:
            try:
                code = child.wait(POLL)
            except subprocess.TimeoutExpired:
                if os.getppid() != parent:
                    return _stop(child)
                continue
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if _leads_group():  # what the server left behind
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(os.getpid(), signal.SIGTERM)
            return _status(code)
    except _Stop:
        return _stop(child)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
