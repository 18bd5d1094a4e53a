"""Messages: sending, seqs, idempotency, edits, soft delete, read markers."""

from operator import itemgetter

import pytest
from sqlalchemy.orm import Session

from chatdb import store
from chatdb.errors import Conflict, Forbidden, Invalid, NotFound
from chatdb.store._driver import fetch_all
from chatdb.store.messages import (
    _MESSAGE_FIELDS,
    _PLAIN_FIELDS,
    _message_from,
    _messages,
    _page_query,
    _page_template,
    _positions,
    _select_messages,
)
from chatdb.store.types import Conversation, Message, User
from tests.factories import make_group, make_user, send


def test_seqs_start_at_one_and_count_up(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    sent = [
        store.send_message(
            session=session, conversation_id=group.id, sender_id=alice.id, body=f"m{i}"
        ).message
        for i in range(5)
    ]
    assert [m.seq for m in sent] == [1, 2, 3, 4, 5]
    assert store.get_conversation(session=session, conversation_id=group.id).last_seq == 5


def test_last_messages_come_with_sender_names_oldest_first(session: Session) -> None:
    alice = make_user(session, display_name="Alice A.")
    bob = make_user(session)
    group = make_group(session, alice, bob)
    for i in range(30):
        sender = alice if i % 2 else bob
        store.send_message(
            session=session, conversation_id=group.id, sender_id=sender.id, body=f"m{i}"
        )
    page = store.list_messages(session=session, conversation_id=group.id, limit=20)
    assert [m.seq for m in page.messages] == list(range(11, 31))
    assert page.has_older
    assert not page.has_newer
    assert page.messages[-1].sender_name == "Alice A."
    assert page.messages[-2].sender_name == bob.username


def test_deleted_sender_shows_as_deleted_user(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    store.send_message(session=session, conversation_id=group.id, sender_id=bob.id, body="hi")
    store.delete_user(session=session, user_id=bob.id)
    (message,) = store.list_messages(session=session, conversation_id=group.id).messages
    assert message.sender_id is None
    assert message.sender_name == "(deleted user)"
    assert message.body == "hi"


def test_non_member_cannot_send_or_read(session: Session) -> None:
    alice, mallory = make_user(session), make_user(session)
    group = make_group(session, alice)
    with pytest.raises(NotFound):
        store.send_message(
            session=session, conversation_id=group.id, sender_id=mallory.id, body="x"
        )
    with pytest.raises(NotFound):
        store.list_messages(session=session, conversation_id=group.id, actor_id=mallory.id)
    assert store.get_conversation(session=session, conversation_id=group.id).last_seq == 0


@pytest.mark.parametrize(
    "body",
    ["", "   ", "\n\t", "x" * 4001, "nul \x00 byte", "lone \ud800 surrogate"],
)
def test_invalid_bodies_are_refused_and_change_nothing(session: Session, body: str) -> None:
    alice = make_user(session)
    group = make_group(session, alice)
    with pytest.raises(Invalid):
        store.send_message(session=session, conversation_id=group.id, sender_id=alice.id, body=body)
    assert store.get_conversation(session=session, conversation_id=group.id).last_seq == 0


def test_text_round_trips_exactly(session: Session) -> None:
    alice = make_user(session)
    group = make_group(session, alice)
    body = "'; DROP TABLE messages; -- ✓ 𝄞 emoji 👩‍👩‍👧 rtl עברית \r\n tabs\t"
    sent = store.send_message(
        session=session, conversation_id=group.id, sender_id=alice.id, body=body
    )
    again = store.get_message(session=session, conversation_id=group.id, seq=sent.message.seq)
    assert again.body == body


def test_idempotent_send_returns_the_original(session: Session) -> None:
    alice = make_user(session)
    group = make_group(session, alice)
    first = store.send_message(
        session=session,
        conversation_id=group.id,
        sender_id=alice.id,
        body="hi",
        idempotency_key="k1",
    )
    again = store.send_message(
        session=session,
        conversation_id=group.id,
        sender_id=alice.id,
        body="hi",
        idempotency_key="k1",
    )
    assert first.created
    assert not again.created
    assert again.message == first.message
    assert store.get_conversation(session=session, conversation_id=group.id).last_seq == 1
    with pytest.raises(Conflict):
        store.send_message(
            session=session,
            conversation_id=group.id,
            sender_id=alice.id,
            body="something else",
            idempotency_key="k1",
        )


def test_idempotency_key_is_per_sender(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    for user in (alice, bob):
        result = store.send_message(
            session=session,
            conversation_id=group.id,
            sender_id=user.id,
            body="x",
            idempotency_key="same",
        )
        assert result.created
    assert store.get_conversation(session=session, conversation_id=group.id).last_seq == 2


def test_only_the_author_edits(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    sent = store.send_message(
        session=session, conversation_id=group.id, sender_id=bob.id, body="helo"
    ).message
    with pytest.raises(Forbidden):
        store.edit_message(
            session=session, conversation_id=group.id, seq=sent.seq, body="x", actor_id=alice.id
        )
    edited = store.edit_message(
        session=session, conversation_id=group.id, seq=sent.seq, body="hello", actor_id=bob.id
    )
    assert edited.body == "hello"
    assert edited.edited_at is not None


def test_soft_delete_and_restore(session: Session) -> None:
    alice, bob, carol = make_user(session), make_user(session), make_user(session)
    group = make_group(session, alice, bob, carol)  # alice owns it
    sent = store.send_message(
        session=session, conversation_id=group.id, sender_id=bob.id, body="oops"
    ).message
    with pytest.raises(Forbidden):
        store.delete_message(
            session=session, conversation_id=group.id, seq=sent.seq, actor_id=carol.id
        )
    deleted = store.delete_message(
        session=session, conversation_id=group.id, seq=sent.seq, actor_id=alice.id
    )
    assert deleted.body is None
    assert deleted.deleted_at is not None
    with pytest.raises(Invalid):
        store.edit_message(
            session=session, conversation_id=group.id, seq=sent.seq, body="x", actor_id=bob.id
        )
    restored = store.restore_message(
        session=session, conversation_id=group.id, seq=sent.seq, actor_id=bob.id
    )
    assert restored.body == "oops"
    assert restored.deleted_at is None


def test_read_marker_and_unread_count(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    for i in range(4):
        store.send_message(
            session=session, conversation_id=group.id, sender_id=alice.id, body=str(i)
        )
    assert store.unread_count(session=session, conversation_id=group.id, user_id=bob.id) == 4
    # Sending marks your own messages read.
    assert store.unread_count(session=session, conversation_id=group.id, user_id=alice.id) == 0
    assert store.mark_read(session=session, conversation_id=group.id, user_id=bob.id, seq=3) == 3
    # Never backwards, never past the last message.
    assert store.mark_read(session=session, conversation_id=group.id, user_id=bob.id, seq=1) == 3
    assert store.mark_read(session=session, conversation_id=group.id, user_id=bob.id, seq=99) == 4
    assert store.unread_count(session=session, conversation_id=group.id, user_id=bob.id) == 0


def test_new_member_starts_with_history_read(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice)
    store.send_message(session=session, conversation_id=group.id, sender_id=alice.id, body="old")
    store.add_member(session=session, conversation_id=group.id, user_id=bob.id, actor_id=alice.id)
    assert store.unread_count(session=session, conversation_id=group.id, user_id=bob.id) == 0
    store.send_message(session=session, conversation_id=group.id, sender_id=alice.id, body="new")
    assert store.unread_count(session=session, conversation_id=group.id, user_id=bob.id) == 1


def test_paging_backward_and_forward(session: Session) -> None:
    alice = make_user(session)
    group = make_group(session, alice)
    for i in range(25):
        store.send_message(
            session=session, conversation_id=group.id, sender_id=alice.id, body=str(i)
        )
    older = store.list_messages(session=session, conversation_id=group.id, before=11, limit=5)
    assert [m.seq for m in older.messages] == [6, 7, 8, 9, 10]
    assert older.has_older
    assert older.has_newer
    newer = store.list_messages(session=session, conversation_id=group.id, after=20, limit=10)
    assert [m.seq for m in newer.messages] == [21, 22, 23, 24, 25]
    assert newer.has_older
    assert not newer.has_newer
    with pytest.raises(Invalid):
        store.list_messages(session=session, conversation_id=group.id, limit=201)
    with pytest.raises(Invalid):
        store.list_messages(session=session, conversation_id=group.id, before=3, after=1)


def _every_kind_of_message(session: Session) -> tuple[Conversation, User, User]:
    """Seqs 1-6 sent in turn by bob and alice; 7 quotes 2 (which has a reply);
    3 has a reaction, 4 is deleted, 5 edited."""
    alice, bob = make_user(session, display_name="Alice A."), make_user(session)
    group = make_group(session, alice, bob)
    for i in range(6):
        send(session, group, alice if i % 2 else bob, f"m{i}")
    store.send_message(
        session=session, conversation_id=group.id, sender_id=bob.id, body="re", reply_to_seq=2
    )
    store.add_reaction(session=session, conversation_id=group.id, seq=3, user_id=bob.id, emoji="👍")
    store.delete_message(session=session, conversation_id=group.id, seq=4, actor_id=alice.id)
    store.edit_message(
        session=session, conversation_id=group.id, seq=5, actor_id=bob.id, body="m4, edited"
    )
    return group, alice, bob


def test_every_kind_of_message_is_made_as_message_from_makes_it(session: Session) -> None:
    """_messages makes a plain message (no quote, no reactions, not deleted)
    straight from its columns; it must come out as _message_from makes it, and
    the others must still go through _message_from."""
    group, alice, bob = _every_kind_of_message(session)
    template, params = _page_query(group.id, None, None, 20, alice.id)
    rows, fields = fetch_all(session, template, params)
    every = itemgetter(*(fields.index(name) for name in _MESSAGE_FIELDS))
    expected = [_message_from(*every(row)) for row in rows]

    made = _messages(rows, fields)
    # SQLAlchemy's rows (other queries' results) come out the same.
    from_rows = _messages(session.execute(template, params).all())

    assert made == expected
    assert from_rows == expected
    assert all(type(message) is Message for message in from_rows)
    assert all(type(message) is Message for message in made)
    by_seq = {m.seq: m for m in made}
    assert by_seq[1] == Message(
        group.id, 1, bob.id, bob.username, None, "m0", by_seq[1].created_at, None, None
    )
    assert by_seq[7].reply_to is not None
    assert by_seq[7].reply_to.seq == 2
    assert [(r.emoji, r.count, r.me) for r in by_seq[3].reactions] == [("👍", 1, False)]
    assert by_seq[4].body is None
    assert by_seq[4].deleted_at is not None
    assert by_seq[5].body == "m4, edited"
    assert by_seq[5].edited_at is not None
    assert by_seq[2].reply_count == 1


def test_the_fields_after_a_plain_messages_columns_are_those_messages_adds() -> None:
    """_messages makes a plain message as its columns plus this tail, by
    position and without Message's check of the length."""
    assert Message._fields == (
        *_PLAIN_FIELDS,
        "reply_to_seq",
        "reply_to",
        "reply_count",
        "reactions",
    )


def test_columns_in_any_order_make_the_same_messages(session: Session) -> None:
    """Where the plain columns are not side by side, _messages picks them one
    by one; chatdb's own message queries have them side by side (one slice)."""
    group, alice, _ = _every_kind_of_message(session)
    template, params = _page_query(group.id, None, None, 20, alice.id)
    rows, fields = fetch_all(session, template, params)
    expected = _messages(rows, fields)
    assert len(expected) == 7
    for order in (list(reversed(range(len(fields)))), [*range(1, len(fields)), 0]):
        shuffled = tuple(fields[i] for i in order)
        assert _messages([tuple(row[i] for i in order) for row in rows], shuffled) == expected

    templates = [_select_messages()] + [
        _page_template(direction, for_member)
        for direction in ("before", "after")
        for for_member in (True, False)
    ]
    for query in templates:
        columns = tuple(query.selected_columns.keys())
        assert "slice" in repr(_positions(columns).plain), columns
