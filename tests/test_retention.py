"""Mistakes: a deleted conversation comes back within the retention window, and
`purge` removes what is past it. The window's passing is simulated by moving
`deleted_at` back, never by waiting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx2
import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from chatdb import models, store
from chatdb.errors import Conflict, Forbidden, Invalid, NotFound
from chatdb.store.types import Conversation, User
from tests.api_support import Api
from tests.factories import make_group, make_user, send
from tests.test_conversations import refused
from tests.test_events import WAIT, Listener, LiveServer, running

DAYS = 30


def age(session: Session, conversation: Conversation, days: int) -> None:
    """As if the conversation had been deleted `days` days ago."""
    session.execute(
        update(models.Conversation)
        .where(models.Conversation.id == conversation.id)
        .values(deleted_at=func.now() - timedelta(days=days))
    )


def age_message(session: Session, conversation: Conversation, seq: int, days: int) -> None:
    session.execute(
        update(models.Message)
        .where(models.Message.conversation_id == conversation.id, models.Message.seq == seq)
        .values(deleted_at=func.now() - timedelta(days=days))
    )


def restore(
    session: Session, conversation: Conversation, actor: User | None = None
) -> Conversation:
    return store.restore_conversation(
        session=session,
        conversation_id=conversation.id,
        retention_days=DAYS,
        actor_id=actor.id if actor else None,
    )


def test_a_deleted_conversation_is_hidden_everywhere_and_comes_back_whole(
    session: Session,
) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob, title="Plans")
    for i in range(3):
        send(session, group, bob, f"m{i}")
    store.mark_read(session=session, conversation_id=group.id, user_id=alice.id, seq=2)
    before = store.list_messages(session=session, conversation_id=group.id)
    members_before = store.list_members(session=session, conversation_id=group.id)

    store.delete_conversation(session=session, conversation_id=group.id, actor_id=alice.id)

    cid = group.id
    for actor in (alice.id, bob.id, None):  # members, and operators too
        for action in (
            lambda a: store.get_conversation(session=session, conversation_id=cid, actor_id=a),
            lambda a: store.list_messages(session=session, conversation_id=cid, actor_id=a),
            lambda a: store.list_members(session=session, conversation_id=cid, actor_id=a),
            lambda a: store.changes_since(
                session=session, conversation_id=cid, since=0, actor_id=a
            ),
            lambda a: store.rename_conversation(
                session=session, conversation_id=cid, title="x", actor_id=a
            ),
            lambda a: store.delete_message(session=session, conversation_id=cid, seq=1, actor_id=a),
            lambda a: store.delete_conversation(session=session, conversation_id=cid, actor_id=a),
        ):
            with refused(session, NotFound):
                action(actor)
    with refused(session, NotFound):
        send(session, group, bob, "into the void")
    with refused(session, NotFound):
        store.mark_read(session=session, conversation_id=cid, user_id=alice.id, seq=3)
    with refused(session, NotFound):
        store.add_member(session=session, conversation_id=cid, user_id=make_user(session).id)
    for user in (alice, bob):
        inbox = store.inbox(session=session, user_id=user.id)
        assert cid not in [e.conversation_id for e in inbox.entries]
    # Nothing was removed: the rows wait for a restore or for purge.
    assert (
        session.execute(
            select(func.count()).where(models.Message.conversation_id == cid)
        ).scalar_one()
        == 3
    )

    # A plain member may not restore; a non-member cannot tell it exists.
    with refused(session, Forbidden):
        restore(session, group, bob)
    with refused(session, NotFound):
        restore(session, group, make_user(session))
    restored = restore(session, group, alice)

    assert restored.id == cid
    assert store.list_messages(session=session, conversation_id=cid) == before
    assert store.list_members(session=session, conversation_id=cid) == members_before
    assert store.unread_count(session=session, conversation_id=cid, user_id=alice.id) == 1
    assert cid in [e.conversation_id for e in store.inbox(session=session, user_id=bob.id).entries]
    assert send(session, group, bob, "back").message.seq == 4
    # Restoring what is not deleted changes nothing.
    assert restore(session, group, alice).last_seq == 4


def test_restore_is_refused_past_the_retention_window(session: Session) -> None:
    alice = make_user(session)
    group = make_group(session, alice, make_user(session))
    store.delete_conversation(session=session, conversation_id=group.id)
    age(session, group, DAYS - 1)
    restore(session, group)  # still inside the window

    store.delete_conversation(session=session, conversation_id=group.id)
    age(session, group, DAYS + 1)
    for actor in (alice, None):
        with refused(session, Conflict, match="retention window"):
            restore(session, group, actor)
    with refused(session, NotFound):
        store.get_conversation(session=session, conversation_id=group.id)


def test_a_deleted_direct_conversation_lets_the_pair_start_afresh(session: Session) -> None:
    """The one-direct-per-pair rule counts live conversations only: after a
    delete the two users can start a new one, and the old one then cannot come
    back (two directs for one pair), until the new one is deleted too."""
    alice, bob = make_user(session), make_user(session)
    old, created = store.get_or_create_direct(
        session=session, user_id=alice.id, other_user_id=bob.id
    )
    assert created
    send(session, old, alice, "old history")
    store.delete_conversation(session=session, conversation_id=old.id, actor_id=bob.id)

    new, created = store.get_or_create_direct(
        session=session, user_id=bob.id, other_user_id=alice.id
    )
    assert created
    assert new.id != old.id
    assert new.last_seq == 0
    again, created = store.get_or_create_direct(
        session=session, user_id=alice.id, other_user_id=bob.id
    )
    assert (again.id, created) == (new.id, False)

    with refused(session, Conflict, match="new direct conversation"):
        restore(session, old, alice)
    store.delete_conversation(session=session, conversation_id=new.id, actor_id=alice.id)
    assert restore(session, old, alice).id == old.id
    found, created = store.get_or_create_direct(
        session=session, user_id=alice.id, other_user_id=bob.id
    )
    assert (found.id, created) == (old.id, False)


def test_purge_removes_only_what_is_past_the_window(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    expired, recent, live = (make_group(session, alice, bob) for _ in range(3))
    for conversation in (expired, recent, live):
        send(session, conversation, bob, "hello")
        send(session, conversation, bob, "again")
    for conversation in (expired, recent):
        store.delete_conversation(session=session, conversation_id=conversation.id)
    age(session, expired, DAYS + 1)
    age(session, recent, DAYS - 1)

    due = store.purge_due(session=session, retention_days=DAYS, change_retention_days=DAYS)
    assert due.conversations >= 1
    assert due.conversation_messages >= 2

    purged: list[int] = []
    while batch := store.purge_conversations_batch(session=session, retention_days=DAYS, limit=1):
        purged += batch
    assert expired.id in purged
    assert recent.id not in purged
    assert live.id not in purged
    assert (
        store.purge_due(
            session=session, retention_days=DAYS, change_retention_days=DAYS
        ).conversations
        == 0
    )
    for model in (models.Message, models.ConversationMember):
        assert (
            session.execute(
                select(func.count()).where(model.conversation_id == expired.id)
            ).scalar_one()
            == 0
        )
    assert session.get(models.Conversation, expired.id) is None
    # The deletion changes outlive it, for streams that resume later.
    kinds = session.execute(
        select(models.Change.kind).where(models.Change.conversation_id == expired.id)
    ).scalars()
    assert "conversation.deleted" in set(kinds)
    # What is inside the window is untouched and restorable.
    assert restore(session, recent).last_seq == 2
    assert [
        m.body for m in store.list_messages(session=session, conversation_id=live.id).messages
    ] == [
        "hello",
        "again",
    ]


def test_purge_erases_old_deleted_messages_but_keeps_their_seqs(session: Session) -> None:
    """Decision: a deleted message's text goes after the window (it was deleted
    for a reason); its row stays as a tombstone so seqs stay gapless."""
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    for body in ("one", "two", "three"):
        send(session, group, bob, body)
    for seq in (1, 2):
        store.delete_message(session=session, conversation_id=group.id, seq=seq)
    age_message(session, group, 1, DAYS + 1)
    age_message(session, group, 2, DAYS - 1)

    # Past the window, restore is refused even before purge runs.
    with refused(session, Conflict, match="retention window"):
        store.restore_message(session=session, conversation_id=group.id, seq=1, retention_days=DAYS)
    while store.erase_deleted_messages_batch(session=session, retention_days=DAYS, limit=1):
        pass

    page = store.list_messages(session=session, conversation_id=group.id)
    assert [(m.seq, m.body) for m in page.messages] == [(1, None), (2, None), (3, "three")]
    bodies = dict(
        session.execute(
            select(models.Message.seq, models.Message.body).where(
                models.Message.conversation_id == group.id
            )
        ).all()
    )
    assert bodies == {1: "", 2: "two", 3: "three"}
    # Erased text cannot come back, whatever the window says.
    with refused(session, Conflict, match="purged"):
        store.restore_message(session=session, conversation_id=group.id, seq=1)
    restored = store.restore_message(
        session=session, conversation_id=group.id, seq=2, retention_days=DAYS
    )
    assert restored.body == "two"
    # An erased message cannot be edited either, nor can a live one be emptied.
    with refused(session, Invalid):
        store.edit_message(
            session=session, conversation_id=group.id, seq=1, body="x", actor_id=None
        )
    with refused(session, Invalid):
        store.edit_message(
            session=session, conversation_id=group.id, seq=3, body=" ", actor_id=None
        )


# --- over HTTP ------------------------------------------------------------------------


def test_delete_and_restore_over_the_api(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    cid = api.group(alice, bob, title="Trip")
    api.send(bob, cid, "tickets booked")
    c = api.client

    assert c.delete(f"/v1/conversations/{cid}", headers=bob.auth).status_code == 403
    assert c.delete(f"/v1/conversations/{cid}", headers=alice.auth).status_code == 204
    for who in (alice, bob):
        assert c.get(f"/v1/conversations/{cid}", headers=who.auth).status_code == 404
        assert c.get(f"/v1/conversations/{cid}/messages", headers=who.auth).status_code == 404
        inbox = c.get("/v1/conversations", headers=who.auth).json()["entries"]
        assert cid not in [e["conversation_id"] for e in inbox]
    refused = c.post(f"/v1/conversations/{cid}/messages", json={"body": "hi"}, headers=bob.auth)
    assert refused.status_code == 404

    assert c.post(f"/v1/conversations/{cid}/restore", headers=bob.auth).status_code == 403
    restored = c.post(f"/v1/conversations/{cid}/restore", headers=alice.auth)
    assert restored.status_code == 200, restored.text
    assert (restored.json()["id"], restored.json()["title"]) == (cid, "Trip")
    page = c.get(f"/v1/conversations/{cid}/messages", headers=bob.auth).json()
    assert [m["body"] for m in page["messages"]] == ["tickets booked"]
    # The admin key restores too.
    assert c.delete(f"/v1/conversations/{cid}", headers=api.admin).status_code == 204
    assert c.post(f"/v1/conversations/{cid}/restore", headers=api.admin).status_code == 200


@pytest.fixture
def live(fresh_engine: Engine) -> Iterator[LiveServer]:
    with running(fresh_engine) as server:
        yield server


def test_members_streams_tell_of_the_delete_and_the_restore(live: LiveServer) -> None:
    with httpx2.Client(base_url=live.url, timeout=WAIT) as client:
        web = Api(client)  # type: ignore[arg-type]  # the same interface as TestClient
        alice, bob = web.account("alice"), web.account("bob")
        cid = web.group(alice, bob)
        stream = Listener(live.url, bob.token)
        try:
            assert client.delete(f"/v1/conversations/{cid}", headers=alice.auth).status_code == 204
            restored = client.post(f"/v1/conversations/{cid}/restore", headers=alice.auth)
            assert restored.status_code == 200
            web.send(alice, cid, "we are back")
            events = stream.wait(lambda es: any(e.kind == "message.created" for e in es))
            kinds = [(e.kind, e.data["user_id"]) for e in events if e.conversation_id == cid]
            assert kinds[-3:] == [
                ("conversation.deleted", bob.id),  # his own, not alice's
                ("conversation.restored", None),
                ("message.created", None),
            ]
        finally:
            stream.stop()
