"""Real PostgreSQL (and later Redis) for tests, each test in its own schema.

When a service is unreachable its tests are skipped with the reason, unless
``AGENT_SERVER_REQUIRE_SERVICES=1`` (``.ci/run`` sets it): then they fail, so CI can
never skip them silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

POSTGRES = os.environ.get("AGENT_SERVER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _unavailable(service: str, error: Exception) -> None:
    reason = f"{service} is not reachable ({error}); see README, 'Services'"
    if os.environ.get("AGENT_SERVER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"AGENT_SERVER_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL whose ``search_path`` is a fresh schema, dropped afterwards."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
        raise  # unreachable: skip/fail raise
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{POSTGRES}?options={quote(f'-csearch_path={schema}')}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


REDIS = os.environ.get("AGENT_SERVER_TEST_REDIS", "redis://127.0.0.1:6379/0")


@contextmanager
def redis_prefix() -> Iterator[tuple[str, str]]:
    """The Redis URL and a fresh key prefix; every key under it is deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
        raise
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    try:
        yield REDIS, prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
