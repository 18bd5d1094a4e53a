"""The hot reads' rows straight from psycopg (chatdb.store._driver): the same
rows SQLAlchemy's execute gives, its errors, its transaction, its listeners."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, create_engine, event, select
from sqlalchemy.exc import DataError, DBAPIError

from chatdb import models
from chatdb.db import reads, transaction
from chatdb.store._driver import fetch_all
from chatdb.store.messages import _page_query
from chatdb.store.reports import (
    _activity_query,
    _inactive_params,
    _inactive_template,
    _inbox_query,
)
from chatdb.store.types import AnySelect, InboxCursor
from tests.factories import make_group, make_user, send


def _statements(engine: Engine) -> list[tuple[AnySelect, dict[str, Any]]]:
    """Each template the driver runs, with parameters that find rows."""
    with transaction(engine) as session:
        alice, bob = make_user(session, "alice", "Alice"), make_user(session, "bob")
        make_user(session, "carol")
        group = make_group(session, alice, bob, title="plans")
        for n in range(5):
            send(session, group, alice if n % 2 else bob, f"message {n}")
    newest = datetime.now(UTC) + timedelta(days=1)
    today = datetime.now(UTC).date()
    return [
        _page_query(group.id, None, None, 3, alice.id),
        _page_query(group.id, 5, None, 2, alice.id),
        _page_query(group.id, None, 1, 2, None),
        _inbox_query(alice.id, None, 20),
        _inbox_query(alice.id, InboxCursor(last_activity_at=newest, conversation_id=0), 20),
        (_inactive_template(), _inactive_params(1, 0, 50, newest + timedelta(days=2))),
        # From the hourly rollup, and (a zone half an hour off UTC) from messages.
        _activity_query(today - timedelta(days=1), today, "UTC", None),
        _activity_query(
            today - timedelta(days=1), today + timedelta(days=1), "Asia/Kolkata", alice.id
        ),
    ]


def test_rows_from_the_driver_are_sqlalchemys(fresh_engine: Engine) -> None:
    for template, params in _statements(fresh_engine):
        with reads(fresh_engine) as connection:
            expected = connection.execute(template, params)
            fields, rows = tuple(expected.keys()), [tuple(row) for row in expected]
            fetched = fetch_all(connection, template, params)
        assert rows, "no rows: the comparison would prove little"
        assert fetched.rows == rows
        assert fetched.fields == fields


def test_a_template_needing_sqlalchemys_type_processing_is_refused(fresh_engine: Engine) -> None:
    tokens = models.AuthToken.__table__.c
    by_hash = select(tokens.user_id).where(tokens.token_hash == bindparam("token_hash"))
    in_list = select(tokens.user_id).where(tokens.id.in_(bindparam("ids", expanding=True)))
    with reads(fresh_engine) as connection:
        with pytest.raises(ValueError, match="token_hash"):
            fetch_all(connection, by_hash, {"token_hash": b"x"})
        with pytest.raises(ValueError, match="IN"):
            fetch_all(connection, in_list, {"ids": [1]})


def test_an_error_is_sqlalchemys_and_the_transaction_rolls_back(fresh_engine: Engine) -> None:
    template, params = _inactive_template(), _inactive_params(30, 0, 5, None)
    with fresh_engine.connect() as connection:
        with pytest.raises(DataError) as caught:
            # PostgreSQL refuses a negative LIMIT.
            fetch_all(connection, template, {**params, "page_rows": -1})
        assert isinstance(caught.value, DBAPIError)
        assert not caught.value.connection_invalidated
        # The statement began a transaction, as SQLAlchemy's execute does; it
        # is aborted until rolled back, then the connection serves again.
        assert connection.in_transaction()
        connection.rollback()
        assert fetch_all(connection, template, params).rows == []


def test_listeners_and_the_echo_log_see_the_statement(
    fresh_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    template, params = _inactive_template(), _inactive_params(30, 0, 5, None)
    engine = create_engine(fresh_engine.url, echo=True)
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    try:
        with (
            caplog.at_level(logging.INFO, "sqlalchemy.engine.Engine"),
            engine.connect() as connection,
        ):
            fetch_all(connection, template, params)
    finally:
        engine.dispose()
    sql = seen[-1]
    assert "last_message_at" in sql
    assert any(sql in record.getMessage() for record in caplog.records)
