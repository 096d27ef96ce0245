// app_room.js: the open room of the web app (app.js makes it): its log, history pages,
// composer, edits, typing line and who is online, on the room's Subscription of the
// page's one /ws/ socket (connection.js). ES module, no build step.
//
// Every message is kept by seq (one <li> per seq), so a replay after a reconnect, a
// history page overlapping the catch-up or an ack racing its own echo never shows a
// message twice. Posts leave in the order typed, one at a time (the outbox): a post the
// server refuses for its rate or load is sent again by itself before the next one; one
// refused for good goes back into the box. The elements are made by app_messages.js.

import { FrameTooLargeError, RefusedError, describeClose } from "./connection.js";
import { daySeparator, messageItem, pendingItem, reasonOf } from "./app_messages.js";

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

const $ = (selector, root = document) => root.querySelector(selector);

/** The room being read: its log, history pages, composer, typing and who is online. */
export class RoomView {
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
    this.put(frame);
    this.queueRender();
  }

  /** The message's element in the log, in seq order (replacing the seq's old one). */
  put(frame) {
    this.frames.set(frame.seq, frame);
    const li = this.item(frame);
    const existing = this.items.get(frame.seq);
    if (existing) existing.replaceWith(li);
    else this.place(li, frame.seq);
    this.items.set(frame.seq, li);
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
    const mine = this.isMine(frame);
    return messageItem(frame, {
      mine,
      changeable: frame.seq !== undefined && this.mayChange(frame),
      onEdit: (seq) => this.startEdit(seq),
      onDelete: (seq) => this.remove(seq),
    });
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
        // Not show(): its render would scroll to the bottom while the page fills in.
        if (frame.type === "message" && !this.items.has(frame.seq)) this.put(frame);
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
      if (day && day !== previous) li.before(daySeparator(day));
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
    const li = pendingItem(text, this.conn.user ?? this.page.user, ++this._pendingCount);
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
   * Send the outbox's messages one at a time, in order: a person types slower than the
   * post rate allows anyway, and a message refused for the rate (rate_limited) or load
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
