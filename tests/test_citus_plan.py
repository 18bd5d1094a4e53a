"""The sharding plan in docs/scaling.md stays true as the schema changes.

Citus distributes a table by one column and keeps small, shared tables as
reference tables copied to every node. Its rules, checked here against the
migrated database's own catalog:

- every primary key and unique index of a distributed table includes the
  distribution column (a node can only enforce uniqueness within its shard);
- a foreign key from a distributed table goes to a reference table, or to a
  co-located distributed table through the distribution column on both sides;
- a reference table has no foreign key to a distributed table.

Every table must be placed in the plan, so a new table fails here until someone
decides where it lives. The few constraints the plan changes on Citus are named
in PLANNED_CHANGES, and each must be explained in docs/scaling.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

SCALING_DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"

# Distributed tables and their distribution column. The per-conversation ones
# form one co-location group; the others have no foreign keys and stand alone.
DISTRIBUTED = {
    "conversations": "id",
    "conversation_members": "conversation_id",
    "messages": "conversation_id",
    "changes": "conversation_id",
    "message_activity": "conversation_id",
    "messages_archive": "conversation_id",
    "message_reactions": "conversation_id",
    "message_mentions": "conversation_id",
    "sign_in_failures": "key_hash",
}
REFERENCE = {"users", "auth_tokens"}
# Bookkeeping that stays on the coordinator.
LOCAL = {"alembic_version"}

# Constraints that break a rule today and that the plan replaces on Citus (see
# "What changes in the schema" in docs/scaling.md).
PLANNED_CHANGES = {
    "pk_changes",  # the stream's global id becomes (conversation_id, id)
    "uq_conversations_direct_pair",  # moves to direct_pairs, distributed by user
}


def _tables(session: Session) -> set[str]:
    rows = session.execute(
        text(
            # A partition (of messages, with CHATDB_MESSAGE_PARTITIONS) is storage, not a table.
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND NOT relispartition "
            "AND relnamespace = current_schema()::regnamespace"
        )
    )
    return set(rows.scalars())


def _unique_indexes(session: Session) -> list[tuple[str, str, list[str]]]:
    """(table, index, key columns) of every unique index; an expression counts as no column."""
    rows = session.execute(
        text(
            """
            SELECT t.relname, i.relname,
                   array(SELECT a.attname FROM unnest(x.indkey) AS k(attnum)
                         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum)
            FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_class t ON t.oid = x.indrelid
            WHERE x.indisunique AND NOT t.relispartition
              AND t.relnamespace = current_schema()::regnamespace
            """
        )
    )
    return [(table, index, list(columns)) for table, index, columns in rows]


def _foreign_keys(session: Session) -> list[tuple[str, str, list[str], str, list[str]]]:
    """(name, table, columns, referenced table, referenced columns) of every foreign key."""
    rows = session.execute(
        text(
            """
            SELECT c.conname, t.relname,
                   array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)
                         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                         ORDER BY k.i),
                   r.relname,
                   array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)
                         JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                         ORDER BY k.i)
            FROM pg_constraint c
            JOIN pg_class t ON t.oid = c.conrelid
            JOIN pg_class r ON r.oid = c.confrelid
            WHERE c.contype = 'f' AND c.conparentid = 0
              AND t.relnamespace = current_schema()::regnamespace
            """
        )
    )
    return [(name, table, list(cols), ref, list(refs)) for name, table, cols, ref, refs in rows]


def test_every_table_has_a_place_in_the_plan(session: Session) -> None:
    placed = set(DISTRIBUTED) | REFERENCE | LOCAL
    unplaced = _tables(session) - placed
    assert not unplaced, f"place these tables in docs/scaling.md and here: {sorted(unplaced)}"
    assert not placed - _tables(session) - LOCAL, "the plan names a table that no longer exists"


def _unique_without_distribution_column(session: Session) -> set[str]:
    return {
        index
        for table, index, columns in _unique_indexes(session)
        if table in DISTRIBUTED and DISTRIBUTED[table] not in columns
    }


def test_unique_keys_of_distributed_tables_include_the_distribution_column(
    session: Session,
) -> None:
    violations = _unique_without_distribution_column(session) - PLANNED_CHANGES
    assert not violations, f"unique without the distribution column: {sorted(violations)}"


def test_foreign_keys_stay_within_a_shard_or_point_at_reference_tables(
    session: Session,
) -> None:
    violations = []
    for name, table, columns, referenced, referenced_columns in _foreign_keys(session):
        if referenced in REFERENCE and table in REFERENCE | set(DISTRIBUTED):
            continue
        if table in DISTRIBUTED and referenced in DISTRIBUTED:
            pairs = set(zip(columns, referenced_columns, strict=True))
            if (DISTRIBUTED[table], DISTRIBUTED[referenced]) in pairs:
                continue
        violations.append(f"{name}: {table}({', '.join(columns)}) -> {referenced}")
    assert not violations, f"foreign keys Citus cannot enforce: {violations}"


def test_planned_changes_are_still_needed_and_explained(session: Session) -> None:
    """An entry in PLANNED_CHANGES that no longer breaks a rule is stale."""
    stale = PLANNED_CHANGES - _unique_without_distribution_column(session)
    assert not stale, f"no longer needed, remove from the plan: {sorted(stale)}"
    doc = SCALING_DOC.read_text(encoding="utf-8")
    unexplained = [name for name in PLANNED_CHANGES if f"`{name}`" not in doc]
    assert not unexplained, f"explain in docs/scaling.md: {unexplained}"


@pytest.mark.parametrize("table", sorted(DISTRIBUTED))
def test_distributed_tables_are_described_in_the_doc(table: str) -> None:
    doc = SCALING_DOC.read_text(encoding="utf-8")
    assert f"`{table}`" in doc
