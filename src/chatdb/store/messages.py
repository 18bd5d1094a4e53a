"""Messages and read markers. Every function runs in the caller's transaction.

Ordering: a message's seq is taken from conversations.last_seq under that
row's lock, in the same transaction as the insert. Senders to one conversation
therefore commit one after another, so seqs are gapless and in commit order:
a reader that has seen seq N and asks for "after N" never misses a message.
"""

import inspect
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Integer,
    Join,
    bindparam,
    column,
    delete,
    exists,
    false,
    func,
    literal,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnClause

from chatdb import models
from chatdb.errors import Conflict, Forbidden, Invalid, NotFound
from chatdb.store._changelog import record_change
from chatdb.store._driver import fetch_all
from chatdb.store._errors import translated_errors
from chatdb.store._validate import (
    BIGINT_MAX,
    clean_emoji,
    clean_text,
    page_limit,
    positive_id,
    seq_value,
)
from chatdb.store.conversations import _require_member
from chatdb.store.types import (
    AnyRow,
    AnySelect,
    Executor,
    Message,
    MessagePage,
    Quote,
    Reaction,
    SendResult,
    ThreadPage,
)

M = models.Message
U = models.User
MR = models.MessageReaction
MM = models.MessageMention

# How much of the original a reply quotes.
QUOTE_MAX = 200
# @names looked up per message; more are ignored.
MENTIONS_MAX = 50
# A mention is @ and a username, not inside a word or an e-mail address.
_MENTION = re.compile(rf"(?<![A-Za-z0-9_.@-])@([A-Za-z0-9_.-]{{1,{models.USERNAME_MAX}}})")


def mentioned_names(body: str) -> list[str]:
    """The lowercased usernames a body names with @, in order, at most MENTIONS_MAX.

    A name may end a sentence ("thanks @bob."): both "bob." and "bob" are
    candidates, since usernames may contain dots."""
    names: dict[str, None] = {}
    for match in _MENTION.finditer(body):
        name = match.group(1).lower()
        names[name] = None
        trimmed = name.rstrip(".-")
        if trimmed:
            names[trimmed] = None
        if len(names) >= MENTIONS_MAX:
            break
    return list(names)[:MENTIONS_MAX]


def _message_extras(
    source: FromClause, viewer: ColumnElement[Any]
) -> tuple[list[ColumnElement[Any]], Any]:
    """What a message read adds to a message row: the quote of the message it
    replies to, and its reactions aggregated per emoji (with whether `viewer`
    reacted). Returns the columns and a function joining them to `source`, a
    FROM with the messages' conversation_id, seq and reply_to_seq. Both are
    probes by primary key per message, so a page stays a page of index lookups
    in one statement (no query per message)."""
    reactions = MR.__table__.c
    parent = M.__table__.alias("parent")
    parent_sender = U.__table__.alias("parent_sender")
    grouped = (
        select(
            reactions.emoji,
            func.count().label("n"),
            func.coalesce(func.bool_or(reactions.user_id == viewer), false()).label("me"),
            func.min(reactions.created_at).label("first_at"),
        )
        .where(
            reactions.conversation_id == source.c.conversation_id,
            reactions.seq == source.c.seq,
        )
        .group_by(reactions.emoji)
        .correlate(source)
        .subquery("grouped")
    )
    aggregated = (
        select(
            func.json_agg(
                aggregate_order_by(
                    func.json_build_object(
                        literal("emoji"),
                        grouped.c.emoji,
                        literal("count"),
                        grouped.c.n,
                        literal("me"),
                        grouped.c.me,
                    ),
                    grouped.c.first_at,
                    grouped.c.emoji,
                )
            ).label("reactions")
        )
        .select_from(grouped)
        .lateral("reaction_summary")
    )
    columns: list[ColumnElement[Any]] = [
        parent.c.sender_id.label("reply_to_sender_id"),
        func.coalesce(parent_sender.c.display_name, parent_sender.c.username).label(
            "reply_to_sender_name"
        ),
        func.left(parent.c.body, QUOTE_MAX).label("reply_to_body"),
        parent.c.deleted_at.label("reply_to_deleted_at"),
        aggregated.c.reactions,
    ]

    def join(left: Any) -> Join:
        joined: Join = (
            left.outerjoin(
                parent,
                (parent.c.conversation_id == source.c.conversation_id)
                & (parent.c.seq == source.c.reply_to_seq),
            )
            .outerjoin(parent_sender, parent_sender.c.id == parent.c.sender_id)
            .outerjoin(aggregated, true())
        )
        return joined

    return columns, join


_MESSAGE_COLUMNS = (
    M.conversation_id,
    M.seq,
    M.sender_id,
    U.username.label("sender_username"),
    U.display_name.label("sender_display_name"),
    M.body,
    M.created_at,
    M.edited_at,
    M.deleted_at,
    M.reply_to_seq,
    M.reply_count,
)


def _messages(
    rows: Sequence[AnyRow | tuple[Any, ...]], fields: Sequence[str] | None = None
) -> list[Message]:
    """Messages from rows with the _MESSAGE_FIELDS columns, in any order and
    among others (`fields` names the columns of plain tuples). The columns are
    picked by position (reading a Row by attribute name costs about 0.2 µs a
    column), found once per set of fields.

    A message with no quote and no reactions, not deleted (most of them), is
    made from its columns as they are, without _message_from: a page of 50
    such messages in 12 µs, not 28."""
    if not rows:
        return []
    if fields is None:
        fields = cast(AnyRow, rows[0])._fields
    positions = _positions(tuple(fields))
    plain, every = positions.plain, positions.every
    reply_to_seq, reactions = positions.reply_to_seq, positions.reactions
    deleted_at, reply_count = positions.deleted_at, positions.reply_count
    # Message._make without its check of the length, which costs 3 µs a page;
    # a tuple added, not unpacked into a new one, 2 µs less.
    make = tuple.__new__
    return [
        make(Message, plain(row) + (None, None, row[reply_count], ()))  # noqa: RUF005
        if row[reply_to_seq] is None and row[reactions] is None and row[deleted_at] is None
        else _message_from(*every(row))
        for row in rows
    ]


class _Positions(NamedTuple):
    """Where a message's columns are in a result's rows."""

    every: Callable[[Any], tuple[Any, ...]]  # _message_from's arguments
    plain: Callable[[Any], tuple[Any, ...]]  # Message's fields up to deleted_at
    reply_to_seq: int
    reactions: int
    deleted_at: int
    reply_count: int


@lru_cache(maxsize=32)
def _positions(fields: tuple[str, ...]) -> _Positions:
    where = {name: fields.index(name) for name in _MESSAGE_FIELDS}
    plain = [where[name] for name in _PLAIN_FIELDS]
    side_by_side = plain == list(range(plain[0], plain[0] + len(plain)))
    return _Positions(
        every=itemgetter(*(where[name] for name in _MESSAGE_FIELDS)),
        # A slice when they are side by side, as in chatdb's queries: 2 µs a page less.
        plain=itemgetter(slice(plain[0], plain[-1] + 1)) if side_by_side else itemgetter(*plain),
        reply_to_seq=where["reply_to_seq"],
        reactions=where["reactions"],
        deleted_at=where["deleted_at"],
        reply_count=where["reply_count"],
    )


def _message(row: AnyRow) -> Message:
    return _messages([row])[0]


def _message_from(
    conversation_id: int,
    seq: int,
    sender_id: int | None,
    sender_username: str | None,
    sender_display_name: str | None,
    body: str,
    created_at: datetime,
    edited_at: datetime | None,
    deleted_at: datetime | None,
    reply_to_seq: int | None,
    reply_count: int,
    reply_to_sender_id: int | None,
    reply_to_sender_name: str | None,
    reply_to_body: str | None,
    reply_to_deleted_at: datetime | None,
    reactions: list[dict[str, Any]] | None,
) -> Message:
    quote = None
    if reply_to_seq is not None:
        deleted = reply_to_deleted_at is not None
        quote = Quote(
            seq=reply_to_seq,
            sender_id=reply_to_sender_id,
            sender_name=(
                "(deleted user)"
                if reply_to_sender_id is None
                else reply_to_sender_name or f"user {reply_to_sender_id}"
            ),
            body=None if deleted else reply_to_body,
            deleted=deleted,
        )
    # Positional: keywords cost 0.4 µs a message more.
    return Message(
        conversation_id,
        seq,
        sender_id,
        sender_username,
        sender_display_name,
        None if deleted_at is not None else body,
        created_at,
        edited_at,
        deleted_at,
        reply_to_seq,
        quote,
        reply_count,
        tuple(Reaction(emoji=r["emoji"], count=r["count"], me=r["me"]) for r in reactions)
        if reactions
        else (),
    )


# The columns a message is built from: _message_from's parameters, in order.
_MESSAGE_FIELDS = tuple(inspect.signature(_message_from).parameters)
# Message's fields that are columns as they are, for a message with no quote,
# no reactions and not deleted; _messages adds the rest in Message's order:
# reply_to_seq (None), reply_to (None), reply_count, reactions (none). Both
# are checked in tests/test_messages.py.
_PLAIN_FIELDS = Message._fields[: Message._fields.index("deleted_at") + 1]


@lru_cache(maxsize=1)
def _select_messages() -> AnySelect:
    """Messages with their sender, quote and reactions; `me` is about the
    execution parameter `viewer` (None: nobody). Built once: building the
    subqueries cost more than running the query."""
    messages = M.__table__
    columns, join = _message_extras(messages, bindparam("viewer", type_=BigInteger))
    return select(*_MESSAGE_COLUMNS, *columns).select_from(
        join(messages.outerjoin(U.__table__, U.id == M.sender_id))
    )


def _clean_body(body: str) -> str:
    return clean_text(body, field="message", max_length=models.BODY_MAX)


# Takes the next seq and inserts in one statement. The UPDATE locks the
# conversation row until commit; that lock is what makes seqs gapless and
# ordered. The same statement logs the change (next change_seq, same lock) and
# moves the sender's read marker to their own message (which reads every
# mention of them, so their mention count is 0).
_SEND_SQL = """
WITH counter AS (
    UPDATE conversations
       SET last_seq = last_seq + 1, last_change_seq = last_change_seq + 1,
           last_activity_at = now()
     WHERE id = :conversation_id AND deleted_at IS NULL
       AND EXISTS (SELECT 1 FROM conversation_members
                    WHERE conversation_id = :conversation_id AND user_id = :sender_id)
 RETURNING last_seq, last_change_seq, last_activity_at
), inserted AS (
    INSERT INTO messages (conversation_id, seq, sender_id, body, idempotency_key, created_at,
                          reply_to_seq)
    SELECT :conversation_id, last_seq, :sender_id, :body, :idempotency_key, last_activity_at,
           :reply_to_seq
      FROM counter
 RETURNING conversation_id, seq, sender_id, body, created_at, edited_at, deleted_at,
           reply_to_seq, reply_count
), marked AS (
    UPDATE conversation_members
       SET last_read_seq = (SELECT last_seq FROM counter), unread_mention_count = 0
     WHERE conversation_id = :conversation_id AND user_id = :sender_id
       AND EXISTS (SELECT 1 FROM counter)
), logged AS (
    INSERT INTO changes (conversation_id, change_seq, kind, message_seq, actor_id)
    SELECT :conversation_id, last_change_seq, 'message.created', last_seq, :sender_id
      FROM counter
){mentions}
SELECT i.conversation_id, i.seq, i.sender_id,
       u.username AS sender_username, u.display_name AS sender_display_name,
       i.body, i.created_at, i.edited_at, i.deleted_at, i.reply_to_seq, i.reply_count,
       p.sender_id AS reply_to_sender_id,
       coalesce(pu.display_name, pu.username) AS reply_to_sender_name,
       left(p.body, {quote_max}) AS reply_to_body, p.deleted_at AS reply_to_deleted_at,
       NULL::json AS reactions
  FROM inserted i LEFT JOIN users u ON u.id = i.sender_id
  LEFT JOIN messages p ON p.conversation_id = i.conversation_id AND p.seq = i.reply_to_seq
  LEFT JOIN users pu ON pu.id = p.sender_id
"""

# Only for a body with @names: the members (not the sender) whose username is
# one of them are recorded, and their mention count goes up by one. The
# sender's own marker row is not among them, so no row is updated twice.
_MENTIONS_SQL = """, mentioned AS (
    INSERT INTO message_mentions (conversation_id, seq, user_id)
    SELECT :conversation_id, counter.last_seq, cm.user_id
      FROM counter, conversation_members cm JOIN users u ON u.id = cm.user_id
     WHERE cm.conversation_id = :conversation_id AND cm.user_id <> :sender_id
       AND lower(u.username) = ANY(CAST(:mentions AS text[]))
 RETURNING user_id
), notified AS (
    UPDATE conversation_members SET unread_mention_count = unread_mention_count + 1
     WHERE conversation_id = :conversation_id AND user_id IN (SELECT user_id FROM mentioned)
)"""

# The result's columns named up front (in _MESSAGE_FIELDS' order): SQLAlchemy
# then keeps the result's description with the compiled statement instead of
# building it from the cursor on every send.
_SEND_COLUMNS: list[ColumnClause[Any]] = [column(name) for name in _MESSAGE_FIELDS]
SEND_SQL = text(_SEND_SQL.format(mentions="", quote_max=QUOTE_MAX)).columns(*_SEND_COLUMNS)
SEND_WITH_MENTIONS_SQL = text(
    _SEND_SQL.format(mentions=_MENTIONS_SQL, quote_max=QUOTE_MAX)
).columns(*_SEND_COLUMNS)


def send_message(
    *,
    session: Session,
    conversation_id: int,
    sender_id: int,
    body: str,
    idempotency_key: str | None = None,
    reply_to_seq: int | None = None,
) -> SendResult:
    """Send a message as a member, optionally as a reply to an earlier message
    of the same conversation. Members named with @username are mentioned.

    With an idempotency key, a repeat of the same (conversation, sender, key)
    returns the original message and creates nothing, also when the repeats
    arrive concurrently (see _find_replay). A repeat with a different body is a
    Conflict: the key names one message.
    """
    positive_id(conversation_id, field="conversation id")
    positive_id(sender_id, field="sender id")
    body = _clean_body(body)
    if reply_to_seq is not None:
        positive_id(reply_to_seq, field="reply_to_seq")
    if idempotency_key is not None:
        idempotency_key = clean_text(
            idempotency_key, field="idempotency key", max_length=models.IDEMPOTENCY_KEY_MAX
        )
    original_deleted = False
    if reply_to_seq is not None:
        # Membership first, so a non-member learns nothing about the message.
        _require_member(session, conversation_id, sender_id)
        original_deleted = _lock_original(session, conversation_id, reply_to_seq)
    _lock_for_send(session, conversation_id)
    if idempotency_key is not None:
        replay = _find_replay(session, conversation_id, sender_id, idempotency_key, body)
        if replay is not None:
            return SendResult(replay, created=False)
    if reply_to_seq is not None:
        if original_deleted:
            raise Invalid(
                f"message {reply_to_seq} is deleted; a reply needs a message that is not deleted"
            )
        session.execute(
            update(M)
            .where(M.conversation_id == conversation_id, M.seq == reply_to_seq)
            .values(reply_count=M.reply_count + 1)
        )
    mentions = mentioned_names(body)
    with translated_errors():
        row = session.execute(
            SEND_WITH_MENTIONS_SQL if mentions else SEND_SQL,
            {
                "conversation_id": conversation_id,
                "sender_id": sender_id,
                "body": body,
                "idempotency_key": idempotency_key,
                "reply_to_seq": reply_to_seq,
                **({"mentions": mentions} if mentions else {}),
            },
        ).one_or_none()
    if row is None:
        # No row: the conversation is missing or the sender is not a member.
        # Both read as "not found" so a non-member learns nothing.
        raise NotFound(f"no conversation with id {conversation_id}")
    return SendResult(_message(row), created=True)


def _lock_original(session: Session, conversation_id: int, seq: int) -> bool:
    """Lock the message a reply answers (whose reply count the send raises);
    returns whether it is deleted.

    Taken before the conversation row, the order edits, deletes and reactions
    lock in (message, then conversation), so a reply and an edit of its
    original cannot deadlock. Raising the count fires the activity rollup's
    statement trigger; with the same sender and time on both sides it nets to
    nothing and writes nothing."""
    row = session.execute(
        select(M.deleted_at)
        .where(M.conversation_id == conversation_id, M.seq == seq)
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE: what the count's UPDATE takes
    ).one_or_none()
    if row is None:
        raise NotFound(f"no message {seq} in conversation {conversation_id}")
    return row.deleted_at is not None


_conversations = models.Conversation.__table__.c
# Core, built once: the ORM path cost more than the statement.
_LOCK_FOR_SEND = (
    select(_conversations.id)
    .where(
        _conversations.id == bindparam("conversation_id", type_=BigInteger),
        _conversations.deleted_at.is_(None),
    )
    .with_for_update(key_share=True)
)


def _lock_for_send(session: Session, conversation_id: int) -> None:
    """Lock the conversation row (FOR NO KEY UPDATE: SQLAlchemy's key_share=True)
    before the send statement runs.

    Membership changes and deletes lock the row FOR UPDATE, so they and this
    send now run one after the other, and the send statement's snapshot is
    taken after the other committed. Without it, a send whose UPDATE queued
    behind a member's removal was re-checked by PostgreSQL against the new row
    version only: the membership EXISTS kept its old snapshot, and the removed
    member's message was stored after the removal (tests/test_races.py).
    It is the lock the send's own counter UPDATE takes on the same row, taken
    earlier: concurrent sends to a conversation queue for the row as they did
    anyway, and sends to other conversations never meet it.
    """
    locked = session.execute(_LOCK_FOR_SEND, {"conversation_id": conversation_id}).first()
    if locked is None:
        raise NotFound(f"no conversation with id {conversation_id}")


def _find_replay(
    session: Session, conversation_id: int, sender_id: int, key: str, body: str
) -> Message | None:
    """The message an earlier send with this key created, if any.

    Why this is safe under concurrency: the caller has locked the conversation
    row (every send to this conversation takes that lock), then we look for the
    key. A concurrent send with the same key either committed before we got the
    lock, and we see its row now, or it waits for our commit and then finds
    ours. No two messages with one key, and no counter increment is wasted.
    """
    row = session.execute(
        _select_messages().where(
            M.conversation_id == conversation_id,
            M.sender_id == sender_id,
            M.idempotency_key == key,
        ),
        {"viewer": sender_id},
    ).one_or_none()
    if row is None:
        return None
    if row.body != body:
        raise Conflict("this idempotency key was already used for a different message")
    return _message(row)


def get_message(
    *, session: Executor, conversation_id: int, seq: int, actor_id: int | None = None
) -> Message:
    """One message; its reactions' `me` is about `actor_id`."""
    positive_id(conversation_id, field="conversation id")
    _require_member(session, conversation_id, actor_id)
    return _read_message(session, conversation_id, seq, actor_id)


def _read_message(session: Executor, conversation_id: int, seq: int, viewer: int | None) -> Message:
    row = session.execute(
        _select_messages().where(M.conversation_id == conversation_id, M.seq == seq),
        {"viewer": viewer},
    ).one_or_none()
    if row is None:
        raise NotFound(f"no message {seq} in conversation {conversation_id}")
    return _message(row)


def list_messages(
    *,
    session: Executor,
    conversation_id: int,
    before: int | None = None,
    after: int | None = None,
    limit: int = 20,
    actor_id: int | None = None,
) -> MessagePage:
    """A keyset page of messages, in ascending seq order.

    No cursor: the newest `limit` messages. `before=N`: the `limit` messages
    just before seq N. `after=N`: the `limit` messages just after seq N.
    Deleted messages are included with body None, so seqs stay contiguous.
    """
    positive_id(conversation_id, field="conversation id")
    limit = page_limit(limit)
    if before is not None and after is not None:
        raise Invalid("give either before or after, not both")
    # One statement, so one round trip: the membership check, the page and the
    # conversation's last seq (for has_newer) come back together.
    template, params = _page_query(conversation_id, before, after, limit, actor_id)
    rows, fields = fetch_all(session, template, params)
    if not rows:
        # The conversation is missing or the actor is not a member: both read as
        # "not found", so a non-member learns nothing.
        raise NotFound(f"no conversation with id {conversation_id}")
    last_seq: int = rows[0][fields.index("conversation_last_seq")]
    # One row more than asked tells whether there is another page. A page with
    # no messages is one row whose message columns are NULL (a left join), so
    # the first row tells for all.
    found = rows if rows[0][fields.index("seq")] is not None else []
    if after is not None:
        has_newer = len(found) > limit
        messages = _messages(found[:limit], fields)
        has_older = after > 0
    else:
        has_older = len(found) > limit
        messages = _messages(found[:limit][::-1], fields)
        has_newer = before is not None and last_seq > (messages[-1].seq if messages else before - 1)
    return MessagePage(messages=messages, has_older=has_older, has_newer=has_newer)


def page_statement(
    conversation_id: int,
    before: int | None = None,
    after: int | None = None,
    limit: int = 20,
    *,
    actor_id: int | None = None,
) -> AnySelect:
    """The SQL of a message page, in one statement, with its parameters bound.

    The conversation row (only if `actor_id` is a member, when given) left-joined
    to the page: a range scan of the primary key (conversation_id, seq) for
    `limit` + 1 rows, newest first unless paging forward. No row at all: no such
    conversation for this actor; one row of NULL messages: an empty page.
    """
    template, params = _page_query(conversation_id, before, after, limit, actor_id)
    return template.params(params)


def _page_query(
    conversation_id: int, before: int | None, after: int | None, limit: int, actor_id: int | None
) -> tuple[AnySelect, dict[str, int | None]]:
    params: dict[str, int | None] = {"conversation_id": conversation_id, "page_rows": limit + 1}
    if after is not None:
        params["cursor"] = seq_value(after, field="after")
        direction = "after"
    elif before is not None:
        params["cursor"] = seq_value(before, field="before")
        direction = "before"
    else:
        # The newest page is the page before a seq no message reaches (it
        # would take that many sends). With a template of its own (no cursor
        # condition), PostgreSQL planned its prepared statement again at every
        # execution, never settling on the generic plan: 0.45 ms of planning,
        # 0.70 ms against 0.24 ms a page on the large benchmark set (README,
        # "The newest page, planned once").
        params["cursor"] = BIGINT_MAX
        direction = "before"
    if actor_id is not None:
        params["actor_id"] = actor_id
    params["viewer"] = actor_id
    return _page_template(direction, actor_id is not None), params


@lru_cache(maxsize=8)
def _page_template(direction: str, for_member: bool) -> AnySelect:
    """Built once per shape, with bind parameters, from Core tables: building a
    statement with subqueries and running it through the ORM layer cost more
    than the query itself (a few hundred microseconds per page)."""
    conversations, members = models.Conversation.__table__.c, models.ConversationMember.__table__.c
    messages, users = M.__table__.c, U.__table__.c
    conversation_id = bindparam("conversation_id", type_=BigInteger)
    # A deleted conversation is not found, for operators too.
    conversation = select(
        conversations.id, conversations.last_seq.label("conversation_last_seq")
    ).where(conversations.id == conversation_id, conversations.deleted_at.is_(None))
    if for_member:
        conversation = conversation.where(
            exists().where(
                members.conversation_id == conversation_id,
                members.user_id == bindparam("actor_id", type_=BigInteger),
            )
        )
    target = conversation.subquery("conversation")
    page = (
        select(
            messages.conversation_id,
            messages.seq,
            messages.sender_id,
            users.username.label("sender_username"),
            users.display_name.label("sender_display_name"),
            messages.body,
            messages.created_at,
            messages.edited_at,
            messages.deleted_at,
            messages.reply_to_seq,
            messages.reply_count,
        )
        .select_from(M.__table__.outerjoin(U.__table__, users.id == messages.sender_id))
        .where(messages.conversation_id == conversation_id)
    )
    cursor = bindparam("cursor", type_=BigInteger)
    if direction == "after":
        page = page.where(messages.seq > cursor).order_by(messages.seq)
    else:
        page = page.where(messages.seq < cursor).order_by(messages.seq.desc())
    page_sq = page.limit(bindparam("page_rows", type_=Integer)).subquery("page")
    order = page_sq.c.seq if direction == "after" else page_sq.c.seq.desc()
    # Quotes and reactions are joined to the page after its LIMIT: a probe per
    # message on the page, never a scan of the conversation's reactions.
    extras, join_extras = _message_extras(page_sq, bindparam("viewer", type_=BigInteger))
    return (
        select(target.c.conversation_last_seq, *page_sq.c, *extras)
        .select_from(join_extras(target.outerjoin(page_sq, true())))
        .order_by(order)
    )


def _lock_message(session: Session, conversation_id: int, seq: int) -> AnyRow:
    row = session.execute(
        select(M.sender_id, M.deleted_at, M.body)
        .where(M.conversation_id == conversation_id, M.seq == seq)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"no message {seq} in conversation {conversation_id}")
    return row


def edit_message(
    *, session: Session, conversation_id: int, seq: int, body: str, actor_id: int | None
) -> Message:
    """Change a message's text. Only its author may (operators too)."""
    positive_id(conversation_id, field="conversation id")
    body = _clean_body(body)
    _require_member(session, conversation_id, actor_id)
    target = _lock_message(session, conversation_id, seq)
    if actor_id is not None and target.sender_id != actor_id:
        raise Forbidden("only the author can edit a message")
    if target.deleted_at is not None:
        raise Invalid("a deleted message cannot be edited; restore it first")
    with translated_errors():
        session.execute(
            update(M)
            .where(M.conversation_id == conversation_id, M.seq == seq)
            .values(body=body, edited_at=text("now()"))
        )
    record_change(session, conversation_id, "message.edited", message_seq=seq, actor_id=actor_id)
    return _read_message(session, conversation_id, seq, actor_id)


def _set_deleted(
    session: Session,
    conversation_id: int,
    seq: int,
    actor_id: int | None,
    deleted: bool,
    retention_days: int | None = None,
) -> Message:
    positive_id(conversation_id, field="conversation id")
    role = _require_member(session, conversation_id, actor_id)
    target = _lock_message(session, conversation_id, seq)
    if actor_id is not None and target.sender_id != actor_id and role != "owner":
        verb = "delete" if deleted else "restore"
        raise Forbidden(f"only the author or an owner can {verb} a message")
    if not deleted and target.deleted_at is not None:
        _check_restorable(session, target, seq, retention_days)
    if (target.deleted_at is not None) != deleted:
        session.execute(
            update(M)
            .where(M.conversation_id == conversation_id, M.seq == seq)
            .values(deleted_at=text("now()") if deleted else None)
        )
        kind = "message.deleted" if deleted else "message.restored"
        record_change(session, conversation_id, kind, message_seq=seq, actor_id=actor_id)
    return _read_message(session, conversation_id, seq, actor_id)


def _check_restorable(
    session: Session, target: AnyRow, seq: int, retention_days: int | None
) -> None:
    """A deleted message comes back within the retention window, and never once
    purge has erased its text."""
    past = (
        retention_days is not None
        and session.execute(
            select(target.deleted_at < func.now() - func.make_interval(0, 0, 0, retention_days))
        ).scalar_one()
    )
    if past or target.body == "":
        raise Conflict(
            f"message {seq} was deleted more than {retention_days} days ago, past the "
            "retention window; it can no longer be restored"
            if past
            else f"message {seq} was deleted and its text has been purged"
        )


def delete_message(
    *, session: Session, conversation_id: int, seq: int, actor_id: int | None = None
) -> Message:
    """Soft-delete: the text is hidden but kept, so restore_message can bring it back."""
    return _set_deleted(session, conversation_id, seq, actor_id, deleted=True)


def restore_message(
    *,
    session: Session,
    conversation_id: int,
    seq: int,
    actor_id: int | None = None,
    retention_days: int | None = None,
) -> Message:
    """Undo a delete, within `retention_days` of it when given (the API and CLI
    pass the setting)."""
    return _set_deleted(
        session, conversation_id, seq, actor_id, deleted=False, retention_days=retention_days
    )


def mark_read(*, session: Session, conversation_id: int, user_id: int, seq: int) -> int:
    """Move the member's read marker up to `seq` (never backwards, never past the
    last message). Returns the marker after the call. A move is a change others
    see (read receipts, the member's other devices)."""
    positive_id(conversation_id, field="conversation id")
    positive_id(user_id, field="user id")
    seq_value(seq)
    member = models.ConversationMember
    conversation = models.Conversation
    # The conversation row first, as sends lock it (then the mentioned members'
    # rows): taking the member row first would deadlock with a send that
    # mentions this member. Holding it, no send is in flight, so the statement
    # below sees every mention up to last_seq.
    live = session.execute(
        select(conversation.id)
        .where(conversation.id == conversation_id, conversation.deleted_at.is_(None))
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE, as a send's counter takes
    ).first()
    if live is None:
        raise NotFound(f"no conversation with id {conversation_id}")
    target = func.least(seq, conversation.last_seq)
    # The mentions now read: those between the old and the new marker.
    now_read = (
        select(func.count())
        .where(
            MM.conversation_id == member.conversation_id,
            MM.user_id == member.user_id,
            MM.seq > member.last_read_seq,
            MM.seq <= target,
        )
        .scalar_subquery()
    )
    moved = session.execute(
        update(member)
        .where(
            member.conversation_id == conversation_id,
            member.user_id == user_id,
            conversation.id == member.conversation_id,
            conversation.deleted_at.is_(None),
            member.last_read_seq < target,
        )
        .values(last_read_seq=target, unread_mention_count=member.unread_mention_count - now_read)
        .returning(member.last_read_seq)
    ).scalar_one_or_none()
    if moved is not None:
        record_change(
            session, conversation_id, "read", message_seq=moved, user_id=user_id, actor_id=user_id
        )
        return int(moved)
    current = session.execute(
        select(member.last_read_seq)
        .join(conversation, conversation.id == member.conversation_id)
        .where(
            member.conversation_id == conversation_id,
            member.user_id == user_id,
            conversation.deleted_at.is_(None),
        )
    ).scalar_one_or_none()
    if current is None:
        raise NotFound(f"no conversation with id {conversation_id}")
    return int(current)


def unread_count(*, session: Session, conversation_id: int, user_id: int) -> int:
    """Messages after the member's read marker: one row read, no COUNT."""
    positive_id(conversation_id, field="conversation id")
    member = models.ConversationMember
    value = session.execute(
        select(models.Conversation.last_seq - member.last_read_seq)
        .join(member, member.conversation_id == models.Conversation.id)
        .where(
            member.conversation_id == conversation_id,
            member.user_id == user_id,
            models.Conversation.deleted_at.is_(None),
        )
    ).scalar_one_or_none()
    if value is None:
        raise NotFound(f"no conversation with id {conversation_id}")
    return int(value)


def list_replies(
    *,
    session: Executor,
    conversation_id: int,
    seq: int,
    after: int = 0,
    limit: int = 50,
    actor_id: int | None = None,
) -> ThreadPage:
    """A thread: the message and a keyset page of its replies, oldest first;
    the next page is `after=<last reply's seq>`. A range scan of
    ix_messages_conversation_id_reply_to_seq_seq."""
    positive_id(conversation_id, field="conversation id")
    positive_id(seq, field="seq")
    seq_value(after, field="after")
    limit = page_limit(limit)
    _require_member(session, conversation_id, actor_id)
    parent = _read_message(session, conversation_id, seq, actor_id)
    rows = session.execute(
        _select_messages()
        .where(M.conversation_id == conversation_id, M.reply_to_seq == seq, M.seq > after)
        .order_by(M.seq)
        .limit(limit + 1),
        {"viewer": actor_id},
    ).all()
    return ThreadPage(parent=parent, replies=_messages(rows[:limit]), has_more=len(rows) > limit)


def add_reaction(
    *, session: Session, conversation_id: int, seq: int, user_id: int, emoji: str
) -> Message:
    """React to a message with an emoji. Idempotent: one reaction per member,
    emoji and message; a repeat changes nothing and logs nothing."""
    positive_id(conversation_id, field="conversation id")
    positive_id(seq, field="seq")
    emoji = clean_emoji(emoji, max_length=models.EMOJI_MAX)
    _require_member(session, conversation_id, user_id)
    # FOR KEY SHARE, what the foreign key check takes anyway: a concurrent
    # delete (FOR UPDATE) waits for us, or we wait for it and see it.
    target = session.execute(
        select(M.deleted_at)
        .where(M.conversation_id == conversation_id, M.seq == seq)
        .with_for_update(read=True, key_share=True)
    ).one_or_none()
    if target is None:
        raise NotFound(f"no message {seq} in conversation {conversation_id}")
    if target.deleted_at is not None:
        raise Invalid(f"message {seq} is deleted; restore it before reacting to it")
    added = session.execute(
        insert(MR)
        .values(conversation_id=conversation_id, seq=seq, emoji=emoji, user_id=user_id)
        .on_conflict_do_nothing()
        .returning(MR.seq)
    ).first()
    if added is not None:
        record_change(
            session,
            conversation_id,
            "reaction.added",
            message_seq=seq,
            user_id=user_id,
            actor_id=user_id,
            emoji=emoji,
        )
    return _read_message(session, conversation_id, seq, user_id)


def remove_reaction(
    *, session: Session, conversation_id: int, seq: int, user_id: int, emoji: str
) -> Message:
    """Take back a reaction. Idempotent: removing one that is not there is no change."""
    positive_id(conversation_id, field="conversation id")
    positive_id(seq, field="seq")
    emoji = clean_emoji(emoji, max_length=models.EMOJI_MAX)
    _require_member(session, conversation_id, user_id)
    removed = session.execute(
        delete(MR)
        .where(
            MR.conversation_id == conversation_id,
            MR.seq == seq,
            MR.emoji == emoji,
            MR.user_id == user_id,
        )
        .returning(MR.seq)
    ).first()
    message = _read_message(session, conversation_id, seq, user_id)
    if removed is not None:
        record_change(
            session,
            conversation_id,
            "reaction.removed",
            message_seq=seq,
            user_id=user_id,
            actor_id=user_id,
            emoji=emoji,
        )
    return message
