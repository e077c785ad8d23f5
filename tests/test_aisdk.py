"""The AI SDK UI message stream over HTTP (the SDK's own reader: tests/test_js_clients.py)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent_server.app import create_app
from tests.conftest import test_settings
from tests.live import live_server


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server(create_app(test_settings())) as url:
        yield url


def chat(chat_id: str, text: str) -> dict[str, Any]:
    return {
        "id": chat_id,
        "trigger": "submit-message",
        "messages": [
            {"id": str(uuid.uuid4()), "role": "user", "parts": [{"type": "text", "text": text}]}
        ],
    }


def parts(raw: bytes) -> list[Any]:
    blocks = [b[6:] for b in raw.split(b"\n\n") if b.startswith(b"data: ")]
    assert blocks[-1] == b"[DONE]"
    return [json.loads(b) for b in blocks[:-1]]


def test_parts_of_a_tool_calling_answer(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{server}/ai-sdk/agent", json=chat("c-1", "what is 6*7?"))
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert b"\r" not in response.content
    kinds = [p["type"] for p in parts(response.content)]
    assert kinds[0] == "start" and kinds[-1] == "finish"
    for kind in (
        "start-step",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
        "tool-output-available",
        "finish-step",
        "text-start",
        "text-delta",
        "text-end",
    ):
        assert kind in kinds  # fmt: skip
    assert kinds.count("start-step") == kinds.count("finish-step")
    assert kinds.count("text-start") == kinds.count("text-end")


def test_resume_rejoins_the_active_run_or_says_204(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        none = client.get(f"{server}/ai-sdk/agent/never-used/stream")
        assert none.status_code == 204
        body = chat("c-resume", '/long_task {"steps": 4, "delay": 0.2}')
        original: dict[str, bytes] = {}

        def post() -> None:
            with httpx.Client(timeout=30) as other:
                original["raw"] = other.post(f"{server}/ai-sdk/agent", json=body).content

        thread = threading.Thread(target=post)
        thread.start()
        time.sleep(0.3)
        replay = client.get(f"{server}/ai-sdk/agent/c-resume/stream")
        thread.join()
    assert replay.status_code == 200
    again = parts(replay.content)
    assert again[0]["type"] == "start" and again[-1]["type"] == "finish"
    # a replay from the start: the same parts as the original stream, message id aside
    first = parts(original["raw"])
    assert [p["type"] for p in again][1:] == [p["type"] for p in first][1:]


def test_bad_requests(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        empty = client.post(f"{server}/ai-sdk/agent", json={"id": "x", "messages": []})
        no_user = client.post(
            f"{server}/ai-sdk/agent",
            json={"id": "x", "messages": [{"role": "assistant", "parts": []}]},
        )
        unknown = client.post(f"{server}/ai-sdk/nope", json=chat("x", "hi"))
    assert empty.status_code == 422
    assert no_user.status_code == 422 and no_user.json()["code"] == "validation_error"
    assert unknown.status_code == 404
