// Building the page. Text from the server only ever becomes a Text node
// (append(string) / textContent): no HTML from a message, a name or a title is
// ever parsed. Nothing in this client uses innerHTML.

/** An element with attributes, listeners (onclick: fn) and children (nodes or text). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

const timeOnly = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const weekday = new Intl.DateTimeFormat(undefined, { weekday: "short" });
const dayMonth = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });

function sameDay(a, b) {
  return (
    a.getFullYear() === b.getFullYear() &&
    a.getMonth() === b.getMonth() &&
    a.getDate() === b.getDate()
  );
}

/** Short: "14:05" today, "Tue" this week, "3 Mar" before. */
export function shortTime(iso) {
  const date = new Date(iso);
  const now = new Date();
  if (sameDay(date, now)) return timeOnly.format(date);
  if (now - date < 6 * 24 * 3600 * 1000) return weekday.format(date);
  return dayMonth.format(date);
}

/** For a message: "14:05" today, "3 Mar, 14:05" before. */
export function messageTime(iso) {
  const date = new Date(iso);
  if (sameDay(date, new Date())) return timeOnly.format(date);
  return `${dayMonth.format(date)}, ${timeOnly.format(date)}`;
}

export function fullTime(iso) {
  return full.format(new Date(iso));
}

/** <time> with a short label and the full date as its tooltip. */
export function timeEl(iso, format = shortTime) {
  return h("time", { datetime: iso, title: fullTime(iso) }, format(iso));
}

/** Up to two initials for an avatar. */
export function initials(name) {
  const words = String(name || "").match(/[\p{L}\p{N}]+/gu) ?? [];
  const picked = words.length > 1 ? [words[0], words[words.length - 1]] : words;
  return picked.map((w) => Array.from(w)[0]).join("").toUpperCase() || "#";
}

/** A random key for an idempotent send (crypto.randomUUID needs a secure context). */
export function randomKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

let toastTimer = 0;

/** A short notice in the status area (read out by screen readers). */
export function toast(message, { error = false } = {}) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.classList.toggle("error", error);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.textContent = "";
  }, 6000);
}
