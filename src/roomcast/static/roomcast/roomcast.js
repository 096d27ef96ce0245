// roomcast.js: browser client for roomcast's protocol v1 (docs/protocol.md). ES module, no build.
//
//   import { RoomClient } from "/static/roomcast/roomcast.js";
//   const room = new RoomClient("lobby", { maxFrameBytes: 16384 });
//   room.addEventListener("message", (e) => show(e.detail));   // {seq, message, user, ts, kind}
//   await room.send("hello");                                   // resolves with the seq
//
// It reconnects by itself (exponential backoff with jitter) and recovers what it missed
// with ?since=<last seq>; it never shows a message twice. A message sent while offline is
// queued and sent once the connection is back, unless the replay shows it was stored.
//
// Pages without a session cookie pass a connection token, `{ token }` or
// `{ getToken: async () => token }`: the client connects with ?auth=1 and sends
// {"type": "auth", "token": ...} as its first frame (never the token in the URL), and
// after 4501 (token expired) or 4401 (token refused) it asks getToken() for a fresh one.
//
// send() never leaves a promise hanging: it resolves with the stored seq or rejects with a
// SendError subclass carrying the text (FrameTooLargeError, QueueFullError, RefusedError,
// ClosedError). After a close code that says not to reconnect the client stops
// (status "closed") until reconnect() is called; after 1009 it rejects the messages the
// server had not answered and reconnects (docs/protocol.md, "The browser client").
//
// The parts RoomClient is made of, SocketLink (the socket, its token, backoff and status)
// and RoomStream (one room's stream), make connection.js's Connection too: many rooms on
// one /ws/ socket.

export const PROTOCOL = "roomcast.v1";

// Close codes after which reconnecting is pointless (docs/protocol.md, "Close codes").
export function shouldReconnect(code) {
  if ([1001, 1005, 1006, 1011, 1012, 1013].includes(code)) return true;
  return code >= 4500 && code <= 4999;
}

export const MESSAGE_TOO_BIG = 1009;
export const UNAUTHORIZED = 4401;   // the token was refused (expired, forged, inactive user)
export const TOKEN_EXPIRED = 4501;  // the socket's token expired: reconnect with a fresh one

// Token failures in a row (getToken() threw, timed out or gave no token, or the server
// refused what it gave) before the client stops: a token source that keeps failing
// ends in status "closed", never in a silent loop.
export const MAX_TOKEN_FAILURES = 5;
// Longest wait for getToken(), in milliseconds; past it the attempt counts as failed.
export const GET_TOKEN_TIMEOUT_MS = 15000;

// Heartbeat: with no frame from the server for HEARTBEAT_MS, the client sends a ping; with
// no frame at all HEARTBEAT_TIMEOUT_MS after it, the socket is taken for dead (a network
// gone without a close, a server that stopped answering) and the client reconnects, as
// after a close 1006. A browser cannot see the server's own WebSocket pings, and a
// socket whose network vanished fires no close event for minutes.
export const HEARTBEAT_MS = 25000;
export const HEARTBEAT_TIMEOUT_MS = 10000;
// The close code a dead socket is reported with (the client never saw the server's).
const ABNORMAL = 1006;

// The server's default MAX_FRAME_BYTES; pages get the configured one from the view.
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024;

const MAX_QUEUED_SENDS = 100; // sends waiting for a connection; more are refused, not dropped

// Longest client_id this client generates: 9 (time) + 1 + 8 (random) + 1 + 13 (counter,
// base 36 of at most 2**53) characters. frameBytes() measures with one this long, so a
// text it passes also passes send()'s exact check.
const CLIENT_ID_MAX_CHARS = 32;

const utf8 = new TextEncoder();

/** Why a send() was rejected; `text` is the message, so that nothing typed is lost. */
export class SendError extends Error {
  constructor(message, text) {
    super(message);
    this.name = "SendError";
    this.text = text;
  }
}

/** The frame would be over the server's MAX_FRAME_BYTES: never sent. */
export class FrameTooLargeError extends SendError {
  constructor(text, bytes, limit) {
    super(`message too long: ${bytes} bytes as a frame, the limit is ${limit}`, text);
    this.name = "FrameTooLargeError";
    this.bytes = bytes;
    this.limit = limit;
  }
}

/** MAX_QUEUED_SENDS messages are already waiting for the connection. */
export class QueueFullError extends SendError {
  constructor(text) {
    super(`${MAX_QUEUED_SENDS} messages are already waiting for the server`, text);
    this.name = "QueueFullError";
  }
}

/** The server answered the message with an error frame (code: busy, forbidden, ...). */
export class RefusedError extends SendError {
  constructor(text, code, detail) {
    super(detail || code, text);
    this.name = "RefusedError";
    this.code = code;
  }
}

/** The connection closed before the server stored the message, and it will not be resent. */
export class ClosedError extends SendError {
  constructor(text, code, reason) {
    super(describeClose(code, reason), text);
    this.name = "ClosedError";
    this.code = code;
    this.reason = reason;
  }
}

/** A close code and reason in words, e.g. "disconnected by the server: maintenance (4000)". */
export function describeClose(code, reason) {
  const names = {
    1000: "closed",
    1006: "connection failed or dropped",
    1009: "a message was over the server's size limit",
    1011: "server error",
    1012: "server restarting",
    1013: "fell behind",
    4000: "disconnected by the server",
    4400: "bad request",
    4401: "not authorized",
    4403: "not allowed in this room",
    4429: "too many requests",
    4501: "token expired",
  };
  const name = names[code] ?? "closed";
  const why = (reason || "").replace(/\.$/, ""); // the server's reasons are sentences
  if (why.startsWith(name)) return `${why} (${code})`; // "not allowed in this room any more"
  return why ? `${name}: ${why} (${code})` : `${name} (${code})`;
}

/**
 * One socket to a roomcast endpoint that comes back by itself: the token (first-frame
 * auth, getToken() and its failures), the backoff between attempts, the status events and
 * which close codes reconnect. RoomClient (one room) and Connection (connection.js, many
 * rooms on /ws/) are built on it; a subclass supplies what the socket carries through
 * these hooks:
 *
 * - _since(): the position to resume from, sent as ?since= (null: none);
 * - _onFrame(frame): a parsed frame from the server;
 * - _socketLost(): the socket closed: drop what was tied to it (history requests);
 * - _rejectWaiting(which, code, reason): reject the waiting sends for which which(entry);
 * - _unsend(): a new socket is coming: what was sent unanswered goes out again on it.
 *
 * A subclass calls _connect() once its own fields are set, and _accepted() when the
 * server has let the socket in (RoomClient: joined; Connection: connected).
 */
export class SocketLink extends EventTarget {
  constructor(
    url,
    {
      minDelayMs = 250,
      maxDelayMs = 10000,
      token = null,
      getToken = null,
      getTokenTimeoutMs = GET_TOKEN_TIMEOUT_MS,
      heartbeatMs = HEARTBEAT_MS,
      heartbeatTimeoutMs = HEARTBEAT_TIMEOUT_MS,
    } = {},
  ) {
    super();
    if (getToken !== null && typeof getToken !== "function") {
      throw new TypeError("getToken must be a function returning a token (or a promise of one)");
    }
    if (token !== null && (typeof token !== "string" || !token)) {
      throw new TypeError("token must be a non-empty string");
    }
    this.url = url;
    this.status = "connecting";
    this.lastClose = null;          // {code, reason} of the last close
    this._minDelay = minDelayMs;
    this._maxDelay = maxDelayMs;
    this._attempt = 0;
    this._everOpen = false;         // whether any socket of this client was accepted
    this._closed = false;
    this._getToken = getToken;
    this._getTokenTimeout = getTokenTimeoutMs;
    this._usesToken = token !== null || getToken !== null;
    this._token = token;            // the token the next connection sends; null: ask getToken
    this._tokenFailures = 0;        // in a row; reset by a join
    this._tokenRequest = 0;         // the getToken() call whose answer is awaited
    this._heartbeatMs = heartbeatMs;          // 0: no heartbeat
    this._heartbeatTimeoutMs = heartbeatTimeoutMs;
    this._beat = null;              // the heartbeat's timer
  }

  _since() { return null; }
  _onFrame() {}
  _socketLost() {}
  _rejectWaiting() {}
  _unsend() {}

  /** Connect again after the client stopped (a close code that says not to reconnect). */
  reconnect() {
    if (!this._closed) return;
    this._closed = false;
    this._attempt = 0;
    this._tokenFailures = 0;
    if (this._getToken) this._token = null; // a fresh one
    this._setStatus("connecting");
    this._connect();
  }

  close() {
    this._closed = true;
    this._tokenRequest++; // an answer of getToken() still on its way is dropped
    clearTimeout(this._timer);
    this.lastClose = { code: 1000, reason: "closed by the page" };
    clearTimeout(this._beat);
    if (this._ws) this._ws.close(1000);
    this._rejectWaiting(() => true, 1000, "closed by the page");
    this._setStatus("closed");
  }

  _isOpen() {
    return this._ws && this._ws.readyState === WebSocket.OPEN && this.status === "open";
  }

  /** {code, reason} of the close that stopped the client, or null while it goes on. */
  _stoppedBy() {
    if (!this._closed) return null;
    return this.lastClose ?? { code: 1000, reason: "closed by the page" };
  }

  /** Send a frame on the open socket (callers check _isOpen() first). */
  _sendFrame(frame) {
    this._ws.send(JSON.stringify(frame));
  }

  _socketUrl() {
    // The token never goes in the URL (proxies log URLs): ?auth=1 says it comes in the
    // first frame.
    const query = [];
    const since = this._since();
    if (this._usesToken) query.push("auth=1");
    if (since !== null) query.push(`since=${since}`);
    if (!query.length) return this.url;
    return this.url + (this.url.includes("?") ? "&" : "?") + query.join("&");
  }

  _connect() {
    if (this._usesToken && this._token === null) {
      this._fetchToken();
      return;
    }
    const url = this._socketUrl();
    let ws;
    try {
      ws = new WebSocket(url, [PROTOCOL]);
    } catch (err) {
      // A malformed URL: no socket, no close event. Stop and say so.
      this._stop(1006, `bad socket URL ${url}: ${err.message}`);
      return;
    }
    this._ws = ws;
    const token = this._token;
    ws.onopen = () => {
      this._everOpen = true;
      // First, before anything else: the server joins the room only after it.
      if (token !== null) ws.send(JSON.stringify({ type: "auth", token }));
      this._heartbeat(ws);
    };
    ws.onmessage = (e) => {
      this._heartbeat(ws);
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return; // not a roomcast server; nothing to show
      }
      if (frame && typeof frame === "object") this._onFrame(frame);
    };
    ws.onclose = (e) => { if (this._ws === ws) this._onClose(e); };
  }

  /** The server was heard from on `ws`: wait HEARTBEAT_MS again before asking. */
  _heartbeat(ws) {
    clearTimeout(this._beat);
    if (!this._heartbeatMs) return;
    this._beat = setTimeout(() => {
      if (this._ws !== ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(JSON.stringify({ type: "ping" })); // any frame back re-arms the heartbeat
      this._beat = setTimeout(() => this._dead(ws), this._heartbeatTimeoutMs);
    }, this._heartbeatMs);
  }

  /** No answer to a ping on `ws`: drop it (its close event, whenever it comes, is not
   * waited for) and reconnect as after a lost connection. */
  _dead(ws) {
    if (this._ws !== ws) return;
    ws.onclose = null;
    ws.onmessage = null;
    try {
      ws.close(4000, "no answer to ping");
    } catch {
      // already closing
    }
    const seconds = Math.round((this._heartbeatMs + this._heartbeatTimeoutMs) / 1000);
    this._onClose({ code: ABNORMAL, reason: `no answer from the server for ${seconds} s` });
  }

  async _fetchToken() {
    const request = ++this._tokenRequest;
    let token = null;
    let failure = null;
    let timer;
    try {
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer within ${this._getTokenTimeout / 1000} s`)),
          this._getTokenTimeout,
        );
      });
      token = await Promise.race([Promise.resolve().then(() => this._getToken()), timeout]);
      if (typeof token !== "string" || !token) {
        throw new Error(`getToken() gave ${token === null ? "null" : typeof token}, not a token`);
      }
    } catch (err) {
      failure = (err && err.message) || String(err);
    } finally {
      clearTimeout(timer);
    }
    if (this._closed || request !== this._tokenRequest) return; // closed meanwhile
    if (failure !== null) {
      this._tokenFailed(UNAUTHORIZED, `could not get a token: ${failure}`);
      return;
    }
    this._token = token;
    this._connect();
  }

  _tokenFailed(code, reason) {
    // Counted, and retried with the backoff until MAX_TOKEN_FAILURES in a row.
    this._token = null;
    if (++this._tokenFailures >= MAX_TOKEN_FAILURES) {
      this._stop(code, `${reason} (${this._tokenFailures} times in a row)`);
      return;
    }
    this.lastClose = { code, reason };
    this._retry(code, reason, false);
  }

  /** The server let the socket in: the backoff and the token failures start again. */
  _accepted() {
    this._attempt = 0;
    this._tokenFailures = 0;
  }

  _stop(code, reason) {
    this._closed = true;
    this.lastClose = { code, reason };
    this._rejectWaiting(() => true, code, reason);
    this._setStatus("closed", { code, reason });
  }

  _onClose(event) {
    clearTimeout(this._beat);
    const { code, reason } = event;
    const wasOpen = this.status === "open";
    this.lastClose = { code, reason };
    this._socketLost();
    this._emit("close", { code, reason });
    if (this._closed) return;
    if (code === MESSAGE_TOO_BIG) {
      // The server read a frame over its limit (the page's limit was not the server's):
      // the frames it had not answered are that one and any sent after it, none stored.
      // Reject them, so that they are not sent again to the same end, and reconnect:
      // the connection itself was fine.
      this._rejectWaiting((entry) => entry.sent, code, reason);
    } else if ((code === UNAUTHORIZED || code === TOKEN_EXPIRED) && this._getToken) {
      // A fresh token may do: ask for one before the next attempt (a refused one counts
      // as a failure; an expired one that had let the socket in does not).
      if (code === TOKEN_EXPIRED) {
        this._token = null;
        this._retry(code, reason, wasOpen);
      } else {
        this._tokenFailed(code, reason);
      }
      return;
    } else if (!shouldReconnect(code) || code === TOKEN_EXPIRED) {
      // TOKEN_EXPIRED without getToken(): the same token would be refused.
      this._stop(code, reason);
      return;
    }
    this._retry(code, reason, wasOpen);
  }

  _retry(code, reason, wasOpen) {
    this._unsend(); // resend unless replayed
    const delayMs = backoffDelay(this._attempt++, this._minDelay, this._maxDelay);
    this._timer = setTimeout(() => this._connect(), delayMs);
    // "everOpen": a socket of this client was accepted before (the connection was lost),
    // or never (the server cannot be reached or refuses the handshake).
    this._setStatus("reconnecting", { code, reason, delayMs, wasOpen, everOpen: this._everOpen });
  }

  _setStatus(status, detail = {}) {
    // "reconnecting" repeats with each attempt's close code and delay; others do not.
    if (this.status === status && status !== "reconnecting") return;
    this.status = status;
    this._emit("status", { status, ...detail });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** Milliseconds to wait before attempt `attempt` (0, 1, ...): exponential with jitter,
 * between half and all of min(maxMs, minMs * 2**attempt). */
export function backoffDelay(attempt, minMs, maxMs) {
  const ceiling = Math.min(maxMs, minMs * 2 ** attempt);
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/**
 * The part of a client that follows one room's stream, for RoomClient (one room per
 * socket) and connection.js's Subscription (a room on a shared /ws/ socket): the last seq
 * shown (nothing shown twice), sends that always settle (queued while offline, sent after
 * the replay, settled by the replay when it shows them stored), history requests answered
 * in order, and the joined frame's recovery rule.
 *
 * Base supplies _isOpen() (frames may go out now), _sendFrame(frame), _stoppedBy()
 * ({code, reason} once nothing will be sent any more, else null), _onJoined(frame) and
 * _emit(type, detail); _frame(type, fields) builds a frame (a Subscription adds its room).
 * The class calls _initStream() in its constructor.
 */
export const RoomStream = (Base) => class extends Base {
  _initStream(since) {
    this.lastSeq = since;           // last seq shown; null before the first join
    this._pending = new Map();      // client_id -> {text, type, fields, resolve, reject, sent}
    this._joinedSeq = null;         // the stream position announced by the last "joined"
    this._history = [];             // waiting history requests, answered in order
    this._counter = 0;
  }

  _frame(type, fields) {
    return { type, ...fields };
  }

  /** Bytes of the frame send(text) would send (UTF-8 of the whole JSON, longest client_id). */
  frameBytes(text) {
    return this._frameBytes("message", { message: text }, "x".repeat(CLIENT_ID_MAX_CHARS));
  }

  /** Throws FrameTooLargeError if send(text) would be refused for its size. */
  checkSize(text) {
    const bytes = this.frameBytes(text);
    if (this.maxFrameBytes != null && bytes > this.maxFrameBytes) {
      throw new FrameTooLargeError(text, bytes, this.maxFrameBytes);
    }
  }

  /** Post `text`; resolves with its seq once stored, rejects with a SendError. */
  send(text) {
    return this._request("message", { message: text }, text);
  }

  /** Messages sent and not yet stored (queued while offline, or waiting for the ack). */
  get waiting() {
    return this._pending.size;
  }

  history({ before = null, limit = 50 } = {}) {
    return new Promise((resolve, reject) => {
      if (!this._isOpen()) return reject(new Error("not connected"));
      this._history.push({ resolve, reject });
      const fields = { limit };
      if (before !== null) fields.before = before;
      this._sendFrame(this._frame("history", fields));
    });
  }

  _frameBytes(type, fields, clientId) {
    // What the socket sends: UTF-8 of the JSON text (JSON.stringify escapes lone surrogates).
    return utf8.encode(JSON.stringify(this._frame(type, { ...fields, client_id: clientId })))
      .length;
  }

  /** A frame that the server answers with an ack (or an error) carrying its client_id. */
  _request(type, fields, text) {
    const clientId = [
      Date.now().toString(36),
      Math.random().toString(36).slice(2, 10),
      (++this._counter).toString(36),
    ].join("-");
    const stopped = this._stoppedBy();
    if (stopped !== null) {
      return Promise.reject(new ClosedError(text, stopped.code, stopped.reason));
    }
    const bytes = this._frameBytes(type, fields, clientId);
    if (this.maxFrameBytes != null && bytes > this.maxFrameBytes) {
      return Promise.reject(new FrameTooLargeError(text, bytes, this.maxFrameBytes));
    }
    if (this._pending.size >= MAX_QUEUED_SENDS) {
      return Promise.reject(new QueueFullError(text));
    }
    return new Promise((resolve, reject) => {
      this._pending.set(clientId, { text, type, fields, resolve, reject, sent: false });
      this._flush();
    });
  }

  /** Handles the frames of the room's stream; false for a frame of another type. */
  _onStreamFrame(frame) {
    switch (frame.type) {
      case "joined":
        this._joinedSeq = frame.seq;
        if (frame.recovered === false || (this.lastSeq !== null && frame.seq < this.lastSeq)) {
          // The gap was too long to replay (or the server's stream is not the one we saw):
          // the latest messages follow; the page should start over from them.
          this.lastSeq = null;
          this._emit("reset", frame);
        }
        this._onJoined(frame);
        this._emit("joined", frame);
        this._flush();
        return true;
      case "message":
      case "edit":
      case "delete":
        // Stream events: each has a seq (but a tutorial-style system message has none,
        // and is live only). An edit or delete is an event of its own, naming `target`.
        if (frame.seq !== undefined) {
          if (this.lastSeq !== null && frame.seq <= this.lastSeq) return true; // already shown
          this.lastSeq = frame.seq;
          this._settleStored(frame);
        }
        this._onEvent(frame);
        this._emit(frame.type, frame);
        this._flush();
        return true;
      case "ack":
        this._settle(frame.client_id, frame.seq);
        return true;
      case "history": {
        const waiter = this._history.shift();
        if (waiter) waiter.resolve(frame);
        return true;
      }
      case "error": {
        // An error about a message carries its client_id: that message was not stored
        // and will not be, so its send() is rejected (the page can offer it again).
        const entry = frame.client_id ? this._pending.get(frame.client_id) : undefined;
        if (entry) {
          this._pending.delete(frame.client_id);
          entry.reject(new RefusedError(entry.text, frame.code, frame.detail));
        }
        this._emit("error", frame);
        return true;
      }
      default:
        return false;
    }
  }

  /** A stored event arrived (live or replayed): the requests it shows done are settled. */
  _settleStored(frame) {
    if (frame.client_id) this._settle(frame.client_id, frame.seq);
    if (frame.type === "message") return;
    // An edit or delete replayed after a reconnect may not carry the client_id it was
    // sent with: the event that deletes the target, or gives it the text asked for, is
    // what the request wanted.
    for (const [clientId, entry] of this._pending) {
      if (entry.type !== frame.type || entry.fields.seq !== frame.target) continue;
      if (frame.type === "edit" && entry.fields.message !== frame.message) continue;
      this._settle(clientId, frame.seq);
    }
  }

  _onEvent() {}

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
      this._sendFrame(this._frame(entry.type, { ...entry.fields, client_id: clientId }));
    }
  }

  _rejectPending(which, code, reason) {
    for (const [clientId, entry] of this._pending) {
      if (!which(entry)) continue;
      this._pending.delete(clientId);
      entry.reject(new ClosedError(entry.text, code, reason));
    }
  }

  /** The socket (or the subscription) ended: waiting history requests fail. */
  _streamLost() {
    for (const waiter of this._history.splice(0)) waiter.reject(new Error("connection closed"));
    this._joinedSeq = null;
  }

  /** What was sent goes out again after the next join, unless the replay shows it stored. */
  _markUnsent() {
    for (const entry of this._pending.values()) entry.sent = false;
  }
};

export class RoomClient extends RoomStream(SocketLink) {
  /**
   * Options: url (default: defaultUrl(room)), since (last seq already shown),
   * maxFrameBytes (the server's MAX_FRAME_BYTES; null: no check), minDelayMs and
   * maxDelayMs (reconnect backoff), token (a connection token) or getToken (a function
   * returning a token or a promise of one, called for the first connection and whenever
   * the server refuses or expires the token; getTokenTimeoutMs bounds each call).
   * Without either the page's session cookie, if any, says who it is.
   */
  constructor(room, options = {}) {
    const { url = null, since = null, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES } = options;
    super(url || defaultUrl(room), options);
    this.room = room;
    this.maxFrameBytes = maxFrameBytes;
    this._initStream(since);
    this._connect();
  }

  _since() {
    return this.lastSeq;
  }

  _onJoined() {
    this._accepted();
    this._setStatus("open");
  }

  _onFrame(frame) {
    this._onStreamFrame(frame); // newer server: unknown frame types are ignored
  }

  _socketLost() {
    this._streamLost();
  }

  _rejectWaiting(which, code, reason) {
    this._rejectPending(which, code, reason);
  }

  _unsend() {
    this._markUnsent();
  }
}

/** The socket URL for a path on this page's host ("/ws/chat/lobby/" -> "ws://host/ws/chat/lobby/"). */
export function socketUrl(path) {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** The socket URL of `room` when roomcast's routes are at the root of this page's host. */
export function defaultUrl(room) {
  return socketUrl(`/ws/chat/${encodeURIComponent(room)}/`);
}
