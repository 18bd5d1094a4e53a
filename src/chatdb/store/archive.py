"""Moving old messages out of the hot table (`chatdb archive`).

Each call moves one bounded batch in the caller's transaction; the caller
commits after each, so no transaction is long or holds many locks. Writers are
not held up: sends only add new rows and take no lock an archive batch holds;
rows a writer has locked (an edit or delete in flight) are skipped with SKIP
LOCKED and taken by a later run; no table lock is taken.

The activity report keeps counting archived messages: the batch adds back to
message_activity what the delete trigger takes off, in the same statement.
A message that has a reply sent after the cutoff stays, with its thread (the
reply's foreign key needs it); its replies move together with it otherwise.
An archived message's reactions and mentions go with it (their foreign keys
cascade): the archive keeps the text, not the reactions to it.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

# One statement: pick, delete, keep, and restore the rollup's counts.
# The activity upsert mirrors migration 0004's trigger (UTC hours).
_ARCHIVE_BATCH = text(
    """
    WITH due AS (
        SELECT conversation_id, seq FROM messages m
         WHERE created_at < :cutoff
           AND NOT EXISTS (SELECT FROM messages r
                            WHERE r.conversation_id = m.conversation_id
                              AND r.reply_to_seq = m.seq AND r.created_at >= :cutoff)
         ORDER BY created_at
         LIMIT :limit
           FOR UPDATE SKIP LOCKED
    ), movable AS (
        -- A reply's original goes only with every reply still in messages.
        SELECT conversation_id, seq FROM due d
         WHERE NOT EXISTS (
               SELECT FROM messages r
                WHERE r.conversation_id = d.conversation_id AND r.reply_to_seq = d.seq
                  AND (r.conversation_id, r.seq) NOT IN (SELECT conversation_id, seq FROM due))
    ), moved AS (
        DELETE FROM messages m USING movable due
         WHERE m.conversation_id = due.conversation_id AND m.seq = due.seq
        RETURNING m.conversation_id, m.seq, m.sender_id, m.body, m.created_at,
                  m.edited_at, m.deleted_at
    ), kept AS (
        INSERT INTO messages_archive
               (conversation_id, seq, sender_id, body, created_at, edited_at, deleted_at)
        SELECT conversation_id, seq, sender_id,
               CASE WHEN deleted_at IS NULL THEN body ELSE '' END,
               created_at, edited_at, deleted_at
          FROM moved
        RETURNING 1
    ), counted AS (
        INSERT INTO message_activity AS a (hour, sender_id, conversation_id, message_count)
        SELECT date_trunc('hour', created_at, 'UTC'), sender_id, conversation_id, count(*)
          FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (hour, sender_id, conversation_id)
        DO UPDATE SET message_count = a.message_count + EXCLUDED.message_count
    )
    SELECT count(*) FROM kept
    """
)


@dataclass(frozen=True, slots=True)
class ArchiveDue:
    messages: int
    oldest: datetime | None


def archive_due(*, session: Session, cutoff: datetime) -> ArchiveDue:
    """What an archive run would move now (for --dry-run); read-only."""
    row = session.execute(
        text("SELECT count(*), min(created_at) FROM messages WHERE created_at < :cutoff"),
        {"cutoff": cutoff},
    ).one()
    return ArchiveDue(int(row[0]), row[1])


def archive_messages_batch(*, session: Session, cutoff: datetime, limit: int = 5000) -> int:
    """Move up to `limit` of the oldest messages sent before `cutoff` into
    messages_archive. Returns how many moved (0: nothing left that is not locked)."""
    moved = session.execute(
        _ARCHIVE_BATCH, {"cutoff": cutoff, "limit": max(1, min(limit, 100_000))}
    ).scalar_one()
    return int(moved)
