"""Authentication (none, API keys, JWT HS256/RS256, custom) and thread ownership."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent_server.app import create_app
from agent_server.auth import load_verifier
from agent_server.settings import Settings
from tests.conftest import test_settings
from tests.live import live_server

KEYS = {"alice": "key-alice", "bob": "key-bob"}
SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    settings = test_settings(auth="api_keys", api_keys=KEYS)
    settings.graphs["approval"] = "tests.hitl_graphs:approval"
    with live_server(create_app(settings)) as url:
        yield url


def test_http_needs_a_valid_bearer_token(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        missing = client.post(f"{server}/runs/wait", json={"graph": "agent", "message": "x"})
        wrong = client.get(f"{server}/graphs", headers=bearer("nope"))
        ok = client.get(f"{server}/graphs", headers=bearer("key-alice"))
        health = client.get(f"{server}/healthz")
        page = client.get(f"{server}/")  # static: it asks for the token itself
        tools = client.get(f"{server}/tools")
    assert page.status_code == 200 and b"API key or token" in page.content
    assert tools.status_code == 401
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401 and wrong.json()["message"] == "invalid token"
    assert ok.status_code == 200 and health.status_code == 200


def test_threads_belong_to_their_creator(server: str) -> None:
    with httpx.Client(timeout=30) as client:
        alice, bob = bearer("key-alice"), bearer("key-bob")
        run = client.post(
            f"{server}/runs/wait",
            json={"graph": "agent", "message": "mine", "thread_id": "alice-thread"},
            headers=alice,
        ).json()
        assert run["status"] == "success"
        run_id = run["run_id"]
        for method, path in [
            ("GET", f"/runs/{run_id}"),
            ("GET", f"/runs/{run_id}/stream"),
            ("POST", f"/runs/{run_id}/cancel"),
            ("GET", "/threads/alice-thread/runs"),
            ("GET", "/threads/alice-thread/state"),
        ]:
            denied = client.request(method, f"{server}{path}", headers=bob)
            assert denied.status_code == 403, path
            assert denied.json()["code"] == "forbidden"
        hijack = client.post(
            f"{server}/runs/wait",
            json={"graph": "agent", "message": "theirs", "thread_id": "alice-thread"},
            headers=bob,
        )
        assert hijack.status_code == 403
        assert client.get(f"{server}/threads/alice-thread/runs", headers=alice).status_code == 200
        assert client.get(f"{server}/runs/{run_id}", headers=alice).json()["status"] == "success"
        unknown = client.get(f"{server}/threads/never-seen/state?graph=agent", headers=bob)
        assert unknown.status_code == 404


async def _closed_with(url: str, **kwargs: Any) -> tuple[int, str]:
    async with connect(url, **kwargs) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_websocket_auth_is_accept_then_close_1008(server: str) -> None:
    ws_url = server.replace("http", "ws") + "/ws"
    assert await _closed_with(ws_url) == (1008, "unauthorized: missing bearer token")
    assert await _closed_with(f"{ws_url}?token=bad") == (1008, "unauthorized: invalid token")


@pytest.mark.parametrize("how", ["header", "query", "subprotocol"])
async def test_websocket_token_from_header_query_or_subprotocol(server: str, how: str) -> None:
    ws_url = server.replace("http", "ws") + "/ws"
    kwargs: dict[str, Any] = {}
    if how == "header":
        kwargs["additional_headers"] = bearer("key-alice")
    elif how == "query":
        ws_url += "?token=key-alice"
    else:
        kwargs["subprotocols"] = ["agent-server.v1", "bearer.key-alice"]
    async with connect(ws_url, **kwargs) as ws:
        if how == "subprotocol":
            assert ws.subprotocol == "agent-server.v1"
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        while reply["type"] == "ping":
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "pong"


async def test_websocket_users_cannot_touch_each_others_threads(server: str) -> None:
    ws_url = server.replace("http", "ws") + "/ws"
    async with connect(ws_url, additional_headers=bearer("key-alice")) as alice:
        await alice.send(
            json.dumps(
                {"type": "run", "graph": "approval", "message": "ship?", "thread_id": "alice-hitl"}
            )
        )
        run_id = None
        done = False
        while not done:
            data = json.loads(await asyncio.wait_for(alice.recv(), 5))
            for message in data if isinstance(data, list) else [data]:  # a batch: a list
                run_id = run_id or message.get("run_id")
                done = done or message.get("type") == "done"
        async with connect(ws_url, additional_headers=bearer("key-bob")) as bob:
            attempts = [
                {"type": "subscribe", "run_id": run_id},
                {"type": "subscribe", "thread_id": "alice-hitl"},
                {"type": "join", "thread_id": "alice-hitl"},
                {"type": "resume", "thread_id": "alice-hitl", "value": "yes"},
                {"type": "cancel", "run_id": run_id},
                {"type": "run", "graph": "agent", "message": "x", "thread_id": "alice-hitl"},
            ]
            for attempt in attempts:
                await bob.send(json.dumps(attempt))
                reply = json.loads(await asyncio.wait_for(bob.recv(), 5))
                while reply["type"] == "ping":
                    reply = json.loads(await asyncio.wait_for(bob.recv(), 5))
                assert (reply["type"], reply["code"]) == ("error", "forbidden"), attempt
        # alice still can
        await alice.send(json.dumps({"type": "resume", "thread_id": "alice-hitl", "value": "yes"}))
        message = json.loads(await asyncio.wait_for(alice.recv(), 5))
        while message["type"] == "ping":
            message = json.loads(await asyncio.wait_for(alice.recv(), 5))
        assert message["type"] == "run_accepted"


def _jwt_settings(**overrides: Any) -> Settings:
    return test_settings(auth="jwt", **overrides)


async def test_jwt_hs256_and_rs256() -> None:
    now = int(time.time())
    hs = _jwt_settings(jwt_key=SECRET, jwt_audience="agents")
    verify = load_verifier(hs)
    assert verify is not None
    good = jwt.encode({"sub": "carol", "exp": now + 60, "aud": "agents"}, SECRET, "HS256")
    user = await verify(good)
    assert user is not None and user.id == "carol" and user.claims["aud"] == "agents"
    expired = jwt.encode({"sub": "carol", "exp": now - 60, "aud": "agents"}, SECRET, "HS256")
    assert await verify(expired) is None
    assert (
        await verify(jwt.encode({"sub": "c", "exp": now + 60, "aud": "x"}, SECRET, "HS256")) is None
    )
    assert (
        await verify(
            jwt.encode({"sub": "c", "exp": now + 60, "aud": "agents"}, SECRET + "-other", "HS256")
        )
        is None
    )
    assert await verify("not-a-jwt") is None

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    rs = _jwt_settings(jwt_key=public_pem, jwt_algorithms=["RS256"])
    verify_rs = load_verifier(rs)
    assert verify_rs is not None
    token = jwt.encode({"sub": "dave", "exp": now + 60}, private, "RS256")
    assert (await verify_rs(token)).id == "dave"  # type: ignore[union-attr]
    # an HS256 token signed with the public key text must not pass (algorithm confusion)
    assert await verify_rs(jwt.encode({"sub": "x", "exp": now + 60}, SECRET, "HS256")) is None


def test_jwt_end_to_end_over_http() -> None:
    settings = _jwt_settings(jwt_key=SECRET)
    token = jwt.encode({"sub": "erin", "exp": int(time.time()) + 60}, SECRET, "HS256")
    with live_server(create_app(settings)) as url, httpx.Client(timeout=30) as client:
        ok = client.post(
            f"{url}/runs/wait", json={"graph": "agent", "message": "x"}, headers=bearer(token)
        )
        bad = client.post(
            f"{url}/runs/wait", json={"graph": "agent", "message": "x"}, headers=bearer(token + "x")
        )
    assert ok.status_code == 200 and bad.status_code == 401


async def test_custom_verifier_by_reference() -> None:
    verify = load_verifier(test_settings(auth="tests.verifiers:verify"))
    assert verify is not None
    user = await verify("user:frank")
    assert user is not None and user.id == "frank" and user.claims["source"] == "custom"
    assert await verify("nobody") is None


def test_misconfigured_auth_fails_at_start() -> None:
    for settings in (test_settings(auth="api_keys"), test_settings(auth="jwt")):
        with pytest.raises(ValueError):
            load_verifier(settings)


def test_no_auth_on_a_public_address_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="agent_server.auth"):
        assert load_verifier(test_settings(host="0.0.0.0")) is None
    assert "AUTHENTICATION IS OFF" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="agent_server.auth"):
        load_verifier(test_settings(host="127.0.0.1"))
    assert caplog.text == ""


async def _next_non_ping(ws: Any, timeout: float = 5) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        for item in message if isinstance(message, list) else [message]:
            if item.get("type") != "ping":
                return item  # type: ignore[no-any-return]


async def test_a_room_joined_early_shows_nothing_of_another_users_run(server: str) -> None:
    ws_url = server.replace("http", "ws") + "/ws"
    async with connect(ws_url, additional_headers=bearer("key-bob")) as bob:
        await bob.send(json.dumps({"type": "join", "thread_id": "claimed-later"}))
        assert (await _next_non_ping(bob))["type"] == "presence"
        with httpx.Client(timeout=30) as client:
            result = client.post(
                f"{server}/runs/wait",
                json={"graph": "agent", "message": "private", "thread_id": "claimed-later"},
                headers=bearer("key-alice"),
            )
        assert result.status_code == 200
        leaked: list[dict[str, Any]] = []
        with pytest.raises(TimeoutError):
            while True:
                leaked.append(await _next_non_ping(bob, timeout=0.5))
        assert not [m for m in leaked if "seq" in m]


async def test_bearer_subprotocol_alone_is_accepted_without_a_protocol(server: str) -> None:
    ws_url = server.replace("http", "ws") + "/ws"
    async with connect(ws_url, subprotocols=["bearer.key-alice"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol is None  # never a protocol the client did not offer
        await ws.send(json.dumps({"type": "ping", "id": 2}))
        assert (await _next_non_ping(ws))["type"] == "pong"


async def test_query_token_never_reaches_the_access_log(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    ws_url = server.replace("http", "ws") + "/ws?token=key-alice&x=1"
    with caplog.at_level("INFO"):
        async with connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            await _next_non_ping(ws)
    assert "key-alice" not in caplog.text
