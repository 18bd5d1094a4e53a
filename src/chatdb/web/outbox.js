// Sending: every message gets an idempotency key when it is written, and every
// attempt to send it carries that same key. A send that got no answer (offline,
// connection cut after the server stored it) is retried with backoff until the
// server answers; a replay returns the message it already stored, so a message
// is never stored twice. The outbox is kept in sessionStorage, so a reload
// retries with the same keys too.

import { ApiError, NetworkError } from "./api.js";
import { randomKey } from "./dom.js";

const BACKOFF_MS = [1000, 2000, 4000, 8000, 15_000];

export class Outbox {
  /**
   * @param api        an Api
   * @param userId     whose outbox (the storage key)
   * @param onChange   () => void, whenever an item changes state
   * @param onSent     (item, message) => void, when the server has the message
   */
  constructor(api, userId, { onChange, onSent }) {
    this.api = api;
    this.storageKey = `chatdb.outbox.${userId}`;
    this.onChange = onChange;
    this.onSent = onSent;
    this.items = [];
    this.timers = new Map();
    this.wake = () => this.retryNow();
    try {
      const saved = JSON.parse(sessionStorage.getItem(this.storageKey) || "[]");
      this.items = saved.map((item) => ({ ...item, state: "waiting", inFlight: false }));
    } catch {
      this.items = [];
    }
  }

  start() {
    window.addEventListener("online", this.wake);
    this.retryNow();
  }

  stop() {
    window.removeEventListener("online", this.wake);
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }

  clear() {
    this.stop();
    this.items = [];
    sessionStorage.removeItem(this.storageKey);
  }

  save() {
    const kept = this.items.map(({ key, conversationId, body, replyTo, createdAt, seq }) => ({
      key,
      conversationId,
      body,
      replyTo,
      createdAt,
      seq,
    }));
    sessionStorage.setItem(this.storageKey, JSON.stringify(kept));
  }

  /** Unsent messages of a conversation (not yet matched to a stored one), oldest first. */
  pending(conversationId) {
    return this.items.filter((i) => i.conversationId === conversationId && i.seq == null);
  }

  /** Send `body`, as a reply to message `replyTo` (a seq) when given. */
  send(conversationId, body, replyTo = null) {
    const item = {
      key: randomKey(),
      conversationId,
      body,
      replyTo,
      createdAt: new Date().toISOString(),
      state: "sending",
      attempts: 0,
      inFlight: false,
      seq: null,
      error: null,
    };
    this.items.push(item);
    this.save();
    this.attempt(item);
    return item;
  }

  /**
   * A message of ours arrived from the live stream, maybe before the answer to
   * our own request (or instead of it, when that answer was lost): show it as
   * sent. The request keeps going until the server answers it.
   */
  matchStored(message) {
    if (this.items.some((i) => i.seq === message.seq && i.conversationId === message.conversation_id)) {
      return;
    }
    const item = this.items.find(
      (i) => i.conversationId === message.conversation_id && i.seq == null && i.body === message.body,
    );
    if (item) {
      item.seq = message.seq;
      this.save();
      this.onChange();
    }
  }

  async attempt(item) {
    if (item.inFlight || !this.items.includes(item)) return;
    clearTimeout(this.timers.get(item.key));
    this.timers.delete(item.key);
    item.inFlight = true;
    item.state = "sending";
    item.attempts = (item.attempts ?? 0) + 1;
    this.onChange();
    try {
      const message = await this.api.post(
        `/v1/conversations/${item.conversationId}/messages`,
        item.replyTo ? { body: item.body, reply_to_seq: item.replyTo } : { body: item.body },
        // A send that hangs (a dead connection) counts as failed, and is retried.
        { headers: { "Idempotency-Key": item.key }, signal: AbortSignal.timeout(20_000) },
      );
      this.remove(item);
      this.onSent(item, message);
    } catch (error) {
      item.inFlight = false;
      if (error instanceof NetworkError || (error instanceof ApiError && error.transient)) {
        item.state = "waiting";
        const delay = BACKOFF_MS[Math.min(item.attempts - 1, BACKOFF_MS.length - 1)];
        item.retryAt = Date.now() + delay;
        this.timers.set(
          item.key,
          setTimeout(() => this.attempt(item), delay),
        );
      } else if (item.seq != null) {
        this.remove(item); // refused, but a message with its text is already shown as stored
      } else {
        item.state = "failed";
        item.error = error instanceof ApiError ? error.detail : String(error);
      }
      this.onChange();
    } finally {
      item.inFlight = false;
    }
  }

  /** Retry everything waiting now (back online, or the live stream reconnected). */
  retryNow() {
    for (const item of this.items) {
      if (item.state === "waiting" && !item.inFlight) this.attempt(item);
    }
  }

  retry(key) {
    const item = this.items.find((i) => i.key === key);
    if (item && !item.inFlight) {
      item.error = null;
      this.attempt(item);
    }
  }

  discard(key) {
    const item = this.items.find((i) => i.key === key);
    if (item && !item.inFlight) {
      this.remove(item);
      this.onChange();
    }
  }

  remove(item) {
    clearTimeout(this.timers.get(item.key));
    this.timers.delete(item.key);
    this.items = this.items.filter((i) => i !== item);
    this.save();
  }
}
