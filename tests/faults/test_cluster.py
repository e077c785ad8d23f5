"""The fault harness itself: private services that restart, lose or keep data as told,
and leave nothing behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.faults.cluster import PostgresCluster, RedisServer
from tests.faults.conftest import missing_programs


@pytest.fixture
def directory() -> Iterator[Path]:
    reason = missing_programs()
    if reason is not None:
        pytest.skip(reason)
    path = Path(tempfile.mkdtemp(prefix="agent-server-faults-test-"))
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("persistent", [False, True])
def test_redis_restart_keeps_keys_only_with_persistence(directory: Path, persistent: bool) -> None:
    with RedisServer(directory, persistent=persistent) as server:
        server.start()
        assert server.port != 6379
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
        server.restart(down_seconds=0.1)
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") == (b"v" if persistent else None)
        server.freeze()
        with (
            redis.Redis.from_url(server.url, socket_timeout=0.3) as client,
            pytest.raises(redis.TimeoutError),
        ):
            client.ping()
        server.thaw()
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
        pid = server.process.pid if server.process else 0
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_postgres_restarts_keep_committed_rows_and_cleanup_removes_everything(
    directory: Path,
) -> None:
    with PostgresCluster(directory / "pg") as cluster:
        cluster.start()
        assert cluster.port != 5432
        with psycopg.connect(cluster.url, autocommit=True) as connection:
            connection.execute("CREATE TABLE t (x int)")
            connection.execute("INSERT INTO t VALUES (1)")
        cluster.restart(down_seconds=0.1, mode="immediate")  # a crash: WAL replay
        cluster.restart(mode="fast")
        with psycopg.connect(cluster.url) as connection:
            assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]
        cluster.stop("immediate")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.url, connect_timeout=2)
        cluster.start()
    assert not cluster.running
