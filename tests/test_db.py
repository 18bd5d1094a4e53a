"""chatdb.db's two ways to the database: transaction() and reads()."""

from __future__ import annotations

from sqlalchemy import Engine, text

from chatdb.db import reads, transaction

_XACT_ID = text("SELECT pg_current_xact_id()::text::bigint")


def test_reads_run_each_statement_on_its_own_and_a_transaction_does_not(
    fresh_engine: Engine,
) -> None:
    with reads(fresh_engine) as session:
        first, second = (session.execute(_XACT_ID).scalar_one() for _ in range(2))
        assert session.connection().connection.dbapi_connection.autocommit  # type: ignore[union-attr]
    assert first != second, "reads() ran in one transaction"

    with transaction(fresh_engine) as session:
        first, second = (session.execute(_XACT_ID).scalar_one() for _ in range(2))
        # The pooled connection reads() used is back to transactions.
        assert not session.connection().connection.dbapi_connection.autocommit  # type: ignore[union-attr]
    assert first == second
