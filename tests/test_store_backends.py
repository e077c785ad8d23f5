"""The store, assistant records, thread copies, prunes and TTLs on every backend: memory,
SQLite and PostgreSQL (a schema of its own: tests/services.py), through LangGraph's
client against a live server, and kept across a restart where the backend keeps them.

On PostgreSQL without pgvector (as on this machine) semantic search ranks in Python
(agent_server/stores.py); with it, LangGraph's pgvector index answers the same test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import NotFoundError

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server
from tests.services import postgres_schema
from tests.test_langgraph_api import GRAPHS, human

STORE_GRAPHS = {**GRAPHS, "memory": "tests.store_graphs:memory"}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield str(tmp_path / "threads.sqlite")
    else:
        with postgres_schema() as url:
            yield url


def until(check: Any, what: str) -> None:
    """Poll ``check`` (a sweep runs every 50 ms) for up to 10 s."""
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.05)


def gone(read: Any) -> bool:
    try:
        read()
    except NotFoundError:
        return True
    return False


def test_every_backend(database_url: str) -> None:
    settings = test_settings(
        graphs=STORE_GRAPHS, database_url=database_url, ttl_sweep_interval=0.05
    )
    with live_server(create_app(settings)) as base:
        client = get_sync_client(url=f"{base}/langgraph", api_key=None)
        # The store: items, filters, namespaces, semantic search, a graph's writes.
        client.store.put_item(["u1", "docs"], "pasta", {"text": "my favourite food is pasta"})
        client.store.put_item(["u1", "docs"], "bike", {"text": "I ride a bike to work"})
        client.store.put_item(["u1", "docs"], "off", {"text": "food food food"}, index=False)
        client.store.put_item(["u1", "tmp"], "brief", {"text": "soon gone"}, ttl=0.001)
        found = client.store.search_items(["u1"], query="my favourite food")["items"]
        assert found[0]["key"] == "pasta" and found[-1]["key"] == "off"
        assert found[-1]["score"] is None  # not indexed: after every scored item
        filtered = client.store.search_items(["u1", "docs"], filter={"text": "food food food"})
        assert [i["key"] for i in filtered["items"]] == ["off"]
        client.runs.wait(
            None, "memory", input=human("tea"), config={"configurable": {"user": "u2"}}
        )
        assert client.store.search_items(["u2"])["items"][0]["value"] == {"text": "tea"}
        # Polled without refresh_ttl: a refreshing read would push the expiry every time.
        until(
            lambda: client.store.get_item(["u1", "tmp"], "brief", refresh_ttl=False) is None,
            "item expired",
        )
        assert sorted(client.store.list_namespaces()["namespaces"]) == [
            ["u1", "docs"],
            ["u2", "memories"],
        ]
        client.store.delete_item(["u1", "docs"], "bike")

        # Assistants and versions.
        assistant = client.assistants.create("agent", config={"recursion_limit": 5}, name="a")
        client.assistants.update(assistant["assistant_id"], config={"recursion_limit": 6})
        client.assistants.set_latest(assistant["assistant_id"], 1)

        # Threads: a copy, a prune to the latest checkpoint, a TTL.
        thread = client.threads.create()["thread_id"]
        client.runs.wait(thread, "agent", input=human("what is 6*7?"))
        copy = client.threads.copy(thread)["thread_id"]
        assert len(client.threads.get_history(copy, limit=100)) == len(
            client.threads.get_history(thread, limit=100)
        )
        client.threads.prune([thread], strategy="keep_latest")
        assert len(client.threads.get_history(thread, limit=100)) == 1
        assert client.runs.wait(thread, "agent", input=human("thanks"))["messages"][-1]
        brief = client.threads.create(ttl=0.001)["thread_id"]
        until(lambda: gone(lambda: client.threads.get(brief)), "thread expired")

    if database_url == "memory://":
        return
    with live_server(create_app(settings)) as base:  # restarted: what was kept is there
        client = get_sync_client(url=f"{base}/langgraph", api_key=None)
        assert [i["key"] for i in client.store.search_items(["u1", "docs"])["items"]] == [
            "pasta",
            "off",
        ] or [i["key"] for i in client.store.search_items(["u1", "docs"])["items"]] == [
            "off",
            "pasta",
        ]
        again = client.store.search_items(["u1"], query="favourite food", limit=1)["items"]
        assert again[0]["key"] == "pasta"
        kept = client.assistants.get(assistant["assistant_id"])
        assert kept["version"] == 1 and kept["config"]["recursion_limit"] == 5
        versions = client.assistants.get_versions(assistant["assistant_id"])
        assert [v["version"] for v in versions] == [2, 1]
        assert len(client.threads.get_state(copy)["values"]["messages"]) == 4
        assert client.assistants.search(graph_id="agent", limit=10)
