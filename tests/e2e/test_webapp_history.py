"""The web app's history, recovery and limits in Debian's Chromium against real ``roomcast
serve`` processes (the helpers are test_webapp.py's): a guest scrolls back through 300
messages to the start of the room; a restart loses and doubles nothing, and a message
typed while the server is down waits as pending and is sent after; a message over the
frame limit stays in the box, and posts past the rate limit are sent again in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.test_browser import WAIT_MS, cli_push
from tests.e2e.test_webapp import (
    ROOM,
    live,
    log_in,
    make_user,
    message,
    new_page,
    push,
    room_path,
    seqs,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


async def test_webapp_guest_scrolls_back_through_300_messages(browser: Browser, serve: Any) -> None:
    """A named guest opens a room of 300 messages: the latest come first, older pages
    load as they scroll up, until "the start of the room"; every message once, in order,
    and the date separator above the first."""
    server = serve()
    room = "история café"
    await asyncio.to_thread(push, server, room, *(f"message {n}" for n in range(1, 301)))
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(server.http_url + room_path(room))
    await page.wait_for_url(lambda url: "/login/?next=" in url)
    await page.get_by_label("Your name").fill("Zoë")
    await page.get_by_role("button", name="Enter as a guest").click()
    await page.wait_for_url(server.http_url + room_path(room), timeout=WAIT_MS)
    await live(page)
    await expect(page.locator("#whoami")).to_contain_text("guest-Zoë-")
    await expect(message(page, 300).locator(".text")).to_have_text("message 300", timeout=WAIT_MS)

    pane = page.locator("#messages")
    status = page.locator("#history-status")
    for _ in range(20):  # 300 messages at 50 a page, with room to spare
        if await status.get_attribute("data-state") == "start":
            break
        shown = len(await seqs(page))
        await pane.evaluate("(el) => { el.scrollTop = 0; }")
        await page.wait_for_function(
            """(shown) => document.querySelectorAll('#message-list li.msg').length > shown
                || document.querySelector('#history-status').dataset.state === 'start'""",
            arg=shown,
            timeout=WAIT_MS,
        )
    await expect(status).to_have_text("This is the start of the room.")
    assert await seqs(page) == list(range(1, 301))
    texts = await page.eval_on_selector_all(
        "#message-list li.msg .text", "els => els.map((e) => e.textContent)"
    )
    assert texts == [f"message {n}" for n in range(1, 301)]
    first = await page.evaluate(
        "document.querySelector('#message-list').firstElementChild.className"
    )
    assert first == "day"
    # Scrolled up at the start, a new message is announced below, one click away.
    await asyncio.to_thread(push, server, room, "message 301")
    jump = page.locator("#jump-new")
    await expect(jump).to_have_text("1 new message below ↓", timeout=WAIT_MS)
    await jump.click()
    await expect(jump).to_be_hidden()
    await expect(message(page, 301)).to_be_in_viewport()
    # A guest may post in a public room, and has no edit buttons.
    await page.locator("#composer-input").fill("a guest was here")
    await page.locator("#send").click()
    await expect(message(page, 302)).to_have_attribute("data-state", "sent", timeout=WAIT_MS)
    assert await page.locator("button.edit").count() == 0
    assert errors == []


async def test_webapp_survives_a_server_restart(browser: Browser, serve: Any) -> None:
    """The server restarts under two users: the status line says reconnecting (with the
    seconds), a message typed meanwhile waits as pending and is sent after the restart,
    a message stored while the server was down arrives, and neither page misses or
    doubles a message."""
    server = serve()
    for name in ("alice", "bob"):
        await asyncio.to_thread(make_user, server, name)
    errors: list[str] = []
    pages = []
    for name in ("alice", "bob"):
        page = await new_page(browser, errors)
        await log_in(page, server, name)
        await page.goto(server.http_url + room_path(ROOM))
        await live(page)
        pages.append(page)
    alice, bob = pages
    await alice.locator("#composer-input").fill("before the restart")
    await alice.locator("#composer-input").press("Enter")
    await expect(message(bob, 1)).to_be_visible(timeout=WAIT_MS)

    await asyncio.to_thread(server.stop)
    for page in pages:
        await expect(page.locator("#conn-text")).to_contain_text("Reconnecting", timeout=WAIT_MS)
    await expect(alice.locator("#conn-status")).to_have_attribute("data-state", "reconnecting")
    # Stored while the server is down: only the replay can bring it.
    assert await cli_push(server, ROOM, "stored while down", http=False) == 2
    await alice.locator("#composer-input").fill("typed while down")
    await alice.locator("#composer-input").press("Enter")
    pending = alice.locator("#message-list li.pending")
    await expect(pending).to_have_attribute("data-state", "pending")
    await expect(pending.locator(".flag")).to_have_text("waiting for the connection…")

    await asyncio.to_thread(server.start)  # same port, same data dir
    for page in pages:
        await live(page)
        await expect(message(page, 3).locator(".text")).to_have_text(
            "typed while down", timeout=WAIT_MS
        )
    await expect(message(alice, 3)).to_have_attribute("data-state", "sent")
    assert await alice.locator("#message-list li.pending").count() == 0
    for page in pages:
        assert await seqs(page) == [1, 2, 3]
        await expect(message(page, 2).locator(".text")).to_have_text("stored while down")
    await expect(alice.locator("#conn-text")).to_have_text("Live")
    assert errors == []


async def test_webapp_limits_in_the_page(browser: Browser, serve: Any) -> None:
    """A message over the frame limit is refused before sending and stays in the box with
    a note; posts past the rate limit are sent again by themselves after retry_after, so
    every one arrives, once and in order."""
    server = serve(ROOMCAST_POST_RATE_PER_SOCKET="2", ROOMCAST_POST_BURST_PER_SOCKET="1")
    await asyncio.to_thread(make_user, server, "alice")
    errors: list[str] = []
    page = await new_page(browser, errors)
    await log_in(page, server, "alice")
    await page.goto(server.http_url + room_path("limits"))
    await live(page)
    box = page.locator("#composer-input")
    too_long = "ä" * 9000  # 18,000 bytes of UTF-8: over the 16 KiB frame limit
    await box.fill(too_long)
    await box.press("Enter")
    note = page.locator("#composer-note")
    await expect(note).to_contain_text("Not sent: the message is")
    await expect(note).to_contain_text("over the limit of 16,384")
    await expect(box).to_have_value(too_long)
    assert await page.locator("#message-list li").count() == 0
    await box.fill("short")  # fits now: the note goes
    await expect(note).to_be_hidden()

    for n in range(1, 5):
        await box.fill(f"burst {n}")
        await box.press("Enter")
    for n in range(1, 5):
        await expect(message(page, n).locator(".text")).to_have_text(f"burst {n}", timeout=WAIT_MS)
    assert await seqs(page) == [1, 2, 3, 4]
    # Typed faster than 2 a second after a burst of 1: some were refused and sent again.
    assert await page.evaluate("roomcastApp.room.retried") > 0
    await expect(page.locator("#message-list li.pending")).to_have_count(0)
    await expect(note).to_be_hidden()
    assert errors == []


async def test_webapp_says_when_the_device_is_offline(browser: Browser, serve: Any) -> None:
    """The browser's network goes away and comes back: the status line says offline, then
    live again, and a message typed meanwhile is sent once, after."""
    server = serve()
    await asyncio.to_thread(make_user, server, "alice")
    errors: list[str] = []
    page = await new_page(browser, errors)
    await log_in(page, server, "alice")
    await page.goto(server.http_url + room_path(ROOM))
    await live(page)
    await page.context.set_offline(True)
    await expect(page.locator("#conn-text")).to_have_text(
        "Offline: this device has no network; waiting for it", timeout=WAIT_MS
    )
    await expect(page.locator("#conn-status")).to_have_attribute("data-state", "closed")
    await page.locator("#composer-input").fill("typed offline")
    await page.locator("#composer-input").press("Enter")
    await expect(page.locator("#message-list li.pending")).to_have_count(1)
    await page.context.set_offline(False)
    await live(page)
    await expect(message(page, 1)).to_have_attribute("data-state", "sent", timeout=WAIT_MS)
    assert await seqs(page) == [1]
    assert errors == []
