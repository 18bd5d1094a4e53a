"""The module project's queries: the inbox, activity per user per day, inactive users,
and EXPLAIN for each. (The fourth, the last messages with sender names, is
messages.list_messages.) Every function runs in the caller's transaction.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, ColumnElement, Executable
from sqlalchemy.types import Date

from chatdb import models
from chatdb.errors import Invalid
from chatdb.store._driver import fetch_all
from chatdb.store._errors import translated_errors
from chatdb.store._validate import page_limit, positive_id
from chatdb.store.types import (
    ActivityRow,
    AnySelect,
    Executor,
    InactivePage,
    InactiveUser,
    InboxCursor,
    InboxEntry,
    InboxPage,
)

C = models.Conversation
CM = models.ConversationMember
M = models.Message
U = models.User
A = models.message_activity.c

MAX_ACTIVITY_DAYS = 366


# --- the inbox ---


# Members of at least this many conversations get their inbox by walking all
# conversations newest first and keeping theirs (about 21 x conversations / theirs
# membership probes), not by sorting every conversation they are in (one probe
# each): past about a thousand, the walk is cheaper.
INBOX_WALK_FROM = 1000


def inbox_statement(user_id: int, before: InboxCursor | None = None, limit: int = 20) -> AnySelect:
    """A user's conversations, newest activity first, with the last message; its
    parameters bound. See _inbox_template."""
    template, params = _inbox_query(user_id, before, limit)
    return template.params(params)


def _inbox_query(
    user_id: int, before: InboxCursor | None, limit: int
) -> tuple[AnySelect, dict[str, Any]]:
    params: dict[str, Any] = {
        "user_id": user_id,
        "page_rows": limit + 1,
        "walk_from": INBOX_WALK_FROM,
    }
    if before is not None:
        params["cursor_at"] = before.last_activity_at
        params["cursor_id"] = before.conversation_id
    return _inbox_template(before is not None), params


@lru_cache(maxsize=2)
def _inbox_template(with_cursor: bool) -> AnySelect:
    """The inbox in one statement, built once per shape.

    First the page of conversations, one of two ways, chosen at run time by a
    one-time filter (PostgreSQL runs only the branch whose filter holds):
    - a member of few conversations: their memberships (index on
      conversation_members.user_id), each conversation's activity by primary
      key, the newest `limit` + 1 kept;
    - a member of many (at least `walk_from`): conversations newest first (index
      on (last_activity_at, id)), each checked for membership by primary key,
      stopping after `limit` + 1.
    Then, for the page only: the membership row (role, read marker), the last
    message by primary key (conversation_id, seq), its sender, and for a direct
    conversation the other user's name. No GROUP BY over messages.
    """
    conversations, members = C.__table__.c, CM.__table__.c
    user_id = bindparam("user_id", type_=BigInteger)
    page_rows = bindparam("page_rows", type_=Integer)
    sample = (
        select(literal(1))
        .where(members.user_id == user_id)
        .limit(bindparam("walk_from", type_=Integer))
        .subquery("sample")
    )
    walk = select(func.count()).select_from(sample).scalar_subquery() >= bindparam(
        "walk_from", type_=Integer
    )
    columns = (
        conversations.id,
        conversations.kind,
        conversations.title,
        conversations.last_seq,
        conversations.last_activity_at,
        conversations.direct_user_low_id,
        conversations.direct_user_high_id,
    )
    newest_first = (conversations.last_activity_at.desc(), conversations.id.desc())
    # OFFSET 0 keeps the memberships a subquery of their own: otherwise the planner
    # may turn this branch into a walk too, which is slow for few memberships.
    mine = (
        select(members.conversation_id)
        .where(members.user_id == user_id, ~walk)
        .offset(literal_column("0"))
        .subquery("mine")
    )
    # Deleted conversations leave the inbox (they can be restored for a while).
    live = conversations.deleted_at.is_(None)
    by_membership = (
        select(*columns)
        .select_from(mine.join(C.__table__, conversations.id == mine.c.conversation_id))
        .where(live)
    )
    # OFFSET 0 keeps the membership check a per-row probe: as a semi-join, a
    # generic plan (prepared statements) may drive it from the memberships again.
    is_member = exists(
        select(literal(1))
        .where(members.conversation_id == conversations.id, members.user_id == user_id)
        .offset(literal_column("0"))
    )
    by_walk = select(*columns).where(walk, live, is_member)
    if with_cursor:
        after_cursor = tuple_(conversations.last_activity_at, conversations.id) < tuple_(
            bindparam("cursor_at", type_=DateTime(timezone=True)),
            bindparam("cursor_id", type_=BigInteger),
        )
        by_membership = by_membership.where(after_cursor)
        by_walk = by_walk.where(after_cursor)
    page_sq = union_all(
        by_membership.order_by(*newest_first).limit(page_rows),
        by_walk.order_by(*newest_first).limit(page_rows),
    ).subquery("page")
    member = CM.__table__.alias("member")
    message, sender, other = M.__table__, U.__table__.alias("sender"), U.__table__.alias("other")
    other_id = case(
        (page_sq.c.direct_user_low_id == user_id, page_sq.c.direct_user_high_id),
        else_=page_sq.c.direct_user_low_id,
    )
    return (
        select(
            page_sq.c.id.label("conversation_id"),
            page_sq.c.kind,
            func.coalesce(page_sq.c.title, other.c.display_name, other.c.username).label("title"),
            member.c.role,
            page_sq.c.last_seq,
            member.c.last_read_seq,
            member.c.unread_mention_count,
            page_sq.c.last_activity_at,
            message.c.seq.label("last_message_seq"),
            message.c.body.label("last_message_body"),
            message.c.sender_id.label("last_message_sender_id"),
            func.coalesce(sender.c.display_name, sender.c.username).label(
                "last_message_sender_name"
            ),
            message.c.created_at.label("last_message_at"),
            message.c.deleted_at.label("last_message_deleted_at"),
        )
        .select_from(
            page_sq.join(
                member, and_(member.c.conversation_id == page_sq.c.id, member.c.user_id == user_id)
            )
            .outerjoin(
                message,
                and_(
                    message.c.conversation_id == page_sq.c.id, message.c.seq == page_sq.c.last_seq
                ),
            )
            .outerjoin(sender, sender.c.id == message.c.sender_id)
            .outerjoin(other, and_(page_sq.c.kind == "direct", other.c.id == other_id))
        )
        .order_by(page_sq.c.last_activity_at.desc(), page_sq.c.id.desc())
        .limit(page_rows)
    )


def inbox(
    *, session: Executor, user_id: int, before: InboxCursor | None = None, limit: int = 20
) -> InboxPage:
    positive_id(user_id, field="user id")
    limit = page_limit(limit)
    template, params = _inbox_query(user_id, before, limit)
    rows = fetch_all(session, template, params).rows
    # Unpacked by position, in _inbox_template's column order: reading the
    # Row's fields by name made building a page of 20 take 0.19 ms, not 0.06.
    entries = [
        InboxEntry(
            conversation_id=conversation_id,
            kind=kind,
            title=title,
            role=role,
            last_seq=last_seq,
            last_read_seq=last_read_seq,
            unread_count=max(last_seq - last_read_seq, 0),
            unread_mention_count=unread_mention_count,
            last_activity_at=last_activity_at,
            last_message_seq=message_seq,
            last_message_body=None if message_deleted_at else message_body,
            last_message_sender_id=sender_id,
            last_message_sender_name=sender_name,
            last_message_at=message_at,
            last_message_deleted=message_deleted_at is not None,
        )
        for (
            conversation_id,
            kind,
            title,
            role,
            last_seq,
            last_read_seq,
            unread_mention_count,
            last_activity_at,
            message_seq,
            message_body,
            sender_id,
            sender_name,
            message_at,
            message_deleted_at,
        ) in rows[:limit]
    ]
    next_cursor = entries[-1].cursor if len(rows) > limit else None
    return InboxPage(entries=entries, next_cursor=next_cursor)


# --- messages per user per day ---


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise Invalid(f"unknown time zone {tz!r} (use an IANA name like Europe/Paris)") from exc


def activity_statement(start: date, end: date, tz: str, user_id: int | None = None) -> AnySelect:
    """Messages sent per user per local day, days `start` to `end` inclusive in
    zone tz, with its parameters bound. See _activity_template."""
    template, params = _activity_query(start, end, tz, user_id)
    return template.params(params)


def _activity_query(
    start: date, end: date, tz: str, user_id: int | None
) -> tuple[AnySelect, dict[str, Any]]:
    zone = _zone(tz)
    if end < start:
        raise Invalid("the end date is before the start date")
    if (end - start).days >= MAX_ACTIVITY_DAYS:
        raise Invalid(f"the report covers at most {MAX_ACTIVITY_DAYS} days")
    try:
        boundaries = [
            datetime.combine(start + timedelta(days=i), time(), tzinfo=zone).astimezone(UTC)
            for i in range((end - start).days + 2)
        ]
    except OverflowError as exc:  # the day after 9999-12-31, or year 1 east of UTC
        raise Invalid("the dates are out of the supported range") from exc
    # No local midnight inside a UTC hour: each hour of the rollup is in one local day.
    hourly = all(b.minute == b.second == b.microsecond == 0 for b in boundaries)
    params: dict[str, Any] = {"tz": tz, "range_start": boundaries[0], "range_end": boundaries[-1]}
    if user_id is not None:
        params["user_id"] = user_id
    return _activity_template(hourly, user_id is not None), params


@lru_cache(maxsize=4)
def _activity_template(hourly: bool, for_user: bool) -> AnySelect:
    """The day boundaries are computed in the zone (so DST days have 23 or 25
    hours). When every boundary falls on a whole UTC hour (any zone whose offset
    is whole hours), the counts are sums over the hourly rollup
    message_activity; otherwise (India, Nepal, ...) the range is an index range
    scan of messages.created_at. Both give the same answer.
    """
    tz = bindparam("tz", type_=Text)
    range_start = bindparam("range_start", type_=DateTime(timezone=True))
    range_end = bindparam("range_end", type_=DateTime(timezone=True))
    counts: AnySelect
    sender: ColumnElement[Any]
    if hourly:
        activity = A
        day = cast(func.timezone(tz, activity.hour), Date).label("day")
        total = func.sum(activity.message_count)
        counts = (
            select(activity.sender_id, day, cast(total, BigInteger).label("message_count"))
            .where(activity.hour >= range_start, activity.hour < range_end)
            .group_by(activity.sender_id, day)
            # Rows that went to zero (deleted messages) are no activity.
            .having(total > 0)
        )
        sender = activity.sender_id
    else:
        messages = M.__table__.c
        day = cast(func.timezone(tz, messages.created_at), Date).label("day")
        counts = (
            select(messages.sender_id, day, func.count().label("message_count"))
            .where(messages.created_at >= range_start, messages.created_at < range_end)
            .group_by(messages.sender_id, day)
        )
        sender = messages.sender_id
    if for_user:
        counts = counts.where(sender == bindparam("user_id", type_=BigInteger))
    counts_sq = counts.subquery("counts")
    # Core tables, not the ORM entities: a month of activity is millions of
    # rows on a large chat, and the ORM's per-row handling doubled the time.
    users = U.__table__
    return (
        select(
            counts_sq.c.sender_id.label("user_id"),
            users.c.username,
            counts_sq.c.day,
            counts_sq.c.message_count,
        )
        .select_from(counts_sq)
        .outerjoin(users, users.c.id == counts_sq.c.sender_id)
        .order_by(counts_sq.c.day, counts_sq.c.message_count.desc(), counts_sq.c.sender_id)
    )


def activity(
    *, session: Executor, start: date, end: date, tz: str = "UTC", user_id: int | None = None
) -> list[ActivityRow]:
    template, params = _activity_query(start, end, tz, user_id)
    # PostgreSQL's zone names can differ from Python's (each has its own copy of
    # the tz database); a name only Python knows is refused as Invalid here.
    with translated_errors():
        rows = fetch_all(session, template, params).rows
    # A month of a large chat is a million rows or more: straight from the
    # driver's tuples, in ActivityRow's field order.
    return list(map(ActivityRow._make, rows))


# --- inactive users ---


def inactive_statement(
    days: int, after_id: int = 0, limit: int = 50, now: datetime | None = None
) -> AnySelect:
    """Users with no message in the last `days` days, never-senders included,
    by id, with the parameters bound (for EXPLAIN and the benchmark's floor)."""
    return _inactive_template().params(_inactive_params(days, after_id, limit, now))


def _inactive_params(
    days: int, after_id: int, limit: int, now: datetime | None
) -> dict[str, object]:
    if not 1 <= days <= 36_500:
        raise Invalid("days must be between 1 and 36500")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    return {"after_id": after_id, "cutoff": cutoff, "page_rows": limit + 1}


@lru_cache(maxsize=1)
def _inactive_template() -> AnySelect:
    """Built once, from Core tables: building it per call, through the ORM
    layer, cost more than running it.

    Each user's last message is one backward step on (sender_id, created_at),
    so a page costs about `limit` index probes, not a scan of messages.
    """
    messages, users = M.__table__.c, U.__table__.c
    last = (
        select(messages.created_at)
        .where(messages.sender_id == users.id)
        .order_by(messages.created_at.desc())
        .limit(1)
        .lateral("last")
    )
    return (
        select(
            users.id, users.username, users.created_at, last.c.created_at.label("last_message_at")
        )
        .select_from(U.__table__)
        .outerjoin(last, true())
        .where(users.id > bindparam("after_id", type_=BigInteger))
        .where(
            last.c.created_at.is_(None)
            | (last.c.created_at < bindparam("cutoff", type_=DateTime(timezone=True)))
        )
        .order_by(users.id)
        .limit(bindparam("page_rows", type_=Integer))
    )


def inactive_users(
    *,
    session: Executor,
    days: int = 30,
    after_id: int = 0,
    limit: int = 50,
    now: datetime | None = None,
) -> InactivePage:
    limit = page_limit(limit)
    params = _inactive_params(days, after_id, limit, now)
    rows = fetch_all(session, _inactive_template(), params).rows
    users = list(map(InactiveUser._make, rows[:limit]))
    return InactivePage(users=users, next_after_id=users[-1].id if len(rows) > limit else None)


# --- EXPLAIN ------------------------------------------------------------------------


class Explain(Executable, ClauseElement):
    """EXPLAIN (ANALYZE, BUFFERS) of a statement, with the statement's own parameters."""

    inherit_cache = False

    def __init__(self, statement: AnySelect) -> None:
        self.statement = statement


@compiles(Explain, "postgresql")
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (ANALYZE, BUFFERS) " + compiler.process(element.statement, **kw)


def explain(*, session: Session, statement: AnySelect) -> list[str]:
    """The plan PostgreSQL chose for `statement`, as it ran (it is executed)."""
    return [row[0] for row in session.execute(Explain(statement))]


# --- an overview, for the demo and `chatdb stats` ------------------------------------


@dataclass(frozen=True, slots=True)
class Overview:
    users: int
    conversations: int
    messages: int
    busiest_conversation_id: int | None
    most_connected_user_id: int | None


def overview(*, session: Session) -> Overview:
    """Counts, and where the interesting data is. The message count is the sum of
    the conversation counters (exact, no scan of messages)."""
    counts = session.execute(
        select(
            select(func.count()).select_from(U).scalar_subquery().label("users"),
            select(func.count()).select_from(C).scalar_subquery().label("conversations"),
            select(func.coalesce(func.sum(C.last_seq), 0)).scalar_subquery().label("messages"),
            select(C.id)
            .where(C.deleted_at.is_(None))
            .order_by(C.last_seq.desc(), C.id)
            .limit(1)
            .scalar_subquery()
            .label("busy"),
            select(CM.user_id)
            .group_by(CM.user_id)
            .order_by(func.count().desc(), CM.user_id)
            .limit(1)
            .scalar_subquery()
            .label("connected"),
        )
    ).one()
    return Overview(
        users=counts.users,
        conversations=counts.conversations,
        messages=int(counts.messages),
        busiest_conversation_id=counts.busy,
        most_connected_user_id=counts.connected,
    )


def database_holds_data(*, session: Session) -> str | None:
    """What a restore would replace, in words ("3 users and 2 conversations"),
    or None for a database without chatdb data (no schema, or no rows)."""
    if not session.execute(select(func.to_regclass("users").is_not(None))).scalar_one():
        return None
    users, conversations = session.execute(
        select(
            select(func.count()).select_from(U).scalar_subquery(),
            select(func.count()).select_from(C).scalar_subquery(),
        )
    ).one()
    if not users and not conversations:
        return None
    return f"{users} users and {conversations} conversations"
