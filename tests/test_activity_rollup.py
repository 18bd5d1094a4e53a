"""The activity rollup (messages per sender, conversation and UTC hour) stays equal to what
counting the messages gives, through every kind of write, and the activity
report reads the same from it as from the messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from chatdb import store
from chatdb.db import transaction
from chatdb.seed import SeedPlan, seed
from tests.factories import make_user

Row = tuple[datetime, int | None, int, int]


def counted(session: Session) -> set[Row]:
    rows = session.execute(
        text(
            "SELECT date_trunc('hour', created_at, 'UTC'), sender_id, conversation_id, count(*) "
            "FROM messages GROUP BY 1, 2, 3"
        )
    )
    return {(r[0], r[1], r[2], r[3]) for r in rows}


def rolled_up(session: Session) -> set[Row]:
    rows = session.execute(
        text(
            "SELECT hour, sender_id, conversation_id, message_count FROM message_activity "
            "WHERE message_count > 0"
        )
    )
    return {(r[0], r[1], r[2], r[3]) for r in rows}


def assert_rollup_exact(session: Session) -> None:
    assert rolled_up(session) == counted(session)


def test_every_write_keeps_the_rollup_exact(session: Session) -> None:
    alice, bob, carol = (make_user(session, name).id for name in ("alice", "bob", "carol"))
    group = store.create_group(
        session=session, creator_id=alice, title="g", member_ids=[bob, carol]
    )
    other = store.create_group(session=session, creator_id=bob, title="h", member_ids=[carol])
    for i in range(5):
        store.send_message(session=session, conversation_id=group.id, sender_id=alice, body=f"a{i}")
        store.send_message(session=session, conversation_id=group.id, sender_id=carol, body=f"c{i}")
        store.send_message(session=session, conversation_id=other.id, sender_id=carol, body=f"o{i}")
    assert_rollup_exact(session)
    assert sum(n for *_, n in rolled_up(session)) == 15

    # Edits and soft deletes change neither sender nor time: no rollup write.
    before = session.execute(text("SELECT xmin::text FROM message_activity")).all()
    store.edit_message(session=session, conversation_id=group.id, seq=1, body="x", actor_id=alice)
    store.delete_message(session=session, conversation_id=group.id, seq=2, actor_id=carol)
    assert session.execute(text("SELECT xmin::text FROM message_activity")).all() == before
    assert_rollup_exact(session)

    # A deleted user's messages move to the NULL sender (ON DELETE SET NULL).
    store.delete_user(session=session, user_id=carol)
    assert_rollup_exact(session)
    assert any(sender is None for _, sender, _, _ in rolled_up(session))

    # A deleted conversation can be restored, so its messages still count; once
    # purged, its rows go (ON DELETE CASCADE) and take their counts with them.
    store.delete_conversation(session=session, conversation_id=group.id)
    assert_rollup_exact(session)
    assert sum(n for *_, n in rolled_up(session)) == 15
    session.execute(text("DELETE FROM conversations WHERE id = :id"), {"id": group.id})
    assert_rollup_exact(session)
    assert sum(n for *_, n in rolled_up(session)) == 5


def test_the_report_reads_the_same_from_the_rollup_and_the_messages(session: Session) -> None:
    """Europe/Paris days are whole UTC hours (the rollup answers); Asia/Kolkata
    (+05:30) and America/St_Johns (-03:30) days are not (the messages answer).
    Both must match a direct count."""
    alice, bob = make_user(session, "alice").id, make_user(session, "bob").id
    group = store.create_group(session=session, creator_id=alice, title="g", member_ids=[bob])
    for i in range(40):
        sender = alice if i % 3 else bob
        store.send_message(session=session, conversation_id=group.id, sender_id=sender, body="m")
    # Spread the messages over three days (the UPDATE moves their rollup counts too).
    session.execute(
        text(
            "UPDATE messages SET created_at = now() - interval '90 minutes' * seq "
            "WHERE conversation_id = :c"
        ),
        {"c": group.id},
    )
    assert_rollup_exact(session)
    today = datetime.now(UTC).date()
    for tz in ("UTC", "Europe/Paris", "Asia/Kolkata", "America/St_Johns"):
        expected = session.execute(
            text(
                "SELECT sender_id, (created_at AT TIME ZONE :tz)::date AS day, count(*) "
                "FROM messages WHERE (created_at AT TIME ZONE :tz)::date BETWEEN :a AND :b "
                "GROUP BY 1, 2"
            ),
            {"tz": tz, "a": today - timedelta(days=4), "b": today + timedelta(days=1)},
        ).all()
        rows = store.activity(
            session=session, start=today - timedelta(days=4), end=today + timedelta(days=1), tz=tz
        )
        assert {(r.user_id, r.day, r.message_count) for r in rows} == {
            (e[0], e[1], e[2]) for e in expected
        }, tz


def test_seeding_keeps_the_rollup_exact(fresh_engine: Engine) -> None:
    """The seed fills the rollup in one GROUP BY: into empty tables (bulk mode)
    and into tables that have data."""
    plan = SeedPlan(users=60, conversations=80, messages=3_000, big_groups=1, big_group_size=30)
    for loaded in (1, 2):
        seed(fresh_engine, plan)
        with transaction(fresh_engine) as session:
            assert_rollup_exact(session)
            assert sum(n for *_, n in rolled_up(session)) == 3_000 * loaded


def test_one_users_sends_to_two_conversations_do_not_wait_for_each_other(
    fresh_engine: Engine,
) -> None:
    """The rollup row a send touches is keyed by its conversation, so a second
    open transaction of the same sender elsewhere is not held up by the first."""
    with transaction(fresh_engine) as session:
        alice, bob = make_user(session, "alice").id, make_user(session, "bob").id
        first = store.create_group(session=session, creator_id=alice, title="a", member_ids=[bob])
        second = store.create_group(session=session, creator_id=alice, title="b", member_ids=[bob])
    with transaction(fresh_engine) as pending:
        store.send_message(session=pending, conversation_id=first.id, sender_id=alice, body="1")
        with transaction(fresh_engine) as other:
            # Fails (instead of hanging) if this send had to wait for `pending`.
            other.execute(text("SET LOCAL lock_timeout = '10s'"))
            store.send_message(session=other, conversation_id=second.id, sender_id=alice, body="2")
    with transaction(fresh_engine) as session:
        assert_rollup_exact(session)
