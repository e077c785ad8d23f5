"""The store (``/langgraph/store/...``), judged by LangGraph's Python client.

Like tests/test_langgraph_api.py, these run against LangGraph's dev server too when
``LANGGRAPH_API_URL`` names one (``make test-langgraph-dev``, which indexes its store
with the same offline embeddings: tests/langgraph_dev/langgraph.json); tests marked
``ours`` check what only agent-server does. tests/test_store_backends.py runs the same
operations on every backend (memory, SQLite, PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server
from tests.test_js_clients import JS, node
from tests.test_langgraph_api import GRAPHS, human, langgraph_url, ours

STORE_GRAPHS = {**GRAPHS, "memory": "tests.store_graphs:memory"}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with langgraph_url(STORE_GRAPHS) as found:
        yield found


def fresh() -> str:
    """A namespace root of this test's own (the dev server's store outlives a run)."""
    return f"t{uuid.uuid4().hex[:12]}"


async def test_items_round_trip_search_and_namespaces(client: Any) -> None:
    root = fresh()
    await client.store.put_item([root, "prefs"], "theme", {"color": "dark", "size": 3})
    await client.store.put_item([root, "prefs"], "font", {"color": "light", "size": 5})
    await client.store.put_item([root, "notes", "work"], "n1", {"text": "ship it", "size": 1})
    item = await client.store.get_item([root, "prefs"], "theme")
    assert item["namespace"] == [root, "prefs"] and item["key"] == "theme"
    assert item["value"] == {"color": "dark", "size": 3}
    assert item["created_at"] and item["updated_at"]

    await client.store.put_item([root, "prefs"], "theme", {"color": "blue", "size": 3})
    assert (await client.store.get_item([root, "prefs"], "theme"))["value"]["color"] == "blue"

    everything = (await client.store.search_items([root]))["items"]
    assert {i["key"] for i in everything} == {"theme", "font", "n1"}
    filtered = (await client.store.search_items([root], filter={"color": "light"}))["items"]
    assert [i["key"] for i in filtered] == ["font"]
    bigger = (await client.store.search_items([root], filter={"size": {"$gt": 4}}))["items"]
    assert [i["key"] for i in bigger] == ["font"]
    first = (await client.store.search_items([root, "prefs"], limit=1))["items"]
    second = (await client.store.search_items([root, "prefs"], limit=1, offset=1))["items"]
    assert len(first) == len(second) == 1 and first[0]["key"] != second[0]["key"]

    listed = (await client.store.list_namespaces(prefix=[root]))["namespaces"]
    assert sorted(listed) == [[root, "notes", "work"], [root, "prefs"]]
    shallow = (await client.store.list_namespaces(prefix=[root], max_depth=2))["namespaces"]
    assert sorted(shallow) == [[root, "notes"], [root, "prefs"]]
    ending = (await client.store.list_namespaces(prefix=[root], suffix=["work"]))["namespaces"]
    assert ending == [[root, "notes", "work"]]

    await client.store.delete_item([root, "prefs"], "theme")
    assert await client.store.get_item([root, "prefs"], "theme") is None
    for namespace, key in (([root, "prefs"], "font"), ([root, "notes", "work"], "n1")):
        await client.store.delete_item(namespace, key)


async def test_semantic_search_ranks_by_the_query(client: Any) -> None:
    root = fresh()
    documents = {
        "pasta": "my favourite food is pasta with tomato sauce",
        "bike": "I ride a red bike to work every day",
        "cat": "my cat sleeps on the sofa all afternoon",
    }
    for key, text in documents.items():
        await client.store.put_item([root, "docs"], key, {"text": text})
    found = (await client.store.search_items([root], query="which food is my favourite?"))["items"]
    assert found[0]["key"] == "pasta"
    assert found[0]["score"] > found[-1]["score"]
    bike = (await client.store.search_items([root], query="bike to work", limit=1))["items"]
    assert [i["key"] for i in bike] == ["bike"]
    for key in documents:
        await client.store.delete_item([root, "docs"], key)


async def test_a_graph_reads_and_writes_the_store_during_a_run(client: Any) -> None:
    """What a graph writes (``store`` argument) the API reads, and the reverse."""
    user = fresh()
    config = {"configurable": {"user": user}}
    first = await client.runs.wait(None, "memory", input=human("I love green tea"), config=config)
    assert first["messages"][-1]["content"] == "Nothing yet."
    written = (await client.store.search_items([user, "memories"]))["items"]
    assert [i["value"] for i in written] == [{"text": "I love green tea"}]

    await client.store.put_item([user, "memories"], "api", {"text": "my dog is called Rex"})
    second = await client.runs.wait(
        None, "memory", input=human("what is my dog called?"), config=config
    )
    assert second["messages"][-1]["content"] == "I remember: my dog is called Rex"
    for item in (await client.store.search_items([user]))["items"]:
        await client.store.delete_item(item["namespace"], item["key"])


@ours
async def test_items_expire_after_their_ttl(client: Any) -> None:
    """(LangGraph's dev server has no TTL in its in-memory store: a put with ttl fails.)"""
    root = fresh()
    await client.store.put_item([root], "brief", {"v": 1}, ttl=0.002)  # 120 ms
    await client.store.put_item([root], "kept", {"v": 2})
    assert (await client.store.get_item([root], "brief"))["value"] == {"v": 1}
    await asyncio.sleep(0.3)
    assert await client.store.get_item([root], "brief") is None
    assert [i["key"] for i in (await client.store.search_items([root]))["items"]] == ["kept"]


@ours
async def test_bad_store_requests_are_422(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        refused = [
            await http.put("/store/items", json={"namespace": ["a.b"], "key": "k", "value": {}}),
            await http.put("/store/items", json={"namespace": [], "key": "k", "value": {}}),
            await http.put("/store/items", json={"namespace": ["a"], "key": "", "value": {}}),
            await http.put("/store/items", json={"namespace": ["a"], "key": "k", "value": 3}),
            await http.get("/store/items", params={"namespace": "a..b", "key": "k"}),
            await http.get("/store/items", params={"namespace": "a"}),
            await http.post("/store/items/search", json={"filter": {"x": {"$regex": "."}}}),
            await http.post("/store/items/search", json={"namespace_prefix": ["a\x00"]}),
        ]
    for response in refused:
        assert response.status_code == 422, response.text
        assert response.json()["detail"]


@ours
def test_a_users_namespaces_start_with_their_id() -> None:
    settings = test_settings(
        graphs=STORE_GRAPHS, auth="api_keys", api_keys={"alice": "ka", "bob": "kb"}
    )
    with live_server(create_app(settings)) as base:
        alice = get_sync_client(url=f"{base}/langgraph", api_key="ka")
        bob = get_sync_client(url=f"{base}/langgraph", api_key="kb")
        alice.store.put_item(["alice", "notes"], "n", {"text": "mine"})
        with pytest.raises(httpx.HTTPStatusError) as refused:
            bob.store.get_item(["alice", "notes"], "n")
        assert refused.value.response.status_code == 403
        with pytest.raises(httpx.HTTPStatusError):
            bob.store.put_item(["alice", "notes"], "n", {"text": "overwritten"})
        assert bob.store.search_items([])["items"] == []  # scoped to ("bob",)
        assert [i["key"] for i in alice.store.search_items([])["items"]] == ["n"]
        assert alice.store.list_namespaces()["namespaces"] == [["alice", "notes"]]
        # A graph run by alice writes under her id (the run's user): she reads it.
        alice.runs.wait(None, "memory", input=human("remember me"))
        mine = alice.store.search_items(["alice", "memories"])["items"]
        assert [i["value"]["text"] for i in mine] == ["remember me"]


def test_official_js_client_store_and_assistants(url: str) -> None:
    """@langchain/langgraph-sdk's store and assistants clients (tests/js/store.mjs)."""
    result = subprocess.run(
        [node(), str(JS / "store.mjs"), url], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    store = summary["store"]
    assert store["value"] == {"color": "dark"} and store["createdAt"]
    assert store["filtered"] == ["theme"]
    assert store["ranked"][0] == "pasta" and sorted(store["ranked"]) == ["bike", "pasta"]
    assert [n.split("/")[1] for n in store["namespaces"]] == ["docs", "prefs"]
    assert store["deleted"] is None
    assistants = summary["assistants"]
    assert assistants["created"] == ["agent", 1, "js assistant"]
    tag = assistants["updated"][2]["tag"]
    assert assistants["updated"] == [2, 9, {"tag": tag, "stage": "prod"}]
    assert assistants["versions"] == [2, 1]
    assert assistants["latest"] == [1, 7]
    assert assistants["found"] == [True] and assistants["afterDelete"] == 0
