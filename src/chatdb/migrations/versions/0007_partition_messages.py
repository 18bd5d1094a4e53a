"""hash-partition messages by conversation (only when CHATDB_MESSAGE_PARTITIONS > 0)

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-23 22:20:00

With CHATDB_MESSAGE_PARTITIONS=N (N > 0) when this migration runs, messages
becomes a table PARTITION BY HASH (conversation_id) with N partitions,
messages_p00 … messages_pNN. Every key of messages starts with conversation_id,
so a conversation's page, send, edit or read touches one partition; vacuum,
index builds and the table's size limits apply per partition. Unset or 0, the
migration changes nothing; downgrading turns a partitioned table back into one
plain table.

The rebuild is generic: it reads messages' constraints, indexes and triggers,
and the foreign keys that point at messages, from the catalog, so it carries
whatever earlier migrations defined. The rows are copied before the indexes,
keys and triggers come back (one sort per index instead of an insertion per row;
no trigger sees the copy). It holds an ACCESS EXCLUSIVE lock on messages while
it copies: run it at install time, or in a maintenance window on a large
database (it rewrites every message once).

To partition an existing deployment later: set the variable, then
`chatdb db downgrade 0006` (a no-op on a plain table) and `chatdb db upgrade`.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import Connection, text

from chatdb.config import Settings

revision: str = "0007"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "messages"
STAGING = "messages_rebuilt"


def upgrade() -> None:
    # Read now, not from chatdb's cached settings: the option is the environment's
    # when this migration runs.
    partitions = Settings().message_partitions
    if partitions > 0 and not _is_partitioned(op.get_bind()):
        _rebuild(op.get_bind(), partitions)


def downgrade() -> None:
    if _is_partitioned(op.get_bind()):
        _rebuild(op.get_bind(), 0)


def partition_name(index: int, partitions: int) -> str:
    return f"{TABLE}_p{index:0{max(2, len(str(partitions - 1)))}d}"


def _is_partitioned(connection: Connection) -> bool:
    kind = connection.execute(
        text("SELECT relkind FROM pg_class WHERE oid = CAST(:t AS regclass)"), {"t": TABLE}
    ).scalar_one()
    return bool(kind == "p")


def _rebuild(connection: Connection, partitions: int) -> None:
    """messages again, as `partitions` hash partitions (0: one plain table)."""

    def run(statement: str) -> None:
        connection.execute(text(statement))

    # Definitions from the server's own catalog, not from input: safe to run as SQL.
    constraints = _rows(
        connection,
        # Primary and unique keys first: foreign keys (a reply's, say) may need them.
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = CAST(:t AS regclass) ORDER BY contype <> 'p', contype <> 'u', conname",
    )
    indexes = _rows(
        connection,
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = CAST(:t AS regclass) "
        "AND NOT EXISTS (SELECT FROM pg_constraint k "
        "WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) ORDER BY c.relname",
    )
    triggers = _rows(
        connection,
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
        "WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal AND tgparentid = 0 "
        "ORDER BY tgname",
    )
    # Other tables' foreign keys to messages (on a partitioned table, only the
    # parent constraint: its per-partition clones go and come back with it).
    referencing = _rows(
        connection,
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'f' AND confrelid = CAST(:t AS regclass) "
        "AND conrelid <> confrelid AND conparentid = 0 ORDER BY 1, 2",
    )
    # Generated columns are computed again on insert; they cannot be written.
    columns = ", ".join(
        name
        for (name,) in _rows(
            connection,
            "SELECT quote_ident(attname) FROM pg_attribute "
            "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped "
            "AND attgenerated = '' ORDER BY attnum",
        )
    )

    # Every message is read and written once; chatdb's statement timeout must not stop it.
    run("SET LOCAL statement_timeout = 0")
    run(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
    partition_by = " PARTITION BY HASH (conversation_id)" if partitions else ""
    run(
        f"CREATE TABLE {STAGING} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING GENERATED "
        f"INCLUDING STORAGE INCLUDING COMMENTS INCLUDING STATISTICS){partition_by}"
    )
    for index in range(partitions):
        run(
            f"CREATE TABLE {partition_name(index, partitions)} PARTITION OF {STAGING} "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {index})"
        )
    # In key order: each conversation's messages end up together on disk.
    run(
        f"INSERT INTO {STAGING} ({columns}) SELECT {columns} FROM {TABLE} "  # noqa: S608 (catalog names)
        "ORDER BY conversation_id, seq"
    )
    for table, name, _ in referencing:
        run(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    run(f"DROP TABLE {TABLE}")  # with its partitions, if it had any
    run(f"ALTER TABLE {STAGING} RENAME TO {TABLE}")

    for name, definition in constraints:
        run(f'ALTER TABLE {TABLE} ADD CONSTRAINT "{name}" {definition}')
    for _, definition in indexes:
        # A partitioned table's index reads "ON ONLY messages": that would build
        # the parent's index alone and leave it invalid.
        run(definition.replace(" ON ONLY ", " ON ", 1))
    for _, definition in triggers:
        run(definition)
    for table, name, definition in referencing:
        run(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    run(f"ANALYZE {TABLE}")


def _rows(connection: Connection, query: str) -> list[tuple[str, ...]]:
    return [tuple(row) for row in connection.execute(text(query), {"t": TABLE})]
