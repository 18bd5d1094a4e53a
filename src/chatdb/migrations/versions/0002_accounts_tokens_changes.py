"""accounts, sign-in tokens and the change log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:15:00.793306
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


NOTIFY_FUNCTION = """
CREATE FUNCTION chatdb_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chatdb_changes', '');
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("message_seq", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('message.created', 'message.edited', 'message.deleted', 'message.restored', 'member.added', 'member.removed', 'member.role', 'read', 'conversation.renamed', 'conversation.deleted')",
            name=op.f("ck_changes_kind"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changes")),
    )
    op.create_index(
        "ix_changes_user_id_id",
        "changes",
        ["user_id", "id"],
        unique=False,
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    op.create_index(
        "uq_changes_conversation_id_change_seq",
        "changes",
        ["conversation_id", "change_seq"],
        unique=True,
    )
    op.create_table(
        "auth_tokens",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "octet_length(token_hash) = 32", name=op.f("ck_auth_tokens_token_hash_length")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_auth_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_tokens")),
    )
    op.create_index("ix_auth_tokens_user_id", "auth_tokens", ["user_id"], unique=False)
    op.create_index("uq_auth_tokens_token_hash", "auth_tokens", ["token_hash"], unique=True)
    op.add_column(
        "conversations",
        sa.Column("last_change_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("users", sa.Column("password_hash", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_conversations_last_change_seq_nonnegative"),
        "conversations",
        "last_change_seq >= 0",
    )
    # A wake-up call for live-update streams when changes commit. NOTIFY is
    # delivered only on commit and carries nothing the stream relies on: the
    # changes table is the source of truth.
    op.execute(NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER changes_notify AFTER INSERT ON changes "
        "FOR EACH STATEMENT EXECUTE FUNCTION chatdb_notify_changes()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER changes_notify ON changes")
    op.execute("DROP FUNCTION chatdb_notify_changes()")
    op.drop_constraint(op.f("ck_conversations_last_change_seq_nonnegative"), "conversations")
    op.drop_column("users", "password_hash")
    op.drop_column("conversations", "last_change_seq")
    op.drop_index("uq_auth_tokens_token_hash", table_name="auth_tokens")
    op.drop_index("ix_auth_tokens_user_id", table_name="auth_tokens")
    op.drop_table("auth_tokens")
    op.drop_index("uq_changes_conversation_id_change_seq", table_name="changes")
    op.drop_index(
        "ix_changes_user_id_id",
        table_name="changes",
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    op.drop_table("changes")
