// Dialogs: start a direct conversation, create a group, and a conversation's
// details (rename, members, leave). Native <dialog>: focus stays inside while
// open, Escape closes, focus returns to the button that opened it.

import { ApiError } from "./api.js";
import { describe } from "./conversation.js";
import { $, fill, h, toast } from "./dom.js";

/** A reason to show as is ("No user named …"). */
class Refusal extends Error {}

function errorLine(dialog) {
  return dialog.querySelector(".form-error");
}

function setup(dialog) {
  for (const button of dialog.querySelectorAll("button.close")) {
    button.addEventListener("click", () => dialog.close());
  }
  dialog.addEventListener("close", () => {
    errorLine(dialog).textContent = "";
  });
}

/** Usernames typed by a person: "bob, carol dave" -> ["bob", "carol", "dave"]. */
function usernames(text) {
  return [...new Set(text.split(/[\s,;]+/).map((u) => u.replace(/^@/, "")).filter(Boolean))];
}

export class Dialogs {
  constructor(app) {
    this.app = app;
    this.api = app.api;
    this.direct = $("#new-direct");
    this.group = $("#new-group");
    this.details = $("#details");
    this.detailsFor = null;
    this.leaveArmed = false;
    for (const dialog of [this.direct, this.group, this.details, $("#thread")]) setup(dialog);

    $("#new-direct-button").addEventListener("click", () => this.open(this.direct));
    $("#new-group-button").addEventListener("click", () => this.open(this.group));
    $("#details-button").addEventListener("click", () => this.openDetails());
    $("#new-direct-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.startDirect();
    });
    $("#new-group-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.createGroup();
    });
    $("#rename-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.rename();
    });
    $("#add-member-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.addMember();
    });
    $("#leave-button").addEventListener("click", () => this.leave());
    this.details.addEventListener("close", () => {
      this.detailsFor = null;
      this.disarmLeave();
    });
  }

  open(dialog) {
    for (const form of dialog.querySelectorAll("form")) form.reset();
    errorLine(dialog).textContent = "";
    dialog.showModal();
  }

  closeAll() {
    for (const dialog of [this.direct, this.group, this.details, $("#thread")]) {
      if (dialog.open) dialog.close();
    }
  }

  /** Resolve usernames to users; throws a message naming those not found. */
  async resolve(names) {
    const users = await Promise.all(names.map((name) => this.api.findUser(name)));
    const missing = names.filter((_, i) => !users[i]);
    if (missing.length) {
      throw new Refusal(`No user named ${missing.map((m) => `“${m}”`).join(", ")}.`);
    }
    return users;
  }

  async busy(dialog, work) {
    const buttons = dialog.querySelectorAll("button[type=submit]");
    for (const b of buttons) b.disabled = true;
    errorLine(dialog).textContent = "";
    try {
      await work();
    } catch (error) {
      errorLine(dialog).textContent = error instanceof Refusal ? error.message : describe(error);
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }

  startDirect() {
    return this.busy(this.direct, async () => {
      const [name] = usernames($("#direct-username").value);
      if (!name) throw new Refusal("Type a username.");
      const [user] = await this.resolve([name]);
      if (user.id === this.app.me.id) throw new Refusal("That is you: choose someone else.");
      const conversation = await this.api.post("/v1/conversations", {
        kind: "direct",
        member_ids: [user.id],
      });
      this.direct.close();
      this.app.opened(conversation.id);
    });
  }

  createGroup() {
    return this.busy(this.group, async () => {
      const title = $("#group-title").value.trim();
      if (!title) throw new Refusal("Give the group a name.");
      const names = usernames($("#group-members").value);
      const users = await this.resolve(names);
      const ids = users.map((u) => u.id).filter((id) => id !== this.app.me.id);
      const conversation = await this.api.post("/v1/conversations", {
        kind: "group",
        title,
        member_ids: ids,
      });
      this.group.close();
      this.app.opened(conversation.id);
    });
  }

  // --- details ------------------------------------------------------------------------

  async openDetails() {
    const view = this.app.view;
    if (!view?.conversation) return;
    this.detailsFor = view.id;
    this.disarmLeave();
    errorLine(this.details).textContent = "";
    $("#add-member-input").value = "";
    this.renderDetails();
    this.details.showModal();
    await view.loadMembers();
  }

  /** Called when the open conversation's members or name change. */
  refreshDetails(conversationId) {
    if (this.details.open && this.detailsFor === conversationId) this.renderDetails();
  }

  renderDetails() {
    const view = this.app.view;
    if (!view || view.id !== this.detailsFor) return;
    const group = view.conversation?.kind === "group";
    const owner = view.role === "owner";
    $("#details-title").textContent = view.titleEl.textContent || "Details";
    const rename = $("#rename-form");
    rename.hidden = !(group && owner);
    if (!rename.contains(document.activeElement)) {
      $("#rename-input").value = view.conversation?.title ?? "";
    }
    $("#add-member-form").hidden = !(group && owner);
    $("#leave-button").hidden = !group;
    const members = [...view.members.values()];
    fill(
      $("#members-list"),
      members.map((m) => {
        const me = m.user_id === this.app.me.id;
        return h(
          "li",
          { dataset: { userId: m.user_id } },
          h(
            "span",
            { class: "member-name" },
            h("strong", {}, m.display_name || m.username),
            " ",
            h("span", { class: "muted" }, `@${m.username}`),
            me ? h("span", { class: "muted" }, " (you)") : null,
            m.role === "owner" ? h("span", { class: "tag" }, "owner") : null,
          ),
          group && owner && !me
            ? h(
                "button",
                {
                  type: "button",
                  class: "small",
                  "aria-label": `Remove ${m.display_name || m.username}`,
                  onclick: () => this.removeMember(m),
                },
                "Remove",
              )
            : null,
        );
      }),
    );
  }

  rename() {
    return this.busy(this.details, async () => {
      const id = this.detailsFor;
      const title = $("#rename-input").value.trim();
      if (!title) throw new Refusal("A group needs a name.");
      const conversation = await this.api.patch(`/v1/conversations/${id}`, { title });
      if (this.app.view?.id === id) this.app.view.conversation = conversation;
      this.app.renamed(id, conversation.title);
      toast("Renamed.");
      this.renderDetails();
    });
  }

  addMember() {
    return this.busy(this.details, async () => {
      const id = this.detailsFor;
      const [name] = usernames($("#add-member-input").value);
      if (!name) throw new Refusal("Type a username.");
      const [user] = await this.resolve([name]);
      try {
        await this.api.post(`/v1/conversations/${id}/members`, { user_id: user.id });
      } catch (error) {
        if (error instanceof ApiError && error.status === 409) {
          throw new Refusal(`${user.display_name || user.username} is already a member.`);
        }
        throw error;
      }
      $("#add-member-input").value = "";
      await this.app.view?.loadMembers();
      $("#add-member-input").focus();
    });
  }

  async removeMember(member) {
    const id = this.detailsFor;
    try {
      await this.api.delete(`/v1/conversations/${id}/members/${member.user_id}`);
      await this.app.view?.loadMembers();
      $("#add-member-input").focus();
    } catch (error) {
      errorLine(this.details).textContent = describe(error);
    }
  }

  disarmLeave() {
    this.leaveArmed = false;
    $("#leave-button").textContent = "Leave conversation";
  }

  /** Leaving asks twice: the first press arms the button. */
  async leave() {
    const id = this.detailsFor;
    if (!this.leaveArmed) {
      this.leaveArmed = true;
      $("#leave-button").textContent = "Press again to leave";
      return;
    }
    try {
      await this.api.delete(`/v1/conversations/${id}/members/${this.app.me.id}`);
      this.details.close();
      this.app.conversationGone(id, "You left the conversation.");
    } catch (error) {
      this.disarmLeave();
      errorLine(this.details).textContent = describe(error);
    }
  }
}
