// One open conversation: its messages (a contiguous range of seqs, paged
// backwards with `before=` and forwards with `after=`), the read marker, the
// composer, and the live changes that concern it.

import { ApiError, NetworkError } from "./api.js";
import { $, fill, fullTime, h, messageTime, timeEl, toast } from "./dom.js";

const PAGE = 50;
const MAX_PAGE = 200;
const NEAR_TOP_PX = 400;
const NEAR_BOTTOM_PX = 80;
// When opening with many unread messages, load back to the first unread, up to this many.
const MAX_INITIAL = 1000;
// The emoji offered by "React"; any emoji can be sent through the API.
const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];
// @username, as the server recognises it (not inside a word or an e-mail address).
const MENTION = /(?<![A-Za-z0-9_.@-])@([A-Za-z0-9_.-]{1,50})/g;
const MENTION_AT_CARET = /(?<![A-Za-z0-9_.@-])@([A-Za-z0-9_.-]{0,50})$/;

export class ConversationView {
  constructor(app, conversationId, revealSeq = null) {
    this.app = app;
    this.api = app.api;
    this.me = app.me;
    this.id = conversationId;
    this.conversation = null;
    this.role = null;
    this.members = new Map();
    this.messages = new Map(); // seq -> message, for seqs oldest..newest
    this.oldest = null;
    this.newest = 0;
    this.hasOlder = false;
    this.readSeq = 0; // our read marker as far as we know (moved optimistically)
    this.postedRead = 0;
    this.markerSeq = null; // the read marker when the conversation was opened
    this.changeSeq = 0; // the last change of this conversation applied
    this.ready = false;
    this.catching = false;
    this.queue = []; // changes that arrived while loading or catching up
    this.sentEarly = []; // our messages the server confirmed while loading
    this.loadingOlder = false;
    this.newerLoad = null;
    this.editing = null;
    this.replyTo = null; // the seq the next message replies to
    this.thread = null; // the seq whose thread is open
    this.suggestions = []; // members offered for the @name being typed
    this.unseen = 0;
    this.closed = false;
    this.readTimer = 0;
    this.listeners = new AbortController();
    this.revealSeq = revealSeq; // a message to show once loaded (opened from search)

    this.pane = $("#conv-pane");
    this.log = $("#messages");
    this.list = $("#message-list");
    this.pendingList = $("#pending-list");
    this.status = $("#history-status");
    this.jump = $("#jump");
    this.input = $("#composer-input");
    this.titleEl = $("#conv-title");
    this.subtitleEl = $("#conv-subtitle");
    this.replyBar = $("#reply-bar");
    this.mentionList = $("#mention-list");
    this.threadDialog = $("#thread");
  }

  // --- lifecycle ---------------------------------------------------------------------

  async open() {
    const signal = this.listeners.signal;
    this.list.replaceChildren();
    this.pendingList.replaceChildren();
    this.jump.hidden = true;
    this.titleEl.textContent = this.app.titleOf(this.id) ?? "Loading…";
    this.subtitleEl.textContent = "";
    this.setStatus("Loading…");
    this.log.setAttribute("aria-busy", "true");
    this.input.value = this.app.drafts.get(this.id) ?? "";
    this.autosize();
    this.cancelReply();
    this.showSuggestions([]);

    let frame = 0;
    this.log.addEventListener(
      "scroll",
      () => {
        if (frame) return;
        frame = requestAnimationFrame(() => {
          frame = 0;
          this.onScroll();
        });
      },
      { signal },
    );
    document.addEventListener("visibilitychange", () => this.checkRead(), { signal });
    window.addEventListener("focus", () => this.checkRead(), { signal });
    window.addEventListener("resize", () => this.checkRead(), { signal });
    this.jump.addEventListener("click", () => this.scrollToBottom(), { signal });
    this.input.addEventListener("keydown", (e) => this.onComposerKey(e), { signal });
    this.input.addEventListener(
      "input",
      () => {
        this.autosize();
        this.updateSuggestions();
      },
      { signal },
    );
    $("#reply-cancel").addEventListener("click", () => this.cancelReply(true), { signal });
    $("#thread-reply").addEventListener(
      "click",
      () => {
        const seq = this.thread;
        this.threadDialog.close();
        if (seq !== null) this.startReply(seq);
      },
      { signal },
    );
    this.threadDialog.addEventListener("close", () => (this.thread = null), { signal });
    $("#composer").addEventListener(
      "submit",
      (e) => {
        e.preventDefault();
        this.send();
      },
      { signal },
    );
    this.status.addEventListener(
      "click",
      (e) => {
        if (e.target.closest("button")) this.loadOlder();
      },
      { signal },
    );

    try {
      const [conversation, mine] = await Promise.all([
        this.api.get(`/v1/conversations/${this.id}`),
        this.api.get(`/v1/conversations/${this.id}/members?after=${this.me.id - 1}&limit=1`),
      ]);
      if (this.closed) return;
      const membership = mine.find((m) => m.user_id === this.me.id);
      if (!membership) throw new ApiError(404, "not_found", "not a member");
      this.conversation = conversation;
      this.changeSeq = conversation.last_change_seq;
      this.role = membership.role;
      this.readSeq = this.postedRead = membership.last_read_seq;
      this.markerSeq = membership.last_read_seq;
      this.renderHeader();

      const unread = conversation.last_seq - this.readSeq;
      const limit = Math.min(MAX_PAGE, Math.max(PAGE, unread + 10));
      const page = await this.api.get(`/v1/conversations/${this.id}/messages?limit=${limit}`);
      if (this.closed) return;
      this.hasOlder = page.has_older;
      this.insert(page.messages, "end");
      while (
        this.hasOlder &&
        this.oldest > this.markerSeq + 1 &&
        this.messages.size < MAX_INITIAL
      ) {
        const older = await this.api.get(
          `/v1/conversations/${this.id}/messages?before=${this.oldest}&limit=${MAX_PAGE}`,
        );
        if (this.closed) return;
        this.hasOlder = older.has_older;
        this.insert(older.messages, "start");
      }
      this.renderPending();
      const divider = this.renderDivider();
      this.log.removeAttribute("aria-busy");
      if (divider) {
        // The first unread a third of the way down, with some context above it
        // (the log is the divider's offsetParent).
        this.log.scrollTop = Math.max(0, divider.offsetTop - this.log.clientHeight / 3);
        if (this.log.scrollTop + this.log.clientHeight >= this.log.scrollHeight - 2) {
          this.scrollToBottom();
        }
      } else this.scrollToBottom();
      this.ready = true;
      for (const message of this.sentEarly.splice(0)) this.sent(message);
      this.drainQueue();
      this.updateStatus();
      this.checkRead();
      this.fillViewport();
      this.loadMembers();
      if (this.revealSeq !== null) this.reveal(this.revealSeq);
    } catch (error) {
      if (this.closed) return;
      this.log.removeAttribute("aria-busy");
      if (error instanceof ApiError && error.status === 404) {
        this.gone("This conversation does not exist, or you are not a member of it.");
      } else {
        const retry = h(
          "button",
          { type: "button", class: "link-button", onclick: () => this.app.reopen() },
          "Try again",
        );
        this.setStatus("Could not load this conversation. ", retry);
      }
    }
  }

  close() {
    this.closed = true;
    if (this.input.value.trim()) this.app.drafts.set(this.id, this.input.value);
    else this.app.drafts.delete(this.id);
    this.listeners.abort();
    clearTimeout(this.readTimer);
    if (this.readSeq > this.postedRead) this.postRead(); // what was read, even if we leave at once
  }

  /** The conversation is no longer ours (left, removed, deleted). */
  gone(message) {
    this.ready = false;
    this.list.replaceChildren();
    this.pendingList.replaceChildren();
    this.setStatus(message);
    this.app.conversationGone(this.id, message);
  }

  // --- header and members ------------------------------------------------------------

  renderHeader() {
    const title = this.app.titleOf(this.id) ?? this.fallbackTitle();
    this.titleEl.textContent = title;
    document.title = `${title} · chatdb`;
    const others = [...this.members.values()].filter((m) => m.user_id !== this.me.id);
    if (this.conversation?.kind === "direct") {
      const other = others[0];
      this.subtitleEl.textContent = other
        ? `Direct conversation with @${other.username}`
        : "Direct conversation";
    } else if (this.members.size) {
      const names = others.map((m) => m.display_name || m.username);
      const shown = names.slice(0, 4).join(", ");
      const more = names.length > 4 ? ` and ${names.length - 4} more` : "";
      this.subtitleEl.textContent = `${this.members.size} members: you, ${shown}${more}`;
    } else {
      this.subtitleEl.textContent = "Group";
    }
  }

  fallbackTitle() {
    if (this.conversation?.title) return this.conversation.title;
    const other = [...this.members.values()].find((m) => m.user_id !== this.me.id);
    if (other) return other.display_name || other.username;
    return this.conversation?.kind === "direct" ? "Direct conversation" : "Untitled group";
  }

  async loadMembers() {
    try {
      const members = await this.api.get(`/v1/conversations/${this.id}/members?limit=100`);
      if (this.closed) return;
      this.members = new Map(members.map((m) => [m.user_id, m]));
      const mine = this.members.get(this.me.id);
      if (mine) this.role = mine.role; // owners may delete and restore others' messages
      this.rerenderAll(); // and @names of members are shown as mentions
      this.renderHeader();
      this.app.membersChanged(this.id);
    } catch (error) {
      if (!(error instanceof NetworkError)) console.error(error);
    }
  }

  async refreshConversation() {
    try {
      this.conversation = await this.api.get(`/v1/conversations/${this.id}`);
      if (!this.closed) this.renderHeader();
    } catch {
      // the next change or the inbox will tell
    }
  }

  // --- messages ------------------------------------------------------------------------

  /** Add messages not shown yet at the start (older) or the end (newer) of the list. */
  insert(messages, where) {
    const fresh = messages.filter((m) => !this.messages.has(m.seq));
    if (!fresh.length) return 0;
    const fragment = document.createDocumentFragment();
    for (const message of fresh) {
      this.messages.set(message.seq, message);
      fragment.append(this.renderMessage(message));
    }
    if (where === "start") {
      this.list.prepend(fragment);
    } else {
      this.list.append(fragment);
    }
    this.oldest = Math.min(this.oldest ?? Infinity, fresh[0].seq);
    this.newest = Math.max(this.newest, fresh[fresh.length - 1].seq);
    return fresh.length;
  }

  renderMessage(message) {
    const li = h("li", { class: "msg", dataset: { seq: message.seq } });
    this.fillMessage(li, message);
    return li;
  }

  fillMessage(li, m) {
    const mine = m.sender_id === this.me.id;
    // Owners moderate groups; in a direct conversation each manages their own.
    const canModerate = mine || (this.role === "owner" && this.conversation?.kind === "group");
    const mentionsMe = !m.deleted_at && this.mentionedNames(m.body).has(this.me.username.toLowerCase());
    li.className = `msg${mine ? " mine" : ""}${m.deleted_at ? " deleted" : ""}${
      mentionsMe ? " mentions-me" : ""
    }`;
    const when = messageTime(m.created_at);
    const meta = h(
      "div",
      { class: "meta" },
      h("span", { class: "sender" }, mine ? "You" : m.sender_name),
      " ",
      timeEl(m.created_at, messageTime),
      m.edited_at && !m.deleted_at
        ? h("span", { class: "edited", title: `Edited ${fullTime(m.edited_at)}` }, " · edited")
        : null,
    );
    const body = m.deleted_at
      ? h("p", { class: "body" }, "Message deleted")
      : h("p", { class: "body" }, this.withMentions(m.body));
    // Names that say which message: "Edit message: Sure, send me the link".
    const about = m.deleted_at ? ` from ${when}` : `: ${snippet(m.body)}`;
    const button = (label, action, name) =>
      h(
        "button",
        { type: "button", class: "link-button", "aria-label": `${name}${about}`, onclick: action },
        label,
      );
    const actions = [];
    if (m.deleted_at) {
      if (canModerate) actions.push(button("Restore", () => this.restore(m.seq), "Restore message"));
    } else {
      actions.push(button("Reply", () => this.startReply(m.seq), "Reply to message"));
      actions.push(button("React", () => this.togglePalette(li, m.seq), "React to message"));
      if (mine) actions.push(button("Edit", () => this.startEdit(m.seq), "Edit message"));
      if (canModerate) actions.push(button("Delete", () => this.remove(m.seq), "Delete message"));
    }
    fill(
      li,
      h(
        "div",
        { class: "bubble" },
        meta,
        m.reply_to ? this.quote(m.reply_to) : null,
        body,
        this.reactionsRow(m),
      ),
      actions.length ? h("div", { class: "actions" }, actions) : null,
    );
  }

  /** Replies shown quote this message: an edit, delete or restore shows in their quotes. */
  refreshQuotes(original) {
    for (const [seq, reply] of this.messages) {
      if (reply.reply_to_seq !== original.seq || !reply.reply_to) continue;
      const deleted = Boolean(original.deleted_at);
      const body = deleted ? null : original.body.slice(0, 200);
      if (reply.reply_to.deleted === deleted && reply.reply_to.body === body) continue;
      const updated = { ...reply, reply_to: { ...reply.reply_to, deleted, body } };
      this.messages.set(seq, updated);
      const li = this.itemOf(seq);
      if (li && this.editing !== seq) this.fillMessage(li, updated);
    }
  }

  /** The original a reply answers; never the text of a deleted one. */
  quote(original) {
    const text = original.deleted ? "Deleted message" : snippet(original.body ?? "", 80);
    const who = original.sender_id === this.me.id ? "You" : original.sender_name;
    return h(
      "button",
      {
        type: "button",
        class: `quote${original.deleted ? " deleted" : ""}`,
        "aria-label": `In reply to ${who}: ${text}`,
        onclick: () => this.showOriginal(original.seq),
      },
      h("span", { class: "quote-sender" }, who),
      h("span", { class: "quote-body" }, text),
    );
  }

  showOriginal(seq) {
    const li = this.itemOf(seq);
    if (!li) {
      toast("That message is further up: scroll up to load it.");
      return;
    }
    li.scrollIntoView({ block: "center" });
    li.classList.add("flash");
    setTimeout(() => li.classList.remove("flash"), 1500);
  }

  /** Reaction chips (click to add or take back yours) and the thread link. */
  reactionsRow(m) {
    const chips = (m.reactions ?? []).map((r) =>
      h(
        "button",
        {
          type: "button",
          class: `reaction${r.me ? " me" : ""}`,
          "aria-pressed": r.me ? "true" : "false",
          "aria-label": `${r.emoji} ${r.count}${r.me ? ", including you" : ""}`,
          onclick: () => this.react(m.seq, r.emoji, !r.me),
        },
        `${r.emoji} ${r.count}`,
      ),
    );
    const replies = m.reply_count
      ? h(
          "button",
          { type: "button", class: "replies-link", onclick: () => this.openThread(m.seq) },
          m.reply_count === 1 ? "1 reply" : `${m.reply_count} replies`,
        )
      : null;
    if (!chips.length && !replies) return null;
    return h("div", { class: "under" }, chips, replies);
  }

  /** The lowercased usernames of members that a text mentions. */
  mentionedNames(text) {
    const names = new Set();
    for (const match of (text ?? "").matchAll(MENTION)) {
      const name = this.memberName(match[1]);
      if (name) names.add(name);
    }
    return names;
  }

  /** The member username an @name means ("bob." at the end of a sentence is bob), or null. */
  memberName(raw) {
    const usernames = new Set([...this.members.values()].map((m) => m.username.toLowerCase()));
    const name = raw.toLowerCase();
    if (usernames.has(name)) return name;
    const trimmed = name.replace(/[.-]+$/u, "");
    return usernames.has(trimmed) ? trimmed : null;
  }

  /** The text, with @names of members as highlighted spans (all as text nodes). */
  withMentions(text) {
    const parts = [];
    let at = 0;
    for (const match of text.matchAll(MENTION)) {
      const name = this.memberName(match[1]);
      if (!name) continue;
      const end = match.index + 1 + name.length;
      parts.push(text.slice(at, match.index));
      const me = name === this.me.username.toLowerCase();
      parts.push(h("span", { class: `mention${me ? " me" : ""}` }, text.slice(match.index, end)));
      at = end;
    }
    parts.push(text.slice(at));
    return parts;
  }

  /** A message changed (edit, delete, restore, or a newer state of it). */
  upsert(message) {
    if (this.messages.has(message.seq)) {
      this.messages.set(message.seq, message);
      if (this.editing !== message.seq) {
        const li = this.itemOf(message.seq);
        if (li) this.fillMessage(li, message);
      }
      this.refreshQuotes(message);
      return;
    }
    if (this.oldest !== null && message.seq < this.oldest) return; // not loaded; paging will bring it
    if (message.seq === this.newest + 1) {
      this.appendNewer([message]);
    } else if (message.seq > this.newest) {
      this.loadNewer(); // missed some: fetch the gap
    }
  }

  appendNewer(messages) {
    const atBottom = this.atBottom();
    const added = this.insert(messages, "end");
    if (!added) return;
    const ours = messages.every((m) => m.sender_id === this.me.id);
    if (atBottom || ours) {
      this.scrollToBottom();
    } else {
      this.unseen += messages.filter((m) => m.sender_id !== this.me.id).length;
      this.updateJump();
    }
    this.checkRead();
  }

  /** Everything after the newest message shown (after a gap in live updates). */
  loadNewer() {
    if (this.newerLoad) return this.newerLoad;
    this.newerLoad = (async () => {
      try {
        for (;;) {
          const page = await this.api.get(
            `/v1/conversations/${this.id}/messages?after=${this.newest}&limit=${MAX_PAGE}`,
          );
          if (this.closed) return;
          this.appendNewer(page.messages);
          if (!page.has_newer || !page.messages.length) return;
        }
      } catch (error) {
        if (!(error instanceof NetworkError)) console.error(error);
      } finally {
        this.newerLoad = null;
      }
    })();
    return this.newerLoad;
  }

  async loadOlder() {
    if (this.loadingOlder || !this.hasOlder || !this.ready || this.closed) return;
    this.loadingOlder = true;
    this.updateStatus();
    this.log.setAttribute("aria-busy", "true");
    let ok = false;
    try {
      const page = await this.api.get(
        `/v1/conversations/${this.id}/messages?before=${this.oldest}&limit=${PAGE}`,
      );
      if (this.closed) return;
      // Keep what the reader looks at where it is: grow the scroll offset by
      // exactly the height added above it (overflow-anchor is off for the log).
      const height = this.log.scrollHeight;
      const top = this.log.scrollTop;
      this.hasOlder = page.has_older;
      this.insert(page.messages, "start");
      this.log.scrollTop = top + (this.log.scrollHeight - height);
      ok = true;
    } catch (error) {
      if (!(error instanceof NetworkError)) console.error(error);
    } finally {
      this.loadingOlder = false;
      this.log.removeAttribute("aria-busy");
      this.updateStatus(ok ? null : "Could not load earlier messages.");
    }
    if (this.revealSeq !== null) this.reveal(this.revealSeq);
    else if (ok) this.fillViewport();
  }

  /** Load older pages while the reader is near the top (or the page does not fill the view). */
  /** Show message `seq`, loading the history down to it, and mark it. */
  async reveal(seq) {
    this.revealSeq = seq;
    if (!this.ready || this.closed || this.loadingOlder) return;
    this.loadingOlder = true;
    this.log.setAttribute("aria-busy", "true");
    try {
      while (this.hasOlder && this.oldest > seq) {
        const page = await this.api.get(
          `/v1/conversations/${this.id}/messages?before=${this.oldest}&limit=${MAX_PAGE}`,
        );
        if (this.closed) return;
        this.hasOlder = page.has_older;
        this.insert(page.messages, "start");
      }
    } catch (error) {
      if (!(error instanceof NetworkError)) console.error(error);
    } finally {
      this.loadingOlder = false;
      this.log.removeAttribute("aria-busy");
      if (!this.closed) this.updateStatus();
    }
    if (this.closed || this.revealSeq !== seq) return;
    this.revealSeq = null;
    const li = this.itemOf(seq);
    if (!li) {
      toast("That message could not be shown.");
      return;
    }
    this.list.querySelector("li.msg.found")?.classList.remove("found");
    li.classList.add("found");
    li.setAttribute("tabindex", "-1");
    li.scrollIntoView({ block: "center" });
    li.focus({ preventScroll: true });
    this.updateJump();
    this.checkRead();
  }

  fillViewport() {
    if (this.hasOlder && this.log.scrollTop < NEAR_TOP_PX) this.loadOlder();
  }

  setStatus(...children) {
    fill(this.status, ...children);
  }

  updateStatus(error = null) {
    if (error) {
      this.setStatus(error, " ", linkButton("Try again"));
    } else if (this.loadingOlder) {
      this.setStatus("Loading earlier messages…");
    } else if (this.hasOlder) {
      this.setStatus(linkButton("Load earlier messages"));
    } else {
      this.setStatus("This is the beginning of the conversation.");
    }
  }

  renderDivider() {
    this.list.querySelector(".unread-divider")?.remove();
    if (this.markerSeq === null) return null;
    const first = this.itemOf(this.markerSeq + 1);
    if (!first) return null;
    const divider = h(
      "li",
      { class: "unread-divider", role: "separator" },
      h("span", {}, "New messages"),
    );
    first.before(divider);
    return divider;
  }

  itemOf(seq) {
    return this.list.querySelector(`li[data-seq="${Number(seq)}"]`);
  }

  rerenderAll() {
    for (const [seq, message] of this.messages) {
      if (seq === this.editing) continue;
      const li = this.itemOf(seq);
      if (li) this.fillMessage(li, message);
    }
  }

  // --- scrolling and the read marker ------------------------------------------------------

  atBottom() {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight <= NEAR_BOTTOM_PX;
  }

  scrollToBottom() {
    this.log.scrollTop = this.log.scrollHeight;
    this.unseen = 0;
    this.updateJump();
    this.checkRead();
  }

  updateJump() {
    const away = !this.atBottom();
    this.jump.hidden = !away;
    this.jump.textContent = this.unseen ? `${this.unseen} new ↓` : "Latest ↓";
  }

  onScroll() {
    if (this.closed) return;
    if (this.atBottom()) this.unseen = 0;
    this.updateJump();
    this.checkRead();
    this.fillViewport();
  }

  /** The newest message whose end is on screen. */
  lastVisibleSeq() {
    const bottom = this.log.getBoundingClientRect().bottom + 1;
    const items = this.list.children;
    for (let i = items.length - 1; i >= 0; i--) {
      const el = items[i];
      if (!el.dataset.seq) continue;
      if (el.getBoundingClientRect().bottom <= bottom) return Number(el.dataset.seq);
    }
    return 0;
  }

  /** Move the read marker to what is on screen, if the page is being looked at. */
  checkRead() {
    if (!this.ready || this.closed || document.visibilityState !== "visible") return;
    const seq = this.lastVisibleSeq();
    if (seq <= this.readSeq) return;
    this.readSeq = seq;
    this.app.readLocally(this.id, seq);
    if (!this.readTimer) this.readTimer = setTimeout(() => this.postRead(), 300);
  }

  async postRead() {
    clearTimeout(this.readTimer);
    this.readTimer = 0;
    const seq = this.readSeq;
    if (seq <= this.postedRead) return;
    try {
      const result = await this.api.post(`/v1/conversations/${this.id}/read`, { seq });
      this.postedRead = Math.max(this.postedRead, result.last_read_seq);
    } catch (error) {
      if (error instanceof NetworkError || (error instanceof ApiError && error.transient)) {
        if (!this.closed && !this.readTimer) this.readTimer = setTimeout(() => this.postRead(), 3000);
      }
    }
  }

  // --- live changes -------------------------------------------------------------------------

  /** A change of this conversation from the live stream; applied once, in change_seq order. */
  applyChange(change) {
    if (!this.ready || this.catching) {
      this.queue.push(change);
      return;
    }
    if (change.change_seq <= this.changeSeq) return; // already applied
    if (change.change_seq > this.changeSeq + 1) {
      this.queue.push(change); // something is missing before it: fetch from the change log
      this.catchUp();
      return;
    }
    this.changeSeq = change.change_seq;
    this.applyKind(change);
  }

  drainQueue() {
    const queued = this.queue.sort((a, b) => a.change_seq - b.change_seq);
    this.queue = [];
    for (const change of queued) this.applyChange(change);
  }

  /** Everything after the last applied change, over plain HTTP (after a stream lost its position). */
  async catchUp() {
    if (this.catching || !this.ready || this.closed) return;
    this.catching = true;
    let ok = false;
    try {
      for (;;) {
        const page = await this.api.get(
          `/v1/conversations/${this.id}/changes?since=${this.changeSeq}&limit=${MAX_PAGE}`,
        );
        if (this.closed) return;
        for (const change of page.changes) {
          if (change.change_seq !== this.changeSeq + 1) continue;
          this.changeSeq = change.change_seq;
          this.applyKind(change);
        }
        if (!page.has_more || !page.changes.length) break;
      }
      ok = true;
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.gone("You are no longer a member of this conversation.");
        return;
      }
      if (error instanceof ApiError && error.status === 410) {
        // The changes we missed are no longer kept: load the conversation afresh.
        this.app.reopen();
        return;
      }
      setTimeout(() => this.catchUp(), 2000);
    } finally {
      this.catching = false;
    }
    if (ok) this.drainQueue();
  }

  applyKind(change) {
    const mine = change.user_id === this.me.id;
    switch (change.kind) {
      case "message.created":
        if (change.message) {
          if (change.message.sender_id === this.me.id) this.app.outbox.matchStored(change.message);
          this.upsert(change.message);
          this.renderPending();
          if (change.message.reply_to_seq) this.replyArrived(change.message);
        }
        break;
      case "message.edited":
      case "message.deleted":
      case "message.restored":
        if (change.message) this.upsert(this.keepMine(change.message));
        break;
      case "reaction.added":
      case "reaction.removed":
        if (change.message) {
          const message = this.keepMine(change.message);
          if (mine) {
            const added = change.kind === "reaction.added";
            for (const r of message.reactions) if (r.emoji === change.emoji) r.me = added;
          }
          this.upsert(message);
        }
        break;
      case "read":
        if (mine && change.message_seq > this.readSeq) this.readSeq = change.message_seq;
        if (mine) this.postedRead = Math.max(this.postedRead, change.message_seq);
        break;
      case "member.removed":
        if (mine) {
          this.gone("You are no longer a member of this conversation.");
          return;
        }
        this.loadMembers();
        break;
      case "member.added":
      case "member.role":
        this.loadMembers();
        break;
      case "conversation.renamed":
        this.refreshConversation();
        break;
      case "conversation.deleted":
        this.gone("This conversation was deleted.");
        break;
      default:
        break;
    }
  }

  // --- sending, editing, deleting --------------------------------------------------------

  onComposerKey(event) {
    if (this.suggestions.length && (event.key === "Tab" || event.key === "Enter")) {
      if (!event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.completeMention(this.suggestions[0]);
        return;
      }
    }
    if (event.key === "Escape") {
      if (this.suggestions.length) this.showSuggestions([]);
      else if (this.replyTo !== null) this.cancelReply();
      return;
    }
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    event.preventDefault();
    this.send();
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight + 2, 160)}px`;
  }

  send() {
    const body = this.input.value.replace(/\s+$/u, "");
    if (!body.trim()) return;
    if (body.length > 4000) {
      toast(`A message is at most 4000 characters (this one has ${body.length}).`, { error: true });
      return;
    }
    this.app.outbox.send(this.id, body, this.replyTo);
    this.cancelReply();
    this.showSuggestions([]);
    this.input.value = "";
    this.autosize();
    this.renderPending();
    this.scrollToBottom();
  }

  /** Messages still on their way (or refused), below the stored ones. */
  renderPending() {
    if (this.closed) return;
    const items = this.app.outbox.pending(this.id);
    const atBottom = this.atBottom();
    fill(
      this.pendingList,
      items.map((item) =>
        h(
          "li",
          { class: `msg mine pending ${item.state}`, dataset: { key: item.key } },
          h(
            "div",
            { class: "bubble" },
            h(
              "div",
              { class: "meta" },
              h("span", { class: "sender" }, "You"),
              " ",
              h("span", { class: "send-state" }, stateText(item)),
            ),
            h("p", { class: "body" }, item.body),
          ),
          item.state === "failed"
            ? h(
                "div",
                { class: "actions shown" },
                linkButton("Retry", () => this.app.outbox.retry(item.key)),
                linkButton("Discard", () => this.app.outbox.discard(item.key)),
              )
            : null,
        ),
      ),
    );
    if (atBottom) this.log.scrollTop = this.log.scrollHeight;
  }

  /** The server has our message (the answer to our send). */
  sent(message) {
    if (!this.ready) {
      this.sentEarly.push(message); // shown once the first page is in
      return;
    }
    this.upsert(message);
    this.renderPending();
    if (message.seq === this.newest) this.scrollToBottom();
  }

  // --- replies, threads, reactions, mentions ----------------------------------------------

  startReply(seq) {
    const message = this.messages.get(seq);
    if (!message || message.deleted_at) return;
    this.replyTo = seq;
    const who = message.sender_id === this.me.id ? "yourself" : message.sender_name;
    $("#reply-to-text").textContent = `Replying to ${who}: ${snippet(message.body)}`;
    this.replyBar.hidden = false;
    this.input.focus();
  }

  cancelReply(focus = false) {
    this.replyTo = null;
    this.replyBar.hidden = true;
    $("#reply-to-text").textContent = "";
    if (focus) this.input.focus();
  }

  /** Reactions of a change feed message are everyone's: keep which of them are ours. */
  keepMine(message) {
    const before = this.messages.get(message.seq);
    const mine = new Set((before?.reactions ?? []).filter((r) => r.me).map((r) => r.emoji));
    return {
      ...message,
      reactions: (message.reactions ?? []).map((r) => ({ ...r, me: mine.has(r.emoji) })),
    };
  }

  async react(seq, emoji, add) {
    const path = `/v1/conversations/${this.id}/messages/${seq}/reactions/${encodeURIComponent(emoji)}`;
    try {
      const message = add ? await this.api.request("PUT", path) : await this.api.delete(path);
      this.upsert(message);
    } catch (error) {
      toast(`Could not ${add ? "add" : "remove"} the reaction: ${describe(error)}`, { error: true });
    }
  }

  togglePalette(li, seq) {
    const open = li.querySelector(".palette");
    if (open) {
      open.remove();
      return;
    }
    const mine = new Set(
      (this.messages.get(seq)?.reactions ?? []).filter((r) => r.me).map((r) => r.emoji),
    );
    const palette = h(
      "div",
      { class: "palette", role: "group", "aria-label": "Reactions" },
      QUICK_REACTIONS.map((emoji) =>
        h(
          "button",
          {
            type: "button",
            class: "small",
            "aria-label": `React with ${emoji}`,
            onclick: () => {
              palette.remove();
              this.react(seq, emoji, !mine.has(emoji));
            },
          },
          emoji,
        ),
      ),
    );
    li.querySelector(".bubble").append(palette);
    palette.querySelector("button").focus();
  }

  /** A reply was stored: its original's reply count (and an open thread) changed. */
  async replyArrived(reply) {
    if (this.thread === reply.reply_to_seq) this.appendThread([reply]);
    if (!this.messages.has(reply.reply_to_seq)) return;
    try {
      const original = await this.api.get(
        `/v1/conversations/${this.id}/messages/${reply.reply_to_seq}`,
      );
      if (!this.closed) this.upsert(original);
    } catch (error) {
      if (!(error instanceof NetworkError)) console.error(error);
    }
  }

  async openThread(seq, after = 0) {
    const list = $("#thread-list");
    if (!after) {
      this.thread = seq;
      list.replaceChildren();
      $("#thread-status").textContent = "Loading…";
      if (!this.threadDialog.open) this.threadDialog.showModal();
    }
    try {
      const page = await this.api.get(
        `/v1/conversations/${this.id}/messages/${seq}/replies?after=${after}&limit=${PAGE}`,
      );
      if (this.thread !== seq) return;
      if (!after) list.append(this.threadItem(page.parent, "parent"));
      this.appendThread(page.replies);
      fill(
        $("#thread-status"),
        page.has_more
          ? linkButton("Load more replies", () =>
              this.openThread(seq, page.replies[page.replies.length - 1].seq),
            )
          : page.replies.length || after
            ? ""
            : "No replies yet.",
      );
    } catch (error) {
      $("#thread-status").textContent = `Could not load the thread: ${describe(error)}`;
    }
  }

  appendThread(replies) {
    const list = $("#thread-list");
    for (const reply of replies) {
      if (list.querySelector(`li[data-seq="${Number(reply.seq)}"]`)) continue;
      list.append(this.threadItem(reply, "reply"));
    }
    if (replies.length) $("#thread-status").textContent = "";
  }

  threadItem(m, kind) {
    const who = m.sender_id === this.me.id ? "You" : m.sender_name;
    return h(
      "li",
      { class: `thread-item ${kind}`, dataset: { seq: m.seq } },
      h("div", { class: "meta" }, h("span", { class: "sender" }, who), " ", timeEl(m.created_at, messageTime)),
      h("p", { class: "body" }, m.deleted_at ? "Message deleted" : this.withMentions(m.body)),
    );
  }

  /** Members whose username starts with the @name before the caret. */
  updateSuggestions() {
    const before = this.input.value.slice(0, this.input.selectionStart ?? this.input.value.length);
    const match = before.match(MENTION_AT_CARET);
    if (!match) {
      this.showSuggestions([]);
      return;
    }
    const prefix = match[1].toLowerCase();
    const found = [...this.members.values()]
      .filter((m) => m.user_id !== this.me.id && m.username.toLowerCase().startsWith(prefix))
      .sort((a, b) => a.username.localeCompare(b.username))
      .slice(0, 5);
    this.showSuggestions(found);
  }

  showSuggestions(members) {
    this.suggestions = members;
    this.mentionList.hidden = !members.length;
    fill(
      this.mentionList,
      members.map((m) =>
        h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: "link-button",
              "aria-label": `Mention @${m.username}`,
              onclick: () => this.completeMention(m),
            },
            `@${m.username}`,
            m.display_name ? h("span", { class: "hint" }, ` ${m.display_name}`) : null,
          ),
        ),
      ),
    );
  }

  completeMention(member) {
    const caret = this.input.selectionStart ?? this.input.value.length;
    const before = this.input.value.slice(0, caret).replace(MENTION_AT_CARET, `@${member.username} `);
    this.input.value = before + this.input.value.slice(caret);
    this.input.setSelectionRange(before.length, before.length);
    this.showSuggestions([]);
    this.input.focus();
  }

  startEdit(seq) {
    const message = this.messages.get(seq);
    const li = this.itemOf(seq);
    if (!message || !li || message.deleted_at) return;
    if (this.editing !== null) this.stopEdit();
    this.editing = seq;
    const box = h("textarea", { class: "edit-box", "aria-label": "Edit message", maxlength: 4000 });
    box.value = message.body;
    const cancel = () => {
      this.stopEdit();
      this.itemOf(seq)?.querySelector(".actions button")?.focus();
    };
    const form = h(
      "form",
      { class: "edit-form" },
      box,
      h(
        "div",
        { class: "edit-buttons" },
        h("button", { type: "submit", class: "primary small" }, "Save"),
        h("button", { type: "button", class: "small", onclick: cancel }, "Cancel"),
        h("span", { class: "hint" }, "Enter to save · Esc to cancel"),
      ),
    );
    box.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        cancel();
      } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = box.value.replace(/\s+$/u, "");
      if (!body.trim()) return;
      if (body === message.body) {
        cancel();
        return;
      }
      try {
        const updated = await this.api.patch(`/v1/conversations/${this.id}/messages/${seq}`, { body });
        this.stopEdit();
        this.upsert(updated);
        this.itemOf(seq)?.querySelector(".actions button")?.focus();
      } catch (error) {
        toast(`Could not save the edit: ${describe(error)}`, { error: true });
      }
    });
    li.querySelector(".body").replaceWith(form);
    li.querySelector(".actions")?.remove();
    box.style.height = `${Math.min(box.scrollHeight + 2, 240)}px`;
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }

  stopEdit() {
    const seq = this.editing;
    this.editing = null;
    const li = seq !== null ? this.itemOf(seq) : null;
    if (li) this.fillMessage(li, this.messages.get(seq));
  }

  async remove(seq) {
    try {
      const message = await this.api.delete(`/v1/conversations/${this.id}/messages/${seq}`);
      this.upsert(message);
      this.itemOf(seq)?.querySelector(".actions button")?.focus();
    } catch (error) {
      toast(`Could not delete the message: ${describe(error)}`, { error: true });
    }
  }

  async restore(seq) {
    try {
      const message = await this.api.post(`/v1/conversations/${this.id}/messages/${seq}/restore`);
      this.upsert(message);
      this.itemOf(seq)?.querySelector(".actions button")?.focus();
    } catch (error) {
      toast(`Could not restore the message: ${describe(error)}`, { error: true });
    }
  }
}

function linkButton(label, onclick = null) {
  return h("button", { type: "button", class: "link-button", onclick }, label);
}

function snippet(text, width = 40) {
  const line = text.split("\n", 1)[0];
  return line.length > width ? `${line.slice(0, width)}…` : line;
}

function stateText(item) {
  if (item.state === "failed") return `Not sent: ${item.error}`;
  if (item.state === "waiting") return "Not sent yet: no connection. Retrying…";
  return "Sending…";
}

export function describe(error) {
  if (error instanceof NetworkError) return "no connection to the server";
  if (error instanceof ApiError) return error.detail;
  return String(error);
}
