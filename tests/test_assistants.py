"""Assistants and their versions (``/langgraph/assistants``), judged by LangGraph's Python
client; against LangGraph's dev server too (``make test-langgraph-dev``), except the
tests marked ``ours``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server
from tests.test_langgraph_api import GRAPHS, human, langgraph_url, ours


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with langgraph_url(GRAPHS) as found:
        yield found


async def test_create_update_versions_latest_delete(client: Any) -> None:
    tag = uuid.uuid4().hex
    created = await client.assistants.create(
        "approval",
        config={"recursion_limit": 7},
        metadata={"team": "ops", "tag": tag},
        name="deployer",
        description="asks before deploying",
    )
    assistant_id = created["assistant_id"]
    try:
        assert created["graph_id"] == "approval" and created["version"] == 1
        assert created["name"] == "deployer" and created["metadata"]["team"] == "ops"
        assert (await client.assistants.get(assistant_id))["config"]["recursion_limit"] == 7

        updated = await client.assistants.update(
            assistant_id, config={"recursion_limit": 9}, metadata={"stage": "prod"}
        )
        assert updated["version"] == 2
        assert updated["config"]["recursion_limit"] == 9  # replaced
        assert updated["metadata"] == {"team": "ops", "tag": tag, "stage": "prod"}  # merged
        assert updated["name"] == "deployer"

        versions = await client.assistants.get_versions(assistant_id)
        assert [v["version"] for v in versions] == [2, 1]
        assert versions[1]["config"]["recursion_limit"] == 7
        only = await client.assistants.get_versions(assistant_id, metadata={"stage": "prod"})
        assert [v["version"] for v in only] == [2]

        back = await client.assistants.set_latest(assistant_id, 1)
        assert back["version"] == 1 and back["config"]["recursion_limit"] == 7
        assert (await client.assistants.get(assistant_id))["version"] == 1

        found = await client.assistants.search(metadata={"tag": tag})
        assert [a["assistant_id"] for a in found] == [assistant_id]
        by_graph = await client.assistants.search(graph_id="approval", limit=100)
        assert assistant_id in [a["assistant_id"] for a in by_graph]
        assert await client.assistants.count(metadata={"tag": tag}) == 1

        with pytest.raises(ConflictError):
            await client.assistants.create("approval", assistant_id=assistant_id)
        same = await client.assistants.create(
            "approval", assistant_id=assistant_id, if_exists="do_nothing"
        )
        assert same["assistant_id"] == assistant_id and same["version"] == 1
    finally:
        await client.assistants.delete(assistant_id)
    with pytest.raises(NotFoundError):
        await client.assistants.get(assistant_id)
    with pytest.raises(NotFoundError):
        await client.assistants.set_latest(assistant_id, 1)


async def test_runs_use_the_current_versions_config_and_context(client: Any) -> None:
    """A run of an assistant runs its graph with its current version's config (what the
    run records in its ``kwargs``), and names the assistant."""
    created = await client.assistants.create(
        "agent", config={"configurable": {"persona": "terse"}}, name="terse agent"
    )
    assistant_id = created["assistant_id"]
    try:

        async def run_config(text: str) -> dict[str, Any]:
            # A new thread each time: LangGraph's server keeps a thread's first configurable
            # for its later runs (a documented difference).
            thread = (await client.threads.create())["thread_id"]
            run = await client.runs.create(thread, assistant_id, input=human(text))
            values = await client.runs.join(thread, run["run_id"])
            assert values["messages"][-1]["type"] == "ai"
            found = await client.runs.get(thread, run["run_id"])
            assert found["assistant_id"] == assistant_id
            assert (await client.threads.get(thread))["metadata"]["assistant_id"] == assistant_id
            await client.threads.delete(thread)
            configurable: dict[str, Any] = found["kwargs"]["config"]["configurable"]
            return configurable

        assert (await run_config("2+2"))["persona"] == "terse"
        await client.assistants.update(assistant_id, config={"configurable": {"persona": "chatty"}})
        assert (await run_config("3+3"))["persona"] == "chatty"
    finally:
        await client.assistants.delete(assistant_id)


async def test_unknown_graph_and_assistant(client: Any) -> None:
    with pytest.raises(NotFoundError):
        await client.assistants.create("no-such-graph")
    with pytest.raises(NotFoundError):
        await client.assistants.update(str(uuid.uuid4()), metadata={"x": 1})
    with pytest.raises(NotFoundError):
        await client.assistants.delete(str(uuid.uuid4()))


@ours
def test_assistants_are_their_creators() -> None:
    settings = test_settings(graphs=GRAPHS, auth="api_keys", api_keys={"alice": "ka", "bob": "kb"})
    with live_server(create_app(settings)) as base:
        alice = get_sync_client(url=f"{base}/langgraph", api_key="ka")
        bob = get_sync_client(url=f"{base}/langgraph", api_key="kb")
        mine = alice.assistants.create("agent", name="alice's")
        assert mine["assistant_id"] not in [a["assistant_id"] for a in bob.assistants.search()]
        for attempt in (
            lambda: bob.assistants.get(mine["assistant_id"]),
            lambda: bob.assistants.update(mine["assistant_id"], name="bob's"),
            lambda: bob.assistants.delete(mine["assistant_id"]),
            lambda: bob.runs.wait(None, mine["assistant_id"], input=human("hi")),
        ):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                attempt()
            assert refused.value.response.status_code == 404
        # The default assistants are shared, so read-only with auth on.
        with pytest.raises(httpx.HTTPStatusError) as shared:
            bob.assistants.update("agent", metadata={"mine": True})
        assert shared.value.response.status_code == 403
        assert alice.runs.wait(None, mine["assistant_id"], input=human("hi"))["messages"]
        assert bob.assistants.get("agent")["graph_id"] == "agent"
