// The chatdb web client: sign-in, the inbox, routing, live updates.
// It uses only the public HTTP API (see README "The HTTP API").

import { Api, ApiError, NetworkError } from "./api.js";
import { ConversationView, describe } from "./conversation.js";
import { Dialogs } from "./dialogs.js";
import { $, fill, h, initials, shortTime, timeEl, toast } from "./dom.js";
import { EventStream } from "./events.js";
import { Outbox } from "./outbox.js";
import { Search } from "./search.js";

// Per tab (sessionStorage): two windows can be two different people.
const SESSION_KEY = "chatdb.session";
const INBOX_PAGE = 30;

class App {
  constructor() {
    this.api = new Api();
    this.api.onUnauthorized = () => this.signedOut("Your session has ended: sign in again.");
    this.me = null;
    this.view = null;
    this.stream = null;
    this.outbox = null;
    this.drafts = new Map(); // conversation id -> unsent text in the composer
    this.entries = new Map(); // conversation id -> inbox entry
    this.order = []; // conversation ids, newest activity first
    this.nextCursor = null;
    this.inboxLoaded = false;
    this.inboxTimer = 0;
    this.inboxLoading = null;
    this.dialogs = new Dialogs(this);
    this.search = new Search(this);

    $("#signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.signIn($("#signin-username").value.trim(), $("#signin-password").value);
    });
    $("#signout").addEventListener("click", () => this.signOut());
    $("#inbox-status").addEventListener("click", (e) => {
      if (e.target.closest("button")) this.loadMoreInbox();
    });
    window.addEventListener("hashchange", () => this.route());
  }

  async boot() {
    let saved = null;
    try {
      saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    } catch {
      saved = null;
    }
    if (saved?.token) {
      this.api.token = saved.token;
      try {
        const me = await this.api.get("/v1/me");
        this.start(me);
        return;
      } catch (error) {
        if (error instanceof NetworkError) {
          this.showSignIn("No connection to the server. Reload to try again.");
          return;
        }
        this.api.token = null;
        sessionStorage.removeItem(SESSION_KEY);
      }
    }
    this.showSignIn();
  }

  // --- signing in and out -----------------------------------------------------------

  async showSignIn(message = "") {
    $("#chat").hidden = true;
    $("#signin").hidden = false;
    document.title = "Sign in · chatdb";
    $("#signin-error").textContent = message;
    $("#signin-password").value = "";
    $("#signin-username").focus();
    try {
      const demo = await this.api.get("/v1/demo");
      $("#demo-password").textContent = demo.password;
      fill(
        $("#demo-list"),
        demo.users.map((user) =>
          h(
            "li",
            {},
            h(
              "button",
              {
                type: "button",
                class: "demo-user",
                onclick: () => this.signIn(user.username, demo.password),
              },
              h("span", { class: "avatar", "aria-hidden": "true" }, initials(user.display_name)),
              h(
                "span",
                {},
                h("strong", {}, user.display_name),
                " ",
                h("span", { class: "muted" }, `@${user.username}`),
              ),
            ),
          ),
        ),
      );
      $("#demo-users").hidden = false;
    } catch {
      $("#demo-users").hidden = true; // not serving demo data
    }
  }

  async signIn(username, password) {
    const error = $("#signin-error");
    if (!username || !password) {
      error.textContent = "Enter your username and password.";
      return;
    }
    error.textContent = "";
    const button = $("#signin-form button[type=submit]");
    button.disabled = true;
    try {
      const session = await this.api.post("/v1/sessions", { username, password });
      this.api.token = session.token;
      sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token: session.token }));
      const me = await this.api.get("/v1/me");
      this.start(me);
    } catch (e) {
      this.api.token = null;
      error.textContent =
        e instanceof ApiError && e.status === 401 ? "Wrong username or password." : describe(e);
    } finally {
      button.disabled = false;
    }
  }

  async signOut() {
    try {
      await this.api.delete("/v1/sessions/current");
    } catch {
      // The token expires anyway; what matters is that this tab forgets it.
    }
    this.signedOut("You have signed out.");
  }

  signedOut(message) {
    this.stop();
    this.outbox?.clear();
    this.outbox = null;
    this.drafts.clear();
    sessionStorage.removeItem(SESSION_KEY);
    this.api.token = null;
    this.me = null;
    if (location.hash) history.replaceState(null, "", location.pathname);
    this.showSignIn(message);
  }

  // --- the signed-in app ------------------------------------------------------------

  start(me) {
    this.me = me;
    $("#signin").hidden = true;
    $("#chat").hidden = false;
    fill(
      $("#whoami"),
      h("span", { class: "label" }, "Signed in as "),
      h("strong", {}, me.display_name || me.username),
    );
    this.entries = new Map();
    this.order = [];
    this.inboxLoaded = false;
    $("#inbox-list").replaceChildren();
    $("#inbox-status").textContent = "Loading…";
    this.outbox = new Outbox(this.api, me.id, {
      onChange: () => this.view?.renderPending(),
      onSent: (item, message) => this.messageSent(message),
    });
    this.stream = new EventStream(this.api, {
      onChange: (change) => this.onChange(change),
      onOpen: ({ resumed }) => this.streamOpened(resumed),
      onState: (state, detail) => this.showConnection(state, detail),
    });
    this.stream.start();
    this.outbox.start();
    this.refreshInbox();
    this.route();
  }

  stop() {
    this.stream?.stop();
    this.stream = null;
    this.outbox?.stop();
    this.view?.close();
    this.view = null;
    this.dialogs.closeAll();
    clearTimeout(this.inboxTimer);
  }

  showConnection(state, detail = {}) {
    const el = $("#connection");
    el.dataset.state = state;
    if (state === "live") el.textContent = "Live";
    else if (state === "connecting") el.textContent = "Connecting…";
    else {
      const seconds = detail.retryInMs ? Math.ceil(detail.retryInMs / 1000) : 0;
      el.textContent = seconds ? `Offline, retrying in ${seconds} s` : "Offline";
    }
  }

  /** The live stream (re)connected. Without a position, changes may have been missed. */
  streamOpened(resumed) {
    this.outbox?.retryNow();
    if (!resumed) {
      this.scheduleInboxRefresh(0);
      this.view?.catchUp();
    }
  }

  onChange(change) {
    if (!this.me) return;
    this.scheduleInboxRefresh();
    if (this.view?.id === change.conversation_id) this.view.applyChange(change);
    else if (
      change.user_id === this.me.id &&
      (change.kind === "member.removed" || change.kind === "conversation.deleted")
    ) {
      this.entries.delete(change.conversation_id);
      this.renderInbox();
    }
  }

  messageSent(message) {
    if (!this.me) return;
    if (this.view?.id === message.conversation_id) this.view.sent(message);
    this.view?.renderPending();
    this.scheduleInboxRefresh();
  }

  // --- routing ------------------------------------------------------------------------

  route() {
    if (!this.me) return;
    // #/c/ID is a conversation; #/c/ID/m/SEQ the same, opened at a message (search).
    const match = location.hash.match(/^#\/c\/(\d{1,18})(?:\/m\/(\d{1,18}))?$/);
    const id = match ? Number(match[1]) : null;
    const seq = match?.[2] ? Number(match[2]) : null;
    if (this.view && this.view.id === id) {
      if (seq !== null) this.view.reveal(seq);
      return;
    }
    this.show(id, seq);
  }

  show(id, seq = null) {
    const previous = this.view?.id ?? null;
    this.view?.close();
    this.view = null;
    this.dialogs.closeAll();
    document.body.classList.toggle("in-conversation", id !== null);
    $("#conv-empty").hidden = id !== null;
    $("#conv-pane").hidden = id === null;
    if (id !== null) {
      this.view = new ConversationView(this, id, seq);
      this.view.open();
      // Wide screens: straight to writing. Phones: to the heading (no keyboard pop-up).
      if (window.matchMedia("(min-width: 720px)").matches) $("#composer-input").focus();
      else $("#conv-title").focus();
    } else {
      document.title = this.totalUnreadTitle("chatdb");
      if (previous !== null) {
        $(`#inbox-list a[data-id="${previous}"]`)?.focus();
      }
    }
    this.renderInbox();
  }

  reopen() {
    if (this.view) this.show(this.view.id);
  }

  /** A conversation we just created or found: show it. */
  opened(id) {
    this.scheduleInboxRefresh(0);
    location.hash = `#/c/${id}`;
  }

  conversationGone(id, message) {
    toast(message);
    this.entries.delete(id);
    this.renderInbox();
    if (this.view?.id === id) location.hash = "#/";
    this.scheduleInboxRefresh(0);
  }

  // --- the inbox ----------------------------------------------------------------------

  scheduleInboxRefresh(delay = 120) {
    if (this.inboxTimer) {
      if (delay > 0) return;
      clearTimeout(this.inboxTimer);
    }
    this.inboxTimer = setTimeout(() => {
      this.inboxTimer = 0;
      this.refreshInbox();
    }, delay);
  }

  /** Fetch the inbox again, as many entries as are shown (the database is the truth). */
  async refreshInbox() {
    if (this.inboxLoading) {
      this.scheduleInboxRefresh(); // again once this one is done
      return;
    }
    const limit = Math.min(200, Math.max(INBOX_PAGE, this.order.length));
    this.inboxLoading = this.api.get(`/v1/conversations?limit=${limit}`);
    try {
      const page = await this.inboxLoading;
      if (!this.me) return;
      this.entries = new Map(page.entries.map((e) => [e.conversation_id, e]));
      this.order = page.entries.map((e) => e.conversation_id);
      this.nextCursor = page.next_cursor;
      this.inboxLoaded = true;
      this.renderInbox();
      this.view?.renderHeader();
    } catch (error) {
      if (!(error instanceof NetworkError)) console.error(error);
      if (!this.inboxLoaded) $("#inbox-status").textContent = "Could not load conversations.";
    } finally {
      this.inboxLoading = null;
    }
  }

  async loadMoreInbox() {
    if (!this.nextCursor || this.inboxLoading) return;
    this.inboxLoading = this.api.get(
      `/v1/conversations?limit=${INBOX_PAGE}&cursor=${encodeURIComponent(this.nextCursor)}`,
    );
    try {
      const page = await this.inboxLoading;
      for (const entry of page.entries) {
        if (!this.entries.has(entry.conversation_id)) this.order.push(entry.conversation_id);
        this.entries.set(entry.conversation_id, entry);
      }
      this.nextCursor = page.next_cursor;
      this.renderInbox();
    } catch (error) {
      toast(`Could not load more conversations: ${describe(error)}`, { error: true });
    } finally {
      this.inboxLoading = null;
    }
  }

  titleOf(id) {
    const entry = this.entries.get(id);
    if (!entry) return null;
    return entry.title || (entry.kind === "group" ? "Untitled group" : "Direct conversation");
  }

  unreadOf(entry) {
    const view = this.view;
    if (view && view.id === entry.conversation_id && view.ready) {
      return Math.max(0, entry.last_seq - Math.max(entry.last_read_seq, view.readSeq));
    }
    return entry.unread_count;
  }

  /** The open conversation was read up to `seq` (the request is on its way). */
  readLocally(id, seq) {
    const entry = this.entries.get(id);
    if (entry && seq > entry.last_read_seq) this.renderInbox();
  }

  renamed(id, title) {
    const entry = this.entries.get(id);
    if (entry) entry.title = title;
    this.renderInbox();
    this.view?.renderHeader();
  }

  membersChanged(id) {
    this.dialogs.refreshDetails(id);
  }

  totalUnreadTitle(base) {
    let total = 0;
    for (const entry of this.entries.values()) total += this.unreadOf(entry);
    return total ? `(${total}) ${base}` : base;
  }

  renderInbox() {
    const list = $("#inbox-list");
    const existing = new Map([...list.children].map((li) => [Number(li.dataset.id), li]));
    let previous = null;
    const ids = this.order.filter((id) => this.entries.has(id));
    for (const id of ids) {
      let li = existing.get(id);
      existing.delete(id);
      if (!li) {
        li = h("li", { dataset: { id } }, h("a", { class: "conv", dataset: { id } }));
      }
      this.renderEntry(li.firstChild, this.entries.get(id));
      // Move only what is out of place, so focus and scroll stay put.
      const wanted = previous ? previous.nextSibling : list.firstChild;
      if (wanted !== li) list.insertBefore(li, wanted);
      previous = li;
    }
    for (const li of existing.values()) li.remove();
    const status = $("#inbox-status");
    if (!this.inboxLoaded) status.textContent = "Loading…";
    else if (this.nextCursor) {
      fill(status, h("button", { type: "button", class: "link-button" }, "Show more conversations"));
    }
    else if (!ids.length) status.textContent = "No conversations yet. Start one with “New chat”.";
    else status.textContent = "";
    const base = this.view ? document.title.replace(/^\(\d+\) /, "") : "chatdb";
    document.title = this.totalUnreadTitle(base);
  }

  renderEntry(a, entry) {
    const id = entry.conversation_id;
    const unread = this.unreadOf(entry);
    const title = this.titleOf(id);
    const active = this.view?.id === id;
    a.href = `#/c/${id}`;
    a.className = `conv${unread ? " unread" : ""}${active ? " active" : ""}`;
    if (active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
    const avatar = h("span", { class: "avatar", "aria-hidden": "true" }, initials(title));
    avatar.style.setProperty("--hue", String((id * 67) % 360));
    let preview;
    if (entry.last_message_seq === null) {
      preview = h("span", { class: "preview muted" }, "No messages yet");
    } else {
      const mine = entry.last_message_sender_id === this.me.id;
      const sender = mine
        ? "You"
        : entry.kind === "group"
          ? entry.last_message_sender_name || "Someone"
          : null;
      preview = h(
        "span",
        { class: "preview" },
        sender ? h("span", { class: "preview-sender" }, `${sender}: `) : null,
        entry.last_message_deleted
          ? h("em", {}, "Message deleted")
          : firstLine(entry.last_message_body ?? ""),
      );
    }
    fill(
      a,
      avatar,
      h(
        "span",
        { class: "conv-main" },
        h(
          "span",
          { class: "conv-top" },
          h("span", { class: "conv-title" }, title),
          timeEl(entry.last_message_at ?? entry.last_activity_at, shortTime),
        ),
        h(
          "span",
          { class: "conv-bottom" },
          preview,
          unread && entry.unread_mention_count
            ? h(
                "span",
                { class: "badge mention-badge" },
                h("span", { class: "count" }, `@${Math.min(entry.unread_mention_count, 99)}`),
                h(
                  "span",
                  { class: "visually-hidden" },
                  entry.unread_mention_count === 1 ? " mention of you" : " mentions of you",
                ),
              )
            : null,
          unread
            ? h(
                "span",
                { class: "badge" },
                h("span", { class: "count" }, unread > 99 ? "99+" : String(unread)),
                h(
                  "span",
                  { class: "visually-hidden" },
                  unread === 1 ? " unread message" : " unread messages",
                ),
              )
            : null,
        ),
      ),
    );
  }
}

function firstLine(text) {
  const line = text.split("\n", 1)[0];
  return line.length > 140 ? `${line.slice(0, 140)}…` : line;
}

const app = new App();
app.boot();
