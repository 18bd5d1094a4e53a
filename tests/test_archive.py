"""`chatdb archive`: old messages move out of the hot table in short batches,
without holding up writers, and the activity report still counts them. Age is
simulated by moving created_at back, never by waiting."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from chatdb import models, store
from tests.factories import make_group, make_user, send
from tests.test_backup import as_env_url
from tests.test_cli import assert_one_line_error, base_env, run_chatdb

M = models.Message
A = models.ArchivedMessage


def _age(session: Session, conversation_id: int, seqs: range, days: int) -> None:
    session.execute(
        update(M)
        .where(M.conversation_id == conversation_id, M.seq.in_(list(seqs)))
        .values(created_at=func.now() - timedelta(days=days))
    )


def _activity_total(session: Session) -> int:
    return int(
        session.scalar(select(func.coalesce(func.sum(models.message_activity.c.message_count), 0)))
    )


def _cutoff(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def test_old_messages_move_to_the_archive_and_the_rest_stay(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    for n in range(1, 11):
        send(session, group, alice if n % 2 else bob, f"message {n}")
    _age(session, group.id, range(1, 7), days=400)
    store.delete_message(session=session, conversation_id=group.id, seq=2, actor_id=bob.id)
    activity_before = _activity_total(session)

    assert store.archive_due(session=session, cutoff=_cutoff(365)).messages == 6
    assert store.archive_messages_batch(session=session, cutoff=_cutoff(365), limit=4) == 4
    assert store.archive_messages_batch(session=session, cutoff=_cutoff(365), limit=4) == 2
    assert store.archive_messages_batch(session=session, cutoff=_cutoff(365), limit=4) == 0

    live = session.scalars(select(M.seq).where(M.conversation_id == group.id).order_by(M.seq))
    assert list(live) == [7, 8, 9, 10]
    archived = {
        row.seq: row for row in session.scalars(select(A).where(A.conversation_id == group.id))
    }
    assert sorted(archived) == [1, 2, 3, 4, 5, 6]
    assert archived[1].body == "message 1"
    assert archived[1].sender_id == alice.id
    assert archived[2].body == ""  # a deleted message keeps no text in the archive
    assert archived[2].deleted_at is not None
    # The report counts what was sent, wherever it is kept now.
    assert _activity_total(session) == activity_before
    page = store.list_messages(
        session=session, conversation_id=group.id, limit=50, actor_id=alice.id
    )
    assert [m.seq for m in page.messages] == [7, 8, 9, 10]


def test_a_thread_moves_whole_or_stays(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    send(session, group, alice, "old question")  # 1: answered recently
    send(session, group, alice, "old remark")  # 2: answered long ago
    for original in (1, 2):
        store.send_message(
            session=session,
            conversation_id=group.id,
            sender_id=bob.id,
            body=f"answer to {original}",
            reply_to_seq=original,
        )  # 3 answers 1, 4 answers 2
    _age(session, group.id, range(1, 3), days=400)
    _age(session, group.id, range(4, 5), days=390)

    assert store.archive_messages_batch(session=session, cutoff=_cutoff(365)) == 2
    live = session.scalars(select(M.seq).where(M.conversation_id == group.id).order_by(M.seq))
    assert list(live) == [1, 3]  # the recent answer keeps its question


def test_a_purged_conversation_takes_its_archive_with_it(session: Session) -> None:
    alice = make_user(session)
    group = make_group(session, alice)
    send(session, group, alice, "old")
    _age(session, group.id, range(1, 2), days=400)
    assert store.archive_messages_batch(session=session, cutoff=_cutoff(365)) == 1
    store.delete_conversation(session=session, conversation_id=group.id, actor_id=alice.id)
    session.execute(
        update(models.Conversation)
        .where(models.Conversation.id == group.id)
        .values(deleted_at=func.now() - timedelta(days=400))
    )
    assert store.purge_conversations_batch(session=session, retention_days=30) == [group.id]
    assert (
        session.scalar(select(func.count()).select_from(A).where(A.conversation_id == group.id))
        == 0
    )


def test_archiving_skips_rows_writers_hold_and_never_blocks_a_send(fresh_engine: Engine) -> None:
    with Session(fresh_engine) as session:
        alice, bob = make_user(session), make_user(session)
        group = make_group(session, alice, bob)
        for n in range(1, 6):
            send(session, group, alice, f"message {n}")
        _age(session, group.id, range(1, 6), days=400)
        session.commit()

    with fresh_engine.connect() as writer, fresh_engine.connect() as archiver:
        # An edit in flight holds message 3.
        writer.execute(
            text("SELECT 1 FROM messages WHERE conversation_id = :c AND seq = 3 FOR UPDATE"),
            {"c": group.id},
        )
        with Session(bind=archiver) as archive_session:
            moved = store.archive_messages_batch(session=archive_session, cutoff=_cutoff(365))
            assert moved == 4  # all but the locked one, without waiting for it
            # While the batch is still open, a send to the same conversation
            # goes through: it would wait on a lock the batch holds if there were one.
            with Session(fresh_engine) as sender:
                sender.execute(text("SET LOCAL lock_timeout = '10s'"))
                sent = send(sender, group, bob, "new while archiving")
                sender.commit()
            assert sent.message.seq == 6
            archive_session.commit()
        writer.rollback()
    with Session(fresh_engine) as session:
        assert store.archive_messages_batch(session=session, cutoff=_cutoff(365)) == 1
        session.commit()
        live = session.scalars(select(M.seq).where(M.conversation_id == group.id)).all()
        assert live == [6]


def test_the_archive_command(fresh_database: URL) -> None:
    env = base_env(CHATDB_DATABASE_URL=as_env_url(fresh_database))
    result = run_chatdb("seed", "--users", "20", "--conversations", "10", "--messages", "500",
                        "--big-groups", "0", "--days", "60", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_one_line_error(
        run_chatdb("archive", "--older-than-days", "5", env=env), "CHATDB_RETENTION_DAYS"
    )
    due = run_chatdb("archive", "--older-than-days", "30", "--dry-run", "--json", env=env)
    assert due.returncode == 0, due.stderr
    expected = json.loads(due.stdout)["messages"]
    assert 0 < expected < 500
    done = run_chatdb("archive", "--older-than-days", "30", "--batch-size", "40", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["messages"] == expected
    assert report["batches"] == -(-expected // 40)
    again = run_chatdb("archive", "--older-than-days", "30", "--dry-run", "--json", env=env)
    assert json.loads(again.stdout)["messages"] == 0


@pytest.mark.parametrize("days", ["0", "x"])
def test_the_archive_command_refuses_bad_input(fresh_database: URL, days: str) -> None:
    env = base_env(CHATDB_DATABASE_URL=as_env_url(fresh_database))
    result = run_chatdb("archive", "--older-than-days", days, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
