// app_messages.js: the web app's message elements (app_room.js puts them in the log).
// ES module, no build step, no state. Text goes into the page only as text nodes and
// textContent; the only elements made from it are <a> links for the http(s) URLs it
// holds (linkify), so nothing a user types is ever read as HTML.

import { ClosedError, describeClose } from "./connection.js";

/**
 * The <li> of a message frame (live, catch-up or history): author, time, "(edited)", a
 * sent mark on one's own, the text (or "This message was deleted."), and Edit / Delete
 * buttons when `changeable`. data-seq, data-day (the local date) and data-state ("sent"
 * for one's own) are what the log and the tests read.
 */
export function messageItem(frame, { mine, changeable, onEdit, onDelete }) {
  const li = document.createElement("li");
  li.className = "msg";
  if (frame.seq !== undefined) li.dataset.seq = frame.seq;
  if (frame.kind === "system") li.classList.add("system");
  if (mine) {
    li.classList.add("mine");
    li.dataset.state = "sent";
  }
  const ts = frame.ts ? new Date(frame.ts) : new Date();
  li.dataset.day = dayKey(ts);
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = span("author", frame.kind === "system" ? "system" : (frame.user ?? "anonymous"));
  const time = document.createElement("time");
  time.dateTime = ts.toISOString();
  time.title = ts.toLocaleString();
  time.textContent = ts.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  meta.append(who, " ", time, " ", span("flag", frame.edited && !frame.deleted ? "(edited)" : ""));
  if (mine) {
    const sent = span("sent-mark", "✓");
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
  if (changeable) li.append(actions(frame.seq, who.textContent, onEdit, onDelete));
  return li;
}

/** The <li> of a message typed here and not yet stored (no seq yet). */
export function pendingItem(text, user, number) {
  const li = document.createElement("li");
  li.className = "msg mine pending";
  li.dataset.state = "pending";
  li.dataset.pending = String(number);
  li.dataset.day = dayKey(new Date());
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.append(span("author", user), " ", span("flag", ""));
  const body = document.createElement("div");
  body.className = "text";
  body.append(linkify(text));
  li.append(meta, body);
  return li;
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

function actions(seq, author, onEdit, onDelete) {
  const box = document.createElement("div");
  box.className = "actions";
  const button = (className, label, onClick) => {
    const el = document.createElement("button");
    el.type = "button";
    el.className = className;
    el.textContent = label;
    el.setAttribute("aria-label", `${label} message ${seq} by ${author}`);
    el.addEventListener("click", () => onClick(seq));
    return el;
  };
  box.append(button("edit", "Edit", onEdit), button("delete", "Delete", onDelete));
  return box;
}

/** A date separator's <li>, for the local date `key` (dayKey). */
export function daySeparator(key) {
  const sep = document.createElement("li");
  sep.className = "day";
  sep.setAttribute("role", "separator");
  sep.textContent = dayLabel(key);
  return sep;
}

/** Why a request failed, in words (a SendError's message, a close's description). */
export function reasonOf(err) {
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

export function dayKey(date) {
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
