"""The schema: the one description of chatdb's tables. Migrations agree with it.

Why each choice was made is in docs/schema.md; the short version is in comments.
"""

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can refer to them and diffs stay empty.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

USERNAME_MAX = 50
EMAIL_MAX = 254
DISPLAY_NAME_MAX = 100
TITLE_MAX = 200
BODY_MAX = 4000
IDEMPOTENCY_KEY_MAX = 100
EMOJI_MAX = 16

CONVERSATION_KINDS = ("direct", "group")
MEMBER_ROLES = ("owner", "member")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    username: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str | None] = mapped_column(Text)
    # argon2id; NULL for users who cannot sign in (e.g. seeded ones).
    password_hash: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint(
            f"username ~ '^[A-Za-z0-9_.-]{{1,{USERNAME_MAX}}}$'", name="username_format"
        ),
        CheckConstraint(
            f"char_length(email) <= {EMAIL_MAX} AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'",
            name="email_format",
        ),
        CheckConstraint(
            f"char_length(display_name) BETWEEN 1 AND {DISPLAY_NAME_MAX}",
            name="display_name_length",
        ),
        # Case-insensitive uniqueness: "Alice" and "alice" are one account.
        Index("uq_users_username_lower", func.lower(text("username")), unique=True),
        Index("uq_users_email_lower", func.lower(text("email")), unique=True),
    )


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    # A direct conversation names its two users, lower id first, so one unique
    # index allows at most one direct conversation per pair.
    direct_user_low_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    direct_user_high_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    # The message counter: the next message takes last_seq + 1 under this row's
    # lock, so seqs are gapless and in commit order.
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The change counter: every change to a message, a member, a read marker or
    # the conversation itself takes the next number, under the same row lock.
    last_change_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # When the conversation last had a message (or was created): the inbox's order.
    last_activity_at: Mapped[datetime] = _now()
    created_at: Mapped[datetime] = _now()
    # Soft delete: set by a delete, cleared by a restore within the retention
    # window; `chatdb purge` removes the row (with members and messages) after it.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("kind IN ('direct', 'group')", name="kind"),
        CheckConstraint(f"char_length(title) BETWEEN 1 AND {TITLE_MAX}", name="title_length"),
        CheckConstraint("last_seq >= 0", name="last_seq_nonnegative"),
        CheckConstraint("last_change_seq >= 0", name="last_change_seq_nonnegative"),
        CheckConstraint(
            "kind = 'direct' OR (direct_user_low_id IS NULL AND direct_user_high_id IS NULL)",
            name="direct_users_only_for_direct",
        ),
        CheckConstraint("direct_user_low_id < direct_user_high_id", name="direct_users_ordered"),
        Index(
            "uq_conversations_direct_pair",
            "direct_user_low_id",
            "direct_user_high_id",
            unique=True,
            # A deleted direct conversation does not count: the pair may start
            # afresh, and restoring the old one then is refused as a conflict.
            postgresql_where=text("kind = 'direct' AND deleted_at IS NULL"),
        ),
        # The foreign keys above need an index each so deleting a user does not
        # scan conversations; the unique index covers the low side.
        Index("ix_conversations_direct_user_high_id", "direct_user_high_id"),
        # What purge looks for; only deleted conversations are in it, so it stays small.
        Index(
            "ix_conversations_deleted_at",
            "deleted_at",
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
        # The inbox of a member of thousands of conversations: newest first, keep theirs.
        Index("ix_conversations_last_activity_at_id", "last_activity_at", "id"),
    )


class ConversationMember(Base):
    __tablename__ = "conversation_members"

    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(Text, server_default=text("'member'"))
    # Read marker: the highest seq this member has read. Unread count is
    # conversations.last_seq - last_read_seq: O(1), no COUNT over messages.
    last_read_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Messages after the read marker that mention this member: +1 per mentioning
    # send, recounted from message_mentions when the marker moves, so the inbox
    # reads one column (no COUNT at read time).
    unread_mention_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    joined_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("role IN ('owner', 'member')", name="role"),
        CheckConstraint("last_read_seq >= 0", name="last_read_seq_nonnegative"),
        CheckConstraint("unread_mention_count >= 0", name="unread_mention_count_nonnegative"),
        # "Conversations of user X": the primary key starts with conversation_id,
        # so the user side needs its own index.
        Index("ix_conversation_members_user_id", "user_id", "conversation_id"),
    )


class Message(Base):
    __tablename__ = "messages"

    # Every key of this table starts with conversation_id, so it can be
    # partitioned or distributed by conversation later.
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sender_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    body: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A reply names an earlier message of the same conversation; the key is
    # (conversation_id, seq) so it holds if messages are partitioned by conversation.
    reply_to_seq: Mapped[int | None] = mapped_column(BigInteger)
    # Replies to this message, kept by the send that adds one (no COUNT at read time).
    reply_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # What search matches and ranks (migration 0009): computed once per write,
    # NULL once deleted. Deferred: no read but search wants it.
    search_vector: Mapped[str | None] = mapped_column(
        TSVECTOR,
        Computed(
            "CASE WHEN deleted_at IS NULL THEN chatdb_search_vector(body) END", persisted=True
        ),
        deferred=True,
    )

    __table_args__ = (
        CheckConstraint("seq > 0", name="seq_positive"),
        CheckConstraint("reply_to_seq > 0 AND reply_to_seq < seq", name="reply_to_earlier"),
        CheckConstraint("reply_count >= 0", name="reply_count_nonnegative"),
        ForeignKeyConstraint(
            ["conversation_id", "reply_to_seq"], ["messages.conversation_id", "messages.seq"]
        ),
        # A thread page: the replies to one message in seq order (keyset on seq).
        Index(
            "ix_messages_conversation_id_reply_to_seq_seq",
            "conversation_id",
            "reply_to_seq",
            "seq",
            postgresql_where=text("reply_to_seq IS NOT NULL"),
        ),
        # A deleted message's text may be erased ('') by purge after the
        # retention window; the row stays as a tombstone so seqs stay gapless.
        CheckConstraint(
            f"char_length(body) <= {BODY_MAX} "
            "AND (btrim(body, E' \\t\\r\\n') <> '' OR deleted_at IS NOT NULL)",
            name="body_length",
        ),
        CheckConstraint(
            f"char_length(idempotency_key) BETWEEN 1 AND {IDEMPOTENCY_KEY_MAX}",
            name="idempotency_key_length",
        ),
        # A retried send finds the original instead of creating a second message.
        Index(
            "uq_messages_idempotency",
            "conversation_id",
            "sender_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # Per-user history: "last message of user X" (inactive users) and the
        # foreign key's ON DELETE SET NULL when a user is deleted.
        Index("ix_messages_sender_id_created_at", "sender_id", "created_at"),
        # Activity report over a date range: an index-only range scan.
        Index("ix_messages_created_at_sender_id", "created_at", "sender_id"),
        # Deleted messages whose text purge has yet to erase: few, so a small index.
        Index(
            "ix_messages_deleted_at",
            "deleted_at",
            postgresql_where=text("deleted_at IS NOT NULL AND body <> ''"),
        ),
        # Full-text search (migrations 0005, 0009). Written straight into the
        # index (fastupdate off), so no send pays for flushing a pending list;
        # deleted messages are left out.
        Index(
            "ix_messages_search",
            "search_vector",
            postgresql_using="gin",
            postgresql_with={"fastupdate": "off"},
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class ArchivedMessage(Base):
    """Messages moved out of `messages` by `chatdb archive` (older than a cutoff).

    The hot table, its indexes and its partitions stay the size of recent
    history; the archive is written once per message and read rarely (export,
    compliance), so it has only its key. Pages and search no longer show
    archived messages. A deleted message arrives as a tombstone (empty body),
    so the archive never keeps text past the retention window. It goes with
    its conversation when that is purged.
    """

    __tablename__ = "messages_archive"

    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sender_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    archived_at: Mapped[datetime] = _now()

    __table_args__ = (
        # A deleted user's messages: the foreign key's ON DELETE SET NULL.
        Index("ix_messages_archive_sender_id", "sender_id"),
    )


# Messages per sender, conversation and UTC hour, for the activity report:
# summing these rows is what the report costs, not reading every message of the
# range. Kept exact by triggers on messages, in the same transaction as each
# write (see migration 0004). Hours, not days: a local day in any zone whose
# offset is whole hours is a set of whole UTC hours. The conversation is in the
# key so that a send only touches a row that sends to its conversation already
# serialise on; one user's sends to different conversations stay parallel.
# sender_id NULL holds messages of deleted users; so no primary key (the unique
# index treats NULLs as equal).
message_activity = Table(
    "message_activity",
    Base.metadata,
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("sender_id", BigInteger, nullable=True),
    Column("conversation_id", BigInteger, nullable=False),
    Column("message_count", BigInteger, nullable=False),
    CheckConstraint("message_count >= 0", name="message_count_nonnegative"),
    Index(
        "uq_message_activity_hour_sender_id_conversation_id",
        "hour",
        "sender_id",
        "conversation_id",
        unique=True,
        postgresql_nulls_not_distinct=True,
    ),
)


class MessageReaction(Base):
    """One user's emoji on one message: at most one per user, emoji and message."""

    __tablename__ = "message_reactions"

    conversation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # Emoji before user: a message's reactions come out grouped by emoji.
    emoji: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        ForeignKeyConstraint(
            ["conversation_id", "seq"],
            ["messages.conversation_id", "messages.seq"],
            ondelete="CASCADE",
        ),
        CheckConstraint(f"char_length(emoji) BETWEEN 1 AND {EMOJI_MAX}", name="emoji_length"),
        # The foreign key's ON DELETE CASCADE when a user is deleted.
        Index("ix_message_reactions_user_id", "user_id"),
    )


class MessageMention(Base):
    """A member named by @username in a message, recognised when it was sent."""

    __tablename__ = "message_mentions"

    conversation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["conversation_id", "seq"],
            ["messages.conversation_id", "messages.seq"],
            ondelete="CASCADE",
        ),
        # A member's mentions after their read marker (recounted when it moves),
        # later "messages that mention me"; also the users foreign key's cascade.
        Index(
            "ix_message_mentions_user_id_conversation_id_seq", "user_id", "conversation_id", "seq"
        ),
    )


CHANGE_KINDS = (
    "message.created",
    "message.edited",
    "message.deleted",
    "message.restored",
    "reaction.added",
    "reaction.removed",
    "member.added",
    "member.removed",
    "member.role",
    "read",
    "conversation.renamed",
    "conversation.deleted",
    "conversation.restored",
)


class Change(Base):
    """The change log: what live updates are made of, and how clients catch up.

    `change_seq` is gapless per conversation (taken from
    conversations.last_change_seq under its row lock). `id` is a global position
    for the event stream; ids can commit out of order, which the stream handles
    (see chatdb.api.events). No foreign key to conversations: a deletion's own
    change must outlive the conversation.
    """

    __tablename__ = "changes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(BigInteger)
    change_seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(Text)
    message_seq: Mapped[int | None] = mapped_column(BigInteger)
    # Whom the change is about: the member added or removed, the reader.
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    # The emoji of a reaction change.
    emoji: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in CHANGE_KINDS) + ")", name="kind"),
        # "Everything in conversation C after change K": one range scan.
        Index(
            "uq_changes_conversation_id_change_seq", "conversation_id", "change_seq", unique=True
        ),
        # Changes addressed to a user who is no longer a member (removed, deleted).
        Index(
            "ix_changes_user_id_id", "user_id", "id", postgresql_where=text("user_id IS NOT NULL")
        ),
    )


class AuthToken(Base):
    """A sign-in session. Only a SHA-256 of the token is stored: the token has
    256 random bits, so a fast hash is enough and a leaked table is useless."""

    __tablename__ = "auth_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("octet_length(token_hash) = 32", name="token_hash_length"),
        Index("uq_auth_tokens_token_hash", "token_hash", unique=True),
        Index("ix_auth_tokens_user_id", "user_id"),
    )


SIGN_IN_SCOPES = ("account", "address")


class SignInFailure(Base):
    """Failed sign-ins per account and per client address, for throttling.

    In PostgreSQL rather than in memory so every worker process and every
    server behind a load balancer sees the same counts. The key is a SHA-256 of
    the scope and the lowercased username (or the address): unknown usernames
    are counted exactly like known ones, and no text a client chose is stored.
    """

    __tablename__ = "sign_in_failures"

    key_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    scope: Mapped[str] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(Integer)
    first_failure_at: Mapped[datetime] = _now()
    last_failure_at: Mapped[datetime] = _now()
    # Sign-ins for this key are refused (429) until then.
    blocked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("octet_length(key_hash) = 32", name="key_hash_length"),
        CheckConstraint("scope IN ('account', 'address')", name="scope"),
        CheckConstraint("failures > 0", name="failures_positive"),
    )
