"""Replies, reactions and mentions over HTTP: the API, the change feed and the live stream."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest

from tests.api_support import Account, Api
from tests.test_events import Listener, listen, server, web  # noqa: F401  (fixtures)


def reactions_url(conversation: int, seq: int, emoji: str) -> str:
    return f"/v1/conversations/{conversation}/messages/{seq}/reactions/{quote(emoji)}"


def test_a_reply_is_sent_quoted_and_listed_in_its_thread(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    base = f"/v1/conversations/{conversation}/messages"
    root = api.send(alice, conversation, "who's in for lunch?")
    replies = []
    for i in range(5):
        sent = api.client.post(
            base, json={"body": f"me {i}", "reply_to_seq": root["seq"]}, headers=bob.auth
        )
        assert sent.status_code == 201, sent.text
        replies.append(sent.json())
    assert replies[0]["reply_to"] == {
        "seq": root["seq"],
        "sender_id": alice.id,
        "sender_name": "alice",
        "body": "who's in for lunch?",
        "deleted": False,
    }
    page = api.client.get(base, headers=alice.auth).json()
    assert page["messages"][0]["reply_count"] == 5
    assert [m["reply_to_seq"] for m in page["messages"]] == [None] + [root["seq"]] * 5

    thread = api.client.get(
        f"{base}/{root['seq']}/replies", params={"limit": 3}, headers=alice.auth
    ).json()
    assert thread["parent"]["seq"] == root["seq"]
    assert [m["body"] for m in thread["replies"]] == ["me 0", "me 1", "me 2"]
    assert thread["has_more"]
    rest = api.client.get(
        f"{base}/{root['seq']}/replies",
        params={"after": thread["replies"][-1]["seq"]},
        headers=alice.auth,
    ).json()
    assert [m["body"] for m in rest["replies"]] == ["me 3", "me 4"]
    assert not rest["has_more"]

    # The original deleted: replies quote a "deleted message", never its text.
    deleted = api.client.delete(f"{base}/{root['seq']}", headers=alice.auth)
    assert deleted.status_code == 200
    page = api.client.get(base, headers=bob.auth)
    assert "lunch" not in page.text
    assert page.json()["messages"][1]["reply_to"]["deleted"] is True


@pytest.mark.parametrize(
    ("reply_to", "status"), [(99, 404), (0, 422), (-1, 422), ("x", 422), (2**63, 422)]
)
def test_a_reply_to_nothing_is_refused_and_sends_nothing(
    api: Api, reply_to: object, status: int
) -> None:
    alice = api.account("alice")
    conversation = api.group(alice)
    api.send(alice, conversation, "one")
    response = api.client.post(
        f"/v1/conversations/{conversation}/messages",
        json={"body": "reply", "reply_to_seq": reply_to},
        headers=alice.auth,
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    got = api.client.get(f"/v1/conversations/{conversation}", headers=alice.auth).json()
    assert got["last_seq"] == 1


def test_reactions_are_idempotent_and_aggregated(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    seq = api.send(alice, conversation, "party tonight")["seq"]
    url = reactions_url(conversation, seq, "🎉")
    for who in (alice, bob, bob):
        response = api.client.put(url, headers=who.auth)
        assert response.status_code == 200, response.text
    assert response.json()["reactions"] == [{"emoji": "🎉", "count": 2, "me": True}]
    page = api.client.get(f"/v1/conversations/{conversation}/messages", headers=alice.auth).json()
    assert page["messages"][0]["reactions"] == [{"emoji": "🎉", "count": 2, "me": True}]
    for _ in range(2):
        removed = api.client.delete(url, headers=bob.auth)
        assert removed.status_code == 200
        assert removed.json()["reactions"] == [{"emoji": "🎉", "count": 1, "me": False}]
    changes = api.client.get(
        f"/v1/conversations/{conversation}/changes", headers=alice.auth
    ).json()["changes"]
    reaction_changes = [
        (c["kind"], c["emoji"], c["user_id"]) for c in changes if c["kind"].startswith("reaction.")
    ]
    assert reaction_changes == [
        ("reaction.added", "🎉", alice.id),
        ("reaction.added", "🎉", bob.id),
        ("reaction.removed", "🎉", bob.id),
    ]


@pytest.mark.parametrize("emoji", ["a", "ok", " ", "<script>", "👍" * 17, "%00", "1"])
def test_a_bad_emoji_is_a_422_and_changes_nothing(api: Api, emoji: str) -> None:
    alice = api.account("alice")
    conversation = api.group(alice)
    seq = api.send(alice, conversation, "hi")["seq"]
    for method in ("PUT", "DELETE"):
        response = api.client.request(
            method, reactions_url(conversation, seq, emoji), headers=alice.auth
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
    message = api.client.get(
        f"/v1/conversations/{conversation}/messages/{seq}", headers=alice.auth
    ).json()
    assert message["reactions"] == []


def test_reacting_to_a_missing_or_deleted_message(api: Api) -> None:
    alice = api.account("alice")
    conversation = api.group(alice)
    seq = api.send(alice, conversation, "hi")["seq"]
    assert (
        api.client.put(reactions_url(conversation, 5, "👍"), headers=alice.auth).status_code == 404
    )
    api.client.delete(f"/v1/conversations/{conversation}/messages/{seq}", headers=alice.auth)
    refused = api.client.put(reactions_url(conversation, seq, "👍"), headers=alice.auth)
    assert refused.status_code == 422
    assert "deleted" in refused.json()["detail"]


def test_mentions_show_in_the_inbox_until_read(api: Api) -> None:
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    outsider = api.account("olga")
    conversation = api.group(alice, bob, carol)
    api.send(alice, conversation, "@bob @Carol see this, @olga too")
    last = api.send(alice, conversation, "and this, @BOB")["seq"]

    def mentions(who: Account) -> dict[int, int]:
        entries = api.client.get("/v1/conversations", headers=who.auth).json()["entries"]
        return {e["conversation_id"]: e["unread_mention_count"] for e in entries}

    assert mentions(bob)[conversation] == 2
    assert mentions(carol)[conversation] == 1
    assert mentions(alice)[conversation] == 0
    assert conversation not in mentions(outsider)
    read = api.client.post(
        f"/v1/conversations/{conversation}/read", json={"seq": 1}, headers=bob.auth
    )
    assert read.status_code == 200
    assert mentions(bob)[conversation] == 1
    api.client.post(f"/v1/conversations/{conversation}/read", json={"seq": last}, headers=bob.auth)
    assert mentions(bob)[conversation] == 0


def test_reactions_travel_in_the_live_stream(
    web: Api,  # noqa: F811
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    alice, bob = web.account("alice"), web.account("bob")
    conversation = web.group(alice, bob)
    seq = web.send(alice, conversation, "hello")["seq"]
    stream = listen(bob)
    assert (
        web.client.put(reactions_url(conversation, seq, "👍"), headers=alice.auth).status_code
        == 200
    )
    assert (
        web.client.delete(reactions_url(conversation, seq, "👍"), headers=alice.auth).status_code
        == 200
    )
    events = stream.wait(lambda es: any(e.kind == "reaction.removed" for e in es))
    reactions = [e for e in events if e.kind.startswith("reaction.")]
    assert [(e.kind, e.data["emoji"], e.data["user_id"]) for e in reactions] == [
        ("reaction.added", "👍", alice.id),
        ("reaction.removed", "👍", alice.id),
    ]
    # The message as it is when the change is read: here, after the removal.
    assert reactions[-1].data["message"]["reactions"] == []
