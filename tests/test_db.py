"""chatdb.db's two ways to the database: transaction() and reads()."""

from __future__ import annotations

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from chatdb.db import make_engine, psycopg_conninfo, reads, transaction
from tests.conftest import TEST_SETTINGS

_XACT_ID = text("SELECT pg_current_xact_id()::text::bigint")


def test_reads_run_each_statement_on_its_own_and_a_transaction_does_not(
    fresh_engine: Engine,
) -> None:
    with reads(fresh_engine) as connection:
        first, second = (connection.execute(_XACT_ID).scalar_one() for _ in range(2))
        assert connection.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
    assert first != second, "reads() ran in one transaction"

    with transaction(fresh_engine) as session:
        first, second = (session.execute(_XACT_ID).scalar_one() for _ in range(2))
        # The pooled connection reads() used is back to transactions.
        assert not session.connection().connection.dbapi_connection.autocommit  # type: ignore[union-attr]
    assert first == second


def test_transactions_are_read_committed_whatever_the_server_default(
    fresh_database: URL,
) -> None:
    """chatdb's reasoning about what its statements see assumes READ COMMITTED;
    a database whose default is another level does not change it."""
    with psycopg.connect(psycopg_conninfo(fresh_database), autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = 'serializable'").format(
                sql.Identifier(fresh_database.database or "")
            )
        )
    engine = make_engine(fresh_database, TEST_SETTINGS)
    try:
        for _ in range(2):  # a new connection, then one back from reads()
            with transaction(engine) as session:
                level = session.execute(text("SHOW transaction_isolation")).scalar_one()
                assert level == "read committed"
            with reads(engine) as connection:
                connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
