"""activity rollup (messages per sender, conversation and UTC hour); inbox index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 19:10:00

The activity report (messages per user per local day) read every message of
the range; it now sums this rollup, one row per sender, conversation and hour.
The conversation is in the key so that a send touches only a row that sends to
its conversation already serialise on (the conversation row's lock): one user's
sends to different conversations still run in parallel.
Statement-level triggers with transition tables keep it exact in the same
transaction as every write to messages: sends, seeds, edits, deletes cascading
from a conversation, and ON DELETE SET NULL from a deleted user.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One function for the three triggers. Each statement's rows are grouped by
# (hour, sender), old rows counting -1 and new rows +1, so an edit or a soft
# delete (same sender, same time) nets to nothing and writes nothing. Rows are
# locked in key order (decrements by an ordered FOR UPDATE, increments by an
# ordered upsert), so two bulk statements, such as two conversations deleted at
# once, cannot deadlock on the rollup. Decrements are plain UPDATEs: an upsert
# would check its negative proposed row against the CHECK before finding the
# conflict. date_trunc in UTC: the session's time zone must not move buckets.
_APPLY_DELTAS = """
        WITH d AS (
            SELECT hour, sender_id, conversation_id, sum(n) AS n FROM ({rows}) r
             GROUP BY 1, 2, 3 HAVING sum(n) <> 0
        ), locked AS (
            SELECT a.ctid AS row_id, d.n
              FROM message_activity a
              JOIN d ON a.hour = d.hour AND a.conversation_id = d.conversation_id
                    AND a.sender_id IS NOT DISTINCT FROM d.sender_id
             WHERE d.n < 0
             ORDER BY a.hour, a.sender_id, a.conversation_id
               FOR UPDATE OF a
        ), lowered AS (
            UPDATE message_activity a SET message_count = a.message_count + locked.n
              FROM locked WHERE a.ctid = locked.row_id
        )
        INSERT INTO message_activity AS a (hour, sender_id, conversation_id, message_count)
        SELECT hour, sender_id, conversation_id, n FROM d WHERE n > 0 ORDER BY 1, 2, 3
        ON CONFLICT (hour, sender_id, conversation_id)
        DO UPDATE SET message_count = a.message_count + EXCLUDED.message_count;"""

_NEW = (
    "SELECT date_trunc('hour', created_at, 'UTC') AS hour, sender_id, conversation_id, "
    "1 AS n FROM new_rows"
)
_OLD = (
    "SELECT date_trunc('hour', created_at, 'UTC') AS hour, sender_id, conversation_id, "
    "-1 AS n FROM old_rows"
)

ROLLUP_FUNCTION = f"""
CREATE FUNCTION chatdb_message_activity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN{_APPLY_DELTAS.format(rows=_NEW)}
    ELSIF TG_OP = 'DELETE' THEN{_APPLY_DELTAS.format(rows=_OLD)}
    ELSE{_APPLY_DELTAS.format(rows=f"{_NEW} UNION ALL {_OLD}")}
    END IF;
    RETURN NULL;
END
$$
"""

TRIGGERS = {
    "messages_activity_insert": "AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows",
    "messages_activity_update": (
        "AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    ),
    "messages_activity_delete": "AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.create_table(
        "message_activity",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sender_id", sa.BigInteger(), nullable=True),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "message_count >= 0", name=op.f("ck_message_activity_message_count_nonnegative")
        ),
        # Room on each page, so a send's +1 is a HOT update (no new index entry).
        postgresql_with={"fillfactor": "70"},
    )
    op.create_index(
        "uq_message_activity_hour_sender_id_conversation_id",
        "message_activity",
        ["hour", "sender_id", "conversation_id"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    # Counting every message once takes longer than chatdb's statement timeout at
    # tens of millions of messages; this transaction alone lifts it.
    op.execute("SET LOCAL statement_timeout = 0")
    op.execute(
        "INSERT INTO message_activity (hour, sender_id, conversation_id, message_count) "
        "SELECT date_trunc('hour', created_at, 'UTC'), sender_id, conversation_id, count(*) "
        "FROM messages GROUP BY 1, 2, 3"
    )
    op.execute(ROLLUP_FUNCTION)
    op.create_index(
        "ix_conversations_last_activity_at_id",
        "conversations",
        ["last_activity_at", "id"],
        unique=False,
    )
    for name, when in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT "
            "EXECUTE FUNCTION chatdb_message_activity()"
        )


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON messages")
    op.execute("DROP FUNCTION chatdb_message_activity()")
    op.drop_index("ix_conversations_last_activity_at_id", table_name="conversations")
    op.drop_index(
        "uq_message_activity_hour_sender_id_conversation_id", table_name="message_activity"
    )
    op.drop_table("message_activity")
