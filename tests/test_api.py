"""The HTTP API, through the real app on a fresh, migrated PostgreSQL database:
accounts and tokens, users, conversations, members, messages, read markers,
idempotent sends, the change log, reports, health and cursors."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from chatdb import migrate
from chatdb.api.app import create_app
from tests.api_support import PASSWORD, Account, Api, api_settings

PROBLEM = "application/problem+json"


def assert_problem(response: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code)
    return body


def make_user(api: Api, username: str) -> int:
    """A user without a password (cannot sign in): cheap, for members and lists."""
    response = api.client.post(
        "/v1/users",
        json={"username": username, "email": f"{username}@example.org"},
        headers=api.admin,
    )
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


def sign_in(api: Api, username: str, password: str = PASSWORD) -> httpx2.Response:
    return api.client.post("/v1/sessions", json={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def messages_url(conversation_id: int, seq: int | None = None) -> str:
    base = f"/v1/conversations/{conversation_id}/messages"
    return base if seq is None else f"{base}/{seq}"


def seqs(page: dict[str, Any]) -> list[int]:
    return [m["seq"] for m in page["messages"]]


# --- sessions ---------------------------------------------------------------------------


def test_sign_in_gives_a_token_and_only_hashes_are_stored(api: Api, fresh_engine: Engine) -> None:
    alice = api.account("alice")
    # Usernames are case-insensitive at sign-in.
    response = sign_in(api, "ALICE")
    assert response.status_code == 201, response.text
    session = response.json()
    assert session["token_type"] == "bearer"
    assert session["user_id"] == alice.id
    token = session["token"]
    assert len(token) >= 43  # 256 random bits, URL-safe base64
    assert token != alice.token

    me = api.client.get("/v1/me", headers=bearer(token))
    assert (me.status_code, me.json()["username"]) == (200, "alice")

    with fresh_engine.connect() as connection:
        password_hash = connection.execute(
            text("SELECT password_hash FROM users WHERE id = :id"), {"id": alice.id}
        ).scalar_one()
        stored = connection.execute(
            text("SELECT token_hash FROM auth_tokens WHERE user_id = :id ORDER BY id"),
            {"id": alice.id},
        ).scalars()
        digests = [bytes(d) for d in stored]
    assert password_hash.startswith("$argon2id$")
    assert PASSWORD not in password_hash
    assert digests == [hashlib.sha256(t.encode()).digest() for t in (alice.token, token)]


def test_wrong_password_and_unknown_username_get_the_same_401(api: Api) -> None:
    api.account("alice")
    make_user(api, "nopassword")
    wrong = sign_in(api, "alice", "not the password")
    unknown = sign_in(api, "nobody")
    without_password = sign_in(api, "nopassword")
    body = assert_problem(wrong, 401, "bad_credentials")
    assert "token" not in body
    for other in (unknown, without_password):
        assert other.status_code == 401
        assert other.json() == wrong.json()


def test_sign_out_revokes_only_the_token_used(api: Api) -> None:
    alice = api.account("alice")
    second = sign_in(api, "alice").json()["token"]

    assert api.client.delete("/v1/sessions/current", headers=alice.auth).status_code == 204
    refused = api.client.get("/v1/me", headers=alice.auth)
    assert_problem(refused, 401, "unauthenticated")
    assert refused.headers["www-authenticate"] == "Bearer"
    # Signing out again with the revoked token is refused the same way.
    assert_problem(
        api.client.delete("/v1/sessions/current", headers=alice.auth), 401, "unauthenticated"
    )
    # The other session of the same user lives on.
    assert api.client.get("/v1/me", headers=bearer(second)).status_code == 200
    # The admin key is not a session.
    assert_problem(
        api.client.delete("/v1/sessions/current", headers=api.admin), 403, "user_required"
    )


def test_an_expired_token_is_refused(api: Api, fresh_engine: Engine) -> None:
    alice = api.account("alice")
    assert api.client.get("/v1/me", headers=alice.auth).status_code == 200
    with fresh_engine.begin() as connection:
        expired = connection.execute(
            text(
                "UPDATE auth_tokens SET expires_at = now() - interval '1 second' "
                "WHERE user_id = :id RETURNING id"
            ),
            {"id": alice.id},
        ).all()
    assert len(expired) == 1
    assert_problem(api.client.get("/v1/me", headers=alice.auth), 401, "unauthenticated")
    # Signing in again gives a live token.
    fresh = sign_in(api, "alice").json()["token"]
    assert api.client.get("/v1/me", headers=bearer(fresh)).status_code == 200


@pytest.fixture
def short_lived_api(fresh_engine: Engine) -> Iterator[Api]:
    app = create_app(fresh_engine, api_settings(token_lifetime_hours=2))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client)


def test_token_lifetime_comes_from_the_settings(short_lived_api: Api, fresh_engine: Engine) -> None:
    alice = short_lived_api.account("alice")
    expires_at = datetime.fromisoformat(sign_in(short_lived_api, "alice").json()["expires_at"])
    with fresh_engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT created_at, expires_at FROM auth_tokens "
                "WHERE user_id = :id ORDER BY id DESC LIMIT 1"
            ),
            {"id": alice.id},
        ).one()
    assert row.expires_at == expires_at
    # Two hours after the token was issued (give or take the request itself).
    assert abs(row.expires_at - row.created_at - timedelta(hours=2)) < timedelta(minutes=1)


# --- users ----------------------------------------------------------------------------------


def test_me_is_the_callers_own_account(api: Api) -> None:
    alice = api.account("alice")
    me = api.client.get("/v1/me", headers=alice.auth)
    assert me.status_code == 200
    assert {k: me.json()[k] for k in ("id", "username", "email")} == {
        "id": alice.id,
        "username": "alice",
        "email": "alice@example.org",
    }
    assert_problem(api.client.get("/v1/me", headers=api.admin), 403, "user_required")


def test_users_crud_with_the_admin_key(api: Api) -> None:
    alice = api.account("alice")
    created = api.client.post(
        "/v1/users",
        json={"username": "carol", "email": "carol@example.org", "display_name": "Carol"},
        headers=api.admin,
    )
    assert created.status_code == 201, created.text
    carol = created.json()
    assert (carol["username"], carol["display_name"], carol["email"]) == (
        "carol",
        "Carol",
        "carol@example.org",
    )
    url = f"/v1/users/{carol['id']}"

    assert api.client.get(url, headers=api.admin).json() == carol
    patched = api.client.patch(url, json={"display_name": "Caroline"}, headers=api.admin)
    assert (patched.status_code, patched.json()["display_name"]) == (200, "Caroline")

    taken = api.client.post(
        "/v1/users", json={"username": "CAROL", "email": "other@example.org"}, headers=api.admin
    )
    assert_problem(taken, 409, "conflict")
    email_taken = api.client.post(
        "/v1/users", json={"username": "carla", "email": "Carol@example.org"}, headers=api.admin
    )
    assert_problem(email_taken, 409, "conflict")
    bad_name = api.client.post(
        "/v1/users", json={"username": "c d", "email": "cd@example.org"}, headers=api.admin
    )
    assert_problem(bad_name, 422, "invalid")

    as_user = api.client.post(
        "/v1/users", json={"username": "eve", "email": "eve@example.org"}, headers=alice.auth
    )
    assert_problem(as_user, 403, "admin_required")
    assert_problem(api.client.delete(url, headers=alice.auth), 403, "admin_required")

    assert api.client.delete(url, headers=api.admin).status_code == 204
    assert_problem(api.client.get(url, headers=api.admin), 404, "not_found")
    assert_problem(api.client.delete(url, headers=api.admin), 404, "not_found")


def test_a_user_changes_their_own_account_and_nobody_elses(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")

    mine = api.client.patch(
        f"/v1/users/{alice.id}", json={"display_name": "Alice A."}, headers=alice.auth
    )
    assert mine.status_code == 200
    assert (mine.json()["display_name"], mine.json()["email"]) == ("Alice A.", "alice@example.org")

    theirs = api.client.patch(
        f"/v1/users/{bob.id}", json={"display_name": "Bobby"}, headers=alice.auth
    )
    assert_problem(theirs, 403, "forbidden")
    assert api.client.get(f"/v1/users/{bob.id}", headers=bob.auth).json()["display_name"] is None

    taken = api.client.patch(f"/v1/users/{alice.id}", json={"username": "BOB"}, headers=alice.auth)
    assert_problem(taken, 409, "conflict")
    nothing = api.client.patch(f"/v1/users/{alice.id}", json={}, headers=alice.auth)
    assert_problem(nothing, 422, "invalid")

    new_password = "a new and longer password"
    changed = api.client.patch(
        f"/v1/users/{alice.id}", json={"password": new_password}, headers=alice.auth
    )
    assert changed.status_code == 200
    assert sign_in(api, "alice").status_code == 401
    assert sign_in(api, "alice", new_password).status_code == 201


def test_email_is_shown_only_to_its_owner_and_the_admin(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    url = f"/v1/users/{bob.id}"
    seen_by = {
        "other": api.client.get(url, headers=alice.auth).json(),
        "self": api.client.get(url, headers=bob.auth).json(),
        "admin": api.client.get(url, headers=api.admin).json(),
    }
    assert seen_by["other"]["email"] is None
    assert seen_by["other"]["username"] == "bob"
    assert seen_by["self"]["email"] == seen_by["admin"]["email"] == "bob@example.org"
    assert_problem(api.client.get("/v1/users/999999", headers=alice.auth), 404, "not_found")


def test_deleting_a_user_keeps_their_messages_and_ends_their_sessions(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    api.send(bob, conversation, "from bob")

    assert api.client.delete(f"/v1/users/{bob.id}", headers=api.admin).status_code == 204
    assert_problem(api.client.get("/v1/me", headers=bob.auth), 401, "unauthenticated")
    [message] = api.client.get(messages_url(conversation), headers=alice.auth).json()["messages"]
    assert (message["sender_id"], message["body"]) == (None, "from bob")
    members = api.client.get(f"/v1/conversations/{conversation}/members", headers=alice.auth)
    assert [m["user_id"] for m in members.json()] == [alice.id]


# --- conversations -----------------------------------------------------------------------------


def test_create_a_group_with_members(api: Api) -> None:
    alice = api.account("alice")
    bob, carol = make_user(api, "bob"), make_user(api, "carol")
    created = api.client.post(
        "/v1/conversations",
        json={"title": "Team", "member_ids": [carol, bob, bob]},
        headers=alice.auth,
    )
    assert created.status_code == 201, created.text
    group = created.json()
    assert (group["kind"], group["title"], group["last_seq"]) == ("group", "Team", 0)
    members = api.client.get(f"/v1/conversations/{group['id']}/members", headers=alice.auth)
    assert [(m["user_id"], m["role"]) for m in members.json()] == [
        (alice.id, "owner"),
        (bob, "member"),
        (carol, "member"),
    ]
    assert api.client.get(f"/v1/conversations/{group['id']}", headers=alice.auth).json() == group

    unknown = api.client.post(
        "/v1/conversations", json={"title": "x", "member_ids": [bob, 999999]}, headers=alice.auth
    )
    assert_problem(unknown, 404, "not_found")
    inbox = api.client.get("/v1/conversations", headers=alice.auth).json()["entries"]
    assert [e["conversation_id"] for e in inbox] == [group["id"]]


def test_a_direct_conversation_is_created_once(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    body = {"kind": "direct", "member_ids": [bob.id]}
    first = api.client.post("/v1/conversations", json=body, headers=alice.auth)
    assert first.status_code == 201, first.text
    again = api.client.post("/v1/conversations", json=body, headers=alice.auth)
    other_side = api.client.post(
        "/v1/conversations", json={"kind": "direct", "member_ids": [alice.id]}, headers=bob.auth
    )
    assert again.status_code == other_side.status_code == 200
    assert first.json()["id"] == again.json()["id"] == other_side.json()["id"]
    assert first.json()["direct_user_ids"] == sorted([alice.id, bob.id])
    assert first.json()["kind"] == "direct"

    carol = make_user(api, "carol")
    for invalid in (
        {"kind": "direct", "member_ids": [bob.id, carol]},
        {"kind": "direct", "member_ids": [alice.id]},
        {"kind": "direct", "member_ids": []},
        {"kind": "direct", "member_ids": [bob.id], "title": "us"},
    ):
        response = api.client.post("/v1/conversations", json=invalid, headers=alice.auth)
        assert_problem(response, 422, "invalid")
    add = api.client.post(
        f"/v1/conversations/{first.json()['id']}/members",
        json={"user_id": carol},
        headers=alice.auth,
    )
    assert_problem(add, 422, "invalid")


def test_inbox_is_newest_activity_first_with_unread_counts(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    one, two, three = (api.group(alice, bob, title=t) for t in ("one", "two", "three"))
    api.send(alice, one, "first in one")
    api.send(alice, two, "first in two")
    api.send(alice, three, "first in three")
    last = api.send(alice, one, "second in one")

    entries = api.client.get("/v1/conversations", headers=bob.auth).json()["entries"]
    assert [(e["conversation_id"], e["unread_count"]) for e in entries] == [
        (one, 2),
        (three, 1),
        (two, 1),
    ]
    top = entries[0]
    assert (top["title"], top["last_seq"], top["last_read_seq"], top["role"]) == (
        "one",
        2,
        0,
        "member",
    )
    assert (top["last_message_seq"], top["last_message_body"]) == (2, "second in one")
    assert (top["last_message_sender_id"], top["last_message_sender_name"]) == (alice.id, "alice")
    assert top["last_message_deleted"] is False
    # The sender has read their own messages.
    mine = api.client.get("/v1/conversations", headers=alice.auth).json()["entries"]
    assert [e["unread_count"] for e in mine] == [0, 0, 0]

    # Reading clears the count; a deleted last message shows as deleted.
    api.client.post(f"/v1/conversations/{one}/read", json={"seq": 2}, headers=bob.auth)
    api.client.delete(messages_url(one, last["seq"]), headers=alice.auth)
    top = api.client.get("/v1/conversations", headers=bob.auth).json()["entries"][0]
    assert (top["conversation_id"], top["unread_count"]) == (one, 0)
    assert (top["last_message_body"], top["last_message_deleted"]) == (None, True)


def test_inbox_cursor_pages_walk_every_entry_exactly_once(api: Api) -> None:
    alice = api.account("alice")
    groups = [api.group(alice, title=f"g{i}") for i in range(8)]
    for conversation in (groups[2], groups[5], groups[0]):
        api.send(alice, conversation, "bump")
    everything = api.client.get("/v1/conversations?limit=200", headers=alice.auth).json()
    assert everything["next_cursor"] is None
    expected = [e["conversation_id"] for e in everything["entries"]]
    assert expected[:3] == [groups[0], groups[5], groups[2]]
    assert sorted(expected) == sorted(groups)

    walked: list[int] = []
    sizes: list[int] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = api.client.get("/v1/conversations", params=params, headers=alice.auth).json()
        walked += [e["conversation_id"] for e in page["entries"]]
        sizes.append(len(page["entries"]))
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert walked == expected
    assert sizes == [3, 3, 2]


def test_owners_rename_and_delete_a_group(api: Api) -> None:
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    conversation = api.group(alice, bob, title="before")
    url = f"/v1/conversations/{conversation}"

    renamed = api.client.patch(url, json={"title": "after"}, headers=alice.auth)
    assert (renamed.status_code, renamed.json()["title"]) == (200, "after")
    assert_problem(
        api.client.patch(url, json={"title": "mine"}, headers=bob.auth), 403, "forbidden"
    )
    assert_problem(api.client.patch(url, json={"title": "x"}, headers=carol.auth), 404, "not_found")
    too_long = api.client.patch(url, json={"title": "t" * 201}, headers=alice.auth)
    assert_problem(too_long, 422, "invalid_request")
    assert api.client.get(url, headers=bob.auth).json()["title"] == "after"

    assert_problem(api.client.delete(url, headers=bob.auth), 403, "forbidden")
    assert_problem(api.client.delete(url, headers=carol.auth), 404, "not_found")
    assert api.client.delete(url, headers=alice.auth).status_code == 204
    for who in (alice, bob):
        assert_problem(api.client.get(url, headers=who.auth), 404, "not_found")
    assert api.client.get("/v1/conversations", headers=bob.auth).json()["entries"] == []


# --- members -----------------------------------------------------------------------------------


def test_members_are_listed_in_keyset_pages(api: Api) -> None:
    alice = api.account("alice")
    others = [make_user(api, f"user{i}") for i in range(4)]
    conversation = api.group(alice, *(Account(i, "", "") for i in others))
    url = f"/v1/conversations/{conversation}/members"

    walked: list[int] = []
    after = 0
    while True:
        page = api.client.get(url, params={"limit": 2, "after": after}, headers=alice.auth).json()
        if not page:
            break
        assert len(page) <= 2
        walked += [m["user_id"] for m in page]
        after = page[-1]["user_id"]
    assert walked == sorted([alice.id, *others])


def test_owners_add_members_and_plain_members_cannot(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    carol, dave = make_user(api, "carol"), make_user(api, "dave")
    conversation = api.group(alice, bob)
    api.send(alice, conversation, "one")
    api.send(alice, conversation, "two")
    url = f"/v1/conversations/{conversation}/members"

    added = api.client.post(url, json={"user_id": carol}, headers=alice.auth)
    assert added.status_code == 201, added.text
    # A new member starts with the history before they joined marked read.
    assert (added.json()["user_id"], added.json()["role"], added.json()["last_read_seq"]) == (
        carol,
        "member",
        2,
    )
    assert_problem(api.client.post(url, json={"user_id": dave}, headers=bob.auth), 403, "forbidden")
    assert_problem(
        api.client.post(url, json={"user_id": carol}, headers=alice.auth), 409, "conflict"
    )
    missing = api.client.post(url, json={"user_id": 999999}, headers=alice.auth)
    assert_problem(missing, 404, "not_found")
    as_owner = api.client.post(url, json={"user_id": dave, "role": "owner"}, headers=alice.auth)
    assert (as_owner.status_code, as_owner.json()["role"]) == (201, "owner")
    roles = {m["user_id"]: m["role"] for m in api.client.get(url, headers=bob.auth).json()}
    assert roles == {alice.id: "owner", bob.id: "member", carol: "member", dave: "owner"}


def test_role_changes_leaving_and_removing(api: Api) -> None:
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    conversation = api.group(alice, bob, carol)
    url = f"/v1/conversations/{conversation}/members"

    promoted = api.client.patch(f"{url}/{bob.id}", json={"role": "owner"}, headers=alice.auth)
    assert (promoted.status_code, promoted.json()["role"]) == (200, "owner")
    # A plain member cannot change roles, not even their own.
    for target in (alice.id, carol.id):
        refused = api.client.patch(f"{url}/{target}", json={"role": "owner"}, headers=carol.auth)
        assert_problem(refused, 403, "forbidden")
    demoted = api.client.patch(f"{url}/{alice.id}", json={"role": "member"}, headers=alice.auth)
    assert (demoted.status_code, demoted.json()["role"]) == (200, "member")
    # The last owner cannot step down.
    last = api.client.patch(f"{url}/{bob.id}", json={"role": "member"}, headers=bob.auth)
    assert_problem(last, 422, "invalid")

    # Leaving is deleting yourself.
    assert api.client.delete(f"{url}/{carol.id}", headers=carol.auth).status_code == 204
    assert_problem(
        api.client.get(f"/v1/conversations/{conversation}", headers=carol.auth), 404, "not_found"
    )
    # A plain member cannot remove others; an owner can.
    assert_problem(api.client.delete(f"{url}/{bob.id}", headers=alice.auth), 403, "forbidden")
    assert api.client.delete(f"{url}/{alice.id}", headers=bob.auth).status_code == 204
    assert_problem(api.client.delete(f"{url}/{alice.id}", headers=bob.auth), 404, "not_found")
    assert [m["user_id"] for m in api.client.get(url, headers=bob.auth).json()] == [bob.id]


# --- messages --------------------------------------------------------------------------------


def test_send_answers_201_with_the_location_of_the_message(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    sent = api.client.post(messages_url(conversation), json={"body": "hello"}, headers=alice.auth)
    assert sent.status_code == 201, sent.text
    message = sent.json()
    assert (message["seq"], message["body"], message["sender_id"], message["sender_name"]) == (
        1,
        "hello",
        alice.id,
        "alice",
    )
    assert message["edited_at"] is None
    assert message["deleted_at"] is None
    assert sent.headers["location"] == messages_url(conversation, 1)
    fetched = api.client.get(sent.headers["location"], headers=bob.auth)
    assert (fetched.status_code, fetched.json()) == (200, message)
    assert_problem(
        api.client.get(messages_url(conversation, 2), headers=bob.auth), 404, "not_found"
    )
    assert_problem(
        api.client.post(messages_url(conversation), json={"body": "  "}, headers=alice.auth),
        422,
        "invalid",
    )


def test_message_pages_newest_first_then_before_and_after(api: Api) -> None:
    alice = api.account("alice")
    conversation = api.group(alice)
    for i in range(1, 6):
        api.send(alice, conversation, f"m{i}")
    url = messages_url(conversation)

    def page(**params: Any) -> dict[str, Any]:
        response = api.client.get(url, params=params, headers=alice.auth)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    everything = page()
    assert seqs(everything) == [1, 2, 3, 4, 5]
    assert [m["body"] for m in everything["messages"]] == ["m1", "m2", "m3", "m4", "m5"]
    assert (everything["has_older"], everything["has_newer"]) == (False, False)
    newest = page(limit=2)
    assert (seqs(newest), newest["has_older"], newest["has_newer"]) == ([4, 5], True, False)
    older = page(before=4, limit=2)
    assert (seqs(older), older["has_older"], older["has_newer"]) == ([2, 3], True, True)
    oldest = page(before=2, limit=2)
    assert (seqs(oldest), oldest["has_older"], oldest["has_newer"]) == ([1], False, True)
    newer = page(after=2, limit=2)
    assert (seqs(newer), newer["has_older"], newer["has_newer"]) == ([3, 4], True, True)
    rest = page(after=4, limit=2)
    assert (seqs(rest), rest["has_newer"]) == ([5], False)
    assert seqs(page(limit=200)) == [1, 2, 3, 4, 5]

    for params in ({"limit": 201}, {"limit": 0}, {"before": 3, "after": 1}):
        response = api.client.get(url, params=params, headers=alice.auth)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == PROBLEM


def test_only_the_author_edits_a_message(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    mine = api.send(alice, conversation, "typo")
    theirs = api.send(bob, conversation, "bob's")

    edited = api.client.patch(
        messages_url(conversation, mine["seq"]), json={"body": "fixed"}, headers=alice.auth
    )
    assert edited.status_code == 200
    assert edited.json()["body"] == "fixed"
    assert edited.json()["edited_at"] is not None
    assert api.client.get(messages_url(conversation, 1), headers=bob.auth).json()["body"] == "fixed"

    # Not even an owner edits someone else's message, and the admin key is no author.
    for who, headers, code in (
        ("member", bob.auth, "forbidden"),
        ("admin", api.admin, "user_required"),
    ):
        response = api.client.patch(
            messages_url(conversation, mine["seq"]), json={"body": who}, headers=headers
        )
        assert_problem(response, 403, code)
    as_owner = api.client.patch(
        messages_url(conversation, theirs["seq"]), json={"body": "owner"}, headers=alice.auth
    )
    assert_problem(as_owner, 403, "forbidden")
    assert api.client.get(messages_url(conversation, 2), headers=bob.auth).json()["body"] == "bob's"


def test_author_or_owner_deletes_and_restores(api: Api) -> None:
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    conversation = api.group(alice, bob, carol)
    by_bob = api.send(bob, conversation, "bob's")["seq"]
    by_carol = api.send(carol, conversation, "carol's")["seq"]

    deleted = api.client.delete(messages_url(conversation, by_bob), headers=bob.auth)
    assert deleted.status_code == 200
    assert deleted.json()["body"] is None
    assert deleted.json()["deleted_at"] is not None
    seen = api.client.get(messages_url(conversation, by_bob), headers=carol.auth).json()
    assert (seen["body"], seen["deleted_at"]) == (None, deleted.json()["deleted_at"])
    listed = api.client.get(messages_url(conversation), headers=carol.auth).json()["messages"]
    assert [(m["seq"], m["body"]) for m in listed] == [(by_bob, None), (by_carol, "carol's")]
    # A deleted message cannot be edited until restored.
    assert_problem(
        api.client.patch(messages_url(conversation, by_bob), json={"body": "x"}, headers=bob.auth),
        422,
        "invalid",
    )

    # A plain member who is not the author can do neither.
    for action in ("delete", "restore"):
        path = messages_url(conversation, by_bob) + ("/restore" if action == "restore" else "")
        method = "POST" if action == "restore" else "DELETE"
        assert_problem(api.client.request(method, path, headers=carol.auth), 403, "forbidden")
    # An owner can delete someone else's message.
    by_owner = api.client.delete(messages_url(conversation, by_carol), headers=alice.auth)
    assert (by_owner.status_code, by_owner.json()["body"]) == (200, None)

    restored = api.client.post(messages_url(conversation, by_bob) + "/restore", headers=bob.auth)
    assert (restored.status_code, restored.json()["body"], restored.json()["deleted_at"]) == (
        200,
        "bob's",
        None,
    )
    restored = api.client.post(
        messages_url(conversation, by_carol) + "/restore", headers=carol.auth
    )
    assert (restored.status_code, restored.json()["body"]) == (200, "carol's")


def test_the_read_marker_never_moves_backwards(api: Api) -> None:
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    conversation = api.group(alice, bob)
    for i in range(5):
        api.send(alice, conversation, f"m{i}")
    url = f"/v1/conversations/{conversation}/read"

    def read(seq: int) -> dict[str, Any]:
        response = api.client.post(url, json={"seq": seq}, headers=bob.auth)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    assert read(3) == {"last_read_seq": 3, "unread_count": 2}
    assert read(1) == {"last_read_seq": 3, "unread_count": 2}
    assert read(999) == {"last_read_seq": 5, "unread_count": 0}  # not past the last message
    assert read(0) == {"last_read_seq": 5, "unread_count": 0}
    api.send(alice, conversation, "m5")
    assert read(0) == {"last_read_seq": 5, "unread_count": 1}
    assert_problem(api.client.post(url, json={"seq": 1}, headers=carol.auth), 404, "not_found")
    assert_problem(api.client.post(url, json={"seq": -1}, headers=bob.auth), 422, "invalid_request")


# --- idempotent sends ----------------------------------------------------------------------------


def test_replaying_an_idempotency_key_returns_the_original_message(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    url = messages_url(conversation)
    key = {**alice.auth, "Idempotency-Key": "send-1"}

    first = api.client.post(url, json={"body": "hello"}, headers=key)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    replay = api.client.post(url, json={"body": "hello"}, headers=key)
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert replay.headers["location"] == first.headers["location"]

    conflict = api.client.post(url, json={"body": "something else"}, headers=key)
    assert_problem(conflict, 409, "conflict")
    # Keys belong to their sender: bob's "send-1" is another message.
    bobs = api.client.post(
        url, json={"body": "hello"}, headers={**bob.auth, "Idempotency-Key": "send-1"}
    )
    assert (bobs.status_code, bobs.json()["seq"]) == (201, 2)
    # Nothing was created or numbered by the replays.
    assert seqs(api.client.get(url, headers=alice.auth).json()) == [1, 2]


def test_client_msg_id_in_the_body_works_like_the_header(api: Api) -> None:
    alice = api.account("alice")
    conversation = api.group(alice)
    url = messages_url(conversation)
    body = {"body": "hi", "client_msg_id": "c-1"}

    first = api.client.post(url, json=body, headers=alice.auth)
    replay = api.client.post(url, json=body, headers=alice.auth)
    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["seq"] == first.json()["seq"] == 1
    # The header with the same key names the same message.
    by_header = api.client.post(
        url, json={"body": "hi"}, headers={**alice.auth, "Idempotency-Key": "c-1"}
    )
    assert (by_header.status_code, by_header.json()["seq"]) == (200, 1)
    different = api.client.post(
        url, json={"body": "bye", "client_msg_id": "c-1"}, headers=alice.auth
    )
    assert_problem(different, 409, "conflict")
    mismatch = api.client.post(
        url,
        json={"body": "hi", "client_msg_id": "c-2"},
        headers={**alice.auth, "Idempotency-Key": "c-3"},
    )
    assert_problem(mismatch, 422, "invalid")
    assert api.send(alice, conversation, "next")["seq"] == 2


# --- the change log ------------------------------------------------------------------------------


def test_changes_since_lists_every_change_in_order_without_gaps(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    carol = make_user(api, "carol")
    conversation = api.group(alice, bob)  # member.added for alice and bob
    base = f"/v1/conversations/{conversation}"
    message = messages_url(conversation, 1)
    steps = [
        ("POST", messages_url(conversation), {"body": "v1"}, alice),
        ("PATCH", message, {"body": "v2"}, alice),
        ("DELETE", message, None, alice),
        ("POST", message + "/restore", None, alice),
        ("POST", f"{base}/members", {"user_id": carol}, alice),
        ("PATCH", f"{base}/members/{bob.id}", {"role": "owner"}, alice),
        ("POST", f"{base}/read", {"seq": 1}, bob),
        ("DELETE", f"{base}/members/{carol}", None, bob),
        ("PATCH", base, {"title": "renamed"}, bob),
    ]
    for method, path, body, who in steps:
        response = api.client.request(method, path, json=body, headers=who.auth)
        assert response.status_code < 300, (method, path, response.text)

    page = api.client.get(f"{base}/changes", headers=bob.auth).json()
    changes = page["changes"]
    assert page["has_more"] is False
    assert [c["kind"] for c in changes] == [
        "member.added",
        "member.added",
        "message.created",
        "message.edited",
        "message.deleted",
        "message.restored",
        "member.added",
        "member.role",
        "read",
        "member.removed",
        "conversation.renamed",
    ]
    assert [c["change_seq"] for c in changes] == list(range(1, len(changes) + 1))
    assert [c["id"] for c in changes] == sorted(c["id"] for c in changes)
    assert {c["user_id"] for c in changes[:2]} == {alice.id, bob.id}
    assert (changes[6]["user_id"], changes[9]["user_id"]) == (carol, carol)
    assert (changes[8]["user_id"], changes[8]["message_seq"]) == (bob.id, 1)
    # Message changes carry the message as it is now.
    assert all(c["message"]["body"] == "v2" for c in changes[2:6])
    assert changes[10]["actor_id"] == bob.id
    last = api.client.get(base, headers=bob.auth).json()["last_change_seq"]
    assert last == len(changes)

    since = api.client.get(f"{base}/changes", params={"since": 5}, headers=alice.auth).json()
    assert [c["change_seq"] for c in since["changes"]] == list(range(6, len(changes) + 1))
    assert api.client.get(f"{base}/changes?since={last}", headers=bob.auth).json() == {
        "changes": [],
        "has_more": False,
    }

    # Small pages, resumed from the last change_seq seen, give each change once.
    walked: list[int] = []
    position = 0
    while True:
        page = api.client.get(
            f"{base}/changes", params={"since": position, "limit": 4}, headers=bob.auth
        ).json()
        walked += [c["change_seq"] for c in page["changes"]]
        if not page["has_more"]:
            break
        position = page["changes"][-1]["change_seq"]
    assert walked == list(range(1, len(changes) + 1))


# --- reports ---------------------------------------------------------------------------------


def test_activity_report_counts_messages_per_user_per_local_day(
    api: Api, fresh_engine: Engine
) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    for body in ("a1", "a2", "a3"):
        api.send(alice, conversation, body)
    api.send(bob, conversation, "b1")
    # Fixed send times, so the days do not depend on when the test runs.
    stamps = {
        1: "2024-03-10 23:30:00+00",
        2: "2024-03-10 23:45:00+00",
        3: "2024-03-11 12:00:00+00",
        4: "2024-03-10 10:00:00+00",
    }
    with fresh_engine.begin() as connection:
        for seq, stamp in stamps.items():
            connection.execute(
                text(
                    "UPDATE messages SET created_at = :at WHERE conversation_id = :c AND seq = :s"
                ),
                {"at": stamp, "c": conversation, "s": seq},
            )

    def report(**params: Any) -> list[tuple[str, str, int]]:
        response = api.client.get("/v1/reports/activity", params=params, headers=api.admin)
        assert response.status_code == 200, response.text
        return [(r["day"], r["username"], r["message_count"]) for r in response.json()]

    days = {"from": "2024-03-10", "to": "2024-03-11"}
    assert report(**days) == [
        ("2024-03-10", "alice", 2),
        ("2024-03-10", "bob", 1),
        ("2024-03-11", "alice", 1),
    ]
    # In Tokyo (UTC+9) alice's late messages fall on the 11th.
    assert report(**days, tz="Asia/Tokyo") == [
        ("2024-03-10", "bob", 1),
        ("2024-03-11", "alice", 3),
    ]
    assert report(**days, user_id=bob.id) == [("2024-03-10", "bob", 1)]
    assert report(**{"from": "2024-03-12", "to": "2024-03-12"}) == []

    for params in (
        {**days, "tz": "Mars/Olympus_Mons"},
        {"from": "2024-03-11", "to": "2024-03-10"},
        {"from": "2023-01-01", "to": "2024-03-10"},
    ):
        response = api.client.get("/v1/reports/activity", params=params, headers=api.admin)
        assert_problem(response, 422, "invalid")
    assert_problem(
        api.client.get("/v1/reports/activity", params=days, headers=alice.auth),
        403,
        "admin_required",
    )


def test_inactive_report_pages_with_a_cursor(api: Api, fresh_engine: Engine) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    quiet = [make_user(api, f"quiet{i}") for i in range(3)]
    conversation = api.group(alice, bob)
    api.send(alice, conversation, "recent")
    api.send(bob, conversation, "long ago")
    with fresh_engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE messages SET created_at = now() - interval '60 days' "
                "WHERE conversation_id = :c AND sender_id = :u"
            ),
            {"c": conversation, "u": bob.id},
        )

    walked: list[dict[str, Any]] = []
    params: dict[str, Any] = {"days": 30, "limit": 2}
    pages = 0
    while True:
        response = api.client.get("/v1/reports/inactive", params=params, headers=api.admin)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["users"]) <= 2
        walked += page["users"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert [u["id"] for u in walked] == [bob.id, *quiet]
    assert pages == 2
    assert walked[0]["last_message_at"] is not None
    assert all(u["last_message_at"] is None for u in walked[1:])

    longer = api.client.get("/v1/reports/inactive?days=90", headers=api.admin).json()
    assert [u["id"] for u in longer["users"]] == quiet
    assert_problem(
        api.client.get("/v1/reports/inactive", headers=alice.auth), 403, "admin_required"
    )


# --- health, documentation, cursors ---------------------------------------------------------------


def test_health_and_readiness(api: Api, fresh_engine: Engine) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "schema_revision": None}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "schema_revision": migrate.head_revision()}

    with fresh_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    outdated = api.client.get("/readyz")
    assert_problem(outdated, 503, "schema_outdated")
    assert api.client.get("/healthz").status_code == 200


def test_the_openapi_document_describes_the_api(api: Api) -> None:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "chatdb"
    for path in (
        "/v1/sessions",
        "/v1/me",
        "/v1/conversations",
        "/v1/conversations/{conversation_id}/messages/{seq}",
        "/v1/conversations/{conversation_id}/changes",
        "/v1/reports/inactive",
    ):
        assert path in document["paths"], path
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    docs = api.client.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]


def _tamper_payload(cursor: str, change: Any) -> str:
    """The cursor with its payload rewritten and the old signature kept."""
    data, signature = cursor.split(".", 1)
    kind, value = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    forged = json.dumps([kind, change(value)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(forged).decode().rstrip("=") + "." + signature


def _flip_last(cursor: str) -> str:
    return cursor[:-1] + ("A" if cursor[-1] != "A" else "B")


def test_tampered_cursors_are_400(api: Api) -> None:
    alice = api.account("alice")
    for i in range(3):
        api.group(alice, title=f"g{i}")
        make_user(api, f"quiet{i}")
    inbox_cursor = api.client.get("/v1/conversations?limit=1", headers=alice.auth).json()[
        "next_cursor"
    ]
    inactive_cursor = api.client.get("/v1/reports/inactive?limit=1", headers=api.admin).json()[
        "next_cursor"
    ]
    assert inbox_cursor
    assert inactive_cursor
    # The real cursors work.
    assert (
        api.client.get(
            "/v1/conversations", params={"cursor": inbox_cursor}, headers=alice.auth
        ).status_code
        == 200
    )
    assert (
        api.client.get(
            "/v1/reports/inactive", params={"cursor": inactive_cursor}, headers=api.admin
        ).status_code
        == 200
    )

    def broken(cursor: str) -> list[str]:
        return [_flip_last(cursor), "garbage", "", ".", "no-signature", "%%%.%%%", "é.é", "a" * 500]

    cases = [
        ("/v1/conversations", alice.auth, cursor)
        for cursor in [
            *broken(inbox_cursor),
            _tamper_payload(inbox_cursor, lambda v: [v[0], v[1] + 1]),
            inactive_cursor,  # a cursor of another list
        ]
    ] + [
        ("/v1/reports/inactive", api.admin, cursor)
        for cursor in [
            *broken(inactive_cursor),
            _tamper_payload(inactive_cursor, lambda v: v + 1),
            inbox_cursor,
        ]
    ]
    for path, headers, cursor in cases:
        response = api.client.get(path, params={"cursor": cursor}, headers=headers)
        assert_problem(response, 400, "bad_cursor")
