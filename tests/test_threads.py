"""Replies and threads, reactions and mentions, through the data layer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.orm import Session

from chatdb import models, store
from chatdb.errors import Invalid, NotFound
from chatdb.store.messages import mentioned_names
from chatdb.store.types import Conversation, Message, User
from tests.conftest import uses_index
from tests.factories import make_group, make_user


def say(
    session: Session,
    conversation: Conversation,
    sender: User,
    body: str,
    reply_to: int | None = None,
) -> Message:
    return store.send_message(
        session=session,
        conversation_id=conversation.id,
        sender_id=sender.id,
        body=body,
        reply_to_seq=reply_to,
    ).message


@contextmanager
def counted_statements(session: Session) -> Iterator[list[str]]:
    """Every SQL statement the session's connection sends, while inside."""
    statements: list[str] = []
    connection = session.connection()

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(connection, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(connection, "before_cursor_execute", count)


# --- replies -----------------------------------------------------------------------------


def test_a_reply_quotes_the_original_and_counts_on_it(session: Session) -> None:
    alice, bob = make_user(session, display_name="Alice"), make_user(session)
    group = make_group(session, alice, bob)
    original = say(session, group, alice, "lunch at noon?")
    reply = say(session, group, bob, "yes!", reply_to=original.seq)
    assert reply.reply_to_seq == original.seq
    assert reply.reply_to is not None
    assert (reply.reply_to.body, reply.reply_to.sender_name) == ("lunch at noon?", "Alice")
    say(session, group, alice, "great", reply_to=original.seq)
    read = store.get_message(session=session, conversation_id=group.id, seq=original.seq)
    assert read.reply_count == 2
    page = store.list_messages(session=session, conversation_id=group.id)
    assert [(m.seq, m.reply_to_seq, m.reply_count) for m in page.messages] == [
        (1, None, 2),
        (2, 1, 0),
        (3, 1, 0),
    ]
    assert page.messages[1].reply_to == reply.reply_to


def test_a_quote_of_a_deleted_message_shows_no_text(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    original = say(session, group, alice, "a secret")
    say(session, group, bob, "noted", reply_to=original.seq)
    store.delete_message(session=session, conversation_id=group.id, seq=original.seq)
    for message in (
        store.list_messages(session=session, conversation_id=group.id).messages[1],
        store.get_message(session=session, conversation_id=group.id, seq=2),
        store.list_replies(session=session, conversation_id=group.id, seq=1).replies[0],
    ):
        assert message.reply_to is not None
        assert message.reply_to.deleted
        assert message.reply_to.body is None
        assert "secret" not in repr(message)


def test_a_reply_needs_an_existing_live_message_of_the_same_conversation(
    session: Session,
) -> None:
    alice, bob = make_user(session), make_user(session)
    group, other = make_group(session, alice, bob), make_group(session, alice)
    say(session, group, alice, "one")
    say(session, other, alice, "elsewhere")
    say(session, other, alice, "elsewhere 2")
    with pytest.raises(NotFound, match="no message 2"):
        say(session, group, bob, "reply", reply_to=2)
    with pytest.raises(Invalid):
        say(session, group, bob, "reply", reply_to=0)
    store.delete_message(session=session, conversation_id=group.id, seq=1)
    with pytest.raises(Invalid, match="deleted"):
        say(session, group, bob, "reply", reply_to=1)
    # Nothing was sent or counted by the refused replies.
    assert store.get_conversation(session=session, conversation_id=group.id).last_seq == 1
    assert store.get_message(session=session, conversation_id=group.id, seq=1).reply_count == 0


def test_a_non_member_cannot_reply_or_learn_whether_a_message_exists(session: Session) -> None:
    alice, mallory = make_user(session), make_user(session)
    group = make_group(session, alice)
    say(session, group, alice, "one")
    for seq in (1, 99):
        with pytest.raises(NotFound, match=f"no conversation with id {group.id}"):
            say(session, group, mallory, "hi", reply_to=seq)
    with pytest.raises(NotFound, match=f"no conversation with id {group.id}"):
        store.list_replies(session=session, conversation_id=group.id, seq=1, actor_id=mallory.id)


def test_threads_are_keyset_pages_of_the_replies_only(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    root = say(session, group, alice, "root")
    other = say(session, group, bob, "another root")
    expected = []
    for i in range(7):
        expected.append(say(session, group, bob, f"r{i}", reply_to=root.seq).seq)
        say(session, group, alice, f"side {i}", reply_to=other.seq)
        say(session, group, alice, f"plain {i}")
    seen: list[int] = []
    after = 0
    while True:
        page = store.list_replies(
            session=session, conversation_id=group.id, seq=root.seq, after=after, limit=3
        )
        assert page.parent.seq == root.seq
        seen += [m.seq for m in page.replies]
        if not page.has_more:
            break
        after = page.replies[-1].seq
    assert seen == expected
    assert store.get_message(session=session, conversation_id=group.id, seq=1).reply_count == 7
    with pytest.raises(NotFound):
        store.list_replies(session=session, conversation_id=group.id, seq=999)


def test_thread_pages_use_the_reply_index(session: Session) -> None:
    # The test database is tiny, where a sequential scan is cheapest; what is
    # checked is that the partial index serves the thread query (its predicate
    # is implied, and it yields seq order with no sort).
    session.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(
        session.execute(
            text(
                "EXPLAIN SELECT seq FROM messages WHERE conversation_id = 1 "
                "AND reply_to_seq = 5 AND seq > 0 ORDER BY seq LIMIT 51"
            )
        ).scalars()
    )
    assert uses_index(session, plan, "ix_messages_conversation_id_reply_to_seq_seq"), plan
    assert "Sort" not in plan


def test_counting_replies_keeps_the_activity_rollup_exact(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    root = say(session, group, alice, "root")
    for i in range(3):
        say(session, group, bob, f"r{i}", reply_to=root.seq)
    rollup = dict(
        session.execute(
            select(
                models.message_activity.c.sender_id, models.message_activity.c.message_count
            ).where(models.message_activity.c.conversation_id == group.id)
        ).all()
    )
    assert rollup == {alice.id: 1, bob.id: 3}


# --- reactions ---------------------------------------------------------------------------


def react(session: Session, group: Conversation, user: User, seq: int, emoji: str) -> Message:
    return store.add_reaction(
        session=session, conversation_id=group.id, seq=seq, user_id=user.id, emoji=emoji
    )


def test_reactions_are_counted_per_emoji_with_whether_you_reacted(session: Session) -> None:
    alice, bob, carol = make_user(session), make_user(session), make_user(session)
    group = make_group(session, alice, bob, carol)
    say(session, group, alice, "hello")
    react(session, group, bob, 1, "👍")
    react(session, group, carol, 1, "👍")
    after = react(session, group, carol, 1, "🎉")
    # In one transaction both have the same time; across transactions the
    # first used emoji comes first.
    assert {(r.emoji, r.count, r.me) for r in after.reactions} == {("👍", 2, True), ("🎉", 1, True)}
    as_bob = store.list_messages(session=session, conversation_id=group.id, actor_id=bob.id)
    assert {(r.emoji, r.count, r.me) for r in as_bob.messages[0].reactions} == {
        ("👍", 2, True),
        ("🎉", 1, False),
    }


def test_reacting_twice_is_one_reaction_and_removing_is_idempotent(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    say(session, group, alice, "hello")
    before = store.get_conversation(session=session, conversation_id=group.id).last_change_seq
    react(session, group, bob, 1, "❤️")
    again = react(session, group, bob, 1, "❤️")
    assert [(r.emoji, r.count) for r in again.reactions] == [("❤️", 1)]
    changes = store.changes_since(session=session, conversation_id=group.id, since=before)
    assert [(c.kind, c.emoji, c.user_id) for c in changes.changes] == [
        ("reaction.added", "❤️", bob.id)
    ]
    for _ in range(2):
        gone = store.remove_reaction(
            session=session, conversation_id=group.id, seq=1, user_id=bob.id, emoji="❤️"
        )
        assert gone.reactions == ()
    changes = store.changes_since(session=session, conversation_id=group.id, since=before)
    assert [c.kind for c in changes.changes] == ["reaction.added", "reaction.removed"]
    assert changes.changes[0].message is not None


@pytest.mark.parametrize("emoji", ["", "a", "ok", "👍 ", "<b>", "\x00", "👍" * 17, "\ud800"])
def test_a_bad_emoji_is_refused_and_changes_nothing(session: Session, emoji: str) -> None:
    alice = make_user(session)
    group = make_group(session, alice)
    say(session, group, alice, "hello")
    with pytest.raises(Invalid, match="emoji"):
        react(session, group, alice, 1, emoji)
    assert session.execute(select(func.count()).select_from(models.MessageReaction)).scalar() == 0


def test_reactions_need_a_member_and_a_live_message(session: Session) -> None:
    alice, mallory = make_user(session), make_user(session)
    group = make_group(session, alice)
    say(session, group, alice, "hello")
    with pytest.raises(NotFound, match=f"no conversation with id {group.id}"):
        react(session, group, mallory, 1, "👍")
    with pytest.raises(NotFound, match=f"no conversation with id {group.id}"):
        store.remove_reaction(
            session=session, conversation_id=group.id, seq=1, user_id=mallory.id, emoji="👍"
        )
    with pytest.raises(NotFound, match="no message 2"):
        react(session, group, alice, 2, "👍")
    store.delete_message(session=session, conversation_id=group.id, seq=1)
    with pytest.raises(Invalid, match="deleted"):
        react(session, group, alice, 1, "👍")


def test_a_page_costs_the_same_statements_however_many_reactions(session: Session) -> None:
    """No N+1: reactions and quotes come in the page's own statement."""
    users = [make_user(session) for _ in range(4)]
    group = make_group(session, *users)
    for i in range(30):
        say(session, group, users[i % 4], f"m{i}", reply_to=1 if i else None)

    def statements_for_page() -> int:
        with counted_statements(session) as statements:
            page = store.list_messages(
                session=session, conversation_id=group.id, limit=30, actor_id=users[0].id
            )
        assert len(page.messages) == 30
        return len(statements)

    bare = statements_for_page()
    for seq in range(1, 31):
        for user in users:
            react(session, group, user, seq, "👍")
        react(session, group, users[seq % 4], seq, "🎉")
    assert statements_for_page() == bare == 1
    page = store.list_messages(session=session, conversation_id=group.id, limit=30)
    assert all(len(m.reactions) == 2 for m in page.messages)


def test_a_deleted_users_reactions_go_with_them(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    say(session, group, alice, "hello")
    react(session, group, bob, 1, "👍")
    store.delete_user(session=session, user_id=bob.id)
    assert store.get_message(session=session, conversation_id=group.id, seq=1).reactions == ()


# --- mentions ----------------------------------------------------------------------------


def test_mention_names_are_found_in_text() -> None:
    assert mentioned_names("hi @Bob and @carol.s, thanks @dave.") == [
        "bob",
        "carol.s,"[:-1],
        "dave.",
        "dave",
    ]
    assert mentioned_names("mail me at bob@example.org or @@x") == []
    assert mentioned_names("no mentions") == []


def inbox_mentions(session: Session, user: User) -> dict[int, int]:
    page = store.inbox(session=session, user_id=user.id)
    return {e.conversation_id: e.unread_mention_count for e in page.entries}


def test_mentions_count_for_members_only_until_read(session: Session) -> None:
    alice = make_user(session, "alice_m")
    bob = make_user(session, "Bob.M")
    carol = make_user(session, "carol_m")
    outsider = make_user(session, "outsider_m")
    group = make_group(session, alice, bob, carol)
    say(session, group, alice, "hi @bob.m and @BOB.M, @outsider_m, @nobody_here")
    say(session, group, alice, "@carol_m @bob.m: lunch?")
    say(session, group, alice, "plain")
    say(session, group, bob, "me @bob.m myself, and @alice_m")
    assert inbox_mentions(session, bob)[group.id] == 0  # sending reads everything before
    assert inbox_mentions(session, carol)[group.id] == 1
    assert inbox_mentions(session, alice)[group.id] == 1
    assert group.id not in inbox_mentions(session, outsider)
    mentioned = session.execute(
        select(models.MessageMention.seq, models.MessageMention.user_id)
        .where(models.MessageMention.conversation_id == group.id)
        .order_by(models.MessageMention.seq, models.MessageMention.user_id)
    ).all()
    assert [tuple(r) for r in mentioned] == sorted(
        [(1, bob.id), (2, carol.id), (2, bob.id), (4, alice.id)]
    )


def test_reading_past_a_mention_takes_it_off_the_count(session: Session) -> None:
    alice, bob = make_user(session, "alice_r"), make_user(session, "bob_r")
    group = make_group(session, alice, bob)
    for i in range(6):
        say(session, group, alice, f"@bob_r {i}" if i % 2 == 0 else f"plain {i}")
    assert inbox_mentions(session, bob)[group.id] == 3  # seqs 1, 3, 5
    store.mark_read(session=session, conversation_id=group.id, user_id=bob.id, seq=3)
    assert inbox_mentions(session, bob)[group.id] == 1
    store.mark_read(session=session, conversation_id=group.id, user_id=bob.id, seq=2)  # no move
    assert inbox_mentions(session, bob)[group.id] == 1
    store.mark_read(session=session, conversation_id=group.id, user_id=bob.id, seq=100)
    assert inbox_mentions(session, bob)[group.id] == 0


def test_purging_a_conversation_takes_its_threads_reactions_and_mentions(
    session: Session,
) -> None:
    alice, bob = make_user(session, "alice_p"), make_user(session, "bob_p")
    group = make_group(session, alice, bob)
    root = say(session, group, alice, "root @bob_p")
    for i in range(3):
        reply = say(session, group, bob, f"reply {i} @alice_p", reply_to=root.seq)
        react(session, group, alice, reply.seq, "👍")
    store.delete_conversation(session=session, conversation_id=group.id)
    session.execute(
        update(models.Conversation)
        .where(models.Conversation.id == group.id)
        .values(deleted_at=func.now() - text("interval '2 days'"))
    )
    assert store.purge_conversations_batch(session=session, retention_days=1) == [group.id]
    for model in (models.Message, models.MessageReaction, models.MessageMention):
        remaining = session.execute(
            select(func.count()).where(model.conversation_id == group.id)
        ).scalar_one()
        assert remaining == 0, model
