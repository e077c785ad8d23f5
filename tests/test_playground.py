"""The playground in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import START, MessagesState, StateGraph
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_server.app import create_app
from agent_server.chat_model import ScriptedChatModel
from tests.conftest import ROOT, test_settings
from tests.live import live_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    settings = test_settings(ws_ping_interval=1)
    settings.graphs["approval"] = "tests.hitl_graphs:approval"
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI (.ci/run installs it)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@contextmanager
def watched_page(browser: Any, server: str, *, allow: str | None = None) -> Iterator[Any]:
    """A page that must log no console error (but ``allow``) and never leave ``server``."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not (allow and allow in m.text)
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    foreign: list[str] = []
    page.on(
        "request",
        lambda r: (
            foreign.append(r.url)
            if not r.url.startswith((server, server.replace("http", "ws")))
            else None
        ),
    )
    yield page
    context.close()
    assert problems == [], problems  # no console errors
    assert foreign == [], foreign  # no request leaves the server


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    with watched_page(browser, server) as page:
        yield page


def send(page: Any, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def test_tool_call_tokens_and_card(page: Any, server: str, tmp_path: Path) -> None:
    page.goto(server + "/")
    page.wait_for_selector("#status[data-state=open]")
    assert page.locator("#graph").input_value() == "agent"
    send(page, "what is 12*(3+4)?")
    card = page.locator("details.tool[data-state=done]")
    card.wait_for()
    assert "calculator" in card.inner_text() and "84" in card.inner_text()
    page.locator(".msg.assistant", has_text="84").wait_for()
    # docs/playground.png is refreshed on request only: a test run leaves the tree clean.
    target = ROOT / "docs" / "playground.png" if os.environ.get("UPDATE_SCREENSHOT") else None
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG")
    if target is not None:
        target.write_bytes(shot.read_bytes())


def test_graph_from_query_and_interrupt_answered(page: Any, server: str) -> None:
    page.goto(server + "/?graph=approval")
    page.wait_for_selector("#status[data-state=open]")
    assert page.locator("#graph").input_value() == "approval"
    page.get_by_role("button", name="New thread").click()
    send(page, "ship it?")
    page.locator(".ask").wait_for()
    page.get_by_role("textbox", name="Answer").fill("yes")
    page.get_by_role("button", name="Answer").click()
    page.locator(".msg.assistant", has_text="approved: yes").wait_for()


def test_stop_and_reload_mid_run(page: Any, server: str) -> None:
    page.goto(server + "/")
    page.wait_for_selector("#status[data-state=open]")
    page.get_by_role("button", name="New thread").click()
    send(page, '/long_task {"steps": 6, "delay": 0.3}')
    page.locator(".progress").first.wait_for()
    page.reload()  # mid-run: the stream continues on the same thread
    page.wait_for_selector("#status[data-state=open]")
    page.locator("details.tool[data-state=done]").wait_for(timeout=15_000)
    assert page.locator("details.tool").count() == 1  # shown once, not repeated
    send(page, '/long_task {"steps": 20, "delay": 0.3}')
    page.locator(".progress", has_text="of 20").wait_for()  # the latest step, in its card
    page.get_by_role("button", name="Stop").click()
    page.locator(".error", has_text="cancelled").wait_for()
    assert page.get_by_role("button", name="Stop").is_disabled()


def test_shift_enter_is_a_new_line_and_send_button(page: Any, server: str) -> None:
    page.goto(server + "/")
    page.wait_for_selector("#status[data-state=open]")
    box = page.get_by_role("textbox", name="Message")
    box.type("line one")
    box.press("Shift+Enter")
    box.type("line two")
    assert box.input_value() == "line one\nline two"
    page.get_by_role("button", name="Send").click()
    page.locator(".msg.user", has_text="line two").wait_for()
    page.locator(".msg.assistant").last.wait_for()


def test_seed_style_event_source_client(page: Any, server: str) -> None:
    page.goto(server + "/")
    frames = page.evaluate(
        """() => new Promise((resolve) => {
            const seen = [];
            const query = "graph=agent&message=" + encodeURIComponent("2+2");
            const source = new EventSource("runs/stream?" + query);
            source.onmessage = (e) => {
              if (e.data === "[DONE]") { source.close(); resolve(seen); return; }
              seen.push(JSON.parse(e.data));
            };
        })"""
    )
    assert frames[0]["type"] == "run_start" and frames[-1]["type"] == "done"
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert any(f["type"] == "tool_end" and f["output"] == "4" for f in frames)


def test_usable_on_a_phone(browser: Any, server: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_selector("#status[data-state=open]")
    box = page.get_by_role("textbox", name="Message")
    send_button = page.get_by_role("button", name="Send")
    assert box.is_visible() and send_button.is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing overflows sideways
    send(page, "hello")
    page.locator(".msg.assistant").wait_for()
    context.close()


# With authentication on: the token field, both transports, resume after a drop.

KEY = "key-alice"  # a valid subprotocol name: the WebSocket offers it as bearer.<key>
SLASHED_KEY = "key/bob="  # not one: the WebSocket sends it as ?token=
RETRY_MS = 1500  # not the page's own default (1000): a reconnect this late read `retry:`
CUT = "cut-here"  # in a message: CutStreams drops that run's first SSE connection


async def _slow_answer(
    state: MessagesState, config: RunnableConfig
) -> dict[str, list[BaseMessage]]:
    model = ScriptedChatModel(token_delay=0.03)
    return {"messages": [await model.ainvoke(state["messages"], config)]}


# Answers token by token, 30 ms apart, so that a connection can drop mid-run.
slow = StateGraph(MessagesState).add_node("agent", _slow_answer).add_edge(START, "agent").compile()


@dataclass
class Exchange:
    """One ``GET /runs/stream``: the Last-Event-ID it came with, the bytes its client got."""

    last_event_id: str
    started: float
    body: bytes = b""
    ended: float | None = None

    def ids(self) -> list[str]:
        """The ids of the events the client received whole."""
        events = self.body.split(b"\n\n")[:-1]
        lines = [line for event in events for line in event.split(b"\n")]
        return [line[4:].decode() for line in lines if line.startswith(b"id: ")]


class CutStreams:
    """Records every ``GET /runs/stream`` and cuts the first one of a run whose message
    holds CUT, some frames in and in the middle of an event, as a dropped connection
    would. The server sees a client that went away (its next send fails); the run, started
    with ``on_disconnect=continue``, goes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/runs/stream":
            await self.app(scope, receive, send)
            return
        last_event_id = dict(scope["headers"]).get(b"last-event-id", b"").decode()
        exchange = Exchange(last_event_id, time.monotonic())
        self.exchanges.append(exchange)
        cut = CUT.encode() in scope["query_string"] and not last_event_id

        async def relay(message: Message) -> None:
            if exchange.ended is not None:
                raise OSError("the connection was cut")
            if message["type"] == "http.response.body":
                body: bytes = message.get("body", b"")
                if cut and len(exchange.ids()) >= 10 and b"data: " in body:
                    body = body[: body.index(b"data: ") + 12]
                    exchange.body += body
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    exchange.ended = time.monotonic()
                    return
                exchange.body += body
                if not message.get("more_body", False):
                    exchange.ended = time.monotonic()
            await send(message)

        await self.app(scope, receive, relay)


@pytest.fixture(scope="module")
def cut_streams() -> CutStreams:
    settings = test_settings(
        auth="api_keys",
        api_keys={"alice": KEY, "bob": SLASHED_KEY},
        sse_retry_ms=RETRY_MS,
        ws_ping_interval=1,
    )
    settings.graphs["slow"] = "tests.test_playground:slow"
    return CutStreams(create_app(settings))


@pytest.fixture(scope="module")
def auth_server(cut_streams: CutStreams) -> Iterator[str]:
    with live_server(cut_streams) as url:
        yield url


@pytest.fixture
def auth_page(browser: Any, auth_server: str) -> Iterator[Any]:
    # The page lists graphs and tools before a token is typed: those 401s are expected.
    with watched_page(browser, auth_server, allow="status of 401") as page:
        yield page


def sign_in(page: Any, key: str = KEY) -> None:
    field = page.get_by_label("API key or token")
    field.fill(key)
    field.press("Tab")  # the page takes a new token when the field loses focus


def without_websockets(page: Any) -> None:
    """As behind a proxy that refuses WebSockets: what the page shows came over SSE."""
    page.route_web_socket(re.compile(r"/ws(\?|$)"), lambda ws: ws.close())


def test_without_a_token_the_page_says_so(auth_page: Any, auth_server: str) -> None:
    page = auth_page
    page.goto(auth_server + "/")
    assert page.get_by_label("API key or token").get_attribute("type") == "password"
    notice = page.get_by_role("alert")
    notice.wait_for()
    assert "API key or token" in notice.inner_text()
    page.select_option("#transport", "sse")
    with page.expect_response(lambda r: "/runs/stream" in r.url) as refused:
        send(page, "hello")
    assert refused.value.status == 401
    assert "missing bearer token" in notice.inner_text()
    assert page.locator("#log .error").count() == 0  # said once, at the top
    sign_in(page, "not-a-key")
    page.locator("#notice", has_text="invalid token").wait_for()  # the WebSocket's 1008


def test_websocket_with_the_token(auth_page: Any, auth_server: str) -> None:
    page = auth_page
    page.goto(auth_server + "/")
    page.get_by_role("alert").wait_for()
    sign_in(page, SLASHED_KEY)  # sent as ?token=
    page.wait_for_selector("#status[data-state=open]")
    assert page.locator("#notice").is_hidden()
    sign_in(page)  # offered as the subprotocol bearer.<key>
    page.wait_for_selector("#status[data-state=open]")
    assert page.locator("#graph").input_value() == "agent"
    send(page, "what is 12*(3+4)?")
    card = page.locator("details.tool[data-state=done]")
    card.wait_for()
    assert "calculator" in card.inner_text() and "84" in card.inner_text()
    page.locator(".msg.assistant", has_text="84").wait_for()


def test_sse_with_the_token_streams_tool_cards_and_stops(auth_page: Any, auth_server: str) -> None:
    page = auth_page
    without_websockets(page)
    page.goto(auth_server + "/")
    page.get_by_role("alert").wait_for()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if r.resource_type == "fetch" else None)
    sign_in(page)
    page.locator("#tools li").first.wait_for()
    page.select_option("#transport", "sse")
    send(page, "what is 12*(3+4)?")
    card = page.locator("details.tool[data-state=done]")
    card.wait_for()
    assert "calculator" in card.inner_text() and "84" in card.inner_text()
    page.locator(".msg.assistant", has_text="84").wait_for()
    send(page, '/long_task {"steps": 20, "delay": 0.3}')
    page.locator(".progress", has_text="of 20").wait_for()  # the latest step, in its card
    page.get_by_role("button", name="Stop").click()  # no WebSocket: POST /runs/{id}/cancel
    page.locator(".error", has_text="cancelled").wait_for()
    assert page.get_by_role("button", name="Stop").is_disabled()
    sent = {urlsplit(r.url).path: r.all_headers().get("authorization") for r in requests}
    assert {"/graphs", "/tools", "/runs/stream"} <= sent.keys()
    assert any(path.endswith("/cancel") for path in sent)
    assert set(sent.values()) == {f"Bearer {KEY}"}  # every call, once a token is set
    page.reload()  # the token is kept for the tab
    assert page.get_by_label("API key or token").input_value() == KEY


def test_sse_resumes_after_a_dropped_connection(
    auth_page: Any, auth_server: str, cut_streams: CutStreams
) -> None:
    page = auth_page
    without_websockets(page)
    page.goto(auth_server + "/?graph=slow")
    page.get_by_role("alert").wait_for()
    sign_in(page)
    page.locator("#graph option[value=slow]").wait_for(state="attached")
    assert page.locator("#graph").input_value() == "slow"
    page.select_option("#transport", "sse")
    message = " ".join([CUT, *(f"word{i}" for i in range(60))])
    expected = ScriptedChatModel().invoke([HumanMessage(message)]).text
    before = len(cut_streams.exchanges)
    send(page, message)
    page.wait_for_selector("#stop:enabled")
    page.wait_for_selector("#stop:disabled", timeout=15_000)  # the run's `done`
    deadline = time.monotonic() + 5
    while cut_streams.exchanges[-1].ended is None:  # [DONE] follows `done`
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first, second = cut_streams.exchanges[before:]
    assert not first.body.endswith(b"\n\n")  # cut in the middle of an event
    assert second.last_event_id == first.ids()[-1]  # the last event it got whole
    assert first.ended is not None and second.started - first.ended >= RETRY_MS / 1000 - 0.05
    ids = first.ids() + second.ids()
    run_id = ids[0].rpartition(":")[0]
    assert ids == [f"{run_id}:{seq}" for seq in range(1, len(ids) + 1)]  # no gap, no repeat
    assert second.body.endswith(b"data: [DONE]\n\n")
    assert page.locator(".msg.assistant").count() == 1
    assert page.locator(".msg.assistant").text_content() == expected
