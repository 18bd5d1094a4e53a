"""Purging what is past the retention window. Every function runs in the
caller's transaction and does one bounded batch; the caller (chatdb purge)
commits after each, so no purge transaction is long or holds many locks.

What goes, after `retention_days`:
- soft-deleted conversations, with their members and messages (the foreign
  keys cascade). Each conversation goes whole in one transaction, under its row
  lock, so a restore either happens before (and the purge skips it) or finds
  nothing; it is never half purged.
- the text of soft-deleted messages in live conversations. The row stays, as a
  tombstone with an empty body, so seqs stay gapless for clients and pages.
- sign-in failure counters that are no longer in force.

Why writers are not blocked: purged conversations take no writes (sends,
edits and membership changes refuse a deleted conversation), rows are locked
with SKIP LOCKED so two purges never wait for each other, and no table lock is
taken.

The change log (live updates) is pruned on its own window,
`change_retention_days`: a client away for longer cannot resume and reloads
instead (the API answers 410 Gone; the stream says `reset`). The newest
change is always kept, so stream positions keep counting from it.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect

from chatdb import models

C = models.Conversation
M = models.Message
F = models.SignInFailure
CH = models.Change

# Failure counters are kept this long after the last failure (then forgotten).
SIGN_IN_FAILURE_MEMORY_HOURS = 24


def _cutoff(retention_days: int) -> ColumnElement[datetime]:
    return func.now() - func.make_interval(0, 0, 0, retention_days)


@dataclass(frozen=True, slots=True)
class PurgeDue:
    """What a purge would remove now."""

    conversations: int
    conversation_messages: int
    message_texts: int
    sign_in_counters: int
    changes: int


def purge_due(*, session: Session, retention_days: int, change_retention_days: int) -> PurgeDue:
    """Counts of what is past the windows (for --dry-run); read-only."""
    cutoff = _cutoff(retention_days)
    expired = select(C.id).where(C.deleted_at < cutoff).scalar_subquery()
    row = session.execute(
        select(
            select(func.count()).where(C.deleted_at < cutoff).scalar_subquery(),
            select(func.coalesce(func.sum(C.last_seq), 0))
            .where(C.deleted_at < cutoff)
            .scalar_subquery(),
            select(func.count())
            .select_from(M)
            .where(M.deleted_at < cutoff, M.body != "", M.conversation_id.not_in(expired))
            .scalar_subquery(),
            select(func.count()).select_from(F).where(_stale_failure()).scalar_subquery(),
            select(func.count())
            .select_from(CH)
            .where(CH.id < _change_horizon(change_retention_days))
            .scalar_subquery(),
        )
    ).one()
    return PurgeDue(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]))


def purge_conversations_batch(
    *, session: Session, retention_days: int, limit: int = 20
) -> list[int]:
    """Delete up to `limit` conversations deleted more than `retention_days`
    ago, with their members and messages. Returns their ids."""
    expired = (
        select(C.id)
        .where(C.deleted_at < _cutoff(retention_days))
        .order_by(C.id)
        .limit(max(1, min(limit, 1000)))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    ids = session.execute(delete(C).where(C.id.in_(expired)).returning(C.id)).scalars().all()
    return sorted(ids)


def erase_deleted_messages_batch(
    *, session: Session, retention_days: int, limit: int = 1000
) -> int:
    """Erase the text of up to `limit` messages deleted more than
    `retention_days` ago. Returns how many."""
    due = (
        select(M.conversation_id, M.seq)
        .where(M.deleted_at < _cutoff(retention_days), M.body != "")
        .limit(max(1, min(limit, 100_000)))
        .with_for_update(skip_locked=True)
    )
    erased = session.execute(
        update(M).where(tuple_(M.conversation_id, M.seq).in_(due)).values(body="").returning(M.seq)
    ).all()
    return len(erased)


def _stale_failure() -> ColumnElement[bool]:
    hours = func.make_interval(0, 0, 0, 0, SIGN_IN_FAILURE_MEMORY_HOURS)
    return (F.last_failure_at < func.now() - hours) & (
        F.blocked_until.is_(None) | (F.blocked_until < func.now())
    )


def forget_sign_in_failures(*, session: Session) -> int:
    """Drop failure counters that no longer count (old, and not blocking)."""
    return len(session.execute(delete(F).where(_stale_failure()).returning(F.key_hash)).all())


def _change_horizon(change_retention_days: int) -> ScalarSelect[int]:
    """The oldest change id to keep: the first one inside the window, walking
    the log in id order (the primary key, so only the rows due are read), or
    the newest if every change is older."""
    first_young = (
        select(CH.id)
        .where(CH.created_at >= _cutoff(change_retention_days))
        .order_by(CH.id)
        .limit(1)
        .scalar_subquery()
    )
    newest = select(func.max(CH.id)).scalar_subquery()
    return select(func.coalesce(first_young, newest, 0)).scalar_subquery()


def change_log_horizon(*, session: Session, change_retention_days: int) -> int:
    """The change id below which a purge removes changes; taken once per
    purge, so its batches do not walk the log's start again."""
    horizon: int = session.execute(select(_change_horizon(change_retention_days))).scalar_one()
    return horizon


def prune_changes_batch(*, session: Session, below_id: int, limit: int = 10_000) -> int:
    """Delete up to `limit` of the oldest changes with ids below `below_id`
    (see change_log_horizon). Returns how many."""
    doomed = (
        select(CH.id)
        .where(CH.id < below_id)
        .order_by(CH.id)
        .limit(max(1, min(limit, 100_000)))
        .scalar_subquery()
    )
    deleted: int = session.execute(delete(CH).where(CH.id.in_(doomed))).rowcount  # type: ignore[attr-defined]
    return deleted
