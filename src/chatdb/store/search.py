"""Full-text search of messages. Every function runs in the caller's transaction.

How text becomes searchable (the language, exact words beside stemmed ones) is
in the database: migration 0005 made chatdb_search_vector, chatdb_search_query
and chatdb_search_snippet, and 0009 the stored column messages.search_vector
(computed by the first) with the GIN index on it. The SQL here only uses them,
so it can never disagree with the index.
"""

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import REAL, TSQUERY
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnElement

from chatdb import models
from chatdb.errors import Invalid
from chatdb.store._validate import clean_text, page_limit, positive_id
from chatdb.store.types import AnyRow, AnySelect, Message, SearchCursor, SearchHit, SearchPage

QUERY_MAX = 500
# A search ranks the newest CANDIDATES matches, not every match: a common word
# matches a large share of a long history (90 000 messages of one
# 900 000-message conversation in the large bench), and ranking them all costs
# time in proportion. Older matches are reached by narrowing: `before`, a
# conversation, a sender, more words.
CANDIDATES = 1000
FILTERS = ("conversation_id", "sender_id", "before", "after")

# What chatdb_search_snippet wraps matches in (see migration 0005).
_MATCH_START, _MATCH_END = "\ue000", "\ue001"

# websearch_to_tsquery reads "https://x.org/a" as the word "https" and the rest;
# quoting such a word makes it a phrase, which finds the URL as the message had it.
_COLON_WORD = re.compile(r"(?<!\S)(-?)([^\s\"]*:[^\s\"]+)")


def _prepare(q: str) -> str:
    q = clean_text(q, field="search text", max_length=QUERY_MAX).strip()
    if '"' not in q:
        q = _COLON_WORD.sub(r'\1"\2"', q)
    return q


def _as_utc(value: datetime | None) -> datetime | None:
    # A time without a zone is taken as UTC, like the rest of the API's times.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def search_messages(
    *,
    session: Session,
    q: str,
    actor_id: int | None,
    conversation_id: int | None = None,
    sender_id: int | None = None,
    before: datetime | None = None,
    after: datetime | None = None,
    cursor: SearchCursor | None = None,
    limit: int = 20,
    mentioning: int | None = None,
) -> SearchPage:
    """Messages matching `q` (web-search syntax: "a phrase", -word, or), most
    relevant first, newer first among equals, in keyset pages.

    Only messages of live conversations `actor_id` is a member of (all for an
    operator, None); never deleted ones. Edited messages match their current
    text only: an edit replaces the index entry with the new text's.
    `mentioning`: only messages that @mention this user.
    """
    limit = page_limit(limit)
    text_query = _prepare(q)
    # The same round trip plans this transaction's statements for their values
    # (SET LOCAL plan_cache_mode): psycopg prepares a statement on its fifth
    # run, and PostgreSQL's generic plan for a search cannot fold the query
    # into a constant. It computed it again for every row it tested: 2.4x
    # slower on the small benchmark set (PostgreSQL 15).
    tree, _ = session.execute(
        select(
            func.querytree(func.chatdb_search_query(text_query, type_=TSQUERY)),
            func.set_config("plan_cache_mode", "force_custom_plan", True),
        )
    ).one()
    if tree in ("", "T"):
        raise Invalid(
            "nothing to search for: give at least one word that is not excluded with '-'"
            if tree == "T"
            else "nothing to search for: give at least one word"
        )
    params: dict[str, Any] = {"q": text_query, "page_rows": limit + 1}
    filters = []
    if actor_id is not None:
        params["actor_id"] = positive_id(actor_id, field="user id")
    if conversation_id is not None:
        params["conversation_id"] = positive_id(conversation_id, field="conversation id")
        filters.append("conversation_id")
    if sender_id is not None:
        params["sender_id"] = positive_id(sender_id, field="from user")
        filters.append("sender_id")
    if mentioning is not None:
        params["mentioned_id"] = positive_id(mentioning, field="mentioned user")
        filters.append("mentioned_id")
    for name, value in (("before", _as_utc(before)), ("after", _as_utc(after))):
        if value is not None:
            params[name] = value
            filters.append(name)
    if cursor is not None:
        params.update(
            cursor_rank=cursor.rank,
            cursor_at=_as_utc(cursor.created_at),
            cursor_conversation_id=cursor.conversation_id,
            cursor_seq=cursor.seq,
        )
    template = _search_template(actor_id is not None, frozenset(filters), cursor is not None)
    rows = session.execute(template, params).all()
    hits = [_hit(row) for row in rows[:limit]]
    return SearchPage(hits=hits, next_cursor=hits[-1].cursor if len(rows) > limit else None)


def search_statement(
    q: str, actor_id: int | None, conversation_id: int | None = None, limit: int = 20
) -> AnySelect:
    """A first page's SQL with its parameters bound (for the benchmark's floor)."""
    params: dict[str, Any] = {"q": _prepare(q), "page_rows": limit + 1}
    filters: frozenset[str] = frozenset()
    if actor_id is not None:
        params["actor_id"] = actor_id
    if conversation_id is not None:
        params["conversation_id"] = conversation_id
        filters = frozenset({"conversation_id"})
    return _search_template(actor_id is not None, filters, False).params(params)


def _snippet(text: str) -> list[tuple[str, bool]]:
    pieces: list[tuple[str, bool]] = []
    for part in text.split(_MATCH_START):
        match, _, rest = part.rpartition(_MATCH_END)
        if match:
            pieces.append((match, True))
        if rest:
            pieces.append((rest, False))
    return pieces


def _hit(row: AnyRow) -> SearchHit:
    message = Message(
        conversation_id=row.conversation_id,
        seq=row.seq,
        sender_id=row.sender_id,
        sender_username=row.sender_username,
        sender_display_name=row.sender_display_name,
        body=row.body,
        created_at=row.created_at,
        edited_at=row.edited_at,
        deleted_at=None,
    )
    # Marks typed into the message itself would be taken for highlighting; such
    # a message's snippet is shown plain.
    plain = _MATCH_START in row.body or _MATCH_END in row.body
    snippet = (
        [(row.snippet.replace(_MATCH_START, "").replace(_MATCH_END, ""), False)]
        if plain
        else _snippet(row.snippet)
    )
    return SearchHit(
        message=message,
        conversation_title=row.conversation_title,
        snippet=snippet,
        rank=float(row.rank),
    )


@lru_cache(maxsize=64)
def _search_template(for_member: bool, filters: frozenset[str], with_cursor: bool) -> AnySelect:
    """One statement per shape: the candidates, the page, then names and
    snippets for the page's rows only.

    Candidates are the newest CANDIDATES matches (see the module's note). For a
    member (or one named conversation) they are found conversation by
    conversation, newest first (a LATERAL per conversation, so each stops early
    and the planner can pick the primary key walked backwards or the GIN index,
    whichever its statistics favour for the words); for an operator across
    everything, newest first over all messages. Only candidates are ranked, from
    the stored vector. ts_headline re-reads the text, so the outer query runs it
    on the page's rows alone.
    """
    messages = models.Message.__table__.c
    conversations = models.Conversation.__table__
    members = models.ConversationMember.__table__.c
    query = func.chatdb_search_query(bindparam("q", type_=Text), type_=TSQUERY)
    matching = select(
        messages.conversation_id,
        messages.seq,
        messages.sender_id,
        messages.body,
        messages.created_at,
        messages.edited_at,
        messages.search_vector,
    ).where(messages.search_vector.bool_op("@@")(query), messages.deleted_at.is_(None))
    if "sender_id" in filters:
        matching = matching.where(messages.sender_id == bindparam("sender_id", type_=BigInteger))
    if "mentioned_id" in filters:
        mention = models.MessageMention
        matching = matching.where(
            exists().where(
                mention.conversation_id == messages.conversation_id,
                mention.seq == messages.seq,
                mention.user_id == bindparam("mentioned_id", type_=BigInteger),
            )
        )
    if "before" in filters:
        matching = matching.where(
            messages.created_at < bindparam("before", type_=DateTime(timezone=True))
        )
    if "after" in filters:
        matching = matching.where(
            messages.created_at > bindparam("after", type_=DateTime(timezone=True))
        )
    live = conversations.c.deleted_at.is_(None)
    if for_member or "conversation_id" in filters:
        scope = select(conversations.c.id).where(live)
        if for_member:
            scope = scope.join(
                models.ConversationMember.__table__,
                and_(
                    members.conversation_id == conversations.c.id,
                    members.user_id == bindparam("actor_id", type_=BigInteger),
                ),
            )
        if "conversation_id" in filters:
            scope = scope.where(
                conversations.c.id == bindparam("conversation_id", type_=BigInteger)
            )
        scope_sq = scope.subquery("scope")
        per_conversation = (
            matching.where(messages.conversation_id == scope_sq.c.id)
            .order_by(messages.seq.desc())
            .limit(CANDIDATES)
            .lateral("found")
        )
        found = select(per_conversation).select_from(scope_sq.join(per_conversation, true()))
        newest = per_conversation.c.created_at
    else:
        found = matching.where(exists().where(conversations.c.id == messages.conversation_id, live))
        newest = messages.created_at
    candidates = found.order_by(newest.desc()).limit(CANDIDATES).subquery("candidate")
    c = candidates.c
    rank = func.ts_rank(c.search_vector, query, type_=REAL)
    page = select(
        c.conversation_id, c.seq, c.sender_id, c.body, c.created_at, c.edited_at, rank.label("rank")
    )
    if with_cursor:
        page = page.where(
            tuple_(rank, c.created_at, c.conversation_id, c.seq)
            < tuple_(
                # The rank comes back as float4's shortest text; as real it is
                # the same value again, as double precision it would not be.
                cast(bindparam("cursor_rank", type_=Float), REAL),
                bindparam("cursor_at", type_=DateTime(timezone=True)),
                bindparam("cursor_conversation_id", type_=BigInteger),
                bindparam("cursor_seq", type_=BigInteger),
            )
        )
    order = (rank.desc(), c.created_at.desc(), c.conversation_id.desc(), c.seq.desc())
    page_sq = page.order_by(*order).limit(bindparam("page_rows", type_=Integer)).subquery("page")
    conversation = conversations.alias("conversation")
    sender, other = models.User.__table__.alias("sender"), models.User.__table__.alias("other")
    other_id: ColumnElement[Any]
    if for_member:
        actor = bindparam("actor_id", type_=BigInteger)
        other_id = case(
            (conversation.c.direct_user_low_id == actor, conversation.c.direct_user_high_id),
            else_=conversation.c.direct_user_low_id,
        )
    else:
        other_id = conversation.c.direct_user_high_id
    return (
        select(
            *page_sq.c,
            sender.c.username.label("sender_username"),
            sender.c.display_name.label("sender_display_name"),
            func.coalesce(conversation.c.title, other.c.display_name, other.c.username).label(
                "conversation_title"
            ),
            func.chatdb_search_snippet(page_sq.c.body, query, type_=Text).label("snippet"),
        )
        .select_from(
            page_sq.join(conversation, conversation.c.id == page_sq.c.conversation_id)
            .outerjoin(sender, sender.c.id == page_sq.c.sender_id)
            .outerjoin(other, and_(conversation.c.kind == "direct", other.c.id == other_id))
        )
        .order_by(
            page_sq.c.rank.desc(),
            page_sq.c.created_at.desc(),
            page_sq.c.conversation_id.desc(),
            page_sq.c.seq.desc(),
        )
    )
