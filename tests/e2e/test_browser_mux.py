"""connection.js (the /ws/ client: many rooms on one socket) in Debian's Chromium against
real ``roomcast serve`` processes: two users, each on one socket in three rooms.

The test page (``MUX_HTML``, also used by test_browser_mux_scripted.py) is what a chat
client with a sidebar of rooms does with the client: one section
per room with its log, unread count, presence and typing lines; the user's own messages
above. It also writes down every event it gets (``events``: ``[room, type, detail]``, room
"" for the connection's), for the tests to read.
"""

from __future__ import annotations

import json
from typing import Any

from playwright.async_api import Browser, Page

from tests.e2e.test_browser import WAIT_MS, new_page

MUX_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>roomcast: many rooms</title>
<style>
  body { font: 14px sans-serif; margin: 1em; }
  #rooms { display: flex; gap: 1em; align-items: flex-start; }
  section { border: 1px solid #bbb; padding: 0 .8em; width: 17em; }
  .deleted { color: #999; font-style: italic; }
  .deleted::before { content: "(deleted)"; }
  .edited::after { content: " (edited)"; color: #999; }
  .typing { color: #666; min-height: 1.2em; }
</style></head><body>
<p>status: <b id="status">connecting</b> · user: <b id="user"></b></p>
<ul id="notes"></ul>
<div id="rooms"></div>
<script type="module">
  import * as roomcast from "/static/roomcast/connection.js";
  window.roomcast = roomcast;
  window.events = [];   // [room ("" for the connection), type, detail], in order
  window.subs = {};
  const $ = (selector, root = document) => root.querySelector(selector);

  window.start = (rooms, options = {}) => {
    const conn = new roomcast.Connection(options);
    window.conn = conn;
    for (const type of ["status", "connected", "reset", "user_message", "error"]) {
      conn.addEventListener(type, (e) => {
        const d = e.detail;
        events.push(["", type, d]);
        if (type === "status") $("#status").textContent = d.status;
        if (type === "connected") $("#user").textContent = d.user;
        if (type === "reset") $("#notes").replaceChildren();
        if (type === "user_message") {
          const li = document.createElement("li");
          li.dataset.seq = d.seq;
          li.textContent = d.message ?? JSON.stringify(d.data);
          $("#notes").append(li);
        }
      });
    }
    for (const room of rooms) follow(room);
  };

  window.follow = (room) => {
    const sub = conn.subscribe(room);
    subs[room] = sub;
    const section = document.createElement("section");
    section.dataset.room = room;
    section.innerHTML = '<h2></h2><p>unread <b class="unread">-</b> · <i class="state"></i></p>'
      + '<p class="presence"></p><p class="typing"></p><ol class="log"></ol>';
    $("h2", section).textContent = room;
    $("#rooms").append(section);
    const row = (seq) => $(`li[data-seq="${seq}"]`, section);
    const types = ["joined", "reset", "message", "edit", "delete", "typing", "presence",
                   "unread", "unsubscribed", "state", "error"];
    for (const type of types) {
      sub.addEventListener(type, (e) => {
        const d = e.detail;
        events.push([room, type, d]);
        if (type === "reset") $(".log", section).replaceChildren();
        if (type === "message") {
          const li = document.createElement("li");
          li.dataset.seq = d.seq;
          li.dataset.room = d.room;
          li.dataset.user = d.user ?? "";
          li.textContent = d.message;
          if (d.deleted) li.className = "deleted";
          else if (d.edited) li.className = "edited";
          $(".log", section).append(li);
        }
        if (type === "edit" && row(d.target)) {
          row(d.target).textContent = d.message;
          row(d.target).className = "edited";
        }
        if (type === "delete" && row(d.target)) {
          row(d.target).textContent = "";
          row(d.target).className = "deleted";
        }
        if (type === "typing") $(".typing", section).textContent = `${d.user} is typing…`;
        if (type === "presence") {
          const names = d.users.map((u) => u.user).sort().join(", ");
          $(".presence", section).textContent = `here: ${names} (${d.anonymous} guests)`;
        }
        if (type === "unread") $(".unread", section).textContent = d.unread;
        if (type === "state") $(".state", section).textContent = d.state;
        if (type === "unsubscribed") {
          $(".state", section).textContent = roomcast.describeClose(d.code, d.reason);
        }
      });
    }
    return sub;
  };
  window.ready = true;
</script></body></html>
"""

# Each room section's log as [seq, room, text, class] rows, by room.
LOGS_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll("section"),
    (s) => [s.dataset.room, Array.from(s.querySelectorAll(".log li"),
        (li) => [Number(li.dataset.seq), li.dataset.room, li.textContent, li.className])]))"""


async def mux_page(browser: Browser, origin: str, errors: list[str], **routes: str) -> Page:
    """The test page at ``origin``/mux/, in a browser context of its own; ``routes`` maps
    a URL path to a file's text served in its place (the client from the source tree)."""
    page = await new_page(browser, errors)
    await page.route(
        f"{origin}/mux/", lambda route: route.fulfill(body=MUX_HTML, content_type="text/html")
    )

    def serve(text: str) -> Any:
        return lambda route: route.fulfill(body=text, content_type="text/javascript")

    for path, text in routes.items():
        await page.route(origin + path, serve(text))
    await page.goto(f"{origin}/mux/")
    await page.wait_for_function("window.ready === true", timeout=WAIT_MS)
    return page


async def start(page: Page, rooms: list[str], **options: Any) -> None:
    """``new Connection(options)`` on the page, subscribed to ``rooms``."""
    await page.evaluate("([rooms, options]) => start(rooms, options)", [rooms, options])


async def logs(page: Page) -> dict[str, list[list[Any]]]:
    """Each room's log rows, ``[seq, room, text, class]``."""
    return dict(await page.evaluate(LOGS_JS))


async def wait_js(page: Page, expression: str, arg: Any = None) -> Any:
    """Wait until ``expression`` (a function of ``arg``) is truthy; returns its value."""
    handle = await page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)
    return await handle.json_value()


async def wait_rows(page: Page, room: str, count: int) -> list[list[Any]]:
    """``room``'s log once it has at least ``count`` rows."""
    await wait_js(
        page,
        "([room, n]) => document.querySelectorAll("
        '`section[data-room="${room}"] .log li`).length >= n',
        [room, count],
    )
    return (await logs(page))[room]


async def events_of(page: Page, room: str, kind: str) -> list[dict[str, Any]]:
    """The details of ``room``'s events of type ``kind`` ("" for the connection's)."""
    return [d for r, t, d in await page.evaluate("events") if r == room and t == kind]


def js(value: Any) -> str:
    """``value`` as a JavaScript literal."""
    return json.dumps(value)
