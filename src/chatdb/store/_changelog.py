"""Recording changes in the change log, in the caller's transaction (see changes.py)."""

from sqlalchemy import text
from sqlalchemy.orm import Session

from chatdb import models

# Takes the conversation's next change number under its row lock (the same lock
# sends take), so change_seq is gapless and in commit order per conversation,
# and the global id is drawn after the lock: within a conversation, id order is
# change_seq order.
_RECORD_SQL = text("""
WITH counter AS (
    UPDATE conversations SET last_change_seq = last_change_seq + 1
     WHERE id = :conversation_id
 RETURNING last_change_seq
)
INSERT INTO changes (conversation_id, change_seq, kind, message_seq, user_id, actor_id, emoji)
SELECT :conversation_id, last_change_seq, :kind, :message_seq, :user_id, :actor_id, :emoji
  FROM counter
RETURNING id
""")


def record_change(
    session: Session,
    conversation_id: int,
    kind: str,
    *,
    message_seq: int | None = None,
    user_id: int | None = None,
    actor_id: int | None = None,
    emoji: str | None = None,
) -> int | None:
    """Log one change; returns its id (None if the conversation is gone)."""
    assert kind in models.CHANGE_KINDS, kind
    change_id: int | None = session.execute(
        _RECORD_SQL,
        {
            "conversation_id": conversation_id,
            "kind": kind,
            "message_seq": message_seq,
            "user_id": user_id,
            "actor_id": actor_id,
            "emoji": emoji,
        },
    ).scalar_one_or_none()
    return change_id


# A new conversation, or a deletion, is told to each member by a change
# addressed to them (user_id): a deletion must reach them after the members
# rows are gone.
_RECORD_PER_MEMBER_SQL = text("""
WITH members AS (
    SELECT user_id, row_number() OVER (ORDER BY user_id) AS n
      FROM conversation_members WHERE conversation_id = :conversation_id
), counter AS (
    UPDATE conversations
       SET last_change_seq = last_change_seq + (SELECT count(*) FROM members)
     WHERE id = :conversation_id
 RETURNING last_change_seq - (SELECT count(*) FROM members) AS base
)
INSERT INTO changes (conversation_id, change_seq, kind, user_id, actor_id)
SELECT :conversation_id, counter.base + members.n, :kind, members.user_id,
       :actor_id
  FROM counter, members
""")


def record_for_each_member(
    session: Session, conversation_id: int, kind: str, actor_id: int | None
) -> None:
    """One change per current member, addressed to them (user_id)."""
    assert kind in models.CHANGE_KINDS, kind
    session.execute(
        _RECORD_PER_MEMBER_SQL,
        {"conversation_id": conversation_id, "kind": kind, "actor_id": actor_id},
    )
