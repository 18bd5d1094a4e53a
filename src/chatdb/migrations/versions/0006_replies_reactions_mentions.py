"""replies and threads, emoji reactions, @mentions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 22:10:00

- messages.reply_to_seq names an earlier message of the same conversation
  (a foreign key on (conversation_id, reply_to_seq), so it holds if messages
  are partitioned by conversation); messages.reply_count is kept by the send
  that adds a reply; a partial index serves thread pages.
- message_reactions: one row per (message, emoji, user).
- message_mentions: who a message mentions; conversation_members gets
  unread_mention_count, kept in the send and read-marker transactions.
- changes: 'reaction.added' and 'reaction.removed', with the emoji.

Adding the constraints on messages reads the table once (every existing row
has no reply_to_seq, so they hold); no table is rewritten.

Downgrading drops replies, reactions and mentions, and their changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = (
    "'message.created', 'message.edited', 'message.deleted', 'message.restored', "
    "'member.added', 'member.removed', 'member.role', 'read', 'conversation.renamed', "
    "'conversation.deleted', 'conversation.restored'"
)
NEW_KINDS = (
    "'message.created', 'message.edited', 'message.deleted', 'message.restored', "
    "'reaction.added', 'reaction.removed', "
    "'member.added', 'member.removed', 'member.role', 'read', 'conversation.renamed', "
    "'conversation.deleted', 'conversation.restored'"
)


def upgrade() -> None:
    # Constant defaults: no table rewrite.
    op.add_column("messages", sa.Column("reply_to_seq", sa.BigInteger(), nullable=True))
    op.add_column(
        "messages",
        sa.Column("reply_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_messages_reply_to_earlier"), "messages", "reply_to_seq > 0 AND reply_to_seq < seq"
    )
    op.create_check_constraint(
        op.f("ck_messages_reply_count_nonnegative"), "messages", "reply_count >= 0"
    )
    op.create_foreign_key(
        op.f("fk_messages_conversation_id_reply_to_seq_messages"),
        "messages",
        "messages",
        ["conversation_id", "reply_to_seq"],
        ["conversation_id", "seq"],
    )
    op.create_index(
        "ix_messages_conversation_id_reply_to_seq_seq",
        "messages",
        ["conversation_id", "reply_to_seq", "seq"],
        unique=False,
        postgresql_where=sa.text("reply_to_seq IS NOT NULL"),
    )

    op.add_column(
        "conversation_members",
        sa.Column(
            "unread_mention_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
    )
    op.create_check_constraint(
        op.f("ck_conversation_members_unread_mention_count_nonnegative"),
        "conversation_members",
        "unread_mention_count >= 0",
    )

    op.create_table(
        "message_reactions",
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("emoji", sa.Text(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(emoji) BETWEEN 1 AND 16", name=op.f("ck_message_reactions_emoji_length")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id", "seq"],
            ["messages.conversation_id", "messages.seq"],
            name=op.f("fk_message_reactions_conversation_id_seq_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_message_reactions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "conversation_id", "seq", "emoji", "user_id", name=op.f("pk_message_reactions")
        ),
    )
    op.create_index("ix_message_reactions_user_id", "message_reactions", ["user_id"])

    op.create_table(
        "message_mentions",
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id", "seq"],
            ["messages.conversation_id", "messages.seq"],
            name=op.f("fk_message_mentions_conversation_id_seq_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_message_mentions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "conversation_id", "seq", "user_id", name=op.f("pk_message_mentions")
        ),
    )
    op.create_index(
        "ix_message_mentions_user_id_conversation_id_seq",
        "message_mentions",
        ["user_id", "conversation_id", "seq"],
    )

    op.add_column("changes", sa.Column("emoji", sa.Text(), nullable=True))
    op.drop_constraint(op.f("ck_changes_kind"), "changes", type_="check")
    op.create_check_constraint(op.f("ck_changes_kind"), "changes", f"kind IN ({NEW_KINDS})")


def downgrade() -> None:
    op.execute("DELETE FROM changes WHERE kind IN ('reaction.added', 'reaction.removed')")
    op.drop_constraint(op.f("ck_changes_kind"), "changes", type_="check")
    op.create_check_constraint(op.f("ck_changes_kind"), "changes", f"kind IN ({OLD_KINDS})")
    op.drop_column("changes", "emoji")
    op.drop_table("message_mentions")
    op.drop_table("message_reactions")
    op.drop_constraint(
        op.f("ck_conversation_members_unread_mention_count_nonnegative"),
        "conversation_members",
        type_="check",
    )
    op.drop_column("conversation_members", "unread_mention_count")
    op.drop_index(
        "ix_messages_conversation_id_reply_to_seq_seq",
        table_name="messages",
        postgresql_where=sa.text("reply_to_seq IS NOT NULL"),
    )
    # Dropping the columns drops their constraints.
    op.drop_column("messages", "reply_count")
    op.drop_column("messages", "reply_to_seq")
