"""Full-text search in the data layer: syntax, language, who finds what, ranking,
pages, and what the planner does with it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from chatdb import migrate, store
from chatdb.config import get_settings
from chatdb.db import make_engine
from chatdb.errors import Invalid
from chatdb.store.types import Conversation, SearchCursor, SearchPage, User
from tests.conftest import TEST_SETTINGS, create_database, drop_database, uses_index
from tests.factories import make_group, make_user, send


def _bodies(page: SearchPage) -> list[str]:
    return [hit.message.body or "" for hit in page.hits]


def _search(session: Session, user: User, q: str, **kwargs: object) -> list[str]:
    return _bodies(store.search_messages(session=session, q=q, actor_id=user.id, **kwargs))  # type: ignore[arg-type]


@pytest.fixture
def chat(session: Session) -> tuple[User, User, Conversation]:
    alice, bob = make_user(session), make_user(session)
    return alice, bob, make_group(session, alice, bob)


def test_words_phrases_exclusions_and_or(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    alice, bob, group = chat
    for body in (
        "The deploy is done, release notes later",
        "release the deploy tomorrow",
        "lunch at noon?",
        "dinner tonight",
        "deploy after lunch",
    ):
        send(session, group, alice, body)

    assert set(_search(session, bob, "deploy")) == {
        "The deploy is done, release notes later",
        "release the deploy tomorrow",
        "deploy after lunch",
    }
    # A quoted phrase: those words, in that order.
    assert _search(session, bob, '"release the deploy"') == ["release the deploy tomorrow"]
    assert _search(session, bob, '"deploy release"') == []
    assert set(_search(session, bob, "deploy -lunch")) == {
        "The deploy is done, release notes later",
        "release the deploy tomorrow",
    }
    assert set(_search(session, bob, "lunch or dinner")) == {
        "lunch at noon?",
        "dinner tonight",
        "deploy after lunch",
    }


def test_stemming_and_exact_identifiers(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    alice, bob, group = chat
    send(session, group, alice, "Deploying the releases now")
    send(session, group, alice, "see https://example.org/docs/setup?tab=2 for it")
    send(session, group, alice, "call foo_bar.baz() from v1.2.3 onwards")
    send(session, group, alice, "The Who played")
    # English stems: other forms of the word are found.
    assert _search(session, bob, "deployed release") == ["Deploying the releases now"]
    # Identifiers are found as written.
    assert _search(session, bob, "https://example.org/docs/setup?tab=2") == [
        "see https://example.org/docs/setup?tab=2 for it"
    ]
    assert _search(session, bob, "example.org") == [
        "see https://example.org/docs/setup?tab=2 for it"
    ]
    assert _search(session, bob, "foo_bar.baz") == ["call foo_bar.baz() from v1.2.3 onwards"]
    assert _search(session, bob, "v1.2.3") == ["call foo_bar.baz() from v1.2.3 onwards"]
    assert _search(session, bob, "v1.2.4") == []
    # English stop words alone are still words as written.
    assert _search(session, bob, '"the who"') == ["The Who played"]


def test_the_two_halves_of_the_index_do_not_make_phrases(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    """The last word of a message followed by its first is not a phrase."""
    alice, bob, group = chat
    send(session, group, alice, "standup moved tomorrow")
    assert _search(session, bob, '"tomorrow standup"') == []
    assert _search(session, bob, '"standup moved"') == ["standup moved tomorrow"]


def test_only_members_find_messages(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    alice, bob, group = chat
    outsider = make_user(session)
    send(session, group, alice, "the secret plan")
    own = make_group(session, outsider, title="theirs")
    send(session, own, outsider, "my own secret")
    assert _search(session, bob, "secret") == ["the secret plan"]
    assert _search(session, outsider, "secret") == ["my own secret"]
    assert _search(session, outsider, "secret", conversation_id=group.id) == []
    # An operator (no actor) finds everything.
    operator = store.search_messages(session=session, q="secret", actor_id=None)
    assert set(_bodies(operator)) == {"the secret plan", "my own secret"}
    # A member who leaves finds nothing from the conversation any more.
    store.remove_member(session=session, conversation_id=group.id, user_id=bob.id, actor_id=bob.id)
    assert _search(session, bob, "secret") == []


def test_deleted_and_edited_messages(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    alice, bob, group = chat
    gone = send(session, group, alice, "pineapple pizza").message
    edited = send(session, group, alice, "meet at the old office").message
    send(session, group, alice, "pineapple juice")

    store.delete_message(session=session, conversation_id=group.id, seq=gone.seq, actor_id=alice.id)
    assert _search(session, bob, "pineapple") == ["pineapple juice"]
    store.restore_message(session=session, conversation_id=group.id, seq=gone.seq)
    assert set(_search(session, bob, "pineapple")) == {"pineapple pizza", "pineapple juice"}

    store.edit_message(
        session=session,
        conversation_id=group.id,
        seq=edited.seq,
        body="meet at the new office",
        actor_id=alice.id,
    )
    assert _search(session, bob, "old office") == []
    assert _search(session, bob, "new office") == ["meet at the new office"]

    # A deleted conversation is searched by nobody, operators included.
    store.delete_conversation(session=session, conversation_id=group.id, actor_id=alice.id)
    assert _search(session, bob, "pineapple") == []
    assert store.search_messages(session=session, q="pineapple", actor_id=None).hits == []


def test_filters(session: Session, chat: tuple[User, User, Conversation]) -> None:
    alice, bob, group = chat
    other = make_group(session, bob, alice, title="other")
    first = send(session, group, alice, "coffee first").message
    send(session, group, bob, "coffee second")
    send(session, other, alice, "coffee elsewhere")
    assert set(_search(session, bob, "coffee", conversation_id=group.id)) == {
        "coffee first",
        "coffee second",
    }
    assert set(_search(session, bob, "coffee", sender_id=alice.id)) == {
        "coffee first",
        "coffee elsewhere",
    }
    # All three were sent in this transaction, at one now(): before/after split on it.
    at = first.created_at
    assert _search(session, bob, "coffee", before=at) == []
    assert len(_search(session, bob, "coffee", before=at + timedelta(seconds=1))) == 3
    assert _search(session, bob, "coffee", after=at) == []
    assert len(_search(session, bob, "coffee", after=at - timedelta(seconds=1))) == 3


def test_ranked_by_relevance_then_newest_first(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    alice, bob, group = chat
    send(session, group, alice, "budget: the budget, the whole budget, and budget again")
    send(session, group, alice, "one mention of the budget among many other words here today")
    send(session, group, alice, "one mention of the budget among many other words here today")
    page = store.search_messages(session=session, q="budget", actor_id=bob.id)
    assert page.hits[0].message.body.startswith("budget:")  # type: ignore[union-attr]
    assert page.hits[0].rank > page.hits[1].rank
    # Equal relevance: the newer (here, higher seq at the same time) first.
    assert page.hits[1].rank == page.hits[2].rank
    assert page.hits[1].message.seq > page.hits[2].message.seq


def test_snippets_mark_the_matches(session: Session, chat: tuple[User, User, Conversation]) -> None:
    alice, bob, group = chat
    send(session, group, alice, "Who is bringing <b>snacks</b> tonight?")
    hit = store.search_messages(session=session, q="snack", actor_id=bob.id).hits[0]
    assert ("snacks", True) in hit.snippet
    assert "".join(piece for piece, _ in hit.snippet) == "Who is bringing <b>snacks</b> tonight?"
    long_body = " ".join(["filler words go here"] * 40 + ["the needle is here"] + ["more"] * 40)
    send(session, group, alice, long_body)
    hit = store.search_messages(session=session, q="needle", actor_id=bob.id).hits[0]
    assert ("needle", True) in hit.snippet
    assert len("".join(piece for piece, _ in hit.snippet)) < len(long_body)
    assert hit.message.body == long_body
    assert hit.conversation_title == "a group"


def test_pages_have_no_duplicates_or_gaps(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    alice, bob, group = chat
    for i in range(23):
        send(session, group, alice, "report " * (1 + i % 4) + f"number {i}")
    seen: list[int] = []
    cursor: SearchCursor | None = None
    for _ in range(10):
        page = store.search_messages(
            session=session, q="report", actor_id=bob.id, limit=5, cursor=cursor
        )
        seen += [hit.message.seq for hit in page.hits]
        ranks = [hit.rank for hit in page.hits]
        assert ranks == sorted(ranks, reverse=True)
        if page.next_cursor is None:
            break
        assert page.next_cursor != cursor
        cursor = page.next_cursor
    assert sorted(seen) == list(range(1, 24))
    assert len(seen) == len(set(seen))
    everything = store.search_messages(session=session, q="report", actor_id=bob.id, limit=50)
    assert [hit.message.seq for hit in everything.hits] == seen


@pytest.mark.parametrize("q", ["", "   ", "-lunch", "!!", "\x00lunch", "x" * 501])
def test_bad_search_text_is_refused(
    session: Session, chat: tuple[User, User, Conversation], q: str
) -> None:
    _, bob, _ = chat
    with pytest.raises(Invalid):
        store.search_messages(session=session, q=q, actor_id=bob.id)


def test_odd_text_is_searched_not_refused(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    alice, bob, group = chat
    send(session, group, alice, "it's 50% off: a&b | c!")
    for q in ['"unclosed', "a & b | !c", "or or", "'); DROP TABLE messages; --", "50%"]:
        store.search_messages(session=session, q=q, actor_id=bob.id)
    with pytest.raises(Invalid):  # no word at all
        store.search_messages(session=session, q="(((", actor_id=bob.id)
    assert _search(session, bob, "50%") == ["it's 50% off: a&b | c!"]


def test_search_uses_the_index(session: Session, chat: tuple[User, User, Conversation]) -> None:
    """The store's WHERE is the index's column and predicate, which the index can
    serve, and it ranks from the stored vector. (Which plan wins depends on the
    data; the bench shows real ones.)"""
    alice, bob, group = chat
    send(session, group, alice, "indexed words")
    sql = str(store.search_statement("indexed", bob.id).compile(dialect=session.get_bind().dialect))
    assert "messages.search_vector @@ chatdb_search_query(" in sql
    assert "ts_rank(candidate.search_vector, " in sql
    assert "messages.deleted_at IS NULL" in sql
    session.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(
        session.execute(
            text(
                "EXPLAIN SELECT seq FROM messages WHERE deleted_at IS NULL "
                "AND search_vector @@ chatdb_search_query('indexed')"
            )
        ).scalars()
    )
    assert uses_index(session, plan, "ix_messages_search"), plan


def test_searches_are_planned_for_their_values(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    """psycopg prepares a statement on its fifth run; PostgreSQL's generic plan
    for it would recompute the search query per row. A search's transaction
    plans for the values instead, so the prepared search never runs generic."""
    alice, bob, group = chat
    send(session, group, alice, "planned words")
    for _ in range(8):
        assert _search(session, bob, "planned") == ["planned words"]
    assert session.execute(text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
    prepared = session.execute(
        text(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%ts_rank(candidate.search_vector%'"
        )
    ).all()
    assert prepared, "psycopg prepared the search after five runs"
    assert all(generic == 0 and custom > 0 for generic, custom in prepared), prepared


def test_the_stored_vector_follows_edits_and_deletes(
    session: Session, chat: tuple[User, User, Conversation]
) -> None:
    alice, _, group = chat
    message = send(session, group, alice, "first draft").message

    def stored() -> str | None:
        return session.execute(
            text(
                "SELECT search_vector::text FROM messages WHERE conversation_id = :c AND seq = :s"
            ),
            {"c": group.id, "s": message.seq},
        ).scalar_one()

    assert (
        stored()
        == session.execute(text("SELECT chatdb_search_vector('first draft')::text")).scalar_one()
    )
    store.edit_message(
        session=session, conversation_id=group.id, seq=message.seq, actor_id=alice.id, body="final"
    )
    edited = stored() or ""
    assert "draft" not in edited
    assert "final" in edited
    store.delete_message(
        session=session, conversation_id=group.id, seq=message.seq, actor_id=alice.id
    )
    assert stored() is None


@pytest.fixture
def empty_database(server_url: URL) -> Iterator[URL]:
    name = f"chatdb_lang_{uuid.uuid4().hex[:10]}"
    yield create_database(server_url, name)
    drop_database(server_url, name)


def _migrate_with_language(
    url: URL, language: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    monkeypatch.setenv("CHATDB_SEARCH_LANGUAGE", language)
    get_settings.cache_clear()
    engine = make_engine(url, TEST_SETTINGS)
    try:
        migrate.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        get_settings.cache_clear()


def test_the_language_setting_is_baked_in_by_the_migration(
    empty_database: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    for engine in _migrate_with_language(empty_database, "german", monkeypatch):
        with engine.connect() as connection:
            vector = connection.execute(
                text("SELECT chatdb_search_vector('Die Häuser und die Katzen')::text")
            ).scalar_one()
            found = connection.execute(
                text(
                    "SELECT chatdb_search_vector('Die Häuser und die Katzen') "
                    "@@ chatdb_search_query('Haus')"
                )
            ).scalar_one()
    # German stems (haus), the words as written (häuser, die) beside them.
    assert {"'haus'", "'häuser'", "'die'"} <= {part.split(":")[0] for part in vector.split()}
    assert found is True


def test_simple_language_indexes_words_as_written(
    empty_database: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    for engine in _migrate_with_language(empty_database, "simple", monkeypatch):
        with engine.connect() as connection:
            vector = connection.execute(
                text("SELECT chatdb_search_vector('Deploying the releases')::text")
            ).scalar_one()
    assert vector == "'deploying':1 'releases':3 'the':2"


def test_an_unknown_language_stops_the_migration_clearly(
    empty_database: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RuntimeError, match="not a text search configuration"):
        for _ in _migrate_with_language(empty_database, "klingon", monkeypatch):
            pass


def test_the_mentions_filter(session: Session, chat: tuple[User, User, Conversation]) -> None:
    alice, bob, group = chat
    send(session, group, alice, f"@{bob.username} the deploy is done")
    send(session, group, alice, "the deploy is done, says nobody in particular")
    send(session, group, bob, f"@{alice.username} deploy checked")
    assert len(_search(session, bob, "deploy")) == 3
    assert _search(session, bob, "deploy", mentioning=bob.id) == [
        f"@{bob.username} the deploy is done"
    ]
    assert _search(session, alice, "deploy", mentioning=alice.id) == [
        f"@{alice.username} deploy checked"
    ]
