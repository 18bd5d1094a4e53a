"""message search reads a stored tsvector column instead of recomputing it

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 01:30:00

0005 indexed an expression, chatdb_search_vector(body), to keep rows small.
The index finds matches without the vector, but ranking (ts_rank) needs it for
every match in the caller's conversations, so a search for a common word
recomputed it (two text search configurations) thousands of times: 330 ms of a
search's 340 ms at 100 k messages, and growing with the table. Now the vector
is a stored generated column, computed once when a message is written or
edited, and NULL once it is deleted (deleted messages are never found, and a
tombstone keeps no words).

The price, measured (README, "Search"): the messages table grows by the
vectors, and adding the column rewrites the table under an ACCESS EXCLUSIVE
lock, so on an existing large database this migration is downtime.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VECTOR = "CASE WHEN deleted_at IS NULL THEN chatdb_search_vector(body) END"


def upgrade() -> None:
    # Rewrites every message and builds the index: longer than chatdb's
    # statement timeout at tens of millions; this transaction alone lifts it.
    op.execute("SET LOCAL statement_timeout = 0")
    op.execute("DROP INDEX ix_messages_search")
    op.execute(
        f"ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({VECTOR}) STORED"
    )
    # fastupdate = off, as in 0005: each send writes its lexemes directly, so no
    # send pays for merging a pending list.
    op.execute(
        "CREATE INDEX ix_messages_search ON messages USING gin (search_vector) "
        "WITH (fastupdate = off) WHERE deleted_at IS NULL"
    )


def downgrade() -> None:
    op.execute("SET LOCAL statement_timeout = 0")
    op.execute("DROP INDEX ix_messages_search")
    op.execute("ALTER TABLE messages DROP COLUMN search_vector")
    op.execute(
        "CREATE INDEX ix_messages_search ON messages USING gin (chatdb_search_vector(body)) "
        "WITH (fastupdate = off) WHERE deleted_at IS NULL"
    )
