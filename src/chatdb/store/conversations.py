"""Conversations and their members. Every function runs in the caller's transaction.

`actor_id` is the user asking; None means an operator (the CLI, an admin),
who may do anything. Rules: members see a conversation, owners manage it.
"""

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from chatdb import models
from chatdb.errors import Conflict, Forbidden, Invalid, NotFound
from chatdb.store._changelog import record_change, record_for_each_member
from chatdb.store._errors import translated_errors
from chatdb.store._validate import clean_text, page_limit, positive_id
from chatdb.store.types import AnyRow, Conversation, DeletedConversation, Executor, Member

_CONVERSATION_COLUMNS = (
    models.Conversation.id,
    models.Conversation.kind,
    models.Conversation.title,
    models.Conversation.last_seq,
    models.Conversation.last_change_seq,
    models.Conversation.last_activity_at,
    models.Conversation.created_at,
    models.Conversation.direct_user_low_id,
    models.Conversation.direct_user_high_id,
)


def _conversation(row: AnyRow) -> Conversation:
    low, high = row.direct_user_low_id, row.direct_user_high_id
    return Conversation(
        id=row.id,
        kind=row.kind,
        title=row.title,
        last_seq=row.last_seq,
        last_change_seq=row.last_change_seq,
        last_activity_at=row.last_activity_at,
        created_at=row.created_at,
        direct_user_ids=(low, high) if low is not None and high is not None else None,
    )


def _clean_title(title: str | None) -> str | None:
    if title is None:
        return None
    return clean_text(title.strip(), field="title", max_length=models.TITLE_MAX)


def member_role(
    *, session: Executor, conversation_id: int, user_id: int, include_deleted: bool = False
) -> str | None:
    """The user's role in the conversation, or None if they are not a member
    (or it is deleted, unless `include_deleted`)."""
    query = (
        select(models.ConversationMember.role)
        .join(
            models.Conversation, models.Conversation.id == models.ConversationMember.conversation_id
        )
        .where(
            models.ConversationMember.conversation_id == conversation_id,
            models.ConversationMember.user_id == user_id,
        )
    )
    if not include_deleted:
        query = query.where(models.Conversation.deleted_at.is_(None))
    role: str | None = session.execute(query).scalar_one_or_none()
    return role


def _require_member(session: Executor, conversation_id: int, actor_id: int | None) -> str | None:
    """The actor's role; NotFound for non-members, so existence does not leak.
    A deleted conversation is not found for anyone, operators included."""
    if actor_id is None:
        live = session.execute(
            select(models.Conversation.id).where(
                models.Conversation.id == conversation_id, models.Conversation.deleted_at.is_(None)
            )
        ).first()
        if live is None:
            raise NotFound(f"no conversation with id {conversation_id}")
        return None
    role = member_role(session=session, conversation_id=conversation_id, user_id=actor_id)
    if role is None:
        raise NotFound(f"no conversation with id {conversation_id}")
    return role


def _require_owner(session: Session, conversation_id: int, actor_id: int | None) -> None:
    if _require_member(session, conversation_id, actor_id) not in (None, "owner"):
        raise Forbidden("only an owner of the conversation can do this")


def create_group(
    *,
    session: Session,
    creator_id: int,
    title: str | None,
    member_ids: list[int] | tuple[int, ...] = (),
) -> Conversation:
    """A group conversation with its creator as owner and the others as members."""
    positive_id(creator_id, field="creator id")
    others = sorted({positive_id(m, field="member id") for m in member_ids} - {creator_id})
    if len(others) > 10_000:
        raise Invalid("a group is created with at most 10000 members; add more later")
    with translated_errors():
        row = session.execute(
            insert(models.Conversation)
            .values(kind="group", title=_clean_title(title))
            .returning(*_CONVERSATION_COLUMNS)
        ).one()
        session.execute(
            insert(models.ConversationMember),
            [{"conversation_id": row.id, "user_id": creator_id, "role": "owner"}]
            + [{"conversation_id": row.id, "user_id": uid, "role": "member"} for uid in others],
        )
    record_for_each_member(session, row.id, "member.added", creator_id)
    return get_conversation(session=session, conversation_id=row.id)


def get_or_create_direct(
    *, session: Session, user_id: int, other_user_id: int
) -> tuple[Conversation, bool]:
    """The one direct conversation of two users, created if needed.

    Safe under concurrency: the unique index on the user pair decides the
    winner; ON CONFLICT DO NOTHING waits for a concurrent creator to commit and
    then finds its row, so two callers always get the same conversation.
    Returns the conversation and whether this call created it.
    """
    positive_id(user_id, field="user id")
    positive_id(other_user_id, field="other user id")
    if user_id == other_user_id:
        raise Invalid("a direct conversation needs two different users")
    low, high = sorted((user_id, other_user_id))
    with translated_errors():
        row = session.execute(
            pg_insert(models.Conversation)
            .values(kind="direct", direct_user_low_id=low, direct_user_high_id=high)
            .on_conflict_do_nothing(
                index_elements=["direct_user_low_id", "direct_user_high_id"],
                index_where=(models.Conversation.kind == "direct")
                & models.Conversation.deleted_at.is_(None),
            )
            .returning(*_CONVERSATION_COLUMNS)
        ).one_or_none()
        if row is not None:
            session.execute(
                insert(models.ConversationMember),
                [
                    {"conversation_id": row.id, "user_id": low, "role": "owner"},
                    {"conversation_id": row.id, "user_id": high, "role": "owner"},
                ],
            )
            record_for_each_member(session, row.id, "member.added", user_id)
            return get_conversation(session=session, conversation_id=row.id), True
    existing = session.execute(
        select(*_CONVERSATION_COLUMNS).where(
            models.Conversation.kind == "direct",
            models.Conversation.direct_user_low_id == low,
            models.Conversation.direct_user_high_id == high,
            models.Conversation.deleted_at.is_(None),
        )
    ).one()
    return _conversation(existing), False


def get_conversation(
    *, session: Executor, conversation_id: int, actor_id: int | None = None
) -> Conversation:
    positive_id(conversation_id, field="conversation id")
    _require_member(session, conversation_id, actor_id)
    row = session.execute(
        select(*_CONVERSATION_COLUMNS).where(
            models.Conversation.id == conversation_id, models.Conversation.deleted_at.is_(None)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"no conversation with id {conversation_id}")
    return _conversation(row)


def rename_conversation(
    *, session: Session, conversation_id: int, title: str | None, actor_id: int | None = None
) -> Conversation:
    positive_id(conversation_id, field="conversation id")
    _require_owner(session, conversation_id, actor_id)
    cleaned = _clean_title(title)
    if _lock_conversation(session, conversation_id) == "direct" and cleaned is not None:
        raise Invalid("a direct conversation has no title")
    with translated_errors():
        row = session.execute(
            update(models.Conversation)
            .where(models.Conversation.id == conversation_id)
            .values(title=cleaned)
            .returning(*_CONVERSATION_COLUMNS)
        ).one()
    record_change(session, conversation_id, "conversation.renamed", actor_id=actor_id)
    return _conversation(row)


def delete_conversation(
    *, session: Session, conversation_id: int, actor_id: int | None = None
) -> None:
    """Soft-delete a conversation: it disappears for everyone (inbox, pages,
    changes, sends are refused) but its rows stay, so restore_conversation can
    bring it back until `chatdb purge` removes it after the retention window."""
    positive_id(conversation_id, field="conversation id")
    _require_owner(session, conversation_id, actor_id)
    _lock_conversation(session, conversation_id)
    # Addressed to each member: the stream tells them, though the conversation
    # is no longer visible to them.
    record_for_each_member(session, conversation_id, "conversation.deleted", actor_id)
    session.execute(
        update(models.Conversation)
        .where(models.Conversation.id == conversation_id)
        .values(deleted_at=func.now())
    )


def restore_conversation(
    *,
    session: Session,
    conversation_id: int,
    retention_days: int,
    actor_id: int | None = None,
) -> Conversation:
    """Undo a delete within `retention_days` of it (an owner, or an operator).

    Restoring a conversation that is not deleted changes nothing. A direct
    conversation cannot come back once its two users have started a new one.
    """
    positive_id(conversation_id, field="conversation id")
    if actor_id is not None:
        role = member_role(
            session=session,
            conversation_id=conversation_id,
            user_id=actor_id,
            include_deleted=True,
        )
        if role is None:
            raise NotFound(f"no conversation with id {conversation_id}")
        if role != "owner":
            raise Forbidden("only an owner of the conversation can do this")
    # The row lock orders this against purge (which deletes under the same lock).
    row = session.execute(
        select(
            models.Conversation.deleted_at,
            models.Conversation.deleted_at
            < func.now() - func.make_interval(0, 0, 0, retention_days),
        )
        .where(models.Conversation.id == conversation_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"no conversation with id {conversation_id}")
    deleted_at, expired = row
    if deleted_at is None:
        return get_conversation(session=session, conversation_id=conversation_id)
    if expired:
        raise Conflict(
            f"conversation {conversation_id} was deleted more than {retention_days} days ago, "
            "past the retention window; it can no longer be restored"
        )
    with translated_errors():
        session.execute(
            update(models.Conversation)
            .where(models.Conversation.id == conversation_id)
            .values(deleted_at=None)
        )
    record_change(session, conversation_id, "conversation.restored", actor_id=actor_id)
    return get_conversation(session=session, conversation_id=conversation_id)


def deleted_conversations(
    *, session: Session, retention_days: int, after_id: int = 0, limit: int = 50
) -> list[DeletedConversation]:
    """Soft-deleted conversations in id order (keyset), with when each is due to be purged."""
    C = models.Conversation
    purge_after = C.deleted_at + func.make_interval(0, 0, 0, retention_days)
    rows = session.execute(
        select(C.id, C.kind, C.title, C.last_seq, C.deleted_at, purge_after.label("purge_after"))
        .where(C.deleted_at.is_not(None), C.id > after_id)
        .order_by(C.id)
        .limit(page_limit(limit))
    )
    return [
        DeletedConversation(
            id=r.id,
            kind=r.kind,
            title=r.title,
            messages=r.last_seq,
            deleted_at=r.deleted_at,
            purge_after=r.purge_after,
        )
        for r in rows
    ]


# --- members ------------------------------------------------------------------


def _lock_conversation(session: Session, conversation_id: int) -> str:
    """Lock the conversation row; membership changes of one conversation then
    run one at a time, so "remove the last owner" races cannot leave it ownerless.
    Returns the conversation's kind."""
    kind: str | None = session.execute(
        select(models.Conversation.kind)
        .where(models.Conversation.id == conversation_id, models.Conversation.deleted_at.is_(None))
        .with_for_update()
    ).scalar_one_or_none()
    if kind is None:
        raise NotFound(f"no conversation with id {conversation_id}")
    return kind


def add_member(
    *,
    session: Session,
    conversation_id: int,
    user_id: int,
    role: str = "member",
    actor_id: int | None = None,
) -> Member:
    """Add a user; they start with everything before they joined marked read."""
    positive_id(conversation_id, field="conversation id")
    positive_id(user_id, field="user id")
    if role not in models.MEMBER_ROLES:
        raise Invalid(f"role must be one of {', '.join(models.MEMBER_ROLES)}")
    _require_owner(session, conversation_id, actor_id)
    if _lock_conversation(session, conversation_id) == "direct":
        raise Invalid("a direct conversation has exactly two members; start a group instead")
    last_seq = (
        select(models.Conversation.last_seq)
        .where(models.Conversation.id == conversation_id)
        .scalar_subquery()
    )
    with translated_errors():
        session.execute(
            insert(models.ConversationMember).values(
                conversation_id=conversation_id,
                user_id=user_id,
                role=role,
                last_read_seq=last_seq,
            )
        )
    record_change(session, conversation_id, "member.added", user_id=user_id, actor_id=actor_id)
    return get_member(session=session, conversation_id=conversation_id, user_id=user_id)


def remove_member(
    *, session: Session, conversation_id: int, user_id: int, actor_id: int | None = None
) -> None:
    """Remove a member (an owner removes others; anyone may leave).

    When the last owner goes, the longest-standing remaining member becomes owner.
    """
    positive_id(conversation_id, field="conversation id")
    positive_id(user_id, field="user id")
    if actor_id != user_id:
        _require_owner(session, conversation_id, actor_id)
    _lock_conversation(session, conversation_id)
    # Checked again under the lock: a concurrent removal may have taken our role.
    if actor_id is not None and actor_id != user_id:
        _require_owner(session, conversation_id, actor_id)
    removed = session.execute(
        delete(models.ConversationMember)
        .where(
            models.ConversationMember.conversation_id == conversation_id,
            models.ConversationMember.user_id == user_id,
        )
        .returning(models.ConversationMember.role)
    ).one_or_none()
    if removed is None:
        raise NotFound(f"user {user_id} is not a member of conversation {conversation_id}")
    record_change(session, conversation_id, "member.removed", user_id=user_id, actor_id=actor_id)
    if removed.role == "owner":
        _ensure_an_owner(session, conversation_id)


def _ensure_an_owner(session: Session, conversation_id: int) -> None:
    member = models.ConversationMember
    has_owner = session.execute(
        select(member.user_id)
        .where(member.conversation_id == conversation_id, member.role == "owner")
        .limit(1)
    ).first()
    if has_owner is not None:
        return
    successor = (
        select(member.user_id)
        .where(member.conversation_id == conversation_id)
        .order_by(member.joined_at, member.user_id)
        .limit(1)
        .scalar_subquery()
    )
    promoted = session.execute(
        update(member)
        .where(member.conversation_id == conversation_id, member.user_id == successor)
        .values(role="owner")
        .returning(member.user_id)
    ).scalar_one_or_none()
    if promoted is not None:
        record_change(session, conversation_id, "member.role", user_id=promoted)


def set_member_role(
    *,
    session: Session,
    conversation_id: int,
    user_id: int,
    role: str,
    actor_id: int | None = None,
) -> Member:
    positive_id(conversation_id, field="conversation id")
    positive_id(user_id, field="user id")
    if role not in models.MEMBER_ROLES:
        raise Invalid(f"role must be one of {', '.join(models.MEMBER_ROLES)}")
    _require_owner(session, conversation_id, actor_id)
    _lock_conversation(session, conversation_id)
    member = models.ConversationMember
    if role != "owner":
        other_owner = session.execute(
            select(member.user_id)
            .where(
                member.conversation_id == conversation_id,
                member.role == "owner",
                member.user_id != user_id,
            )
            .limit(1)
        ).first()
        if other_owner is None:
            raise Invalid("a conversation keeps at least one owner; make another owner first")
    previous = session.execute(
        select(member.role).where(
            member.conversation_id == conversation_id, member.user_id == user_id
        )
    ).scalar_one_or_none()
    if previous is None:
        raise NotFound(f"user {user_id} is not a member of conversation {conversation_id}")
    if previous != role:
        session.execute(
            update(member)
            .where(member.conversation_id == conversation_id, member.user_id == user_id)
            .values(role=role)
        )
        record_change(session, conversation_id, "member.role", user_id=user_id, actor_id=actor_id)
    return get_member(session=session, conversation_id=conversation_id, user_id=user_id)


_MEMBER_COLUMNS = (
    models.ConversationMember.conversation_id,
    models.ConversationMember.user_id,
    models.User.username,
    models.User.display_name,
    models.ConversationMember.role,
    models.ConversationMember.last_read_seq,
    models.ConversationMember.joined_at,
)


def _member(row: AnyRow) -> Member:
    return Member(
        conversation_id=row.conversation_id,
        user_id=row.user_id,
        username=row.username,
        display_name=row.display_name,
        role=row.role,
        last_read_seq=row.last_read_seq,
        joined_at=row.joined_at,
    )


def get_member(*, session: Session, conversation_id: int, user_id: int) -> Member:
    row = session.execute(
        select(*_MEMBER_COLUMNS)
        .join(models.User, models.User.id == models.ConversationMember.user_id)
        .where(
            models.ConversationMember.conversation_id == conversation_id,
            models.ConversationMember.user_id == user_id,
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"user {user_id} is not a member of conversation {conversation_id}")
    return _member(row)


def list_members(
    *,
    session: Executor,
    conversation_id: int,
    after_user_id: int = 0,
    limit: int = 100,
    actor_id: int | None = None,
) -> list[Member]:
    """Members in user id order, a keyset page after `after_user_id`."""
    positive_id(conversation_id, field="conversation id")
    _require_member(session, conversation_id, actor_id)
    rows = session.execute(
        select(*_MEMBER_COLUMNS)
        .join(models.User, models.User.id == models.ConversationMember.user_id)
        .where(
            models.ConversationMember.conversation_id == conversation_id,
            models.ConversationMember.user_id > after_user_id,
        )
        .order_by(models.ConversationMember.user_id)
        .limit(page_limit(limit))
    )
    return [_member(row) for row in rows]
