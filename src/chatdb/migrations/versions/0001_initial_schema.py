"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 00:02:27.532736
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(email) <= 254 AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'",
            name=op.f("ck_users_email_format"),
        ),
        sa.CheckConstraint(
            "username ~ '^[A-Za-z0-9_.-]{1,50}$'", name=op.f("ck_users_username_format")
        ),
        sa.CheckConstraint(
            "char_length(display_name) BETWEEN 1 AND 100", name=op.f("ck_users_display_name_length")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index(
        "uq_users_email_lower", "users", [sa.literal_column("lower(email)")], unique=True
    )
    op.create_index(
        "uq_users_username_lower", "users", [sa.literal_column("lower(username)")], unique=True
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("direct_user_low_id", sa.BigInteger(), nullable=True),
        sa.Column("direct_user_high_id", sa.BigInteger(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "last_activity_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind = 'direct' OR (direct_user_low_id IS NULL AND direct_user_high_id IS NULL)",
            name=op.f("ck_conversations_direct_users_only_for_direct"),
        ),
        sa.CheckConstraint("kind IN ('direct', 'group')", name=op.f("ck_conversations_kind")),
        sa.CheckConstraint(
            "char_length(title) BETWEEN 1 AND 200", name=op.f("ck_conversations_title_length")
        ),
        sa.CheckConstraint(
            "direct_user_low_id < direct_user_high_id",
            name=op.f("ck_conversations_direct_users_ordered"),
        ),
        sa.CheckConstraint("last_seq >= 0", name=op.f("ck_conversations_last_seq_nonnegative")),
        sa.ForeignKeyConstraint(
            ["direct_user_high_id"],
            ["users.id"],
            name=op.f("fk_conversations_direct_user_high_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["direct_user_low_id"],
            ["users.id"],
            name=op.f("fk_conversations_direct_user_low_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
    )
    op.create_index(
        "ix_conversations_direct_user_high_id",
        "conversations",
        ["direct_user_high_id"],
        unique=False,
    )
    op.create_index(
        "uq_conversations_direct_pair",
        "conversations",
        ["direct_user_low_id", "direct_user_high_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'direct'"),
    )
    op.create_table(
        "conversation_members",
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.Text(), server_default=sa.text("'member'"), nullable=False),
        sa.Column("last_read_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "joined_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "role IN ('owner', 'member')", name=op.f("ck_conversation_members_role")
        ),
        sa.CheckConstraint(
            "last_read_seq >= 0", name=op.f("ck_conversation_members_last_read_seq_nonnegative")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_members_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_conversation_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "user_id", name=op.f("pk_conversation_members")),
    )
    op.create_index(
        "ix_conversation_members_user_id",
        "conversation_members",
        ["user_id", "conversation_id"],
        unique=False,
    )
    op.create_table(
        "messages",
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sender_id", sa.BigInteger(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "char_length(body) <= 4000 AND btrim(body, E' \\t\\r\\n') <> ''",
            name=op.f("ck_messages_body_length"),
        ),
        sa.CheckConstraint(
            "char_length(idempotency_key) BETWEEN 1 AND 100",
            name=op.f("ck_messages_idempotency_key_length"),
        ),
        sa.CheckConstraint("seq > 0", name=op.f("ck_messages_seq_positive")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sender_id"],
            ["users.id"],
            name=op.f("fk_messages_sender_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "seq", name=op.f("pk_messages")),
    )
    op.create_index(
        "ix_messages_created_at_sender_id", "messages", ["created_at", "sender_id"], unique=False
    )
    op.create_index(
        "ix_messages_sender_id_created_at", "messages", ["sender_id", "created_at"], unique=False
    )
    op.create_index(
        "uq_messages_idempotency",
        "messages",
        ["conversation_id", "sender_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_messages_idempotency",
        table_name="messages",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index("ix_messages_sender_id_created_at", table_name="messages")
    op.drop_index("ix_messages_created_at_sender_id", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_conversation_members_user_id", table_name="conversation_members")
    op.drop_table("conversation_members")
    op.drop_index(
        "uq_conversations_direct_pair",
        table_name="conversations",
        postgresql_where=sa.text("kind = 'direct'"),
    )
    op.drop_index("ix_conversations_direct_user_high_id", table_name="conversations")
    op.drop_table("conversations")
    op.drop_index("uq_users_username_lower", table_name="users")
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_table("users")
