"""Replies, reactions and mentions under concurrency: real parallel connections
on a fresh database, each thread committing its own transactions."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from chatdb import models, store
from tests.test_concurrency import _committed, _group, _lock_waiters, _run_parallel, _users

THREADS = 6


def _unread_mentions(engine: Engine, conversation_id: int, user_id: int) -> tuple[int, int, int]:
    """(kept count, read marker, mentions after the marker counted from message_mentions)."""
    member = models.ConversationMember
    mention = models.MessageMention
    with Session(engine) as session:
        kept, marker = session.execute(
            select(member.unread_mention_count, member.last_read_seq).where(
                member.conversation_id == conversation_id, member.user_id == user_id
            )
        ).one()
        counted = session.execute(
            select(func.count()).where(
                mention.conversation_id == conversation_id,
                mention.user_id == user_id,
                mention.seq > marker,
            )
        ).scalar_one()
    return kept, marker, counted


def test_a_mention_sent_while_the_read_marker_moves_is_counted_exactly(
    fresh_engine: Engine,
) -> None:
    alice, bob = _users(fresh_engine, 2)
    group = _group(fresh_engine, alice, bob)
    for body in ("@" + bob.username + " first", "plain"):
        _committed(
            fresh_engine,
            lambda s, body=body: store.send_message(
                session=s, conversation_id=group.id, sender_id=alice.id, body=body
            ),
        )
    # Alice's mentioning send holds the conversation row (and bob's member row);
    # bob's read marker waits for it, in that order, so the two cannot deadlock.
    with Session(fresh_engine) as sending, sending.begin():
        store.send_message(
            session=sending,
            conversation_id=group.id,
            sender_id=alice.id,
            body=f"@{bob.username} second",
        )
        result: list[int] = []
        reader = threading.Thread(
            target=lambda: result.append(
                _committed(
                    fresh_engine,
                    lambda s: store.mark_read(
                        session=s, conversation_id=group.id, user_id=bob.id, seq=100
                    ),
                )
            )
        )
        reader.start()
        deadline = time.monotonic() + 20
        while _lock_waiters(fresh_engine) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert _lock_waiters(fresh_engine) == 1, "the read marker did not wait for the send"
    reader.join(20)
    assert result, "the read marker's transaction did not finish"
    kept, marker, counted = _unread_mentions(fresh_engine, group.id, bob.id)
    assert kept == counted
    # It waited for the send, so it read the second mention too.
    assert (marker, kept) == (3, 0)


def test_parallel_mentions_and_reads_keep_the_count_exact(fresh_engine: Engine) -> None:
    users = _users(fresh_engine, THREADS)
    reader = users[0]
    group = _group(fresh_engine, *users)

    def work(i: int) -> None:
        for n in range(15):
            if i == 0:
                _committed(
                    fresh_engine,
                    lambda s, n=n: store.mark_read(
                        session=s, conversation_id=group.id, user_id=reader.id, seq=n * 4
                    ),
                )
            else:
                body = f"@{reader.username} {n}" if n % 2 else f"plain {n}"
                _committed(
                    fresh_engine,
                    lambda s, body=body: store.send_message(
                        session=s, conversation_id=group.id, sender_id=users[i].id, body=body
                    ),
                )

    _run_parallel(THREADS, work)
    kept, _, counted = _unread_mentions(fresh_engine, group.id, reader.id)
    assert kept == counted


def test_parallel_replies_and_edits_of_the_original_count_every_reply(
    fresh_engine: Engine,
) -> None:
    users = _users(fresh_engine, THREADS)
    group = _group(fresh_engine, *users)
    root = _committed(
        fresh_engine,
        lambda s: store.send_message(
            session=s, conversation_id=group.id, sender_id=users[0].id, body="root"
        ),
    ).message
    replies = 10

    def work(i: int) -> None:
        for n in range(replies):
            if i == 0:  # the author edits the original meanwhile (message, then conversation lock)
                _committed(
                    fresh_engine,
                    lambda s, n=n: store.edit_message(
                        session=s,
                        conversation_id=group.id,
                        seq=root.seq,
                        body=f"root v{n}",
                        actor_id=users[0].id,
                    ),
                )
            else:
                _committed(
                    fresh_engine,
                    lambda s, n=n: store.send_message(
                        session=s,
                        conversation_id=group.id,
                        sender_id=users[i].id,
                        body=f"reply {n}",
                        reply_to_seq=root.seq,
                    ),
                )

    _run_parallel(THREADS, work)
    with Session(fresh_engine) as session:
        original = store.get_message(session=session, conversation_id=group.id, seq=root.seq)
        assert original.reply_count == (THREADS - 1) * replies
        page = store.list_replies(
            session=session, conversation_id=group.id, seq=root.seq, limit=200
        )
        assert len(page.replies) == original.reply_count
        rollup = session.execute(
            select(func.sum(models.message_activity.c.message_count)).where(
                models.message_activity.c.conversation_id == group.id
            )
        ).scalar_one()
        assert rollup == 1 + (THREADS - 1) * replies


def test_the_same_reaction_in_parallel_is_stored_and_logged_once(fresh_engine: Engine) -> None:
    users = _users(fresh_engine, 3)
    group = _group(fresh_engine, *users)
    _committed(
        fresh_engine,
        lambda s: store.send_message(
            session=s, conversation_id=group.id, sender_id=users[0].id, body="hi"
        ),
    )

    def react(i: int) -> None:
        _committed(
            fresh_engine,
            lambda s: store.add_reaction(
                session=s, conversation_id=group.id, seq=1, user_id=users[i % 3].id, emoji="👍"
            ),
        )

    _run_parallel(THREADS * 2, react)
    with Session(fresh_engine) as session:
        message = store.get_message(session=session, conversation_id=group.id, seq=1)
        assert [(r.emoji, r.count) for r in message.reactions] == [("👍", 3)]
        kinds = session.execute(
            select(models.Change.kind).where(
                models.Change.conversation_id == group.id,
                models.Change.kind == "reaction.added",
            )
        ).scalars()
        assert len(list(kinds)) == 3
