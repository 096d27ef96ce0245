// connection.js: many rooms on one socket, roomcast's /ws/ endpoint (docs/protocol.md,
// "One socket, many rooms"). ES module, no build; made of the same parts as roomcast.js's
// RoomClient (SocketLink: the socket, its token, backoff and status; RoomStream: one room's
// stream, sends that always settle, nothing shown twice).
//
//   import { Connection } from "/static/roomcast/connection.js";
//   const conn = new Connection({ maxFrameBytes: 16384 });   // or { token } / { getToken }
//   const lobby = conn.subscribe("lobby");
//   lobby.addEventListener("message", (e) => show(e.detail));  // {room, seq, message, user, ...}
//   const seq = await lobby.send("hello");
//   conn.addEventListener("user_message", (e) => notify(e.detail));
//
// After a close that says to reconnect it opens a new socket (backoff with jitter) with
// ?since= the last user_message seq, and subscribes every room again with its own since:
// each room recovers what it missed, once. A room the server takes away ("unsubscribed",
// 4403) ends alone; the other rooms go on.

import {
  DEFAULT_MAX_FRAME_BYTES,
  RoomStream,
  SocketLink,
  backoffDelay,
  shouldReconnect,
  socketUrl,
} from "./roomcast.js";

export {
  ClosedError,
  FrameTooLargeError,
  QueueFullError,
  RefusedError,
  SendError,
  describeClose,
  socketUrl,
} from "./roomcast.js";

// The server's default TYPING_INTERVAL_SECS: it forwards one typing frame per user and room
// in that time whatever a client sends, so sending more often only costs traffic.
export const TYPING_INTERVAL_MS = 2000;

// A subscribe the server refuses with a code that says to try again (1011: its database or
// channel layer is down) is sent again after the connection's backoff; other codes end it.
// too_many_subscriptions (an error frame, no close code) ends it as 4429 would.
const TOO_MANY = 4429;

// Runs of space separators (Unicode Zs), and what Python's str.strip() takes off the ends
// once they are single spaces: the server's canonical room name (protocol/room_names.py).
const SPACE_RUNS = /\p{Zs}+/gu;
const EDGE_SPACE = /^[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029 ]+|[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029 ]+$/g;

/** A room name as the server names it in its frames: NFC, one space per run, stripped. */
export function canonicalRoomName(name) {
  return String(name).normalize("NFC").replace(SPACE_RUNS, " ").replace(EDGE_SPACE, "");
}

/**
 * One /ws/ socket and the rooms subscribed on it. Events: "status" (as RoomClient's:
 * connecting, open, reconnecting with {code, reason, delayMs, everOpen}, closed with
 * {code, reason}), "connected" (the server's frame: {user, user_seq, recovered}), "reset"
 * (the user channel could not be recovered: start its list over), "user_message",
 * "error" (an error frame about no room), "close".
 */
export class Connection extends SocketLink {
  /**
   * Options: url (default: socketUrl("/ws/")), since (the last user_message seq already
   * shown), maxFrameBytes (the server's MAX_FRAME_BYTES; null: no check),
   * typingIntervalMs (TYPING_INTERVAL_MS), minDelayMs and maxDelayMs (backoff), token
   * or getToken (and getTokenTimeoutMs), exactly as RoomClient's.
   */
  constructor(options = {}) {
    const {
      url = null,
      since = null,
      maxFrameBytes = DEFAULT_MAX_FRAME_BYTES,
      typingIntervalMs = TYPING_INTERVAL_MS,
    } = options;
    super(url || socketUrl("/ws/"), options);
    this.maxFrameBytes = maxFrameBytes;
    this.typingIntervalMs = typingIntervalMs;
    this.user = null;               // the username (a guest's name) from "connected"
    this.userSeq = since;           // last user_message seq shown; null: none yet
    this._rooms = new Map();        // canonical room name -> Subscription
    this._connect();
  }

  /**
   * Follow `room`; returns its Subscription (the same one while it lasts). `since`: the
   * last seq of the room already shown, so that only what came after is sent.
   */
  subscribe(room, { since = null } = {}) {
    const name = canonicalRoomName(room);
    const current = this._rooms.get(name);
    if (current) {
      if (current.state !== "unsubscribing") return current;
      // The server has not answered the unsubscribe yet: subscribe again after it.
      current._successor ??= new Subscription(this, name, since);
      return current._successor;
    }
    const subscription = new Subscription(this, name, since);
    this._rooms.set(name, subscription);
    subscription._subscribe();
    return subscription;
  }

  /** The Subscription of `room`, or null. */
  get(room) {
    return this._rooms.get(canonicalRoomName(room)) ?? null;
  }

  /** Every room followed, in the order subscribed. */
  get subscriptions() {
    return [...this._rooms.values()];
  }

  _since() {
    return this.userSeq;
  }

  _onFrame(frame) {
    if (typeof frame.room === "string") {
      const subscription = this._rooms.get(frame.room);
      if (subscription) subscription._onFrame(frame);
      else if (frame.type === "error") this._emit("error", frame);
      // Anything else is about a room given up meanwhile (frames crossing an unsubscribe).
      return;
    }
    switch (frame.type) {
      case "connected":
        this.user = frame.user ?? null;
        if (frame.user_seq == null) {
          this.userSeq = null; // a guest: no user channel
        } else if (
          frame.recovered === false ||
          (this.userSeq !== null && frame.user_seq < this.userSeq)
        ) {
          this.userSeq = null;
          this._emit("reset", frame);
        }
        this._accepted();
        this._setStatus("open");
        this._emit("connected", frame);
        for (const subscription of this.subscriptions) subscription._subscribe();
        break;
      case "user_message":
        if (frame.seq !== undefined) {
          if (this.userSeq !== null && frame.seq <= this.userSeq) return; // already shown
          this.userSeq = frame.seq;
        }
        this._emit("user_message", frame);
        break;
      case "error": {
        // An error about a post names it by client_id; one that comes without "room"
        // (the server's rate_limited answer to a /ws/ post did, docs/protocol.md says
        // it should not) still settles that post, or its send() would never settle.
        const owner = frame.client_id
          ? this.subscriptions.find((s) => s._pending.has(frame.client_id))
          : undefined;
        if (owner) owner._onFrame({ ...frame, room: owner.room });
        else this._emit("error", frame);
        break;
      }
      default:
        break; // newer server: unknown frame types are ignored
    }
  }

  _socketLost() {
    for (const subscription of this.subscriptions) subscription._socketLost();
  }

  _rejectWaiting(which, code, reason) {
    for (const subscription of this.subscriptions) subscription._rejectPending(which, code, reason);
  }

  _unsend() {
    for (const subscription of this.subscriptions) subscription._markUnsent();
  }
}

/**
 * One room on a Connection. state: "subscribing" (waiting for the server, or for the
 * connection), "subscribed", "unsubscribing", "unsubscribed" (over: see endedBy).
 *
 * Events: "joined" (the server's frame, with recovered, read_seq, unread), "reset" (the
 * gap could not be replayed: start the room's list over from what follows), "message",
 * "edit", "delete" (stream events, each once), "typing" ({user}), "presence" (the current
 * list, see presence), "unread" ({readSeq, unread}), "unsubscribed" ({code, reason}),
 * "state" ({state}, with {code, reason, delayMs} when the server asked to wait), "error".
 */
export class Subscription extends RoomStream(EventTarget) {
  constructor(connection, room, since) {
    super();
    this.connection = connection;
    this.room = room;
    this.state = "subscribing";
    this.endedBy = null;            // {code, reason} once unsubscribed
    this.readSeq = null;            // the user's read cursor here (null: a guest, or not yet)
    this.unread = null;             // messages after it (null: a guest, or not yet)
    this._users = new Map();        // presence: user -> connections
    this._presence = { count: 0, anonymous: 0, truncated: false };
    this._counted = new Set();      // seqs added to unread since the server's last count
    this._readSent = null;          // the highest seq sent in a read frame
    this._readWanted = null;        // a read() made while not subscribed, sent on join
    this._lastTyping = -Infinity;   // Date.now() of the last typing frame sent
    this._attempt = 0;              // refused subscribes in a row (1011)
    this._timer = null;
    this._subscribedOn = null;      // the socket the subscribe frame went out on
    this._successor = null;         // subscribe(room) again while unsubscribing
    this._initStream(since);
  }

  get maxFrameBytes() {
    return this.connection.maxFrameBytes;
  }

  /** Who is here now: {users: [{user, connections}], count, anonymous, truncated}. */
  get presence() {
    const users = [...this._users].map(([user, connections]) => ({ user, connections }));
    return { users, ...this._presence };
  }

  /** Change the message `seq` to `text`; resolves with the edit's own seq. */
  edit(seq, text) {
    return this._request("edit", { seq, message: text }, text);
  }

  /** Delete the message `seq`; resolves with the delete's own seq. */
  delete(seq) {
    return this._request("delete", { seq }, "");
  }

  /**
   * Move the user's read cursor to `seq` (default: the last seq shown); it only moves
   * forward. Every socket of the user gets "unread". Made while the room is not
   * subscribed, it is sent once it is. Returns whether a frame went out now.
   */
  read(seq = this.lastSeq) {
    if (typeof seq !== "number") return false;
    if (seq <= Math.max(this.readSeq ?? 0, this._readSent ?? 0, this._readWanted ?? 0)) {
      return false;
    }
    if (!this._isOpen()) {
      this._readWanted = seq;
      return false;
    }
    if (this.unread === null) return false; // a guest has no cursor
    this._readWanted = null;
    this._readSent = seq;
    this._sendFrame(this._frame("read", { seq }));
    return true;
  }

  /**
   * Tell the others the user is typing (call it on each keystroke): sent at most once per
   * connection.typingIntervalMs. Returns whether a frame went out.
   */
  typing() {
    const now = Date.now();
    if (!this._isOpen() || now - this._lastTyping < this.connection.typingIntervalMs) {
      return false;
    }
    this._lastTyping = now;
    this._sendFrame(this._frame("typing", {}));
    return true;
  }

  /** Ask the server for the full presence list again (a "presence" event follows). */
  requestPresence() {
    if (!this._isOpen()) return false;
    this._sendFrame(this._frame("presence", {}));
    return true;
  }

  /** Stop following the room: "unsubscribed" with code 1000 follows. */
  unsubscribe() {
    if (this.state === "unsubscribed" || this.state === "unsubscribing") return;
    const socket = this.connection._ws;
    if (this.connection._isOpen() && this._subscribedOn === socket) {
      this._setState("unsubscribing");
      this._sendFrame(this._frame("unsubscribe", {}));
    } else {
      this._end(1000, "unsubscribed"); // nothing on the server to undo
    }
  }

  _frame(type, fields) {
    return { type, room: this.room, ...fields };
  }

  _isOpen() {
    return this.state === "subscribed" && this.connection._isOpen();
  }

  _sendFrame(frame) {
    this.connection._sendFrame(frame);
  }

  _stoppedBy() {
    return this.state === "unsubscribed" ? this.endedBy : this.connection._stoppedBy();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, detail = {}) {
    if (this.state === state && !("code" in detail)) return;
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  _subscribe() {
    if (this.state === "unsubscribed" || this.state === "unsubscribing") return;
    clearTimeout(this._timer);
    this._setState("subscribing");
    if (!this.connection._isOpen()) return; // sent on "connected"
    const fields = this.lastSeq === null ? {} : { since: this.lastSeq };
    this._subscribedOn = this.connection._ws;
    this._sendFrame(this._frame("subscribe", fields));
  }

  _onJoined(frame) {
    this._attempt = 0;
    this._setState("subscribed");
    if (frame.unread !== undefined) this._setUnread(frame.read_seq ?? null, frame.unread);
    if (this._readWanted !== null) {
      const wanted = this._readWanted;
      this._readWanted = null;
      this.read(wanted);
    }
  }

  _onFrame(frame) {
    if (this.state === "unsubscribed") return;
    switch (frame.type) {
      case "unsubscribed":
        this._onUnsubscribed(frame.code, frame.reason ?? "");
        break;
      case "presence":
      case "join":
      case "leave":
      case "presence_count":
        this._onPresence(frame);
        break;
      case "typing":
        this._emit("typing", frame);
        break;
      case "unread":
        this._setUnread(frame.read_seq ?? null, frame.unread);
        break;
      case "error":
        if (frame.code === "too_many_subscriptions") {
          this._end(TOO_MANY, frame.detail || "too many subscriptions");
        } else if (frame.code === "rate_limited" && this.state === "subscribing" && !frame.client_id) {
          // The subscribe came out of the socket's room-request bucket empty (a page that
          // subscribes to many rooms quickly): nothing was done; again after retry_after.
          this._retrySubscribe(Math.max(0, Number(frame.retry_after) || 0) * 1000, frame);
        } else {
          this._onStreamFrame(frame);
        }
        break;
      default:
        this._onStreamFrame(frame); // newer server: unknown frame types are ignored
    }
  }

  _onUnsubscribed(code, reason) {
    if (this.state !== "unsubscribing" && code !== 1000 && shouldReconnect(code)) {
      // Refused for now (the server's database or layer is down): subscribe again later.
      const conn = this.connection;
      this._retrySubscribe(backoffDelay(this._attempt++, conn._minDelay, conn._maxDelay), {
        code,
        reason,
      });
      return;
    }
    this._end(code, reason);
  }

  _retrySubscribe(delayMs, why) {
    this._streamLost();
    this._markUnsent();
    this._subscribedOn = null; // nothing on the server to unsubscribe meanwhile
    this._setState("subscribing", { code: why.code, reason: why.reason ?? why.detail, delayMs });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._subscribe(), delayMs);
  }

  _end(code, reason) {
    clearTimeout(this._timer);
    this.endedBy = { code, reason };
    this._setState("unsubscribed", { code, reason });
    this._streamLost();
    this._rejectPending(() => true, code, reason);
    const rooms = this.connection._rooms;
    if (rooms.get(this.room) === this) {
      rooms.delete(this.room);
      if (this._successor) {
        rooms.set(this.room, this._successor);
        this._successor._subscribe();
      }
    }
    this._emit("unsubscribed", { room: this.room, code, reason });
  }

  _socketLost() {
    this._streamLost();
    this._subscribedOn = null;
    if (this.state === "unsubscribing") {
      this._end(1000, "unsubscribed"); // the server dropped it with the socket
    } else if (this.state === "subscribed") {
      this._setState("subscribing");
    }
  }

  _onPresence(frame) {
    const p = this._presence;
    switch (frame.type) {
      case "presence":
        this._users = new Map((frame.users ?? []).map((u) => [u.user, u.connections]));
        p.count = frame.count ?? this._users.size;
        p.anonymous = frame.anonymous ?? 0;
        p.truncated = Boolean(frame.truncated);
        break;
      case "join":
        // A user's first connection: their other tabs send no join of their own.
        if (!this._users.has(frame.user)) {
          this._users.set(frame.user, 1);
          p.count += 1;
        }
        break;
      case "leave":
        if (this._users.delete(frame.user) || p.truncated) p.count = Math.max(0, p.count - 1);
        break;
      default: // presence_count: a big room (no join/leave), or the guests changed
        p.count = frame.count ?? p.count;
        p.anonymous = frame.anonymous ?? p.anonymous;
    }
    this._emit("presence", { room: this.room, ...this.presence });
  }

  _setUnread(readSeq, unread) {
    this.readSeq = readSeq;
    this.unread = unread;
    this._counted.clear();
    this._emit("unread", { room: this.room, readSeq, unread });
  }

  _onEvent(frame) {
    // unread counts what the server counted (joined, unread frames) plus the live messages
    // after it that it would count: chat and system messages after the cursor, not
    // deleted, not the user's own. A delete of one of those takes it off again.
    if (this.unread === null || frame.seq === undefined) return;
    if (frame.type === "delete") {
      if (!this._counted.delete(frame.target)) return;
      this.unread -= 1;
    } else if (frame.type === "message") {
      if (this._joinedSeq === null || frame.seq <= this._joinedSeq) return; // in the count
      if (this.readSeq !== null && frame.seq <= this.readSeq) return;
      if (frame.kind !== "chat" && frame.kind !== "system") return;
      if (frame.deleted || (frame.user != null && frame.user === this.connection.user)) return;
      this._counted.add(frame.seq);
      this.unread += 1;
    } else {
      return;
    }
    this._emit("unread", { room: this.room, readSeq: this.readSeq, unread: this.unread });
  }
}
