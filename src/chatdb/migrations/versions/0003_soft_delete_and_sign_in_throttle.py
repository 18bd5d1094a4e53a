"""conversation soft delete with a retention window, purgeable message text,
and sign-in throttling

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00.000000

Downgrading removes what the older schema cannot hold: soft-deleted
conversations are deleted for good (the old schema would show them again),
erased message text becomes '(deleted)', and `conversation.restored` changes go.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = (
    "'message.created', 'message.edited', 'message.deleted', 'message.restored', "
    "'member.added', 'member.removed', 'member.role', 'read', 'conversation.renamed', "
    "'conversation.deleted'"
)
NEW_KINDS = OLD_KINDS + ", 'conversation.restored'"
OLD_BODY = "char_length(body) <= 4000 AND btrim(body, E' \\t\\r\\n') <> ''"
NEW_BODY = (
    "char_length(body) <= 4000 AND (btrim(body, E' \\t\\r\\n') <> '' OR deleted_at IS NOT NULL)"
)


def upgrade() -> None:
    op.add_column(
        "conversations", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.drop_index(
        "uq_conversations_direct_pair",
        table_name="conversations",
        postgresql_where=sa.text("kind = 'direct'"),
    )
    op.create_index(
        "uq_conversations_direct_pair",
        "conversations",
        ["direct_user_low_id", "direct_user_high_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'direct' AND deleted_at IS NULL"),
    )
    op.create_index(
        "ix_conversations_deleted_at",
        "conversations",
        ["deleted_at"],
        unique=False,
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
    )
    op.drop_constraint(op.f("ck_messages_body_length"), "messages", type_="check")
    op.create_check_constraint(op.f("ck_messages_body_length"), "messages", NEW_BODY)
    op.create_index(
        "ix_messages_deleted_at",
        "messages",
        ["deleted_at"],
        unique=False,
        postgresql_where=sa.text("deleted_at IS NOT NULL AND body <> ''"),
    )
    op.drop_constraint(op.f("ck_changes_kind"), "changes", type_="check")
    op.create_check_constraint(op.f("ck_changes_kind"), "changes", f"kind IN ({NEW_KINDS})")
    op.create_table(
        "sign_in_failures",
        sa.Column("key_hash", sa.LargeBinary(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column(
            "first_failure_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "last_failure_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "octet_length(key_hash) = 32", name=op.f("ck_sign_in_failures_key_hash_length")
        ),
        sa.CheckConstraint(
            "scope IN ('account', 'address')", name=op.f("ck_sign_in_failures_scope")
        ),
        sa.CheckConstraint("failures > 0", name=op.f("ck_sign_in_failures_failures_positive")),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_sign_in_failures")),
    )


def downgrade() -> None:
    op.drop_table("sign_in_failures")
    op.execute("DELETE FROM changes WHERE kind = 'conversation.restored'")
    op.drop_constraint(op.f("ck_changes_kind"), "changes", type_="check")
    op.create_check_constraint(op.f("ck_changes_kind"), "changes", f"kind IN ({OLD_KINDS})")
    op.drop_index(
        "ix_messages_deleted_at",
        table_name="messages",
        postgresql_where=sa.text("deleted_at IS NOT NULL AND body <> ''"),
    )
    op.execute("UPDATE messages SET body = '(deleted)' WHERE body = '' AND deleted_at IS NOT NULL")
    op.drop_constraint(op.f("ck_messages_body_length"), "messages", type_="check")
    op.create_check_constraint(op.f("ck_messages_body_length"), "messages", OLD_BODY)
    op.execute("DELETE FROM conversations WHERE deleted_at IS NOT NULL")
    op.drop_index(
        "ix_conversations_deleted_at",
        table_name="conversations",
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
    )
    op.drop_index(
        "uq_conversations_direct_pair",
        table_name="conversations",
        postgresql_where=sa.text("kind = 'direct' AND deleted_at IS NULL"),
    )
    op.create_index(
        "uq_conversations_direct_pair",
        "conversations",
        ["direct_user_low_id", "direct_user_high_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'direct'"),
    )
    op.drop_column("conversations", "deleted_at")
