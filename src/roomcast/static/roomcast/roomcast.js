// roomcast.js: browser client for roomcast's protocol v1 (docs/protocol.md). ES module, no build.
//
//   import { RoomClient } from "/static/roomcast/roomcast.js";
//   const room = new RoomClient("lobby");
//   room.addEventListener("message", (e) => show(e.detail));   // {seq, message, user, ts, kind}
//   await room.send("hello");                                   // resolves with the seq
//
// It reconnects by itself (exponential backoff with jitter) and recovers what it missed
// with ?since=<last seq>; it never shows a message twice. A message sent while offline is
// queued and sent once the connection is back, unless the replay shows it was stored.

export const PROTOCOL = "roomcast.v1";

// Close codes after which reconnecting is pointless (docs/protocol.md, "Close codes").
export function shouldReconnect(code) {
  if ([1001, 1005, 1006, 1011, 1012, 1013].includes(code)) return true;
  return code >= 4500 && code <= 4999;
}

const MAX_QUEUED_SENDS = 100; // sends waiting for a connection; more are refused, not dropped

export class RoomClient extends EventTarget {
  constructor(room, { url = null, since = null, minDelayMs = 250, maxDelayMs = 10000 } = {}) {
    super();
    this.room = room;
    this.url = url || defaultUrl(room);
    this.lastSeq = since;           // last seq shown; null before the first join
    this.status = "connecting";
    this._minDelay = minDelayMs;
    this._maxDelay = maxDelayMs;
    this._attempt = 0;
    this._closed = false;
    this._pending = new Map();      // client_id -> {text, resolve, reject, sent}
    this._joinedSeq = null;         // the stream position announced by the last "joined"
    this._history = [];             // waiting history requests, answered in order
    this._counter = 0;
    this._connect();
  }

  send(text) {
    const clientId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}-${++this._counter}`;
    if (this._pending.size >= MAX_QUEUED_SENDS) {
      return Promise.reject(new Error("too many messages waiting for the server"));
    }
    return new Promise((resolve, reject) => {
      this._pending.set(clientId, { text, resolve, reject, sent: false });
      this._flush();
    });
  }

  history({ before = null, limit = 50 } = {}) {
    return new Promise((resolve, reject) => {
      if (!this._isOpen()) return reject(new Error("not connected"));
      this._history.push({ resolve, reject });
      const frame = { type: "history", limit };
      if (before !== null) frame.before = before;
      this._ws.send(JSON.stringify(frame));
    });
  }

  close() {
    this._closed = true;
    clearTimeout(this._timer);
    if (this._ws) this._ws.close(1000);
    this._setStatus("closed");
  }

  _isOpen() {
    return this._ws && this._ws.readyState === WebSocket.OPEN && this.status === "open";
  }

  _connect() {
    const url = this.lastSeq === null ? this.url : `${this.url}?since=${this.lastSeq}`;
    const ws = new WebSocket(url, [PROTOCOL]);
    this._ws = ws;
    ws.onmessage = (e) => this._onFrame(JSON.parse(e.data));
    ws.onclose = (e) => this._onClose(e);
  }

  _onFrame(frame) {
    switch (frame.type) {
      case "joined":
        this._attempt = 0;
        this._joinedSeq = frame.seq;
        if (frame.recovered === false || (this.lastSeq !== null && frame.seq < this.lastSeq)) {
          // The gap was too long to replay (or the server's stream is not the one we saw):
          // the latest messages follow; the page should start over from them.
          this.lastSeq = null;
          this._emit("reset", frame);
        }
        this._setStatus("open");
        this._emit("joined", frame);
        this._flush();
        break;
      case "message":
        if (frame.seq !== undefined) {
          if (this.lastSeq !== null && frame.seq <= this.lastSeq) return; // already shown
          this.lastSeq = frame.seq;
          if (frame.client_id) this._settle(frame.client_id, frame.seq);
        }
        this._emit("message", frame);
        this._flush();
        break;
      case "ack":
        this._settle(frame.client_id, frame.seq);
        break;
      case "history": {
        const waiter = this._history.shift();
        if (waiter) waiter.resolve(frame);
        break;
      }
      case "error":
        this._emit("error", frame);
        break;
      default:
        break; // newer server: unknown frame types are ignored
    }
  }

  _settle(clientId, seq) {
    const entry = this._pending.get(clientId);
    if (!entry) return;
    this._pending.delete(clientId);
    entry.resolve(seq);
  }

  _flush() {
    // Send queued messages, but only once the replay after a reconnect is done: a queued
    // message that the replay shows as stored is settled instead of being sent again.
    if (!this._isOpen()) return;
    if (this._joinedSeq !== null && (this.lastSeq ?? 0) < this._joinedSeq) return;
    for (const [clientId, entry] of this._pending) {
      if (entry.sent) continue;
      entry.sent = true;
      this._ws.send(JSON.stringify({ type: "message", message: entry.text, client_id: clientId }));
    }
  }

  _onClose(event) {
    for (const waiter of this._history.splice(0)) waiter.reject(new Error("connection closed"));
    for (const entry of this._pending.values()) entry.sent = false; // resend unless replayed
    this._joinedSeq = null;
    this._emit("close", { code: event.code, reason: event.reason });
    if (this._closed) return;
    if (!shouldReconnect(event.code)) {
      this._closed = true;
      for (const entry of this._pending.values()) entry.reject(new Error(event.reason || `closed (${event.code})`));
      this._pending.clear();
      this._setStatus("closed");
      return;
    }
    this._setStatus("reconnecting");
    const ceiling = Math.min(this._maxDelay, this._minDelay * 2 ** this._attempt++);
    this._timer = setTimeout(() => this._connect(), ceiling / 2 + Math.random() * ceiling / 2);
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit("status", { status });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

export function defaultUrl(room) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws/chat/${encodeURIComponent(room)}/`;
}
