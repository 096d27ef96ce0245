"""The web app (``/login/``, ``/rooms/``, ``/rooms/<room>/``: roomcast.app_views, app.js) in
Debian's Chromium against real ``roomcast serve`` processes.

Two users in two browser contexts (one at phone width, by keyboard) chat in a Unicode
room, see each other's presence and typing, edit and delete; a room admin moderates; a
room taken away and a logout elsewhere say so. History, restarts and limits:
test_webapp_history.py. With ``ROOMCAST_SCREENSHOT_DIR`` set, the screenshots of the main
screens are written there (docs/screenshots/ holds the committed ones); otherwise to the
test's tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from tests.e2e.conftest import ROOMCAST
from tests.e2e.test_browser import WAIT_MS

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROOM = "技术 交流 ☕"
PHONE: ViewportSize = {"width": 390, "height": 780}
DESKTOP: ViewportSize = {"width": 1200, "height": 760}


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the screenshots go: ``ROOMCAST_SCREENSHOT_DIR``, else the test's tmp dir."""
    wanted = os.environ.get("ROOMCAST_SCREENSHOT_DIR")
    path = Path(wanted) if wanted else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def push(server: Any, room: str, *texts: str) -> list[int]:
    """Store ``texts`` in ``room`` through the server's HTTP push API; their seqs."""
    key = (server.data_dir / "api_key").read_text().strip()
    url = f"{server.http_url}/api/rooms/{urllib.parse.quote(room, safe='')}/messages"
    stored = []
    for text in texts:
        request = urllib.request.Request(
            url,
            data=json.dumps({"message": text}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
            stored.append(json.loads(response.read())["seq"])
    return stored


def password_of(name: str) -> str:
    return f"pw-{name}-long-enough-1"


def make_user(server: Any, name: str) -> None:
    """A user who can log in (``roomcast user create --password-stdin``)."""
    env = {**os.environ, "ROOMCAST_DATA_DIR": str(server.data_dir), **server.env}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [ROOMCAST, "user", "create", name, "--password-stdin"],
        input=password_of(name) + "\n",
        env=env,
        cwd=server.data_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


async def new_page(browser: Browser, errors: list[str], viewport: ViewportSize = DESKTOP) -> Page:
    """A page in a browser context of its own (a person's browser); console errors and
    uncaught exceptions go to ``errors``."""
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text) if msg.type == "error" and "WebSocket" not in msg.text else None
        ),
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page


async def log_in(page: Page, server: Any, name: str) -> None:
    """Log in through the login form, by keyboard."""
    await page.goto(server.http_url + "/login/")
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(password_of(name))
    await page.get_by_label("Password").press("Enter")
    await page.wait_for_url(server.http_url + "/rooms/", timeout=WAIT_MS)


def room_path(room: str) -> str:
    return f"/rooms/{urllib.parse.quote(room, safe='')}/"


async def live(page: Page) -> None:
    await expect(page.locator("#conn-status")).to_have_attribute(
        "data-state", "open", timeout=WAIT_MS
    )


async def seqs(page: Page) -> list[int]:
    """The seqs of the messages shown in the open room, in page order."""
    return [
        int(s)
        for s in await page.eval_on_selector_all(
            "#message-list li.msg[data-seq]", "els => els.map((e) => e.dataset.seq)"
        )
    ]


def message(page: Page, seq: int) -> Any:
    return page.locator(f'#message-list li.msg[data-seq="{seq}"]')


async def test_webapp_two_users_chat_in_a_unicode_room(
    browser: Browser, serve: Any, tmp_path: Path
) -> None:
    """Alice (desktop) creates a Unicode room; Bob (phone width, keyboard only) opens it
    from the sidebar, where it shows unread and online counts. They see each other online
    and typing; own messages are marked; links are links and markup stays text; Alice
    edits and deletes her message, which Bob sees, and Bob cannot edit hers."""
    shots = screenshot_dir(tmp_path)
    server = serve()
    for name in ("alice", "bob"):
        await asyncio.to_thread(make_user, server, name)
    await asyncio.to_thread(push, server, "lobby", "Welcome to the team chat!")
    await asyncio.to_thread(push, server, "design", "New mockups are up", "Review at 3 pm")
    errors: list[str] = []

    alice = await new_page(browser, errors)
    await alice.goto(server.http_url + "/rooms/")
    await alice.wait_for_url(lambda url: url.endswith("/login/?next=/rooms/"))
    await expect(alice.locator("#guest-form")).to_be_visible()
    await alice.screenshot(path=shots / "login.png")
    # A wrong password is refused with a message, on the same page.
    await alice.get_by_label("Username").fill("alice")
    await alice.get_by_label("Password").fill("wrong")
    await alice.get_by_role("button", name="Log in").click()
    await expect(alice.locator("#login-error")).to_be_visible()
    await log_in(alice, server, "alice")

    await alice.get_by_label("New room").fill(ROOM)
    await alice.get_by_role("button", name="Create").click()
    await alice.wait_for_url(server.http_url + room_path(ROOM), timeout=WAIT_MS)
    await live(alice)
    await expect(alice.locator("#room-title")).to_have_text(ROOM)
    await expect(alice.locator("#history-status")).to_have_text("No messages yet: say hello.")

    # Bob, at phone width, by keyboard: Tab to the Rooms button, open the sidebar, pick the room.
    bob = await new_page(browser, errors, PHONE)
    await log_in(bob, server, "bob")
    lobby_item = bob.locator('#room-list li[data-room="lobby"]')
    await expect(lobby_item.locator(".room-unread")).to_have_text("1", timeout=WAIT_MS)
    # Alice has the lobby in her sidebar too: both are online there.
    await expect(bob.locator('#room-list li[data-room="lobby"] .room-online')).to_have_text("2")
    await expect(bob.locator(f'#room-list li[data-room="{ROOM}"] .room-online')).to_have_text(
        "2", timeout=WAIT_MS
    )
    await bob.keyboard.press("Tab")  # the skip link
    await bob.keyboard.press("Tab")
    await expect(bob.locator("#rooms-toggle")).to_be_focused()
    await bob.keyboard.press("Enter")
    await expect(bob.locator("#sidebar")).to_be_visible()
    await bob.screenshot(path=shots / "phone-sidebar.png")
    await expect(bob.locator("#room-list a").first).to_be_focused()
    for _ in range(5):
        if await bob.evaluate("document.activeElement.closest('li')?.dataset.room") == ROOM:
            break
        await bob.keyboard.press("Tab")
    await bob.keyboard.press("Enter")
    await bob.wait_for_url(server.http_url + room_path(ROOM), timeout=WAIT_MS)
    await live(bob)
    await expect(bob.locator("#composer-input")).to_be_focused()

    # Presence both ways.
    await expect(alice.locator("#online-list li")).to_have_text(
        ["alice (you)", "bob"], timeout=WAIT_MS
    )
    await expect(bob.locator("#online-summary")).to_have_text("2 online: alice, bob")

    # Alice posts: her message is marked as hers and sent; Bob gets it once.
    text = "hello 你好, see https://example.com/a?b=1. <b>not bold</b>"
    await alice.locator("#composer-input").fill(text)
    await alice.locator("#composer-input").press("Enter")
    await expect(message(alice, 1)).to_have_attribute("data-state", "sent", timeout=WAIT_MS)
    await expect(message(alice, 1)).to_have_class("msg mine")
    await expect(message(bob, 1).locator(".text")).to_have_text(text, timeout=WAIT_MS)
    await expect(message(bob, 1)).to_have_class("msg")
    link = message(bob, 1).locator("a")
    await expect(link).to_have_attribute("href", "https://example.com/a?b=1")
    await expect(link).to_have_text("https://example.com/a?b=1")
    assert await message(bob, 1).locator("b").count() == 0
    await expect(bob.locator("#message-list li.day")).to_have_text(["Today"])
    await expect(alice.locator("#composer-input")).to_have_value("")

    # A few more lines, then Bob types: Alice sees it; his message arrives, the line clears.
    await bob.keyboard.type("hi alice, café at 3?")
    await bob.keyboard.press("Enter")
    await expect(message(alice, 2).locator(".text")).to_have_text(
        "hi alice, café at 3?", timeout=WAIT_MS
    )
    await alice.locator("#composer-input").fill(
        "Standup in 5 min\nagenda: https://example.com/agenda"
    )
    await alice.locator("#composer-input").press("Enter")
    await expect(message(bob, 3)).to_be_visible(timeout=WAIT_MS)
    # At a person's pace: the first typing frame after a post goes out once
    # TYPING_INTERVAL_SECS (2 s) have passed since the last one.
    await bob.locator("#composer-input").press_sequentially("on my way", delay=350)
    await expect(alice.locator("#typing")).to_have_text("bob is typing…", timeout=WAIT_MS)
    await alice.screenshot(path=shots / "room.png")
    await bob.keyboard.press("Enter")
    await expect(message(alice, 4).locator(".text")).to_have_text("on my way", timeout=WAIT_MS)
    await expect(alice.locator("#typing")).to_have_text("")
    await bob.screenshot(path=shots / "phone-room.png")

    # Only the author (or a moderator) may change a message.
    assert await message(bob, 1).locator("button.edit").count() == 0
    await message(alice, 1).hover()
    await message(alice, 1).locator("button.edit").click()
    editor = alice.get_by_label("Edit the message")
    await expect(editor).to_be_focused()
    await editor.fill("hello again, edited")
    await editor.press("Enter")
    await expect(message(bob, 1).locator(".text")).to_have_text(
        "hello again, edited", timeout=WAIT_MS
    )
    await expect(message(bob, 1).locator(".flag")).to_have_text("(edited)")
    alice.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await message(alice, 1).hover()
    await message(alice, 1).locator("button.delete").click()
    await expect(message(bob, 1)).to_have_class("msg deleted", timeout=WAIT_MS)
    await expect(message(bob, 1).locator(".text")).to_have_text("This message was deleted.")
    assert await seqs(bob) == [1, 2, 3, 4]

    # Alice's sidebar: the lobby's unread count; after Bob leaves, one online here.
    await expect(alice.locator('#room-list li[data-room="lobby"] .room-unread')).to_have_text("1")
    await alice.screenshot(path=shots / "sidebar.png")
    await bob.context.close()
    await expect(alice.locator("#online-list li")).to_have_text(["alice (you)"], timeout=WAIT_MS)

    # Logging out ends on the login page; the rooms ask for a login again.
    await alice.get_by_role("button", name="Log out").click()
    await alice.wait_for_url("**/login/")
    await alice.goto(server.http_url + room_path(ROOM))
    await alice.wait_for_url(lambda url: "/login/?next=" in url)
    assert errors == []


async def test_webapp_moderation_and_rooms_taken_away(browser: Browser, serve: Any) -> None:
    """Alice makes a private room (she is its admin); Bob, added as a member, sees it in
    his sidebar and posts. Alice, a moderator there, may change Bob's message and deletes
    it. Bob removed from the room: his room ends with the reason and a Rejoin button, and
    his composer is off. Alice logs out in another tab: her page says so and offers a
    reload, which leads to the login page."""
    server = serve()
    for name in ("alice", "bob"):
        await asyncio.to_thread(make_user, server, name)
    errors: list[str] = []
    alice = await new_page(browser, errors)
    await log_in(alice, server, "alice")
    await alice.get_by_label("New room").fill("board")
    await alice.get_by_label("Who may join").select_option("private")
    await alice.get_by_role("button", name="Create").click()
    await alice.wait_for_url(server.http_url + room_path("board"), timeout=WAIT_MS)
    await live(alice)
    added = await asyncio.to_thread(server.cli, "room", "members", "board", "add", "bob")
    assert added.returncode == 0, added.stderr

    bob = await new_page(browser, errors)
    await log_in(bob, server, "bob")
    await expect(bob.locator('#room-list li[data-room="board"] .lock')).to_have_attribute(
        "title", "private"
    )
    await bob.goto(server.http_url + room_path("board"))
    await live(bob)
    await bob.locator("#composer-input").fill("bob's line")
    await bob.locator("#composer-input").press("Enter")
    await expect(message(alice, 1)).to_be_visible(timeout=WAIT_MS)
    await expect(message(alice, 1).locator("button.edit")).to_have_count(1)
    alice.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await message(alice, 1).locator("button.delete").focus()
    await alice.keyboard.press("Enter")
    await expect(message(bob, 1)).to_have_class("msg mine deleted", timeout=WAIT_MS)

    removed = await asyncio.to_thread(
        server.cli, "room", "members", "board", "remove", "bob", "--server", server.http_url
    )
    assert removed.returncode == 0, removed.stderr
    await expect(bob.locator("#room-ended")).to_contain_text(
        "not allowed in this room any more", timeout=WAIT_MS
    )
    await expect(bob.locator("#composer-input")).to_be_disabled()
    await expect(bob.locator("#conn-status")).to_have_attribute("data-state", "trouble")
    await bob.locator("#rejoin").click()  # the page again: the socket refuses the room
    await expect(bob.locator("#room-ended")).to_contain_text(
        "not allowed in this room", timeout=WAIT_MS
    )

    other_tab = await alice.context.new_page()
    await other_tab.goto(server.http_url + "/rooms/")
    await other_tab.get_by_role("button", name="Log out").click()
    await other_tab.wait_for_url("**/login/")
    await expect(alice.locator("#conn-text")).to_contain_text("logged out", timeout=WAIT_MS)
    await expect(alice.locator("#reconnect")).to_have_text("Reload")
    await alice.locator("#reconnect").click()
    await alice.wait_for_url(lambda url: "/login/?next=" in url, timeout=WAIT_MS)
    assert errors == []
