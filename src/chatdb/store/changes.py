"""The change log: recording changes, and reading them back for live updates.

Every write that others should see (a message sent, edited, deleted or
restored; a member added, removed or re-roled; a read marker; a rename; a
deletion) records a row in `changes` in the same transaction, so a change is
visible exactly when the write is. Every function runs in the caller's
transaction.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import exists, func, select, text, tuple_
from sqlalchemy.orm import Session

from chatdb import models
from chatdb.errors import Gone
from chatdb.store._validate import page_limit, positive_id, seq_value
from chatdb.store.conversations import _require_member
from chatdb.store.messages import _messages, _select_messages
from chatdb.store.types import AnyRow, Executor, Message

CH = models.Change
M = models.Message
CM = models.ConversationMember


@dataclass(frozen=True, slots=True)
class Change:
    id: int
    conversation_id: int
    change_seq: int
    kind: str
    message_seq: int | None
    user_id: int | None
    actor_id: int | None
    # The emoji of a reaction change (user_id is who reacted).
    emoji: str | None
    created_at: datetime
    # The message as it is now, for message changes (None once it is gone).
    message: Message | None


@dataclass(frozen=True, slots=True)
class ChangePage:
    changes: list[Change]
    has_more: bool


def _with_messages(session: Executor, rows: Iterable[AnyRow]) -> list[Change]:
    return attach_messages(session=session, changes=[_change(r) for r in rows])


def _change(row: AnyRow) -> Change:
    return Change(
        id=row.id,
        conversation_id=row.conversation_id,
        change_seq=row.change_seq,
        kind=row.kind,
        message_seq=row.message_seq,
        user_id=row.user_id,
        actor_id=row.actor_id,
        emoji=row.emoji,
        created_at=row.created_at,
        message=None,
    )


def attach_messages(*, session: Executor, changes: list[Change]) -> list[Change]:
    """The changes with their messages as they are now, reactions included.

    A change goes to every member alike, so no reaction is marked as the
    reader's (`me` is false: a reaction change's user_id says who reacted)."""
    keys = {
        (c.conversation_id, c.message_seq)
        for c in changes
        if c.message_seq is not None and c.kind.startswith(("message.", "reaction."))
    }
    if not keys:
        return changes
    found = session.execute(
        _select_messages().where(tuple_(M.conversation_id, M.seq).in_(sorted(keys))),
        {"viewer": None},
    ).all()
    messages = {(m.conversation_id, m.seq): m for m in _messages(found)}
    return [
        replace(c, message=messages.get((c.conversation_id, c.message_seq)))
        if c.message_seq is not None
        else c
        for c in changes
    ]


_CHANGE_COLUMNS = (
    CH.id,
    CH.conversation_id,
    CH.change_seq,
    CH.kind,
    CH.message_seq,
    CH.user_id,
    CH.actor_id,
    CH.emoji,
    CH.created_at,
)


def changes_since(
    *,
    session: Executor,
    conversation_id: int,
    since: int,
    limit: int = 100,
    actor_id: int | None = None,
) -> ChangePage:
    """A conversation's changes after change_seq `since`, oldest first."""
    positive_id(conversation_id, field="conversation id")
    seq_value(since, field="since")
    limit = page_limit(limit)
    _require_member(session, conversation_id, actor_id)
    rows = session.execute(
        select(*_CHANGE_COLUMNS)
        .where(CH.conversation_id == conversation_id, CH.change_seq > since)
        .order_by(CH.change_seq)
        .limit(limit + 1)
    ).all()
    # change_seq has no gaps and commits in order (writers hold the
    # conversation's row lock): a first change past since + 1 means the ones
    # before it were pruned.
    if rows[0].change_seq != since + 1 if rows else _pruned(session, conversation_id, since):
        raise Gone(
            f"changes of conversation {conversation_id} after {since} are no longer kept; "
            "load the conversation again"
        )
    return ChangePage(changes=_with_messages(session, rows[:limit]), has_more=len(rows) > limit)


def _pruned(session: Executor, conversation_id: int, since: int) -> bool:
    """Whether the conversation has changes after `since` but no longer
    since + 1. (The page found none after `since`; one committed since then is
    there now, so this is no false alarm.)"""
    row = session.execute(
        select(
            models.Conversation.last_change_seq,
            exists().where(CH.conversation_id == conversation_id, CH.change_seq == since + 1),
        ).where(models.Conversation.id == conversation_id)
    ).one_or_none()
    return row is not None and row[0] > since and not row[1]


# --- for the live-update stream ------------------------------------------------------


def oldest_running_xid(*, session: Session) -> int:
    """The oldest transaction id still running (the snapshot's xmin): every
    transaction with a lower id has ended. Under REPEATABLE READ, as of the
    transaction's snapshot."""
    xmin: int = session.execute(
        text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    ).scalar_one()
    return xmin


def xid_bound(*, session: Session) -> int:
    """A transaction id above every id handed out before this call: this
    transaction's own, taken now. Once oldest_running_xid() reaches it (in a
    later transaction), every transaction that had an id before the call has
    ended.

    A snapshot's xmax is no such bound. It is one past the newest *completed*
    id, so a transaction that took a later id and is still running lies at or
    above it, and the snapshot's xmin does not count it either.

    The id makes this transaction's commit write a record, and the commit waits
    for its flush like any other: after a crash PostgreSQL then hands out ids
    above the bound, where a lost bound would leave the reader waiting for
    new ids to catch up with it."""
    bound: int = session.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one()
    return bound


def latest_change_id(*, session: Session) -> int:
    latest: int | None = session.execute(select(CH.id).order_by(CH.id.desc()).limit(1)).scalar()
    return latest or 0


def changes_after(*, session: Session, after_id: int, limit: int = 500) -> list[Change]:
    """Every change with a global id above `after_id`, in id order, without
    their messages (attach_messages adds them, for the changes that need them)."""
    rows = session.execute(
        select(*_CHANGE_COLUMNS).where(CH.id > after_id).order_by(CH.id).limit(limit)
    )
    return [_change(r) for r in rows]


# Changes told to the user they name: a removal (the members see it too), and
# a deletion, which is recorded once per member and goes to that member alone.
ADDRESSED_KINDS = ("member.removed", "conversation.deleted")


def receives(change: Change, user_id: int, members: set[tuple[int, int]]) -> bool:
    """Whether a user is sent this change, given which (conversation, user)
    pairs are memberships (see memberships). changes_for_user applies the same
    rule in SQL."""
    if change.kind == "conversation.deleted":
        return change.user_id == user_id
    addressed = change.user_id == user_id and change.kind in ADDRESSED_KINDS
    return addressed or (change.conversation_id, user_id) in members


def memberships(
    *, session: Session, conversation_ids: Iterable[int], user_ids: Iterable[int]
) -> set[tuple[int, int]]:
    """Which of these users are members of which of these conversations, now."""
    conversations, users = sorted(set(conversation_ids)), sorted(set(user_ids))
    if not conversations or not users:
        return set()
    # A soft-deleted conversation keeps its members: its last changes, read
    # after the deletion, still go to them (a deletion itself goes to each
    # member alone, see receives).
    rows = session.execute(
        select(CM.conversation_id, CM.user_id).where(
            CM.conversation_id.in_(conversations), CM.user_id.in_(users)
        )
    )
    return {(r.conversation_id, r.user_id) for r in rows}


def changes_for_user(
    *, session: Session, user_id: int, after_id: int, up_to_id: int, limit: int = 500
) -> list[Change]:
    """Catch-up for a resuming stream: the changes a user may see with ids in
    (after_id, up_to_id], in id order. A user sees the changes of the
    conversations they are a member of, and those addressed to them.

    Raises Gone if changes after `after_id` may have been pruned (`after_id`
    itself is older than the oldest kept change, and ids lie between them). Run
    it under REPEATABLE READ: a prune committed between the check and the read
    would otherwise go unnoticed."""
    oldest = session.execute(select(func.min(CH.id))).scalar()
    if oldest is not None and after_id < oldest - 1:
        raise Gone(f"changes after position {after_id} are no longer kept")
    member_of = select(CM.conversation_id).where(CM.user_id == user_id)
    # The same audience as the live stream's (receives).
    rows = session.execute(
        select(*_CHANGE_COLUMNS)
        .where(
            CH.id > after_id,
            CH.id <= up_to_id,
            CH.conversation_id.in_(member_of) & (CH.kind != "conversation.deleted")
            | (CH.user_id == user_id) & CH.kind.in_(ADDRESSED_KINDS),
        )
        .order_by(CH.id)
        .limit(limit)
    )
    return _with_messages(session, rows)
