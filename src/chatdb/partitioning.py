"""Hash-partitioning messages by conversation, and back (migration 0007 and
`chatdb db partition`).

The rebuild is generic: it reads messages' constraints, indexes and triggers,
and the foreign keys that point at messages, from the catalog, so it carries
whatever the migrations defined. The rows are copied before the indexes, keys
and triggers come back (one sort per index instead of an insertion per row; no
trigger sees the copy). It holds an ACCESS EXCLUSIVE lock on messages while it
copies every message once: run it at install time, or in a maintenance window.
"""

from sqlalchemy import Connection, text

TABLE = "messages"
STAGING = "messages_rebuilt"


def partition_name(index: int, partitions: int, table: str = TABLE) -> str:
    return f"{table}_p{index:0{max(2, len(str(partitions - 1)))}d}"


def partition_count(connection: Connection) -> int:
    """How many partitions messages has (0: a plain table)."""
    count = connection.execute(
        text("SELECT count(*) FROM pg_inherits WHERE inhparent = CAST(:t AS regclass)"),
        {"t": TABLE},
    ).scalar_one()
    return int(count)


def rebuild(connection: Connection, partitions: int) -> None:
    """messages again, as `partitions` hash partitions (0: one plain table), in
    the caller's transaction."""
    if partitions < 0:
        raise ValueError("partitions must be 0 or more")

    def run(statement: str) -> None:
        connection.execute(text(statement))

    # Definitions from the server's own catalog, not from input: safe to run as SQL.
    constraints = _rows(
        connection,
        # Primary and unique keys first: foreign keys (a reply's, say) may need them.
        # Only the table's own: a foreign key to a partitioned table (a reply's, to
        # its original) has a clone per referenced partition, which goes with it.
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = CAST(:t AS regclass) AND conparentid = 0 "
        "ORDER BY contype <> 'p', contype <> 'u', conname",
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
            # Named after the staging table: the old partitions still hold the names.
            f"CREATE TABLE {partition_name(index, partitions, STAGING)} PARTITION OF {STAGING} "
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
    for index in range(partitions):
        staged, final = (
            partition_name(index, partitions, STAGING),
            partition_name(index, partitions),
        )
        run(f"ALTER TABLE {staged} RENAME TO {final}")

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
