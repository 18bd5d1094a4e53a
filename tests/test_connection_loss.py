"""A connection lost in the middle of a transaction (pg_terminate_backend of
the connection serving the request, at a chosen statement).

PostgreSQL rolls back what was not committed, so no write is ever half done.
What is left to get right is the retry: the API runs an idempotent send again
on a new connection (its key makes a repeat harmless), and nothing else; a
write without that protection answers 503 and leaves everything as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from chatdb import store
from chatdb.db import connection_lost, engine_for_reads, psycopg_conninfo, reads, transaction
from tests.api_support import Api
from tests.factories import make_group, make_user, send
from tests.test_events import WAIT


@contextmanager
def connection_killed_at(
    engine: Engine, marker: str, *, after: bool = False, times: int = 1
) -> Iterator[list[str]]:
    """Terminate the backend of the connection that runs a statement containing
    `marker`, just before it runs (or just after, with `after`), the first
    `times` times. Yields the list of statements seen with the marker, which
    shows how often the work was attempted."""
    seen: list[str] = []
    conninfo = psycopg_conninfo(engine.url)

    def kill(cursor: Any) -> None:
        pid = cursor.connection.info.backend_pid
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # Terminating is asynchronous: wait until the backend is gone, so
            # the next statement on this connection meets a dead one for sure.
            deadline = time.monotonic() + WAIT
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, "the backend was not terminated"
                time.sleep(0.01)

    def hook(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if marker in statement:
            seen.append(statement)
            if len(seen) <= times:
                kill(cursor)

    name = "after_cursor_execute" if after else "before_cursor_execute"
    event.listen(engine, name, hook)
    try:
        yield seen
    finally:
        event.remove(engine, name, hook)


def _observe(engine: Engine, query: str, conversation_id: int) -> list[tuple[Any, ...]]:
    """Read through a connection of its own: the pool is what is under test,
    and an observer that took a connection from it could meet the one the
    test killed."""
    with psycopg.connect(psycopg_conninfo(engine.url)) as connection:
        return connection.execute(query, {"c": conversation_id}).fetchall()


def _messages(engine: Engine, conversation_id: int) -> list[tuple[int, str]]:
    return [
        (seq, body)
        for seq, body in _observe(
            engine,
            "SELECT seq, body FROM messages WHERE conversation_id = %(c)s ORDER BY seq",
            conversation_id,
        )
    ]


def _counters(engine: Engine, conversation_id: int) -> tuple[int, int, int]:
    """last_seq, last_change_seq and the number of logged changes."""
    [(last_seq, last_change_seq, logged)] = _observe(
        engine,
        "SELECT last_seq, last_change_seq, "
        "(SELECT count(*) FROM changes WHERE conversation_id = %(c)s) "
        "FROM conversations WHERE id = %(c)s",
        conversation_id,
    )
    return last_seq, last_change_seq, logged


SEND = "INSERT INTO messages"


def test_a_send_with_a_key_is_retried_when_the_connection_dies_before_it(
    api: Api, fresh_engine: Engine
) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    api.send(alice, conversation, "first")
    before = _counters(fresh_engine, conversation)
    with connection_killed_at(fresh_engine, SEND) as attempts:
        response = api.client.post(
            f"/v1/conversations/{conversation}/messages",
            json={"body": "through a dying connection"},
            headers={**alice.auth, "Idempotency-Key": "k1"},
        )
    assert response.status_code == 201, response.text
    assert len(attempts) == 2  # the first died, the retry went through
    assert response.json()["seq"] == 2
    assert _messages(fresh_engine, conversation) == [
        (1, "first"),
        (2, "through a dying connection"),
    ]
    # One more message and one more change, as for any send.
    assert _counters(fresh_engine, conversation) == (
        before[0] + 1,
        before[1] + 1,
        before[2] + 1,
    )


def test_a_send_whose_commit_never_arrives_is_retried_once_and_stored_once(
    api: Api, fresh_engine: Engine
) -> None:
    """The connection dies after the INSERT ran, before COMMIT: the half-done
    transaction is rolled back by PostgreSQL, and the retry sends it once."""
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    before = _counters(fresh_engine, conversation)
    with connection_killed_at(fresh_engine, SEND, after=True) as attempts:
        response = api.client.post(
            f"/v1/conversations/{conversation}/messages",
            json={"body": "half done, then done"},
            headers={**alice.auth, "Idempotency-Key": "k2"},
        )
    assert response.status_code == 201, response.text
    assert len(attempts) == 2
    assert _messages(fresh_engine, conversation) == [(1, "half done, then done")]
    assert _counters(fresh_engine, conversation) == (1, before[1] + 1, before[2] + 1)
    # And a retry by the client now is a replay of that one message.
    replay = api.client.post(
        f"/v1/conversations/{conversation}/messages",
        json={"body": "half done, then done"},
        headers={**alice.auth, "Idempotency-Key": "k2"},
    )
    assert replay.status_code == 200
    assert replay.json()["seq"] == 1


def test_the_retry_gives_up_when_the_connection_keeps_dying(api: Api, fresh_engine: Engine) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    with connection_killed_at(fresh_engine, SEND, times=100) as attempts:
        response = api.client.post(
            f"/v1/conversations/{conversation}/messages",
            json={"body": "never"},
            headers={**alice.auth, "Idempotency-Key": "k3"},
        )
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    assert len(attempts) == 3  # bounded
    assert _messages(fresh_engine, conversation) == []


def test_a_send_without_a_key_is_not_retried(api: Api, fresh_engine: Engine) -> None:
    """Without a key, a repeat after a loss during COMMIT could store the
    message twice; the API answers 503 and the client decides."""
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    before = _counters(fresh_engine, conversation)
    with connection_killed_at(fresh_engine, SEND, after=True) as attempts:
        response = api.client.post(
            f"/v1/conversations/{conversation}/messages",
            json={"body": "no key"},
            headers=alice.auth,
        )
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"
    assert len(attempts) == 1
    assert _messages(fresh_engine, conversation) == []
    assert _counters(fresh_engine, conversation) == before  # nothing half written


def test_an_edit_that_loses_its_connection_changes_nothing(api: Api, fresh_engine: Engine) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    api.send(alice, conversation, "original")
    before = _counters(fresh_engine, conversation)
    with connection_killed_at(fresh_engine, "UPDATE messages SET body", after=True) as attempts:
        response = api.client.patch(
            f"/v1/conversations/{conversation}/messages/1",
            json={"body": "edited"},
            headers=alice.auth,
        )
    assert response.status_code == 503, response.text
    assert len(attempts) == 1
    assert _messages(fresh_engine, conversation) == [(1, "original")]
    assert _counters(fresh_engine, conversation) == before
    # The pool replaced the dead connection: the next request just works.
    again = api.client.patch(
        f"/v1/conversations/{conversation}/messages/1", json={"body": "edited"}, headers=alice.auth
    )
    assert again.status_code == 200, again.text
    assert _messages(fresh_engine, conversation) == [(1, "edited")]


def test_a_connection_left_mid_command_is_dropped_not_pooled(fresh_engine: Engine) -> None:
    """A backend the server ended can leave libpq waiting for a command's
    results with the connection still "OK"; every statement on it then fails.
    Its first error must count as a lost connection, so the pool drops it and
    a retry runs on another."""
    with fresh_engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        raw.pgconn.send_query(b"SELECT 1")  # a command whose results nobody reads
        with pytest.raises(OperationalError) as caught:
            connection.execute(text("SELECT 2"))
    assert caught.value.connection_invalidated
    assert connection_lost(caught.value)
    with fresh_engine.connect() as connection:
        assert connection.execute(text("SELECT 3")).scalar() == 3


def test_a_read_whose_connection_dies_counts_it_lost_and_the_next_gets_a_live_one(
    fresh_engine: Engine,
) -> None:
    """The hot reads run past SQLAlchemy's execute (chatdb.store._driver), and
    must still invalidate a dead connection, as the API's retry expects."""
    with transaction(fresh_engine) as session:
        alice, bob = make_user(session, "alice"), make_user(session, "bob")
        group = make_group(session, alice, bob)
        send(session, group, alice, "hello")
    with (
        connection_killed_at(engine_for_reads(fresh_engine), "conversation_last_seq") as seen,
        reads(fresh_engine) as connection,
        pytest.raises(OperationalError) as caught,
    ):
        store.list_messages(session=connection, conversation_id=group.id, actor_id=bob.id)
    assert len(seen) == 1
    assert caught.value.connection_invalidated
    assert connection_lost(caught.value)
    with reads(fresh_engine) as connection:
        page = store.list_messages(session=connection, conversation_id=group.id, actor_id=bob.id)
    assert [m.body for m in page.messages] == ["hello"]
