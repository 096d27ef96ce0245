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
// Every message is kept by seq (one <li> per seq), so a replay after a reconnect, a
// history page overlapping the catch-up or an ack racing its own echo never shows a
// message twice. Text is only ever put in the page with textContent / text nodes; links
// are <a> elements made from http(s) URLs found in the text.
//
//   <script type="module">
//     const { start } = await import(appUrl);
//     start(JSON.parse(document.getElementById("roomcast-app").textContent));
//   </script>

import {
  ClosedError,
  Connection,
  FrameTooLargeError,
  RefusedError,
  describeClose,
  socketUrl,
} from "./connection.js";

// Older messages asked for per history page (the server's HISTORY_PAGE_MAX is 100).
const HISTORY_PAGE = 50;
// Within this many pixels of the top of the log, the next older page is loaded; within
// this many of the bottom, the log follows new messages and the room counts as read.
const NEAR_TOP_PX = 150;
const NEAR_BOTTOM_PX = 80;
// "alice is typing…" stays this long after her last typing frame: the server forwards at
// most one per TYPING_INTERVAL_SECS (2 s) while she types, so a gap of more is a pause.
const TYPING_SHOWN_MS = 2000 + 1500;
// A post answered rate_limited or busy is sent again by itself this many times (after
// retry_after, or BUSY_RETRY_MS doubling) before its text goes back into the box.
const MAX_AUTO_RETRIES = 5;
const BUSY_RETRY_MS = 1000;
// A post still unanswered this long on a live socket says so: a socket whose network
// went away without a close looks open until TCP gives up, minutes later.
const SLOW_ACK_MS = 10000;
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

// -- the open room -----------------------------------------------------------------------

/** The room being read: its log, history pages, composer, typing and who is online. */
class RoomView {
  constructor(page, conn, sidebar, status) {
    this.page = page;
    this.conn = conn;
    this.sidebar = sidebar;
    this.status = status;
    this.pane = $("#messages");
    this.list = $("#message-list");
    this.historyLine = $("#history-status");
    this.input = $("#composer-input");
    this.note = $("#composer-note");
    this.items = new Map();      // seq -> <li> of a message
    this.frames = new Map();     // seq -> its latest frame (text after edits)
    this.oldest = null;          // the smallest seq seen (messages and events)
    this.newest = -1;            // the largest seq of a message shown
    this.hasMore = true;         // older messages may exist
    this.loading = false;        // a history page is on its way
    this.caughtUp = false;       // the catch-up after the last joined is all here
    this.joinedSeq = null;
    this.atBottom = true;
    this.typing = new Map();     // user -> time their "typing" expires
    this._typingTimer = null;
    this._pendingCount = 0;
    this.outbox = [];            // {text, li, attempt}: typed, not yet stored, in order
    this._sending = false;       // the outbox's first message is with the server
    this.retried = 0;            // posts sent again after rate_limited or busy
    this._retryAfterMs = null;   // retry_after of the last rate_limited error
    this._renderQueued = false;

    this.sub = conn.subscribe(page.room);
    sidebar.watch(this.sub);
    this.listen();
    this.wireComposer();
    this.pane.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.unseenBelow = 0; // live messages that came while the reader was scrolled up
    $("#jump-new").addEventListener("click", () => {
      this.pane.scrollTop = this.pane.scrollHeight;
      this.input.focus();
    });
    document.addEventListener("visibilitychange", () => this.markRead());
    conn.addEventListener("status", () => this.refreshPending());
    if (!page.mayPost) {
      this.input.disabled = true;
      $("#send").disabled = true;
      this.input.placeholder = page.isUser
        ? "You may read this room but not post in it."
        : "Log in to post in this room.";
    }
  }

  // ---- events from the subscription

  listen() {
    const sub = this.sub;
    sub.addEventListener("joined", (e) => {
      this.joinedSeq = e.detail.seq;
      this.caughtUp = false;
      this.status.setRoomNote(null);
      this.checkCaughtUp();
    });
    sub.addEventListener("reset", () => {
      // The gap was too long to replay: what follows is the room's latest page.
      for (const li of this.list.querySelectorAll("li:not(.pending)")) li.remove();
      this.items.clear();
      this.frames.clear();
      this.oldest = null;
      this.newest = -1;
      this.hasMore = true;
    });
    sub.addEventListener("message", (e) => {
      if (this.caughtUp && !this.atBottom) this.unseenBelow += 1;
      this.show(e.detail);
      this.seen(e.detail.seq);
      this.typing.delete(e.detail.user);
      this.renderTyping();
      this.checkCaughtUp();
    });
    sub.addEventListener("edit", (e) => {
      this.seen(e.detail.seq);
      this.applyEdit(e.detail);
      this.checkCaughtUp();
    });
    sub.addEventListener("delete", (e) => {
      this.seen(e.detail.seq);
      this.applyDelete(e.detail.target);
      this.checkCaughtUp();
    });
    sub.addEventListener("typing", (e) => {
      if (e.detail.user === this.conn.user) return;
      this.typing.set(e.detail.user, Date.now() + TYPING_SHOWN_MS);
      this.renderTyping();
    });
    sub.addEventListener("presence", (e) => this.renderPeople(e.detail));
    sub.addEventListener("state", (e) => {
      const d = e.detail;
      this.refreshPending();
      if (d.state === "subscribing" && d.delayMs !== undefined) {
        const secs = Math.ceil(d.delayMs / 1000);
        this.status.setRoomNote(`Joining the room again in ${secs} s (${d.reason || d.code})`);
      }
    });
    sub.addEventListener("unsubscribed", (e) => {
      // The server ended this room alone (4403 rights taken away, 4000 disconnected):
      // the socket and the other rooms go on. Rejoin loads the page again, which asks.
      const why = describeClose(e.detail.code, e.detail.reason);
      this.status.setRoomNote(`Not in this room: ${why}`);
      $("#room-ended-text").textContent = `You are not in this room: ${why}.`;
      $("#room-ended").hidden = false;
      this.input.disabled = true;
      $("#send").disabled = true;
    });
    $("#rejoin").addEventListener("click", () => window.location.reload());
    sub.addEventListener("error", (e) => {
      const d = e.detail;
      if (d.code === "rate_limited" && typeof d.retry_after === "number") {
        this._retryAfterMs = Math.max(100, d.retry_after * 1000);
      }
      // Errors about a request reject its promise, handled where it was made.
      if (!d.client_id && d.code !== "rate_limited") this.setNote(d.detail || d.code);
    });
  }

  seen(seq) {
    if (typeof seq === "number" && (this.oldest === null || seq < this.oldest)) this.oldest = seq;
  }

  checkCaughtUp() {
    if (this.caughtUp || this.joinedSeq === null) return;
    if ((this.sub.lastSeq ?? 0) < this.joinedSeq) return;
    this.caughtUp = true;
    this.queueRender();
    // Fill the pane: older pages until it scrolls or the room's start is reached.
    setTimeout(() => this.loadOlderIfNeeded(), 0);
  }

  // ---- messages

  isMine(frame) {
    return frame.user != null && frame.user === (this.conn.user ?? this.page.user);
  }

  mayChange(frame) {
    if (frame.deleted || !this.page.isUser) return false;
    if (this.page.isModerator) return true;
    if (!this.isMine(frame) || frame.kind !== "chat") return false;
    const windowMs = this.page.editWindowSecs * 1000;
    return windowMs > 0 && Date.now() - Date.parse(frame.ts) < windowMs;
  }

  /** Show a message frame (live, catch-up or history), once per seq. */
  show(frame) {
    if (frame.seq === undefined) {
      // A tutorial-style system message: live only, no seq; shown as it comes.
      const li = this.item(frame);
      this.list.insertBefore(li, this.firstPending());
      this.queueRender();
      return;
    }
    this.frames.set(frame.seq, frame);
    const li = this.item(frame);
    const existing = this.items.get(frame.seq);
    if (existing) existing.replaceWith(li);
    else this.place(li, frame.seq);
    this.items.set(frame.seq, li);
    this.queueRender();
  }

  firstPending() {
    return this.list.querySelector("li.pending");
  }

  /** Put `li` among the messages in seq order (pending ones stay last). */
  place(li, seq) {
    let before = this.firstPending();
    if (seq < this.newest) {
      for (const el of this.list.children) {
        if (el.dataset.seq && Number(el.dataset.seq) > seq) {
          before = el;
          // A day separator right above `el` belongs to it: go above that too.
          if (before.previousElementSibling?.classList.contains("day")) {
            before = before.previousElementSibling;
          }
          break;
        }
      }
    }
    this.list.insertBefore(li, before);
    if (seq > this.newest) this.newest = seq;
  }

  item(frame) {
    const li = document.createElement("li");
    li.className = "msg";
    if (frame.seq !== undefined) li.dataset.seq = frame.seq;
    if (frame.kind === "system") li.classList.add("system");
    const mine = this.isMine(frame);
    if (mine) {
      li.classList.add("mine");
      li.dataset.state = "sent";
    }
    const ts = frame.ts ? new Date(frame.ts) : new Date();
    li.dataset.day = dayKey(ts);
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "author";
    who.textContent = frame.kind === "system" ? "system" : (frame.user ?? "anonymous");
    const time = document.createElement("time");
    time.dateTime = ts.toISOString();
    time.title = ts.toLocaleString();
    time.textContent = ts.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    meta.append(who, " ", time);
    const flag = document.createElement("span");
    flag.className = "flag";
    if (frame.edited && !frame.deleted) flag.textContent = "(edited)";
    meta.append(" ", flag);
    if (mine) {
      const sent = document.createElement("span");
      sent.className = "sent-mark";
      sent.textContent = "✓";
      sent.title = "sent";
      sent.setAttribute("aria-label", "sent");
      meta.append(" ", sent);
    }
    const text = document.createElement("div");
    text.className = "text";
    if (frame.deleted) {
      li.classList.add("deleted");
      text.textContent = "This message was deleted.";
    } else {
      text.append(linkify(frame.message ?? ""));
    }
    li.append(meta, text);
    if (frame.seq !== undefined && this.mayChange(frame)) li.append(this.actions(frame.seq, who.textContent));
    return li;
  }

  actions(seq, author) {
    const box = document.createElement("div");
    box.className = "actions";
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit";
    edit.textContent = "Edit";
    edit.setAttribute("aria-label", `Edit message ${seq} by ${author}`);
    edit.addEventListener("click", () => this.startEdit(seq));
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete message ${seq} by ${author}`);
    del.addEventListener("click", () => this.remove(seq));
    box.append(edit, del);
    return box;
  }

  applyEdit(event) {
    const frame = this.frames.get(event.target);
    if (!frame || event.deleted) return;
    this.show({ ...frame, message: event.message, edited: event.ts });
  }

  applyDelete(target) {
    const frame = this.frames.get(target);
    if (!frame) return;
    this.show({ ...frame, message: "", deleted: true });
  }

  // ---- editing and deleting

  startEdit(seq) {
    const li = this.items.get(seq);
    const frame = this.frames.get(seq);
    if (!li || !frame || li.querySelector("form.editor")) return;
    const form = document.createElement("form");
    form.className = "editor";
    const label = document.createElement("label");
    label.className = "visually-hidden";
    label.htmlFor = `edit-${seq}`;
    label.textContent = "Edit the message";
    const box = document.createElement("textarea");
    box.id = `edit-${seq}`;
    box.value = frame.message;
    box.rows = Math.min(8, frame.message.split("\n").length);
    const save = document.createElement("button");
    save.type = "submit";
    save.textContent = "Save";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.textContent = "Enter to save, Escape to cancel";
    form.append(label, box, save, cancel, hint);
    const text = $(".text", li);
    text.hidden = true;
    text.after(form);
    box.focus();
    const close = () => {
      const current = this.items.get(seq);
      form.remove();
      text.hidden = false;
      (current?.querySelector("button.edit") ?? this.input).focus();
    };
    cancel.addEventListener("click", close);
    box.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        close();
      } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const value = box.value;
      if (!value.trim() || value === frame.message) return close();
      save.disabled = true;
      this.sub.edit(seq, value).then(
        () => {
          // The edit event re-renders the item; the editor goes with the old one.
          if (form.isConnected) close();
          else (this.items.get(seq)?.querySelector("button.edit") ?? this.input).focus();
        },
        (err) => {
          save.disabled = false;
          this.setNote(`Not saved: ${reasonOf(err)}.`);
        },
      );
    });
  }

  remove(seq) {
    if (!window.confirm("Delete this message? Everyone in the room stops seeing it.")) return;
    this.sub.delete(seq).then(
      () => this.input.focus(),
      (err) => this.setNote(`Not deleted: ${reasonOf(err)}.`),
    );
  }

  // ---- history

  onScroll() {
    const p = this.pane;
    this.atBottom = p.scrollHeight - p.scrollTop - p.clientHeight < NEAR_BOTTOM_PX;
    if (this.atBottom) {
      this.unseenBelow = 0;
      this.renderJump();
      this.markRead();
    }
    if (p.scrollTop < NEAR_TOP_PX) this.loadOlder();
  }

  loadOlderIfNeeded() {
    const p = this.pane;
    if (p.scrollHeight <= p.clientHeight + NEAR_TOP_PX || p.scrollTop < NEAR_TOP_PX) this.loadOlder();
    else this.renderHistoryLine();
  }

  async loadOlder() {
    if (this.loading || !this.caughtUp || this.sub.state !== "subscribed") return;
    if (this.oldest === null || this.oldest <= 1) this.hasMore = false;
    if (!this.hasMore) return this.renderHistoryLine();
    this.loading = true;
    this.renderHistoryLine();
    let failed = null;
    try {
      const page = await this.sub.history({ before: this.oldest, limit: HISTORY_PAGE });
      const p = this.pane;
      const height = p.scrollHeight;
      const top = p.scrollTop;
      for (const frame of page.messages) {
        this.seen(frame.seq);
        if (frame.type === "message" && !this.items.has(frame.seq)) {
          this.frames.set(frame.seq, frame);
          const li = this.item(frame);
          this.place(li, frame.seq);
          this.items.set(frame.seq, li);
        }
      }
      this.hasMore = Boolean(page.has_more) && this.oldest > 1;
      this.relabelDays();
      // Keep what the reader was looking at where it was.
      p.scrollTop = top + (p.scrollHeight - height);
    } catch (err) {
      failed = err;
    } finally {
      this.loading = false;
    }
    if (failed) {
      this.historyLine.textContent = `Could not load older messages (${failed.message}); they load when the room is back.`;
      return;
    }
    this.renderHistoryLine();
    this.loadOlderIfNeeded();
  }

  renderHistoryLine() {
    const line = this.historyLine;
    if (this.loading) line.textContent = "Loading older messages…";
    else if (!this.hasMore) line.textContent = this.items.size ? "This is the start of the room." : "No messages yet: say hello.";
    else line.textContent = "Scroll up for older messages.";
    line.dataset.state = this.loading ? "loading" : this.hasMore ? "more" : "start";
  }

  // ---- rendering

  queueRender() {
    if (this._renderQueued) return;
    this._renderQueued = true;
    requestAnimationFrame(() => {
      this._renderQueued = false;
      const follow = this.atBottom;
      this.relabelDays();
      if (follow) this.pane.scrollTop = this.pane.scrollHeight;
      this.renderHistoryLine();
      this.renderJump();
      this.markRead();
    });
  }

  renderJump() {
    const jump = $("#jump-new");
    if (this.atBottom) this.unseenBelow = 0;
    jump.hidden = this.unseenBelow === 0;
    jump.textContent = `${this.unseenBelow} new message${this.unseenBelow === 1 ? "" : "s"} below ↓`;
  }

  /** Date separators wherever the day changes between two messages. */
  relabelDays() {
    for (const sep of this.list.querySelectorAll("li.day")) sep.remove();
    let previous = null;
    for (const li of [...this.list.children]) {
      const day = li.dataset.day;
      if (day && day !== previous) {
        const sep = document.createElement("li");
        sep.className = "day";
        sep.setAttribute("role", "separator");
        sep.textContent = dayLabel(day);
        li.before(sep);
      }
      if (day) previous = day;
    }
  }

  markRead() {
    if (this.atBottom && document.visibilityState === "visible") this.sub.read();
  }

  renderTyping() {
    clearTimeout(this._typingTimer);
    const now = Date.now();
    for (const [user, until] of this.typing) if (until <= now) this.typing.delete(user);
    const names = [...this.typing.keys()];
    const line = $("#typing");
    if (names.length === 0) line.textContent = "";
    else if (names.length === 1) line.textContent = `${names[0]} is typing…`;
    else if (names.length === 2) line.textContent = `${names[0]} and ${names[1]} are typing…`;
    else line.textContent = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
    if (names.length) {
      const next = Math.min(...this.typing.values()) - now;
      this._typingTimer = setTimeout(() => this.renderTyping(), Math.max(50, next));
    }
  }

  renderPeople(presence) {
    const me = this.conn.user;
    const users = presence.users.map((u) => u.user).sort((a, b) => a.localeCompare(b));
    const list = $("#online-list");
    list.replaceChildren(
      ...users.map((name) => {
        const li = document.createElement("li");
        li.textContent = name;
        if (name === me) {
          li.classList.add("me");
          li.append(" (you)");
        }
        return li;
      }),
    );
    const guests = presence.anonymous;
    const more = presence.truncated ? presence.count - users.length : 0;
    $("#guests-online").textContent = [
      more ? `and ${more} more` : "",
      guests ? `${guests} guest${guests === 1 ? "" : "s"}` : "",
    ].filter(Boolean).join(", ");
    const total = presence.count + guests;
    $("#people-heading").textContent = `Online (${total})`;
    const shown = users.slice(0, 5).join(", ");
    const rest = total - Math.min(users.length, 5);
    $("#online-summary").textContent =
      `${total} online` + (shown ? `: ${shown}${rest > 0 ? ` and ${rest} more` : ""}` : "");
  }

  // ---- composer

  wireComposer() {
    const input = this.input;
    $("#composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    input.addEventListener("input", () => {
      this.autosize();
      if (input.value.trim()) this.sub.typing();
      if (this.note.dataset.kind === "size" && this.fits(input.value)) this.setNote("");
    });
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, 200)}px`;
  }

  fits(text) {
    try {
      this.sub.checkSize(text);
      return true;
    } catch (err) {
      if (!(err instanceof FrameTooLargeError)) throw err;
      return false;
    }
  }

  submit() {
    const text = this.input.value;
    if (!text.trim() || this.input.disabled) return;
    if (!this.fits(text)) {
      const bytes = this.sub.frameBytes(text);
      const limit = this.page.maxFrameBytes;
      this.setNote(
        `Not sent: the message is ${bytes.toLocaleString("en")} bytes as a frame, over the ` +
          `limit of ${limit.toLocaleString("en")}. Shorten it by ` +
          `${(bytes - limit).toLocaleString("en")} bytes; it is still in the box.`,
        "size",
      );
      return;
    }
    this.setNote("");
    this.input.value = "";
    this.autosize();
    this.outbox.push({ text, li: this.addPending(text), attempt: 0 });
    this.pump();
  }

  addPending(text) {
    const li = document.createElement("li");
    li.className = "msg mine pending";
    li.dataset.state = "pending";
    li.dataset.pending = String(++this._pendingCount);
    li.dataset.day = dayKey(new Date());
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "author";
    who.textContent = this.conn.user ?? this.page.user;
    const flag = document.createElement("span");
    flag.className = "flag";
    meta.append(who, " ", flag);
    const body = document.createElement("div");
    body.className = "text";
    body.append(linkify(text));
    li.append(meta, body);
    this.list.append(li);
    this.atBottom = true;
    this.setPendingLabel(li);
    this.queueRender();
    return li;
  }

  setPendingLabel(li, text = null) {
    const open = this.conn.status === "open" && this.sub.state === "subscribed";
    $(".flag", li).textContent = text ?? (open ? "sending…" : "waiting for the connection…");
  }

  refreshPending() {
    for (const li of this.list.querySelectorAll("li.pending:not([data-retrying])")) this.setPendingLabel(li);
  }

  /**
   * Send the outbox's messages one at a time, in order: the server reads one post per
   * socket at a time anyway, and a message refused for the rate (rate_limited) or load
   * (busy) is sent again after retry_after (or BUSY_RETRY_MS, doubling) before the ones
   * typed after it, so they are stored in the order typed.
   */
  pump() {
    if (this._sending || this.outbox.length === 0) return;
    const entry = this.outbox[0];
    this._sending = true;
    delete entry.li.dataset.retrying;
    this.setPendingLabel(entry.li);
    const slow = setTimeout(() => {
      if (entry.li.isConnected && this.conn.status === "open") {
        this.setPendingLabel(entry.li, "no answer from the server yet…");
      }
    }, SLOW_ACK_MS);
    this.sub.send(entry.text).finally(() => clearTimeout(slow)).then(
      (seq) => {
        this.outbox.shift();
        this._sending = false;
        this.settle(entry.li, seq);
        this.pump();
      },
      (err) => {
        const code = err instanceof RefusedError ? err.code : null;
        if ((code === "rate_limited" || code === "busy") && entry.attempt < MAX_AUTO_RETRIES) {
          const waitMs =
            code === "rate_limited"
              ? (this._retryAfterMs ?? BUSY_RETRY_MS)
              : BUSY_RETRY_MS * 2 ** entry.attempt;
          entry.attempt += 1;
          this.retried += 1;
          this._retryAfterMs = null;
          entry.li.dataset.retrying = "1";
          const why = code === "busy" ? "the server is busy" : "sending too fast";
          this.setPendingLabel(entry.li, `${why}: sending again in ${Math.ceil(waitMs / 1000)} s…`);
          setTimeout(() => {
            this._sending = false;
            this.pump();
          }, waitMs);
          return;
        }
        // Not stored, and not going to be: this message and the ones queued after it go
        // back into the box, in the order typed, with the reason.
        const failed = this.outbox.splice(0);
        this._sending = false;
        for (const { li } of failed) li.remove();
        this.queueRender();
        this.giveBack(failed.map((f) => f.text).join("\n"));
        this.setNote(`Not sent: ${reasonOf(err)}. The text is back in the box.`);
      },
    );
  }

  /** The server stored a pending message as `seq`: it becomes that message. */
  settle(pending, seq) {
    if (this.items.has(seq)) {
      pending.remove(); // its echo came first and is shown
    } else {
      pending.classList.remove("pending");
      pending.dataset.state = "sent";
      pending.dataset.seq = seq;
      delete pending.dataset.pending;
      $(".flag", pending).textContent = "";
      pending.remove();
      this.place(pending, seq);
      this.items.set(seq, pending);
    }
    this.queueRender();
  }

  giveBack(text) {
    const input = this.input;
    input.value = input.value ? `${text}\n${input.value}` : text;
    this.autosize();
    input.focus();
  }

  setNote(text, kind = "") {
    this.note.textContent = text;
    this.note.hidden = !text;
    this.note.dataset.kind = kind;
  }
}

// -- helpers -----------------------------------------------------------------------------

/** Why a request failed, in words (a SendError's message, a close's description). */
function reasonOf(err) {
  if (err instanceof ClosedError) return describeClose(err.code, err.reason);
  return String(err?.message || err).replace(/\.$/, "");
}

// http(s) URLs in a message's text; punctuation that ends a sentence is not part of one.
const URL_PATTERN = /\bhttps?:\/\/[^\s<>"'`]+/giu;
const URL_TRAILING = /[.,;:!?)\]}'"»”’]+$/u;

/** `text` as text nodes and <a> elements for its http(s) URLs: never parsed as HTML. */
export function linkify(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    const raw = match[0].replace(URL_TRAILING, "");
    let href = null;
    try {
      href = new URL(raw);
    } catch {
      continue; // not a URL after all: stays text
    }
    if (href.protocol !== "http:" && href.protocol !== "https:") continue;
    fragment.append(text.slice(last, match.index));
    const a = document.createElement("a");
    a.href = href.href;
    a.textContent = raw;
    a.rel = "noopener noreferrer nofollow";
    a.target = "_blank";
    fragment.append(a);
    last = match.index + raw.length;
  }
  fragment.append(text.slice(last));
  return fragment;
}

function dayKey(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

function dayLabel(key) {
  const [y, m, d] = key.split("-").map(Number);
  const date = new Date(y, m - 1, d);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (key === dayKey(today)) return "Today";
  if (key === dayKey(yesterday)) return "Yesterday";
  return date.toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}
