"""full-text search of messages: a GIN expression index and the functions that
say how text becomes searchable

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 22:10:00

The language (CHATDB_SEARCH_LANGUAGE, a text search configuration such as
`english`) is read when this migration runs and written into three SQL
functions; the index and every search call them, so the index and the queries
cannot disagree. An index expression must be immutable, so changing the
language later means replacing the functions and rebuilding the index
(README, "Search").

A message's search vector is its words in the language (stemmed, stop words
dropped) followed by its words as written (the `simple` configuration), so
exact identifiers, stop words and words of other languages are found too. The
two halves are kept 1000 positions apart (a placeholder lexeme, deleted again),
so a quoted phrase cannot match the end of one half followed by the start of
the other.

An expression index, not a stored column: a stored tsvector roughly doubles the
size of every message row and adding it rewrites the table; the expression is
recomputed only for the rows a search finds (recheck, rank, snippet).

fastupdate = off: every send inserts its (few dozen) lexemes into the index
directly. With the default (on) sends are cheaper until the pending list fills
(gin_pending_list_limit, 4 MB), and then the unlucky send, or autovacuum,
merges thousands of entries: the stalls large chat servers have reported. Chat
messages are short, so the direct insert costs little and every send pays the
same; the benchmark measures sends with and without the index. Deleted
messages are left out of the index (partial), so they can never be found.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Uppercase: no dictionary produces it (they all lowercase), so deleting it
# never removes a real word.
_GAP = "'CHATDB_GAP:1000'::tsvector"
_MARKS = "StartSel=\ue000, StopSel=\ue001"


def _language() -> str:
    """The configured language as a quoted regconfig literal, checked to exist."""
    from chatdb.config import get_settings

    wanted = get_settings().search_language
    found = (
        op.get_bind()
        .execute(
            text(
                "SELECT quote_literal(c.oid::regconfig::text) FROM pg_ts_config c "
                "JOIN pg_namespace n ON n.oid = c.cfgnamespace "
                "WHERE (c.cfgname = :name AND pg_ts_config_is_visible(c.oid)) "
                "OR n.nspname || '.' || c.cfgname = :name"
            ),
            {"name": wanted},
        )
        .scalar()
    )
    if found is None:
        raise RuntimeError(
            f"CHATDB_SEARCH_LANGUAGE={wanted!r} is not a text search configuration of this "
            "server (pg_ts_config lists them)"
        )
    return str(found)


def _functions(language: str) -> list[str]:
    if language == "'simple'":
        vector = "to_tsvector('simple'::regconfig, body)"
        query = "websearch_to_tsquery('simple'::regconfig, q)"
    else:
        vector = (
            f"ts_delete(to_tsvector({language}::regconfig, body) || {_GAP}"
            " || to_tsvector('simple'::regconfig, body), 'CHATDB_GAP'::text)"
        )
        # Dropping stop words can leave the language's query matching anything
        # ("the or -lunch" becomes !'lunch'); then the words as written alone.
        stemmed = f"websearch_to_tsquery({language}::regconfig, q)"
        exact = "websearch_to_tsquery('simple'::regconfig, q)"
        query = f"CASE WHEN querytree({stemmed}) IN ('', 'T') THEN {exact} ELSE {stemmed} || {exact} END"
    # Plain SQL functions without SET or STRICT, so the planner inlines them and
    # matches the index expression; IMMUTABLE, as an index requires.
    return [
        "CREATE FUNCTION chatdb_search_vector(body text) RETURNS tsvector "
        f"LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN {vector}",
        "CREATE FUNCTION chatdb_search_query(q text) RETURNS tsquery "
        f"LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN {query}",
        # Matches are wrapped in U+E000 and U+E001 (private use): the API splits on
        # them and clients insert the pieces as text, never as HTML. A short
        # message is shown whole, a long one as up to two fragments.
        "CREATE FUNCTION chatdb_search_snippet(body text, q tsquery) RETURNS text "
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN CASE WHEN char_length(body) <= 200 "
        f"THEN ts_headline({language}::regconfig, body, q, '{_MARKS}, HighlightAll=true') "
        f"ELSE ts_headline({language}::regconfig, body, q, '{_MARKS}, MaxWords=30, MinWords=12, "
        'MaxFragments=2, FragmentDelimiter=" … "\') END',
    ]


def upgrade() -> None:
    for statement in _functions(_language()):
        op.execute(statement)
    # Building the index reads every message: longer than chatdb's statement
    # timeout at tens of millions; this transaction alone lifts it.
    op.execute("SET LOCAL statement_timeout = 0")
    op.execute(
        "CREATE INDEX ix_messages_search ON messages USING gin (chatdb_search_vector(body)) "
        "WITH (fastupdate = off) WHERE deleted_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_messages_search")
    op.execute("DROP FUNCTION chatdb_search_snippet(text, tsquery)")
    op.execute("DROP FUNCTION chatdb_search_query(text)")
    op.execute("DROP FUNCTION chatdb_search_vector(text)")
