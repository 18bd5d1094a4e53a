"""The web client in a real Chromium (Playwright), against `chatdb serve` run
as a process on a fresh database, the way a person uses it after `make run`.

Each test starts its own server with demo data (alice, bob, carol, dave) and
drives one browser context per person. Waits are Playwright's expect() with
a timeout, never assertions about speed. Screenshots go to artifacts/.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)
from sqlalchemy.engine import URL, make_url

from chatdb import store
from chatdb.db import make_engine, transaction
from chatdb.demo import DEMO_PASSWORD
from tests.conftest import TEST_SETTINGS

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "web client tests need Chromium at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ADMIN_KEY = "web-test-admin-key-0123456789"
WAIT_MS = 20_000  # the longest any expect() here waits
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=WAIT_MS)


# --- chatdb serve, as a process ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """`chatdb serve --demo` on a free port; can be killed and started again."""

    database_url: str
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATDB_")}
        env.update(
            CHATDB_DATABASE_URL=self.database_url,
            CHATDB_ADMIN_KEY=ADMIN_KEY,
            CHATDB_SSE_KEEPALIVE_SECONDS="5",
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chatdb", "serve", "--port", str(self.port), "--demo"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"chatdb serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx2.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chatdb serve did not become ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self, *, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # open streams hold a graceful stop up
            process.kill()
            process.wait(10)

    # --- the API, as a second client --------------------------------------------------

    def token(self, username: str) -> str:
        response = httpx2.post(
            f"{self.url}/v1/sessions", json={"username": username, "password": DEMO_PASSWORD}
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> Any:
        response = httpx2.request(
            method,
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kwargs,
        )
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def user_id(self, username: str) -> int:
        response = httpx2.get(
            f"{self.url}/v1/users",
            params={"username": username},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        user_id: int = response.json()[0]["id"]
        return user_id

    def conversation_id(self, token: str, title: str) -> int:
        inbox = self.call("GET", "/v1/conversations?limit=200", token)
        return next(e["conversation_id"] for e in inbox["entries"] if e["title"] == title)

    def unread(self, token: str, conversation_id: int) -> int:
        inbox = self.call("GET", "/v1/conversations?limit=200", token)
        return next(
            int(e["unread_count"])
            for e in inbox["entries"]
            if e["conversation_id"] == conversation_id
        )

    def bodies(self, token: str, conversation_id: int) -> list[str | None]:
        page = self.call("GET", f"/v1/conversations/{conversation_id}/messages?limit=200", token)
        return [m["body"] for m in page["messages"]]


@pytest.fixture
def database_url(fresh_database: URL) -> str:
    return fresh_database.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    running = Server(database_url, tmp_path / "serve.log")
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class People:
    """Browser contexts, one per person, each with the errors its pages raised."""

    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def context(self, **options: Any) -> BrowserContext:
        context = self.browser.new_context(**{"viewport": DESKTOP, **options})
        self.contexts.append(context)
        return context

    def page(self, context: BrowserContext) -> Page:
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    crowd = People(browser)
    try:
        yield crowd
    finally:
        for context in crowd.contexts:
            context.close()
    assert crowd.errors == [], "uncaught errors in the page"


def sign_in(people: People, server: Server, username: str, **options: Any) -> Page:
    page = people.page(people.context(**options))
    page.goto(server.url)
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#connection")).to_have_text("Live")  # subscribed to live updates
    return page


def entry(page: Page, title: str) -> Any:
    """A conversation in the inbox."""
    return page.locator("#inbox-list a.conv").filter(
        has=page.locator(".conv-title", has_text=title)
    )


def open_conversation(page: Page, title: str) -> None:
    entry(page, title).click()
    expect(page.locator("#conv-title")).to_have_text(title)
    expect(page.locator("#history-status")).not_to_have_text("Loading…")


def message(page: Page, body: str) -> Any:
    """Stored messages (not the ones still being sent) whose text is exactly `body`."""
    return page.locator("#message-list li.msg").filter(has=page.get_by_text(body, exact=True))


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT_MS / 1000) -> None:
    """Poll the server until `check` holds (bounded; not a claim about speed)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.1)


# WCAG contrast of the text of every visible element matching the selectors,
# against the first opaque background behind it.
CONTRAST_JS = """
(selectors) => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] === 1) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const worst = [];
  for (const selector of selectors) {
    for (const el of document.querySelectorAll(selector)) {
      if (!el.checkVisibility() || !el.textContent.trim()) continue;
      const a = lum(rgb(getComputedStyle(el).color));
      const b = lum(background(el));
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const text = el.textContent.trim().slice(0, 30);
      if (ratio < 4.5) worst.push(`${selector}: ${ratio.toFixed(2)} (${text})`);
    }
  }
  return worst;
}
"""
TEXT_SELECTORS = [
    ".conv-title",
    ".preview",
    ".conv time",
    ".badge .count",
    "#message-list .body",
    "#message-list .meta",
    "#message-list .meta .sender",
    "#pending-list .meta",
    ".unread-divider",
    ".history-status",
    ".subtitle",
    "#conv-title",
    "#connection",
    ".whoami",
    "button",
    ".hint",
    ".link-button",
    "label",
]


def assert_readable(page: Page) -> None:
    assert page.evaluate(CONTRAST_JS, TEXT_SELECTORS) == []


def assert_no_horizontal_scroll(page: Page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0


# --- the tests ---------------------------------------------------------------------------


def test_sign_in_lists_the_demo_users_and_sign_out_forgets_the_token(
    server: Server, people: People
) -> None:
    page = people.page(people.context())
    page.goto(server.url)
    demo = page.locator("#demo-list")
    for name in ("Alice Martin", "Bob Chen", "Carol Diaz", "Dave Okafor"):
        expect(demo).to_contain_text(name)
    expect(page.locator("#demo-password")).to_have_text(DEMO_PASSWORD)

    page.get_by_label("Username", exact=True).fill("alice")
    page.get_by_label("Password", exact=True).fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")

    demo.get_by_role("button", name="Bob Chen").click()  # one click signs a demo user in
    expect(page.locator("#whoami")).to_contain_text("Bob Chen")
    expect(entry(page, "Demo team")).to_be_visible()
    token = page.evaluate("JSON.parse(sessionStorage.getItem('chatdb.session')).token")

    page.reload()  # the tab stays signed in
    expect(page.locator("#whoami")).to_contain_text("Bob Chen")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    page.reload()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    revoked = httpx2.get(f"{server.url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 401


def test_two_people_chat_live(server: Server, people: People) -> None:
    """A sends, B sees it live with an unread badge; B replies; A edits, deletes
    and restores, and B sees each."""
    alice = sign_in(people, server, "alice")
    bob = sign_in(people, server, "bob")
    bob_token = server.token("bob")
    direct = server.conversation_id(bob_token, "Alice Martin")

    open_conversation(alice, "Bob Chen")
    open_conversation(bob, "Demo team")  # bob looks elsewhere

    send(alice, "Are you coming to the demo?")
    expect(message(alice, "Are you coming to the demo?")).to_have_count(1)
    bob_entry = entry(bob, "Alice Martin")
    expect(bob_entry.locator(".preview")).to_have_text("Are you coming to the demo?")
    # One unread from the demo data, plus this one; the latest activity comes first.
    expect(bob_entry.locator(".badge .count")).to_have_text("2")
    expect(bob.locator("#inbox-list a.conv").first).to_contain_text("Alice Martin")
    expect(bob_entry.locator("time")).to_be_visible()
    assert_readable(bob)  # with an unread badge
    screenshot(bob, "web-inbox.png")

    bob_entry.click()
    expect(bob.locator("#conv-title")).to_have_text("Alice Martin")
    # The marker sits before the first message bob had not read.
    first_unread = bob.locator(".unread-divider + li.msg")
    expect(first_unread.locator(".body")).to_have_text("Looks good. No OFFSET anywhere, nice.")
    expect(bob_entry.locator(".badge")).to_have_count(0)
    eventually(
        lambda: server.unread(bob_token, direct) == 0, "bob's read marker reaches the last message"
    )

    box = bob.get_by_label("Message", exact=True)
    box.fill("Yes!")
    box.press("Shift+Enter")  # a new line, not a send
    box.press_sequentially("See you there.")
    expect(message(bob, "Yes!\nSee you there.")).to_have_count(0)
    box.press("Enter")
    reply = message(alice, "Yes!\nSee you there.")
    expect(reply).to_have_count(1)
    assert reply.locator(".body").evaluate("e => e.textContent") == "Yes!\nSee you there."
    expect(box).to_have_value("")

    sent = message(alice, "Are you coming to the demo?")
    sent.hover()
    sent.get_by_role("button", name="Edit message").click()
    editor = alice.get_by_role("textbox", name="Edit message")
    editor.fill("Are you coming to the demo at 3?")
    editor.press("Enter")
    edited = message(bob, "Are you coming to the demo at 3?")
    expect(edited).to_have_count(1)
    expect(edited.locator(".edited")).to_be_visible()
    expect(message(bob, "Are you coming to the demo?")).to_have_count(0)

    message(alice, "Are you coming to the demo at 3?").get_by_role(
        "button", name="Delete message"
    ).click()
    expect(message(bob, "Are you coming to the demo at 3?")).to_have_count(0)
    expect(bob.locator("#message-list li.msg.deleted")).to_have_count(1)
    expect(bob.locator("#message-list li.msg.deleted .body")).to_have_text("Message deleted")
    expect(bob.locator("#message-list li.msg.deleted").get_by_role("button")).to_have_count(0)
    assert_readable(bob)  # a deleted message

    alice.locator("#message-list li.msg.deleted").get_by_role(
        "button", name="Restore message from"
    ).click()
    expect(message(bob, "Are you coming to the demo at 3?")).to_have_count(1)
    expect(bob.locator("#message-list li.msg.deleted")).to_have_count(0)

    assert_readable(alice)
    assert_readable(bob)
    screenshot(alice, "web-conversation.png")


def test_history_scrolls_up_through_500_messages_each_once_in_order(
    server: Server, people: People, database_url: str
) -> None:
    alice_token, bob_token = server.token("alice"), server.token("bob")
    alice_id, bob_id = server.user_id("alice"), server.user_id("bob")
    group = server.call(
        "POST", "/v1/conversations", alice_token, json={"title": "History", "member_ids": [bob_id]}
    )["id"]
    bodies = [f"history message {n:03d}" for n in range(1, 501)]
    engine = make_engine(make_url(database_url), TEST_SETTINGS)
    try:
        with transaction(engine) as session:
            for n, body in enumerate(bodies):
                store.send_message(
                    session=session,
                    conversation_id=group,
                    sender_id=(alice_id, bob_id)[n % 2],
                    body=body,
                )
    finally:
        engine.dispose()
    server.call("POST", f"/v1/conversations/{group}/read", bob_token, json={"seq": 500})

    bob = sign_in(people, server, "bob")
    open_conversation(bob, "History")
    log = bob.locator("#messages")
    items = bob.locator("#message-list li[data-seq]")
    expect(items.last).to_have_attribute("data-seq", "500")
    assert items.count() < 500  # a page, not everything

    for _ in range(30):
        first_seq, top = log.evaluate(
            """log => {
                const first = log.querySelector('#message-list li[data-seq]');
                log.scrollTop = 0;
                return [Number(first.dataset.seq), first.getBoundingClientRect().top];
            }"""
        )
        if first_seq == 1:
            break
        expect(items.first).not_to_have_attribute("data-seq", str(first_seq))
        # No jump: the message that was on top stays where the reader saw it.
        moved = bob.locator(f'#message-list li[data-seq="{first_seq}"]').evaluate(
            "e => e.getBoundingClientRect().top"
        )
        assert abs(moved - top) <= 1
    expect(bob.locator("#history-status")).to_have_text(
        "This is the beginning of the conversation."
    )

    seqs = [int(s) for s in items.evaluate_all("els => els.map(e => e.dataset.seq)")]
    shown = bob.locator("#message-list li[data-seq] .body").all_text_contents()
    assert seqs == list(range(1, 501))
    assert shown == bodies
    expect(bob.locator(".unread-divider")).to_have_count(0)  # bob had read them all


def test_a_message_sent_offline_is_stored_once(server: Server, people: People) -> None:
    alice = sign_in(people, server, "alice")
    bob = sign_in(people, server, "bob")
    open_conversation(alice, "Bob Chen")
    open_conversation(bob, "Alice Martin")

    attempts: list[str | None] = []
    network = {"up": True}

    def flaky(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        attempts.append(route.request.headers.get("idempotency-key"))
        if len(attempts) == 1:
            route.fetch()  # the server stores the message...
            network["up"] = False
            route.abort("connectionreset")  # ...and the answer never arrives
        elif network["up"]:
            route.continue_()
        else:
            route.abort("internetdisconnected")

    alice.context.route("**/v1/conversations/*/messages", flaky)
    alice.context.set_offline(True)  # the live stream goes down too
    send(alice, "Sent from a train")

    pending = alice.locator("#pending-list li.msg.pending")
    expect(pending).to_have_count(1)
    expect(pending.locator(".send-state")).to_contain_text("Not sent yet")
    expect(message(bob, "Sent from a train")).to_have_count(1)  # the first try got through
    assert_readable(alice)  # a message waiting to be sent

    network["up"] = True
    alice.context.set_offline(False)
    expect(message(alice, "Sent from a train")).to_have_count(1)
    expect(pending).to_have_count(0)
    expect(alice.locator("#connection")).to_have_text("Live")

    assert len(attempts) >= 2
    assert attempts[0]
    assert set(attempts) == {attempts[0]}  # one key for every try
    token = server.token("alice")
    direct = server.conversation_id(token, "Bob Chen")
    assert server.bodies(token, direct).count("Sent from a train") == 1
    expect(message(bob, "Sent from a train")).to_have_count(1)
    expect(message(alice, "Sent from a train")).to_have_count(1)


def test_live_updates_resume_after_the_server_restarts(
    server: Server, people: People, database_url: str
) -> None:
    """The stream drops (the server is killed); changes made meanwhile arrive
    once it is back, in the same page, without a reload."""
    alice = sign_in(people, server, "alice")
    bob = sign_in(people, server, "bob")
    open_conversation(bob, "Alice Martin")
    open_conversation(alice, "Bob Chen")
    bob.evaluate("window.notReloaded = true")
    alice_id = server.user_id("alice")
    direct = server.conversation_id(server.token("bob"), "Alice Martin")
    resumed_from: list[str | None] = []

    def stream_opened(request: Request) -> None:
        if request.url.endswith("/v1/events"):
            resumed_from.append(request.headers.get("last-event-id"))

    bob.on("request", stream_opened)
    send(alice, "Before the restart")
    expect(message(bob, "Before the restart")).to_have_count(1)  # bob has a stream position

    server.stop(kill=True)
    expect(bob.locator("#connection")).to_contain_text("Offline")

    engine = make_engine(make_url(database_url), TEST_SETTINGS)
    try:
        with transaction(engine) as session:
            store.send_message(
                session=session,
                conversation_id=direct,
                sender_id=alice_id,
                body="While you were away",
            )
            store.edit_message(
                session=session,
                conversation_id=direct,
                seq=2,
                body="Sure, send me the link (edited while away).",
                actor_id=alice_id,
            )
            store.delete_message(session=session, conversation_id=direct, seq=4, actor_id=alice_id)
    finally:
        engine.dispose()
    server.start()

    expect(bob.locator("#connection")).to_have_text("Live")
    expect(message(bob, "While you were away")).to_have_count(1)
    expect(message(bob, "Sure, send me the link (edited while away).")).to_have_count(1)
    expect(bob.locator('#message-list li[data-seq="4"]')).to_have_class("msg deleted")
    expect(entry(bob, "Alice Martin").locator(".preview")).to_have_text("While you were away")
    expect(message(alice, "While you were away")).to_have_count(1)
    assert bob.evaluate("window.notReloaded") is True
    last_event_id = resumed_from[-1]  # the reconnection said where it left off
    assert last_event_id
    assert last_event_id.isdigit()


def test_message_text_is_shown_as_text(server: Server, people: People) -> None:
    alice = sign_in(people, server, "alice")
    bob = sign_in(people, server, "bob")
    dialogs: list[str] = []
    for page in (alice, bob):
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_conversation(alice, "Bob Chen")
    hostile = ["<img src=x onerror=alert(1)>", "<b>bold</b> & <script>alert(2)</script>"]
    for text in hostile:
        send(alice, text)

    open_conversation(bob, "Alice Martin")
    for page in (alice, bob):
        for text in hostile:
            shown = message(page, text)
            expect(shown).to_have_count(1)
            assert shown.locator(".body").evaluate("e => e.textContent") == text
        assert page.locator("#chat img, #chat b, #chat script").count() == 0
    expect(entry(alice, "Bob Chen").locator(".preview")).to_contain_text(hostile[1])
    assert dialogs == []


def test_direct_conversations_groups_and_members(server: Server, people: People) -> None:
    alice = sign_in(people, server, "alice")
    bob = sign_in(people, server, "bob")

    # A direct conversation, started by username; starting it again finds the same one.
    new_chat = alice.locator("#new-direct")
    alice.get_by_role("button", name="New chat").click()
    new_chat.get_by_label("Their username").fill("nobody")
    new_chat.get_by_role("button", name="Start").click()
    expect(alice.locator("#new-direct .form-error")).to_have_text("No user named “nobody”.")
    new_chat.get_by_label("Their username").fill("dave")
    new_chat.get_by_role("button", name="Start").click()
    expect(alice.locator("#conv-title")).to_have_text("Dave Okafor")
    expect(alice.locator("#conv-subtitle")).to_have_text("Direct conversation with @dave")
    first_url = alice.url
    alice.get_by_role("button", name="New chat").click()
    new_chat.get_by_label("Their username").fill("Dave")
    new_chat.get_by_role("button", name="Start").click()
    expect(new_chat).not_to_be_visible()
    assert alice.url == first_url

    # A group: bob sees it appear live.
    alice.get_by_role("button", name="New group").click()
    new_group = alice.locator("#new-group")
    new_group.get_by_label("Name").fill("Weekend")
    new_group.get_by_label("Members").fill("bob, carol")
    new_group.get_by_role("button", name="Create").click()
    expect(alice.locator("#conv-title")).to_have_text("Weekend")
    expect(alice.locator("#conv-subtitle")).to_have_text("3 members: you, Bob Chen, Carol Diaz")
    expect(entry(bob, "Weekend")).to_be_visible()

    # Add and remove members, rename.
    alice.get_by_role("button", name="Details").click()
    details = alice.locator("#details")
    details.get_by_label("Add a member").fill("dave")
    details.get_by_role("button", name="Add", exact=True).click()
    expect(details.locator("#members-list li")).to_have_count(4)
    details.get_by_role("button", name="Remove Carol Diaz").click()
    expect(details.locator("#members-list li")).to_have_count(3)
    expect(details.locator("#members-list")).not_to_contain_text("Carol")
    details.get_by_label("Name").fill("Weekend trip")
    details.get_by_role("button", name="Rename").click()
    expect(alice.locator("#conv-title")).to_have_text("Weekend trip")
    details.get_by_role("button", name="Close").click()
    expect(entry(bob, "Weekend trip")).to_be_visible()
    expect(alice.locator("#conv-subtitle")).to_have_text("3 members: you, Bob Chen, Dave Okafor")

    # Bob leaves (asked twice); alice sees him go.
    open_conversation(bob, "Weekend trip")
    bob.get_by_role("button", name="Details").click()
    bob.get_by_role("button", name="Leave conversation").click()
    bob.get_by_role("button", name="Press again to leave").click()
    expect(entry(bob, "Weekend trip")).to_have_count(0)
    expect(bob.locator("#conv-pane")).to_be_hidden()
    expect(alice.locator("#conv-subtitle")).to_have_text("2 members: you, Dave Okafor")


def test_a_phone_sized_screen_and_the_keyboard(server: Server, people: People) -> None:
    context = people.context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = people.page(context)
    page.goto(server.url)
    expect(page.get_by_label("Username", exact=True)).to_be_focused()
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(DEMO_PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#conversation")).to_be_hidden()  # one pane at a time
    assert_no_horizontal_scroll(page)
    assert_readable(page)

    def tab_to(target: Any) -> None:
        for _ in range(40):
            page.keyboard.press("Tab")
            if target.evaluate("e => e === document.activeElement"):
                return
        pytest.fail(f"Tab never reached {target}")

    tab_to(entry(page, "Bob Chen"))
    page.keyboard.press("Enter")
    expect(page.locator("#conv-title")).to_have_text("Bob Chen")
    expect(page.locator("#sidebar")).to_be_hidden()
    tab_to(page.get_by_label("Message", exact=True))
    page.keyboard.type("Typed on a phone, sent with Enter")
    page.keyboard.press("Enter")
    expect(message(page, "Typed on a phone, sent with Enter")).to_have_count(1)
    assert_no_horizontal_scroll(page)
    assert_readable(page)
    screenshot(page, "web-phone-conversation.png")

    page.get_by_role("link", name="Back to conversations").click()
    expect(page.locator("#sidebar")).to_be_visible()
    expect(entry(page, "Bob Chen").locator(".preview")).to_contain_text(
        "Typed on a phone, sent with Enter"
    )
    screenshot(page, "web-phone-inbox.png")


def test_search_opens_the_conversation_at_the_message(
    server: Server, people: People, database_url: str
) -> None:
    alice_token, bob_token = server.token("alice"), server.token("bob")
    alice_id, bob_id = server.user_id("alice"), server.user_id("bob")
    group = server.call(
        "POST", "/v1/conversations", alice_token, json={"title": "Archive", "member_ids": [bob_id]}
    )["id"]
    engine = make_engine(make_url(database_url), TEST_SETTINGS)
    try:
        with transaction(engine) as session:
            for n in range(1, 301):
                body = "the <b>needle</b> is here" if n == 5 else f"filler message {n:03d}"
                store.send_message(
                    session=session, conversation_id=group, sender_id=alice_id, body=body
                )
    finally:
        engine.dispose()
    server.call("POST", f"/v1/conversations/{group}/read", bob_token, json={"seq": 300})

    bob = sign_in(people, server, "bob")
    box = bob.get_by_role("searchbox", name="Search messages")
    box.fill("needles")
    box.press("Enter")
    hits = bob.locator("#search-list a.hit")
    expect(hits).to_have_count(1)
    expect(hits.locator("mark")).to_have_text("needle")
    expect(hits.locator(".hit-snippet")).to_have_text("the <b>needle</b> is here")
    expect(hits.locator(".hit-title")).to_have_text("Archive")
    expect(bob.locator("#inbox-list")).to_be_hidden()
    screenshot(bob, "web-search.png")

    hits.click()
    expect(bob.locator("#conv-title")).to_have_text("Archive")
    found = bob.locator("#message-list li.msg.found")
    expect(found).to_have_attribute("data-seq", "5")
    expect(found.locator(".body")).to_have_text("the <b>needle</b> is here")
    expect(found).to_be_in_viewport()
    assert bob.locator("#chat b").count() == 0

    # Another result in the open conversation moves to it.
    box.fill("filler 250")
    box.press("Enter")
    expect(hits).to_have_count(1)
    hits.click()
    expect(found).to_have_attribute("data-seq", "250")
    expect(found).to_be_in_viewport()

    # Nothing to look for: the server's reason, no results.
    box.fill("-needle")
    box.press("Enter")
    expect(bob.locator("#search-summary")).to_contain_text("nothing to search for")
    expect(hits).to_have_count(0)
    bob.get_by_role("button", name="Close search").click()
    expect(bob.locator("#inbox-list")).to_be_visible()

    # Someone who is not a member finds nothing.
    carol = sign_in(people, server, "carol")
    carol_box = carol.get_by_role("searchbox", name="Search messages")
    carol_box.fill("needle")
    carol_box.press("Enter")
    expect(carol.locator("#search-summary")).to_have_text("No messages found.")


def stored(page: Page, body: str) -> Any:
    """Stored messages whose own text (not a quote of them) is exactly `body`."""
    return page.locator("#message-list li.msg").filter(
        has=page.locator("p.body", has_text=re.compile(f"^{re.escape(body)}$"))
    )


def test_reply_react_and_mention(server: Server, people: People) -> None:
    """Bob replies to a message and alice sees the quote and the thread; both
    react and see each other's reactions live; alice mentions bob, who sees it
    in his inbox and in the message; a deleted original is quoted as deleted."""
    alice = sign_in(people, server, "alice")
    bob = sign_in(people, server, "bob")
    open_conversation(alice, "Demo team")
    open_conversation(bob, "Demo team")
    original = "Morning all! Stand-up in 10 minutes?"

    stored(bob, original).hover()
    stored(bob, original).get_by_role("button", name="Reply to message").click()
    expect(bob.locator("#reply-bar")).to_contain_text(f"Replying to Alice Martin: {original}")
    send(bob, "I'm in")
    expect(bob.locator("#reply-bar")).to_be_hidden()
    reply = stored(alice, "I'm in")
    expect(reply.locator(".quote")).to_contain_text(original)
    expect(reply.locator(".quote .quote-sender")).to_have_text("You")
    replies_link = stored(alice, original).get_by_role("button", name="1 reply")
    expect(replies_link).to_be_visible()
    replies_link.click()
    thread = alice.locator("#thread")
    expect(thread.locator(".thread-item.parent .body")).to_have_text(original)
    expect(thread.locator(".thread-item.reply .body")).to_have_text(["I'm in"])
    thread.get_by_role("button", name="Close").click()

    reply.hover()
    reply.get_by_role("button", name="React to message").click()
    alice.get_by_role("button", name="React with 🎉").click()
    bob_chip = stored(bob, "I'm in").locator(".reaction")
    expect(bob_chip).to_have_text("🎉 1")
    expect(bob_chip).to_have_attribute("aria-pressed", "false")
    bob_chip.click()
    expect(bob_chip).to_have_text("🎉 2")
    expect(bob_chip).to_have_attribute("aria-pressed", "true")
    alice_chip = reply.locator(".reaction")
    expect(alice_chip).to_have_text("🎉 2")
    expect(alice_chip).to_have_attribute("aria-pressed", "true")  # still hers too
    alice_chip.click()
    expect(bob_chip).to_have_text("🎉 1")
    expect(bob_chip).to_have_attribute("aria-pressed", "true")
    expect(alice_chip).to_have_attribute("aria-pressed", "false")
    assert_readable(alice)
    screenshot(alice, "web-replies-reactions.png")

    # A mention, typed with the suggestion list, while bob looks elsewhere.
    open_conversation(bob, "Alice Martin")
    box = alice.get_by_label("Message", exact=True)
    box.press_sequentially("@bo")
    expect(alice.locator("#mention-list")).to_contain_text("@bob")
    box.press("Tab")
    expect(box).to_have_value("@bob ")
    box.press_sequentially("please tag the release")
    box.press("Enter")
    team = entry(bob, "Demo team")
    expect(team.locator(".mention-badge .count")).to_have_text("@1")
    team.click()
    mention = stored(bob, "@bob please tag the release")
    expect(mention.locator(".mention.me")).to_have_text("@bob")
    expect(mention).to_have_class(re.compile(r"\bmentions-me\b"))
    expect(team.locator(".mention-badge")).to_have_count(0)
    assert_readable(bob)

    # The original deleted: the reply quotes a deleted message, never its text.
    stored(alice, original).hover()
    stored(alice, original).get_by_role("button", name="Delete message").click()
    bob_reply = stored(bob, "I'm in")
    expect(bob_reply.locator(".quote")).to_contain_text("Deleted message")
    expect(bob_reply.locator(".quote")).not_to_contain_text("Stand-up")
