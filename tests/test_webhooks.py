"""Webhooks: the SSRF guard, and deliveries to a real HTTP receiver.

The refusal of unsafe URLs runs against LangGraph's dev server too (``make
test-langgraph-dev``: it refuses loopback and metadata targets by default as we do);
the receiver tests are ``ours``: LangGraph's server refuses a loopback receiver unless
configured otherwise, and sends no idempotency key. The webhook of a run that another
worker takes from the shared queue is tested in tests/test_crons_workers.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client

from agent_server.app import create_app
from agent_server.webhooks import WebhookPolicy, WebhookRefused, Webhooks, check_url
from tests.conftest import test_settings
from tests.live import live_server
from tests.test_brokers import closed_port
from tests.test_langgraph_api import GRAPHS, human, langgraph_url, ours

WEBHOOK_GRAPHS = {**GRAPHS, "failing": "tests.sample_graphs:failing"}


class Receiver:
    """A real HTTP server on loopback that answers each POST with the next status of
    ``statuses`` (the last one repeats) and records what it got. While ``gate`` is
    clear, the first request is held (unanswered)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                index = len(receiver.got)
                receiver.got.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                if index == 0:
                    receiver.gate.wait(30)
                status = receiver.statuses[min(index, len(receiver.statuses) - 1)]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while len(self.got) < count:
            assert time.monotonic() < deadline, f"{len(self.got)} requests, not {count}"
            time.sleep(0.02)
        return self.got

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver([500, 200])
    yield found
    found.close()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with langgraph_url(WEBHOOK_GRAPHS) as found:
        yield found


@pytest.fixture(scope="module")
def private_url() -> Iterator[str]:
    """A server whose operator lets webhooks reach the local network (the receiver)."""
    settings = test_settings(graphs=WEBHOOK_GRAPHS, webhook_allow_private=True)
    with live_server(create_app(settings)) as base:
        yield f"{base}/langgraph"


async def test_unsafe_webhooks_are_refused(client: Any) -> None:
    thread = await client.threads.create()
    for webhook in (
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ):
        for call in (
            client.runs.create(thread["thread_id"], "agent", input={}, webhook=webhook),
            client.runs.wait(None, "agent", input={}, webhook=webhook),
            client.crons.create("agent", schedule="0 9 * * *", webhook=webhook),
        ):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await call
            assert refused.value.response.status_code == 422
    assert await client.runs.list(thread["thread_id"]) == []  # nothing was started


# -- agent-server only ------------------------------------------------------------------


@ours
async def test_the_policy() -> None:
    default = WebhookPolicy()
    private = WebhookPolicy(allow_private=True)
    listed = WebhookPolicy(allowed_hosts=("hooks.example.com", "*.corp.example"))
    https = WebhookPolicy(https_only=True)
    refused = [
        (default, "http://10.1.2.3/h", "a private address"),
        (default, "http://192.168.0.9/h", "a private address"),
        (default, "http://100.64.0.1/h", "a private address"),
        (default, "http://[fd00::1]/h", "a private address"),
        (default, "http://[::1]/h", "a loopback address"),
        (default, "http://[::ffff:127.0.0.1]/h", "loopback"),
        (default, "http://[2002:7f00:1::]/h", "a loopback address"),  # 6to4 of 127.0.0.1
        (default, "http://169.254.10.1/h", "a link-local address"),
        (default, "http://api.localhost/h", "loopback"),
        (default, "http://svc.ns.svc.cluster.local/h", "a private address"),
        (default, "http://0.0.0.0/h", "reserved"),
        (default, "http://224.0.0.1/h", "reserved"),
        (default, "ftp://8.8.8.8/h", "http"),
        (default, "http://8.8.8.8:99999/h", "not a URL"),
        (default, "http:///h", "no host"),
        (default, "http://no-such-host.invalid/h", "does not resolve"),
        (default, "http://8.8.8.8/" + "x" * 5000, "longer"),
        (private, "http://169.254.169.254/latest", "metadata"),  # even with private allowed
        (private, "http://[fd00:ec2::254]/", "metadata"),
        (private, "http://metadata.google.internal/", "metadata"),
        (listed, "http://8.8.8.8/h", "not an allowed webhook host"),
        (listed, "http://corp.example/h", "not an allowed webhook host"),
        (https, "http://8.8.8.8/h", "must be https"),
    ]
    for policy, webhook, why in refused:
        with pytest.raises(WebhookRefused, match=why):
            await check_url(webhook, policy)
    assert await check_url("http://8.8.8.8/h", default) == ["8.8.8.8"]
    assert await check_url("https://[2606:4700::1111]/h", https) == ["2606:4700::1111"]
    for webhook in ("http://127.0.0.1/h", "http://10.0.0.1/h", "http://[fe80::1]/h"):
        assert await check_url(webhook, private)
    # Listed hosts are trusted as named: nothing to pin, even a name that does not resolve.
    assert await check_url("https://hooks.example.com/h", listed) == []
    assert await check_url("https://a.b.corp.example/h", listed) == []


@ours
async def test_a_webhook_is_retried_with_the_same_body_and_key(
    private_url: str, receiver: Receiver
) -> None:
    client = get_client(url=private_url, api_key=None)
    thread = await client.threads.create()
    receiver.gate.clear()  # the receiver holds the first delivery
    run = await client.runs.create(
        thread["thread_id"], "agent", input=human("2+2"), webhook=f"{receiver.url}/hook?x=1"
    )
    # The run ends, and its result is read, while the receiver still holds the delivery.
    values = await client.runs.join(thread["thread_id"], run["run_id"])
    assert values["messages"][-1]["type"] == "ai"
    receiver.wait_for(1)
    receiver.gate.set()  # answers 500: the delivery is tried again, then answered 200
    first, second = receiver.wait_for(2)
    await client.aclose()
    assert first["body"] == second["body"]
    assert first["path"] == second["path"] == "/hook?x=1"
    keys = {got["headers"]["Idempotency-Key"] for got in (first, second)}
    assert keys == {run["run_id"]}
    assert first["headers"]["Content-Type"] == "application/json"
    payload = json.loads(first["body"])
    assert payload["run_id"] == run["run_id"] and payload["thread_id"] == thread["thread_id"]
    assert payload["status"] == "success" and "error" not in payload
    assert payload["values"]["messages"] == values["messages"]
    assert payload["assistant_id"] == run["assistant_id"]
    assert payload["run_started_at"] <= payload["run_ended_at"] <= payload["webhook_sent_at"]
    await asyncio.sleep(1.5)  # no third try once one was answered 200
    assert len(receiver.got) == 2


@ours
async def test_a_failed_runs_webhook_carries_its_error(private_url: str) -> None:
    receiver = Receiver([204])
    try:
        client = get_client(url=private_url, api_key=None)
        thread = await client.threads.create()
        run = await client.runs.create(
            thread["thread_id"], "failing", input=human("hi"), webhook=receiver.url
        )
        [got] = receiver.wait_for(1)
        await client.aclose()
    finally:
        receiver.close()
    payload = json.loads(got["body"])
    assert payload["run_id"] == run["run_id"] and payload["status"] == "error"
    assert payload["error"] == {"error": "run_error", "message": "the model backend went away"}


@ours
async def test_delivery_checks_the_address_again_and_connects_to_it() -> None:
    receiver = Receiver([204, 404])
    try:
        # The policy refuses it now (as after a DNS change): nothing is sent.
        strict = Webhooks(WebhookPolicy(), backoff_base=0.05)
        assert not await strict.deliver(f"{receiver.url}/h", "k1", b"{}")
        assert receiver.got == []
        # Sent to the address checked, under the URL's own host name.
        allowed = Webhooks(WebhookPolicy(allow_private=True), backoff_base=0.05)
        assert await allowed.deliver(f"http://localhost:{receiver.port}/h", "k2", b"{}")
        assert receiver.got[0]["headers"]["Host"] == f"localhost:{receiver.port}"
        # A 4xx other than 429 is an answer: not tried again.
        assert not await allowed.deliver(f"{receiver.url}/h", "k3", b"{}")
        assert len(receiver.got) == 2
        # No answer at all: tried again, up to the attempts allowed.
        assert not await allowed.deliver(f"http://127.0.0.1:{closed_port()}/", "k4", b"{}")
        await allowed.close()
        await strict.close()
    finally:
        receiver.close()
