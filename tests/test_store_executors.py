"""The store's reads give the same answer on a Session (in a transaction) and on
a Connection (chatdb.db.reads, as a GET runs them). Their statements must stay
Core: a select of an ORM entity returns objects from a Session and plain rows
from a Connection."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from chatdb import store
from chatdb.db import reads, transaction
from chatdb.store import Executor
from tests.factories import make_group, make_user, send, sign_in


def _reads_taking_a_connection() -> set[str]:
    """The store's public functions whose `session` may be a Connection."""
    names = set()
    for name in store.__all__:
        function = getattr(store, name)
        if not inspect.isfunction(function):
            continue
        parameter = inspect.signature(function).parameters.get("session")
        if parameter is not None and parameter.annotation in (Executor, "Executor"):
            names.add(name)
    return names


def test_every_read_gives_the_same_answer_on_a_session_and_a_connection(
    fresh_engine: Engine,
) -> None:
    with transaction(fresh_engine) as session:
        alice, bob = make_user(session, "alice", "Alice"), make_user(session, "bob")
        make_user(session, "carol")  # inactive: she never writes
        group = make_group(session, alice, bob, title="plans")
        first = send(session, group, alice, "hello @bob").message
        reply = store.send_message(
            session=session,
            conversation_id=group.id,
            sender_id=bob.id,
            body="hi",
            reply_to_seq=first.seq,
        ).message
        store.add_reaction(
            session=session, conversation_id=group.id, seq=first.seq, user_id=bob.id, emoji="👍"
        )
        send(session, group, bob, "soon gone")
        store.delete_message(session=session, conversation_id=group.id, seq=3, actor_id=bob.id)
        store.mark_read(session=session, conversation_id=group.id, user_id=alice.id, seq=1)
        token = sign_in(session, alice)
    today = datetime.now(UTC).date()

    reads_of: dict[str, Callable[[Any], object]] = {
        "get_user": lambda s: store.get_user(session=s, user_id=alice.id),
        "get_user_by_username": lambda s: store.get_user_by_username(session=s, username="BOB"),
        "user_for_token": lambda s: store.user_for_token(session=s, token=token),
        "inbox": lambda s: store.inbox(session=s, user_id=alice.id),
        "get_conversation": lambda s: store.get_conversation(
            session=s, conversation_id=group.id, actor_id=bob.id
        ),
        "member_role": lambda s: store.member_role(
            session=s, conversation_id=group.id, user_id=bob.id
        ),
        "list_members": lambda s: store.list_members(
            session=s, conversation_id=group.id, actor_id=alice.id
        ),
        "list_messages": lambda s: store.list_messages(
            session=s, conversation_id=group.id, actor_id=alice.id
        ),
        "get_message": lambda s: store.get_message(
            session=s, conversation_id=group.id, seq=first.seq, actor_id=alice.id
        ),
        "list_replies": lambda s: store.list_replies(
            session=s, conversation_id=group.id, seq=first.seq, actor_id=bob.id
        ),
        "changes_since": lambda s: store.changes_since(
            session=s, conversation_id=group.id, since=0, actor_id=alice.id
        ),
        "attach_messages": lambda s: store.attach_messages(
            session=s,
            changes=store.changes_since(session=s, conversation_id=group.id, since=0).changes,
        ),
        "activity": lambda s: store.activity(session=s, start=today - timedelta(days=1), end=today),
        "inactive_users": lambda s: store.inactive_users(session=s, days=1),
    }
    # A read that takes a Connection and is missing here fails: add it above.
    assert set(reads_of) == _reads_taking_a_connection()

    for name, read in reads_of.items():
        with transaction(fresh_engine) as session:
            in_session = read(session)
        with reads(fresh_engine) as connection:
            on_connection = read(connection)
        assert on_connection == in_session, name
        assert in_session, f"{name} found nothing: the comparison would prove little"
    assert reply.reply_to_seq == first.seq
