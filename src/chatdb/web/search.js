// Message search in the sidebar: results replace the inbox until closed, and
// each opens its conversation at the message (#/c/ID/m/SEQ).

import { ApiError, NetworkError } from "./api.js";
import { $, fill, h, shortTime } from "./dom.js";

const SEARCH_PAGE = 20;

export class Search {
  constructor(app) {
    this.app = app;
    this.query = "";
    this.cursor = null;
    this.loading = false;
    this.input = $("#search-input");
    this.panel = $("#search-results");
    this.list = $("#search-list");
    this.summary = $("#search-summary");
    this.more = $("#search-more");
    $("#search-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.run(this.input.value.trim());
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Escape") this.close();
    });
    $("#search-close").addEventListener("click", () => this.close());
    this.more.addEventListener("click", (e) => {
      if (e.target.closest("button")) this.load();
    });
  }

  get open() {
    return !this.panel.hidden;
  }

  async run(query) {
    if (!query) {
      this.close();
      return;
    }
    this.query = query;
    this.cursor = null;
    this.list.replaceChildren();
    this.show(true);
    this.summary.textContent = "Searching…";
    await this.load();
  }

  async load() {
    if (this.loading) return;
    this.loading = true;
    const query = this.query;
    const params = new URLSearchParams({ q: query, limit: String(SEARCH_PAGE) });
    if (this.cursor) params.set("cursor", this.cursor);
    try {
      const page = await this.app.api.get(`/v1/search?${params}`);
      if (query !== this.query || !this.open) return;
      for (const hit of page.results) this.list.append(h("li", {}, this.renderHit(hit)));
      this.cursor = page.next_cursor;
      const count = this.list.children.length;
      this.summary.textContent = count
        ? `${count}${this.cursor ? "+" : ""} message${count === 1 ? "" : "s"} found`
        : "No messages found.";
      fill(
        this.more,
        this.cursor
          ? h("button", { type: "button", class: "link-button" }, "More results")
          : null,
      );
    } catch (error) {
      if (query !== this.query) return;
      if (error instanceof ApiError && error.status < 500) {
        this.summary.textContent = error.detail;
      } else {
        if (!(error instanceof NetworkError)) console.error(error);
        this.summary.textContent = "Search failed; try again.";
      }
    } finally {
      this.loading = false;
    }
  }

  renderHit(hit) {
    const m = hit.message;
    // Matched words become <mark> elements with text inside; nothing is parsed as HTML.
    const snippet = hit.snippet.map((piece) =>
      piece.match ? h("mark", {}, piece.text) : piece.text,
    );
    return h(
      "a",
      {
        class: "hit",
        href: `#/c/${m.conversation_id}/m/${m.seq}`,
        dataset: { conversation: m.conversation_id, seq: m.seq },
      },
      h(
        "span",
        { class: "hit-top" },
        h("span", { class: "hit-title" }, hit.conversation_title ?? "Conversation"),
        h("time", { datetime: m.created_at }, shortTime(m.created_at)),
      ),
      h("span", { class: "hit-sender" }, m.sender_id === this.app.me?.id ? "You" : m.sender_name),
      h("span", { class: "hit-snippet" }, snippet),
    );
  }

  show(visible) {
    this.panel.hidden = !visible;
    $("#inbox-list").hidden = visible;
    $("#inbox-status").hidden = visible;
  }

  close() {
    this.query = "";
    this.cursor = null;
    this.input.value = "";
    this.list.replaceChildren();
    this.show(false);
  }
}
