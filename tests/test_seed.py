"""The seed: synthetic data that keeps every invariant the schema and the store rely on."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from chatdb import store
from chatdb.db import make_engine
from chatdb.errors import Conflict, Invalid
from chatdb.seed import SeedPlan, SeedReport, _rng, _user_identity, seed
from tests.conftest import TEST_SETTINGS, create_database, drop_database
from tests.factories import make_user

PLAN = SeedPlan(users=50, conversations=80, messages=3_000, big_groups=1, big_group_size=30)


def _scalar(conn: Connection, query: str) -> Any:
    return conn.execute(text(query)).scalar_one()


def _violations(conn: Connection) -> dict[str, int]:
    """How many rows break each invariant (all zero when the data is sound)."""
    checks = {
        "seq gaps": """
            SELECT count(*) FROM conversations c
            WHERE c.last_seq <> (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)
               OR c.last_seq <> (SELECT coalesce(max(seq), 0) FROM messages m
                                 WHERE m.conversation_id = c.id)""",
        "sender not a member": """
            SELECT count(*) FROM messages m WHERE NOT EXISTS (
                SELECT FROM conversation_members cm
                WHERE cm.conversation_id = m.conversation_id AND cm.user_id = m.sender_id)""",
        "time not increasing with seq": """
            SELECT count(*) FROM (
                SELECT created_at <= lag(created_at) OVER w AS bad FROM messages
                WINDOW w AS (PARTITION BY conversation_id ORDER BY seq)) x WHERE bad""",
        "message before its conversation": """
            SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id
            WHERE m.created_at < c.created_at""",
        "message in the future": "SELECT count(*) FROM messages WHERE created_at > now()",
        "wrong last activity": """
            SELECT count(*) FROM conversations c
            WHERE c.last_activity_at <> coalesce(
                (SELECT created_at FROM messages m
                 WHERE m.conversation_id = c.id AND m.seq = c.last_seq),
                c.created_at)""",
        "bad direct conversation": """
            SELECT count(*) FROM conversations c WHERE c.kind = 'direct' AND (
                c.title IS NOT NULL
                OR NOT c.direct_user_low_id < c.direct_user_high_id
                OR (SELECT array_agg(cm.user_id ORDER BY cm.user_id) FROM conversation_members cm
                    WHERE cm.conversation_id = c.id AND cm.role = 'owner')
                   IS DISTINCT FROM ARRAY[c.direct_user_low_id, c.direct_user_high_id]
                OR (SELECT count(*) FROM conversation_members cm
                    WHERE cm.conversation_id = c.id) <> 2)""",
        "bad group": """
            SELECT count(*) FROM conversations c WHERE c.kind = 'group' AND (
                c.title IS NULL OR btrim(c.title) = '' OR c.direct_user_low_id IS NOT NULL
                OR (SELECT count(*) FROM conversation_members cm
                    WHERE cm.conversation_id = c.id AND cm.role = 'owner') NOT BETWEEN 1 AND 5)""",
        "read marker out of range": """
            SELECT count(*) FROM conversation_members cm
            JOIN conversations c ON c.id = cm.conversation_id
            WHERE cm.last_read_seq NOT BETWEEN 0 AND c.last_seq""",
        "sender has not read own message": """
            SELECT count(*) FROM conversation_members cm WHERE cm.last_read_seq < (
                SELECT coalesce(max(seq), 0) FROM messages m
                WHERE m.conversation_id = cm.conversation_id AND m.sender_id = cm.user_id)""",
        "member older than user": """
            SELECT count(*) FROM conversation_members cm JOIN users u ON u.id = cm.user_id
            WHERE cm.joined_at < u.created_at""",
    }
    return {name: _scalar(conn, query) for name, query in checks.items()}


def _checksum(conn: Connection) -> str:
    """A digest of everything the seed promises to reproduce (timestamps excepted)."""
    return str(
        _scalar(
            conn,
            """
            SELECT md5(
                (SELECT string_agg(concat_ws('|', id, username, email, display_name), ','
                                   ORDER BY id) FROM users)
                || (SELECT string_agg(concat_ws('|', id, kind, title, direct_user_low_id,
                                                direct_user_high_id, last_seq), ','
                                      ORDER BY id) FROM conversations)
                || (SELECT string_agg(concat_ws('|', conversation_id, user_id, role,
                                                last_read_seq), ','
                                      ORDER BY conversation_id, user_id)
                    FROM conversation_members)
                || (SELECT string_agg(concat_ws('|', conversation_id, seq, sender_id, body), ','
                                      ORDER BY conversation_id, seq) FROM messages))""",
        )
    )


def _schema(conn: Connection) -> set[tuple[str, str]]:
    """Every index and constraint of the public schema, by name and definition."""
    rows = conn.execute(
        text(
            """
            SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
            JOIN pg_class t ON t.oid = indrelid
            WHERE t.relnamespace = 'public'::regnamespace
            UNION ALL
            SELECT conname, pg_get_constraintdef(oid) || ' valid=' || convalidated::text
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace"""
        )
    )
    return {(r[0], r[1]) for r in rows}


@pytest.fixture
def other_engine(server_url: URL, template_name: str) -> Iterator[Engine]:
    """A second fresh database, for comparing two seeds."""
    name = f"chatdb_t_{uuid.uuid4().hex[:12]}"
    engine = make_engine(create_database(server_url, name, template=template_name), TEST_SETTINGS)
    yield engine
    engine.dispose()
    drop_database(server_url, name)


def test_seed_loads_the_plan_with_every_invariant_kept(fresh_engine: Engine) -> None:
    with fresh_engine.connect() as conn:
        schema_before = _schema(conn)
    calls: list[tuple[str, int, int]] = []

    report = seed(fresh_engine, PLAN, progress=lambda *call: calls.append(call))

    assert isinstance(report, SeedReport)
    assert (report.users, report.conversations, report.messages) == (50, 80, 3_000)
    with fresh_engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM users") == 50
        assert _scalar(conn, "SELECT count(*) FROM conversations") == 80
        assert _scalar(conn, "SELECT count(*) FROM messages") == 3_000
        assert _scalar(conn, "SELECT sum(last_seq) FROM conversations") == 3_000
        assert _scalar(conn, "SELECT count(*) FROM conversation_members") == report.members
        violations = _violations(conn)
        assert violations == dict.fromkeys(violations, 0)
        # Mostly direct conversations, groups of all sizes, the one big group.
        kinds = dict(
            conn.execute(text("SELECT kind, count(*) FROM conversations GROUP BY kind")).all()
        )
        assert kinds["direct"] > kinds["group"] > 1
        sizes = conn.execute(
            text(
                "SELECT count(*) FROM conversation_members cm JOIN conversations c "
                "ON c.id = cm.conversation_id WHERE c.kind = 'group' GROUP BY c.id"
            )
        ).scalars()
        assert 30 in set(sizes)
        # Skewed: the busiest conversation has far more than its share, some are quiet.
        assert _scalar(conn, "SELECT max(last_seq) FROM conversations") > 5 * 3_000 / 80
        assert _scalar(conn, "SELECT count(*) FROM conversations WHERE last_seq < 10") > 0
        # Most members have read everything, some have not.
        unread = _scalar(
            conn,
            "SELECT avg((cm.last_read_seq < c.last_seq)::int) FROM conversation_members cm "
            "JOIN conversations c ON c.id = cm.conversation_id",
        )
        assert 0 < unread < 0.5
        # Some users never sent anything, and some not in the last 30 days.
        assert (
            _scalar(
                conn,
                "SELECT count(*) FROM users u "
                "WHERE NOT EXISTS (SELECT FROM messages WHERE sender_id = u.id)",
            )
            > 0
        )
        # Within the last `days` days (the window ends when the seed started).
        assert (
            _scalar(
                conn, "SELECT count(*) FROM messages WHERE created_at < now() - interval '90 days'"
            )
            == 0
        )
        # The bulk load dropped and rebuilt keys and indexes: the schema is unchanged.
        assert _schema(conn) == schema_before
        # ANALYZE ran: the planner knows the new size.
        assert (
            _scalar(conn, "SELECT reltuples FROM pg_class WHERE oid = 'messages'::regclass")
            == 3_000
        )
    with Session(fresh_engine) as session:
        inactive = store.inactive_users(session=session, days=30, limit=100).users
        assert any(u.last_message_at is None for u in inactive)
        assert any(u.last_message_at is not None for u in inactive)

    phases = {phase for phase, _, _ in calls}
    assert {"users", "conversations", "members", "messages", "analyze"} <= phases
    # Messages were loaded without their indexes (then rebuilt), although
    # reactions and mentions have foreign keys to them: they were empty too.
    with fresh_engine.connect() as conn:
        message_indexes = _scalar(
            conn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'messages'"
        )
    assert max(total for p, _, total in calls if p == "indexes") > message_indexes
    for phase in phases:
        last = [(done, total) for p, done, total in calls if p == phase][-1]
        assert last[0] == last[1]
    # Every phase is timed, in the order it ran, and the phases add up to the load.
    assert list(report.phase_seconds) == list(dict.fromkeys(p for p, _, _ in calls))
    assert all(seconds >= 0 for seconds in report.phase_seconds.values())
    assert sum(report.phase_seconds.values()) <= report.seconds + 0.05


def test_same_seed_same_rows_other_seed_other_rows(
    fresh_engine: Engine, other_engine: Engine
) -> None:
    seed(fresh_engine, PLAN)
    seed(other_engine, PLAN)
    with fresh_engine.connect() as a, other_engine.connect() as b:
        assert _checksum(a) == _checksum(b)

    with other_engine.begin() as conn:
        conn.execute(text("TRUNCATE users, conversations RESTART IDENTITY CASCADE"))
    seed(other_engine, dataclasses.replace(PLAN, seed=7))
    with fresh_engine.connect() as a, other_engine.connect() as b:
        assert _checksum(a) != _checksum(b)


def test_seeding_twice_adds_new_rows_beside_the_old(fresh_engine: Engine) -> None:
    with Session(fresh_engine) as session:
        make_user(session, name="someone")
        session.commit()
    seed(fresh_engine, PLAN)
    seed(fresh_engine, PLAN)

    with fresh_engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM users") == 2 * 50 + 1
        assert _scalar(conn, "SELECT count(*) FROM conversations") == 2 * 80
        assert _scalar(conn, "SELECT count(*) FROM messages") == 2 * 3_000
        violations = _violations(conn)
        assert violations == dict.fromkeys(violations, 0)
        # The second seed's rows are its own: no conversation mixes users of both.
        assert (
            _scalar(
                conn,
                "SELECT count(*) FROM (SELECT cm.conversation_id FROM conversation_members cm "
                "GROUP BY 1 HAVING min(user_id) <= 51 AND max(user_id) > 51) x",
            )
            == 0
        )
    # The identity sequences moved past the seeded ids.
    with Session(fresh_engine) as session:
        assert make_user(session).id == 2 * 50 + 2
        session.rollback()


def test_a_plan_that_cannot_be_met_is_refused(fresh_engine: Engine) -> None:
    with pytest.raises(Invalid):
        seed(fresh_engine, SeedPlan(users=0, conversations=5, messages=0))
    with pytest.raises(Invalid):
        seed(fresh_engine, SeedPlan(users=5, conversations=0, messages=10))
    with pytest.raises(Invalid):
        seed(fresh_engine, SeedPlan(users=-1))
    with pytest.raises(Invalid):  # more than one message per millisecond
        seed(fresh_engine, SeedPlan(users=5, conversations=1, messages=10**9, days=1))


def test_a_failure_midway_leaves_nothing_behind(fresh_engine: Engine) -> None:
    with fresh_engine.connect() as conn:
        schema_before = _schema(conn)

    def fail_during_messages(phase: str, done: int, total: int) -> None:
        if phase == "messages" and done > 0:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        seed(fresh_engine, PLAN, progress=fail_during_messages)
    with fresh_engine.connect() as conn:
        for table in ("users", "conversations", "conversation_members", "messages"):
            assert _scalar(conn, f"SELECT count(*) FROM {table}") == 0  # noqa: S608
        # The keys and indexes dropped for the bulk load are back.
        assert _schema(conn) == schema_before
    assert seed(fresh_engine, PLAN).messages == 3_000


def test_a_taken_username_stops_the_seed_with_a_conflict(fresh_engine: Engine) -> None:
    # The seed's first user will get id 2 (one user exists), with this name.
    username, _, _ = _user_identity(_rng(PLAN, "names"), 2)
    with Session(fresh_engine) as session:
        make_user(session, name=username.upper())
        session.commit()
    with pytest.raises(Conflict, match="duplicate"):
        seed(fresh_engine, PLAN)
    with fresh_engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM users") == 1
        assert _scalar(conn, "SELECT count(*) FROM messages") == 0


def test_tiny_plans_still_work(fresh_engine: Engine) -> None:
    # Two users allow one direct conversation; the others become groups of two.
    report = seed(
        fresh_engine, SeedPlan(users=2, conversations=5, messages=40, big_groups=3, days=1)
    )
    assert report.members > 0
    with fresh_engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM messages") == 40
        assert _scalar(conn, "SELECT count(*) FROM conversations WHERE kind = 'direct'") == 1
        violations = _violations(conn)
        assert violations == dict.fromkeys(violations, 0)
