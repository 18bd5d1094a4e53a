"""Hash-partitioned messages (migration 0007, CHATDB_MESSAGE_PARTITIONS).

The whole suite also runs with the option set (see .ci/run); these tests check
the migration itself in both directions, with data, and that a conversation's
reads touch one partition.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chatdb import migrate, store
from chatdb.db import make_engine
from chatdb.seed import SeedPlan, seed
from tests.conftest import TEST_SETTINGS, create_database, drop_database
from tests.factories import make_group, make_user, send
from tests.test_backup import as_env_url
from tests.test_cli import assert_one_line_error, base_env, run_chatdb

PARTITIONS = 4


@pytest.fixture
def engine(server_url: URL, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A database migrated with plain messages, whatever the environment says."""
    name = f"chatdb_p_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    engine = make_engine(url, TEST_SETTINGS)
    monkeypatch.setenv("CHATDB_MESSAGE_PARTITIONS", "0")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
    drop_database(server_url, name)


def _before_partitioning() -> str:
    (step,) = [r for r in migrate.history() if r.revision == "0007"]
    assert step.down_revision is not None
    return step.down_revision


def _partition(engine: Engine, monkeypatch: pytest.MonkeyPatch, partitions: int) -> None:
    monkeypatch.setenv("CHATDB_MESSAGE_PARTITIONS", str(partitions))
    migrate.downgrade(engine, _before_partitioning())
    migrate.upgrade(engine)


def _snapshot(engine: Engine) -> tuple[Any, ...]:
    """Every message and activity row, and every message index, as comparable values."""
    with engine.connect() as connection:
        messages = connection.execute(
            text(
                "SELECT md5(string_agg(m::text, '|' ORDER BY conversation_id, seq)) FROM messages m"
            )
        ).scalar_one()
        activity = connection.execute(
            text(
                "SELECT md5(string_agg(a::text, '|' ORDER BY hour, sender_id, conversation_id)) "
                "FROM message_activity a"
            )
        ).scalar_one()
        definitions = _sorted(
            connection,
            "SELECT replace(pg_get_indexdef(indexrelid), ' ON ONLY ', ' ON ') "
            "FROM pg_index WHERE indrelid = 'messages'::regclass",
        )
        constraints = _sorted(
            connection,
            "SELECT conname || ' ' || pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE conrelid = 'messages'::regclass AND conparentid = 0",
        )
        referencing = _sorted(
            connection,
            "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE confrelid = 'messages'::regclass AND conparentid = 0",
        )
        triggers = _sorted(
            connection,
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE tgrelid = 'messages'::regclass AND NOT tgisinternal",
        )
    return messages, activity, definitions, constraints, referencing, triggers


def _sorted(connection: Any, query: str) -> list[str]:
    return sorted(connection.execute(text(query)).scalars())


def _layout(engine: Engine) -> tuple[str, int, list[int]]:
    """messages' relkind, its number of partitions, and the rows in each that has any."""
    with engine.connect() as connection:
        kind = connection.execute(
            text("SELECT relkind FROM pg_class WHERE oid = 'messages'::regclass")
        ).scalar_one()
        counts = connection.execute(
            text("SELECT count(*) FROM messages GROUP BY tableoid ORDER BY tableoid")
        ).scalars()
        return kind, len(migrate.partition_tables(connection)), list(counts)


def test_partitioning_keeps_every_row_key_index_and_trigger_both_ways(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(engine, SeedPlan(users=40, conversations=60, messages=3_000, big_groups=0))
    before = _snapshot(engine)
    assert _layout(engine) == ("r", 0, [3_000])

    _partition(engine, monkeypatch, PARTITIONS)
    kind, partitions, counts = _layout(engine)
    assert (kind, partitions, len(counts)) == ("p", PARTITIONS, PARTITIONS)  # none empty
    assert sum(counts) == 3_000
    assert _snapshot(engine) == before

    # A partitioned table partitioned again, as `chatdb db partition` does.
    assert migrate.repartition_messages(engine, 3) == PARTITIONS
    assert _layout(engine)[:2] == ("p", 3)
    assert _snapshot(engine) == before

    monkeypatch.setenv("CHATDB_MESSAGE_PARTITIONS", "0")
    migrate.downgrade(engine, _before_partitioning())
    assert _layout(engine) == ("r", 0, [3_000])
    migrate.upgrade(engine)
    assert _layout(engine) == ("r", 0, [3_000])  # the option unset: nothing changes
    # (Compared at the head: later migrations change messages, 0009 its columns.)
    assert _snapshot(engine) == before


def test_the_partition_command(fresh_database: URL) -> None:
    env = base_env(CHATDB_DATABASE_URL=as_env_url(fresh_database))
    assert_one_line_error(run_chatdb("db", "partition", "4", env=env), "--yes")
    done = run_chatdb("db", "partition", "4", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert "4 now" in done.stdout
    back = run_chatdb("db", "partition", "0", "--yes", env=env)
    assert back.returncode == 0, back.stderr
    assert "4 partitions before, no now" in back.stdout
    assert run_chatdb("db", "partition", "2000", "--yes", env=env).returncode == 2


def test_a_partitioned_table_enforces_the_same_rules(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _partition(engine, monkeypatch, PARTITIONS)
    with Session(engine) as session:
        alice, bob = make_user(session), make_user(session)
        group = make_group(session, alice, bob)
        first = send(session, group, alice, "hello", key="k1")
        again = send(session, group, alice, "hello", key="k1")
        send(session, group, bob, "hi")
        session.commit()
    assert again.message.seq == first.message.seq  # the idempotency index still holds
    with engine.connect() as connection:
        # The activity triggers fire on the partitioned table.
        counted = connection.execute(
            text("SELECT sum(message_count) FROM message_activity WHERE conversation_id = :c"),
            {"c": group.id},
        ).scalar_one()
        assert counted == 2
        with pytest.raises(IntegrityError, match="duplicate key"):
            connection.execute(
                text(
                    "INSERT INTO messages (conversation_id, seq, sender_id, body) "
                    "VALUES (:c, 1, :u, 'again')"
                ),
                {"c": group.id, "u": alice.id},
            )


def _partitions_read(connection: Any, statement: str, parameters: Any) -> set[str]:
    """The message partitions a statement's plan actually ran a scan on."""
    plan = connection.exec_driver_sql(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
    ).scalar_one()
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        name = node.get("Relation Name", "")
        if re.fullmatch(r"messages_p\d+", name) and node.get("Actual Loops", 0) > 0:
            found.add(name)
        for child in node.get("Plans", []):
            walk(child)

    walk((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
    return found


def test_a_conversations_reads_touch_one_partition(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _partition(engine, monkeypatch, PARTITIONS)
    with Session(engine) as session:
        alice, bob = make_user(session), make_user(session)
        groups = [make_group(session, alice, bob, title=f"g{i}") for i in range(8)]
        for group in groups:
            for n in range(30):
                send(session, group, alice if n % 2 else bob, f"message {n}")
        session.commit()

    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "messages" in statement and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            captured.append((statement, parameters))

    target = groups[3]
    with Session(engine) as session:
        event.listen(engine, "before_cursor_execute", capture)
        try:
            newest = store.list_messages(
                session=session, conversation_id=target.id, limit=10, actor_id=alice.id
            )
            store.list_messages(
                session=session,
                conversation_id=target.id,
                before=newest.messages[0].seq,
                limit=10,
                actor_id=alice.id,
            )
            store.get_message(session=session, conversation_id=target.id, seq=5, actor_id=bob.id)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        assert len(captured) >= 3
        connection = session.connection()
        for statement, parameters in captured:
            assert len(_partitions_read(connection, statement, parameters)) == 1, statement
