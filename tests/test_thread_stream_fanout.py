"""A thread watched by many streams on one worker: the run is translated once per set
of wanted events, and every stream still gets exactly its events, late joiners and
resumes included (agent_server/protocols/langgraph/threadstream/feed.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from agent_server.app import create_app
from agent_server.protocols.langgraph.threadstream import feed, history
from tests.conftest import test_settings
from tests.live import live_server
from tests.test_thread_stream import ALL, GRAPHS, WORDS, root_end, run_start, sse_events

WATCHERS = 40


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with live_server(create_app(test_settings(graphs=GRAPHS))) as base:
        yield f"{base}/langgraph"


async def read(response: httpx.Response) -> list[dict[str, Any]]:
    found = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            found.append(json.loads(line[6:]))
            if root_end(found[-1]):
                return found
    return found


async def test_many_streams_share_one_translation_each_gets_its_events(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []

    class Counted(feed.RunTranslator):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(feed, "RunTranslator", Counted)
    looks = 0
    slots = history.ThreadRuns._slots

    async def counted_slots(self: history.ThreadRuns, thread_id: str) -> list[history.Slot]:
        nonlocal looks
        looks += 1
        return await slots(self, thread_id)

    monkeypatch.setattr(history.ThreadRuns, "_slots", counted_slots)
    thread_id = str(uuid.uuid4())
    path = f"/threads/{thread_id}/stream/events"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.post("/threads", json={"thread_id": thread_id})
        async with contextlib.AsyncExitStack() as stack:
            everything = [
                await stack.enter_async_context(client.stream("POST", path, json={"channels": ALL}))
                for _ in range(WATCHERS)
            ]
            messages = [
                await stack.enter_async_context(
                    client.stream("POST", path, json={"channels": ["messages", "lifecycle"]})
                )
                for _ in range(WATCHERS)
            ]
            looks = 0  # each stream looked once as it opened; now the run wakes them all
            await run_start(client, thread_id, "slow", WORDS)
            seen = await asyncio.gather(*(read(r) for r in everything + messages))
            looked = looks
        # a late joiner from a cursor in mid-run, once the run has ended
        full, only_messages = seen[0], seen[WATCHERS]
        cursor = full[len(full) // 2]["seq"]
        late = await sse_events(client, thread_id, {"channels": ALL, "since": cursor})
    assert all(s == full for s in seen[:WATCHERS]) and root_end(full[-1])
    assert all(s == only_messages for s in seen[WATCHERS:])
    assert only_messages == [e for e in full if e["method"] in ("messages", "lifecycle")]
    assert late == [e for e in full if e["seq"] > cursor]
    # 80 streams, two sets of wanted events: two translations of the run (the late
    # joiner came after both feeds had gone: a third) ...
    assert len(made) == 3
    # ... and the new run woke the 80 streams, which looked at the thread's runs together
    assert looked < 20


async def test_websocket_readers_handed_events_in_slices_each_get_them_all() -> None:
    """WebSocket streams level with the feed are handed its events by the feed itself, a
    slice of them at a time with the loop running in between (``Streams.fanout_slice``,
    small here): each still gets every event of the run once, in order, as SSE does."""
    app = create_app(test_settings(graphs=GRAPHS))
    with live_server(app) as base:
        app.state.agent_server.streams.fanout_slice = 3
        url = f"{base}/langgraph"
        thread_id = str(uuid.uuid4())
        ws_url = url.replace("http", "ws", 1) + f"/threads/{thread_id}/stream/events"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await client.post("/threads", json={"thread_id": thread_id})
            async with contextlib.AsyncExitStack() as stack:
                sockets = [await stack.enter_async_context(connect(ws_url)) for _ in range(10)]
                for number, socket in enumerate(sockets):
                    request = {"channels": ALL}
                    await socket.send(
                        json.dumps(
                            {"id": number, "method": "subscription.subscribe", "params": request}
                        )
                    )
                    assert json.loads(await socket.recv())["type"] == "success"
                await run_start(client, thread_id, "slow", WORDS)
                seen = await asyncio.gather(*(ws_events(socket) for socket in sockets))
            full = await sse_events(client, thread_id, {"channels": ALL})
    assert root_end(full[-1])
    assert all(events == full for events in seen)


async def ws_events(socket: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while not found or not root_end(found[-1]):
        message = json.loads(await socket.recv())
        if message.get("type") == "event":  # as SSE sends it (one JSON object a frame)
            found.append(message)
    return found
