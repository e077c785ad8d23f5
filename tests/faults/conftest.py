"""Fixtures of the fault tests: a private cluster per module (see cluster.py).

A module sets ``CLUSTER_SETTINGS`` (``AGENT_SERVER_*`` variables for its workers),
``CLUSTER_WORKERS`` and ``CLUSTER_PERSISTENT_REDIS`` to change what ``cluster`` starts. A
failing test's report gets a section with the tail of every worker's, Redis's and
PostgreSQL's log.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import PG_BIN, REDIS_SERVER, Cluster

GRAPHS = {"tokens": "tests.faults.graphs:tokens", "quiet": "tests.faults.graphs:quiet"}
DEFAULT_SETTINGS = {
    # SSE pings every second, so a silent stream is told from a dead one within seconds.
    "AGENT_SERVER_PING_INTERVAL": "1",
    "AGENT_SERVER_SHUTDOWN_GRACE": "1",
}


def missing_programs() -> str | None:
    for program in (Path(REDIS_SERVER), PG_BIN / "initdb", PG_BIN / "pg_ctl"):
        if not program.exists():
            return f"{program} is not installed"
    if shutil.which("runuser") is None:
        return "runuser is not installed (PostgreSQL must run as the postgres user)"
    return None


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A private Redis + PostgreSQL and two workers ``a`` and ``b``, for one module;
    each test gets them running (what a previous test took down is started again)."""
    missing = missing_programs()
    if missing is not None:
        pytest.skip(missing)
    settings = {**DEFAULT_SETTINGS, **getattr(request.module, "CLUSTER_SETTINGS", {})}
    workers = getattr(request.module, "CLUSTER_WORKERS", 2)
    persistent = getattr(request.module, "CLUSTER_PERSISTENT_REDIS", False)
    with Cluster(
        GRAPHS, workers=workers, settings=settings, persistent_redis=persistent
    ) as started:
        started.start()
        yield started


@pytest.fixture
def running(cluster: Cluster) -> Cluster:
    cluster.ensure_running()
    return cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when == "call":
        found = getattr(item, "funcargs", {}).get("cluster")
        if isinstance(found, Cluster):
            report.sections.append(("cluster logs", found.describe()))
    return report
