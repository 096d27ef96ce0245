// app.js: the web app's page (templates/roomcast/app.html, roomcast.app_views). ES module,
// no build step. One /ws/ socket (connection.js) carries every room of the sidebar:
//
// - the room being read is subscribed without `since`: its latest messages come as the
//   catch-up, older ones as history pages while the reader scrolls up, until the start;
// - every other room of the sidebar is subscribed with `since` its last seq (from the
//   view): no catch-up, only its live stream, which gives its unread count (the server's
//   count in `joined`, then one more per message) and how many are online (presence).
//   Being subscribed is being online there: the people of a room are those who have the
//   app open with the room in their sidebar, as in a team chat.
//
// This module: the status line and the sidebar; the open room is app_room.js's RoomView,
// its elements app_messages.js's (text only ever as text: links are <a> elements made
// from the http(s) URLs in it).
//
//   <script type="module">
//     const { start } = await import(appUrl);
//     start(JSON.parse(document.getElementById("roomcast-app").textContent));
//   </script>

import { Connection, describeClose, socketUrl } from "./connection.js";
import { RoomView } from "./app_room.js";

// The server counts unread up to 1000 (cursors.UNREAD_COUNT_MAX): shown as "999+".
const UNREAD_SHOWN_MAX = 999;

const $ = (selector, root = document) => root.querySelector(selector);

/** Start the app on this page; `page` is the view's roomcast-app json_script. */
export function start(page) {
  const conn = new Connection({
    url: socketUrl(page.socketPath),
    maxFrameBytes: page.maxFrameBytes,
    typingIntervalMs: page.typingIntervalSecs * 1000,
  });
  const sidebar = new Sidebar(page, conn);
  const status = new StatusLine(conn);
  const app = { conn, sidebar, status, room: null };
  if (page.room !== null) app.room = new RoomView(page, conn, sidebar, status);
  sidebar.followOthers();
  window.roomcastApp = app; // for the browser tests and the console
  return app;
}

// -- connection status -------------------------------------------------------------------

/** The header's status line: connecting, live, reconnecting in N s, offline (and why). */
class StatusLine {
  constructor(conn) {
    this.conn = conn;
    this.el = $("#conn-status");
    this.text = $("#conn-text");
    this.button = $("#reconnect");
    this.detail = { status: "connecting" };
    this.reloads = false; // the button reloads the page instead of reconnecting
    this.roomNote = null; // the open room's own trouble (refused, rejoining), if any
    this._timer = null;
    conn.addEventListener("status", (e) => {
      this.detail = e.detail;
      this.render();
    });
    window.addEventListener("offline", () => this.render());
    window.addEventListener("online", () => this.render());
    this.button.addEventListener("click", () => {
      this.button.hidden = true;
      if (this.reloads) window.location.reload();
      else conn.reconnect();
    });
    this.render();
  }

  render() {
    clearInterval(this._timer);
    const d = this.detail;
    let state = d.status;
    let text;
    if (d.status === "open") {
      text = this.roomNote ?? "Live";
      if (this.roomNote) state = "trouble";
    } else if (d.status === "connecting") {
      text = "Connecting…";
    } else if (d.status === "reconnecting") {
      const why = describeClose(d.code, d.reason);
      const until = Date.now() + d.delayMs;
      const tick = () => {
        const secs = Math.ceil((until - Date.now()) / 1000);
        const when = secs > 0 ? `in ${secs} s` : "now";
        this.text.textContent = d.everOpen
          ? `Reconnecting ${when} (${why})`
          : `Cannot reach the server (${why}); trying again ${when}`;
      };
      tick();
      this._timer = setInterval(tick, 250);
      text = null;
    } else {
      const why = d.code ? describeClose(d.code, d.reason) : "closed";
      text = `Offline: ${why}`;
    }
    if (!navigator.onLine) {
      state = "closed";
      text = "Offline: this device has no network; waiting for it";
      clearInterval(this._timer);
    }
    if (text !== null) this.text.textContent = text;
    this.el.dataset.state = state;
    this.button.hidden = d.status !== "closed";
    // Refused as who the page is (4401, or 4403 for the socket: logged out, deactivated):
    // connecting again would only be refused again, or come back as someone else. A
    // reload asks the site, which sends a logged-out visitor to the login page.
    this.reloads = d.status === "closed" && (d.code === 4401 || d.code === 4403);
    this.button.textContent = this.reloads ? "Reload" : "Reconnect";
  }

  /** The open room's own state, shown while the socket is live (null: none). */
  setRoomNote(note) {
    this.roomNote = note;
    this.render();
  }
}

// -- sidebar -----------------------------------------------------------------------------

/** The rooms list: unread badges and online counts, from one subscription per room. */
class Sidebar {
  constructor(page, conn) {
    this.page = page;
    this.conn = conn;
    this.unread = new Map(); // room -> count (a guest has none)
    const toggle = $("#rooms-toggle");
    toggle.addEventListener("click", () => this.setOpen(!document.body.classList.contains("sidebar-open")));
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && document.body.classList.contains("sidebar-open")) {
        this.setOpen(false);
        toggle.focus();
      }
    });
  }

  setOpen(open) {
    document.body.classList.toggle("sidebar-open", open);
    $("#rooms-toggle").setAttribute("aria-expanded", String(open));
    if (open) $("#sidebar a, #sidebar input")?.focus();
  }

  /** Subscribe every listed room but the open one (which RoomView follows). */
  followOthers() {
    for (const { name, lastSeq } of this.page.rooms) {
      if (name === this.page.room) continue;
      const sub = this.conn.subscribe(name, { since: lastSeq });
      this.watch(sub);
    }
  }

  /** Keep a room's badges in step with its subscription. */
  watch(sub) {
    sub.addEventListener("unread", (e) => this.setUnread(sub.room, e.detail.unread));
    sub.addEventListener("presence", (e) => this.setOnline(sub.room, e.detail));
    sub.addEventListener("unsubscribed", (e) => {
      const item = this.item(sub.room);
      if (item) item.title = describeClose(e.detail.code, e.detail.reason);
      this.setUnread(sub.room, null);
      this.setOnline(sub.room, null);
    });
  }

  item(room) {
    for (const li of document.querySelectorAll("#room-list .room-item")) {
      if (li.dataset.room === room) return li;
    }
    return null;
  }

  setUnread(room, count) {
    if (count === null || count === undefined) this.unread.delete(room);
    else this.unread.set(room, count);
    const badge = this.item(room)?.querySelector(".room-unread");
    if (badge) {
      badge.hidden = !count;
      badge.textContent = count > UNREAD_SHOWN_MAX ? `${UNREAD_SHOWN_MAX}+` : String(count || "");
      badge.setAttribute("aria-label", `${count} unread`);
    }
    let total = 0;
    for (const [name, n] of this.unread) if (name !== this.page.room) total += n;
    const all = $("#rooms-toggle-unread");
    all.hidden = total === 0;
    all.textContent = total > UNREAD_SHOWN_MAX ? `${UNREAD_SHOWN_MAX}+` : String(total);
    const title = document.title.replace(/^\(\d+\+?\) /, "");
    document.title = total ? `(${total > UNREAD_SHOWN_MAX ? `${UNREAD_SHOWN_MAX}+` : total}) ${title}` : title;
  }

  setOnline(room, presence) {
    const el = this.item(room)?.querySelector(".room-online");
    if (!el) return;
    if (presence === null) {
      el.hidden = true;
      return;
    }
    const n = presence.count + presence.anonymous;
    el.hidden = false;
    el.textContent = String(n);
    el.title = `${n} online`;
    el.setAttribute("aria-label", `${n} online`);
  }
}
