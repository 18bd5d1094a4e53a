// Live updates: GET /v1/events (Server-Sent Events) read with fetch().
//
// EventSource cannot send an Authorization header, so this reads the stream
// itself: it parses the event-stream format, remembers the last event id, and
// after a lost connection reconnects with backoff and `Last-Event-ID`, so the
// server replays every change missed meanwhile, exactly once and in order.

const MAX_DELAY_MS = 30_000;
// The server sends a keep-alive every 15 s by default (an event with only an
// id: the stream position); a stream silent for much longer than that is a
// dead connection that nobody closed.
const SILENCE_MS = 45_000;

export class EventStream {
  /**
   * @param api          an Api (for the token and the 401 handler)
   * @param onChange     (change) => void, for each `event: change`
   * @param onOpen       ({resumed}) => void, on each connection; resumed=false
   *                     means changes may have been missed: resynchronize
   * @param onState      (state, detail) => void: "connecting" | "live" | "offline"
   */
  constructor(api, { onChange, onOpen, onState }) {
    this.api = api;
    this.onChange = onChange;
    this.onOpen = onOpen;
    this.onState = onState;
    this.lastEventId = null;
    this.retryMs = 1000;
    this.failures = 0;
    this.stopped = true;
    this.controller = null;
    this.reconnectTimer = 0;
    this.silenceTimer = 0;
    this.wake = () => {
      if (!this.stopped && this.reconnectTimer) this.reconnectNow();
    };
    // Offline, an open stream can hang without an error: drop it and wait for
    // the `online` event (or the backoff) to reconnect.
    this.lost = () => this.controller?.abort();
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.wake);
    window.addEventListener("offline", this.lost);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.wake);
    window.removeEventListener("offline", this.lost);
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.silenceTimer);
    this.reconnectTimer = 0;
    this.controller?.abort();
  }

  reconnectNow() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = 0;
    this.failures = 0;
    this.connect();
  }

  async connect() {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    const resumed = this.lastEventId !== null;
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${this.api.token}` };
    if (resumed) headers["Last-Event-ID"] = this.lastEventId;
    this.onState("connecting");
    try {
      const response = await fetch("/v1/events", {
        headers,
        signal: controller.signal,
        cache: "no-store",
      });
      if (response.status === 401) {
        this.api.onUnauthorized();
        return;
      }
      if (response.status === 400) {
        // The server does not know our position: start afresh and resynchronize.
        this.lastEventId = null;
        throw new Error("the stream position was refused");
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      this.failures = 0;
      this.onState("live");
      this.onOpen({ resumed });
      await this.read(response.body, controller);
    } catch (error) {
      if (controller.signal.aborted && this.stopped) return;
      console.debug("event stream:", error);
    } finally {
      clearTimeout(this.silenceTimer);
    }
    if (!this.stopped && this.controller === controller) this.scheduleReconnect();
  }

  scheduleReconnect() {
    const delay = Math.min(MAX_DELAY_MS, this.retryMs * 2 ** this.failures);
    const jittered = Math.round(delay * (0.75 + Math.random() * 0.5));
    this.failures += 1;
    this.onState("offline", { retryInMs: jittered });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = 0;
      this.connect();
    }, jittered);
  }

  watchSilence(controller) {
    clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(() => controller.abort(), SILENCE_MS);
  }

  async read(body, controller) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    const event = { type: "", data: [], id: null };
    this.watchSilence(controller);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // the server ended the stream (shutting down, or we were too slow)
      this.watchSilence(controller);
      buffer += value;
      // Lines end with \n, \r\n or \r; keep a trailing \r until we see what follows.
      const lines = buffer.split(/\r\n|\n|\r(?!$)/);
      buffer = lines.pop();
      for (const line of lines) this.line(line, event);
    }
  }

  line(line, event) {
    if (line === "") {
      this.dispatch(event);
      return;
    }
    if (line.startsWith(":")) return; // a comment: keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event.type = value;
    else if (field === "data") event.data.push(value);
    else if (field === "id" && !value.includes("\0")) event.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Math.max(500, Number(value));
  }

  dispatch(event) {
    const { type, data, id } = event;
    event.type = "";
    event.data = [];
    event.id = null;
    if (data.length === 0) {
      if (id !== null) this.lastEventId = id;
      return;
    }
    if (type === "reset") {
      // Our position is older than the server keeps: the stream ends, and the
      // next connection starts afresh (resumed=false), which resynchronizes.
      this.lastEventId = null;
      return;
    }
    if (type === "change") {
      try {
        this.onChange(JSON.parse(data.join("\n")));
      } catch (error) {
        console.error("applying a change failed:", error);
      }
    }
    // Advanced only once the change is applied: a reconnect resumes after it.
    if (id !== null) this.lastEventId = id;
  }
}
