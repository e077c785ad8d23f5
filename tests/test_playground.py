"""The playground in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_server.app import create_app
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


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
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
    page.locator(".progress", has_text="step 1 of 20").wait_for()
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
