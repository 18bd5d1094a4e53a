"""chatdb.db's two ways to the database: transaction() and reads()."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL

from chatdb.config import Settings
from chatdb.db import (
    engine_for_reads,
    is_autocommit,
    make_engine,
    psycopg_conninfo,
    reads,
    transaction,
)
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


def _autocommit(connection: object) -> bool:
    return bool(connection.connection.dbapi_connection.autocommit)  # type: ignore[attr-defined]


def test_reads_take_connections_from_a_pool_of_their_own_that_stays_in_autocommit(
    fresh_engine: Engine,
) -> None:
    """reads() never switches a connection to autocommit and back: its pool's
    connections are in autocommit from connect to close, and the pool for
    transactions is not touched."""
    readers = engine_for_reads(fresh_engine)
    assert readers is not fresh_engine
    with reads(fresh_engine) as connection:
        assert fresh_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert readers.pool.checkedout() == 1  # type: ignore[attr-defined]
        assert _autocommit(connection)
        assert is_autocommit(connection)
        name = connection.execute(text("SHOW application_name")).scalar_one()
        assert name == "chatdb reads"  # which pool, in pg_stat_activity
        pooled = connection.connection.dbapi_connection
    assert pooled is not None
    assert pooled.autocommit
    with reads(fresh_engine) as connection:
        assert connection.connection.dbapi_connection is pooled
    with transaction(fresh_engine) as session:
        assert not is_autocommit(session.connection())
        assert session.execute(text("SHOW application_name")).scalar_one() == "chatdb"


def test_the_pool_for_reads_is_sized_by_its_own_settings_or_the_pools(
    fresh_database: URL,
) -> None:
    sized = [
        Settings(database_url=None, pool_size=3, pool_max_overflow=2),
        Settings(
            database_url=None,
            pool_size=3,
            pool_max_overflow=2,
            read_pool_size=7,
            read_pool_max_overflow=0,
        ),
    ]
    expected = [(3, 2), (7, 0)]
    for settings, (size, overflow) in zip(sized, expected, strict=True):
        engine = make_engine(fresh_database, settings)
        pool = engine_for_reads(engine).pool
        assert (pool.size(), pool._max_overflow) == (size, overflow)  # type: ignore[attr-defined]
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
        engine.dispose()
    # Replicas' engines read in transactions: no pool for reads beside them.
    engine = make_engine(fresh_database, TEST_SETTINGS, read_pool=False)
    assert engine_for_reads(engine) is engine
    engine.dispose()


def test_a_copy_of_the_engine_for_reads_with_other_options_still_reads_in_autocommit(
    fresh_engine: Engine,
) -> None:
    """execution_options() on an engine makes a copy sharing its pool and dialect."""
    copy = engine_for_reads(fresh_engine).execution_options(logging_token="x")
    with copy.connect() as connection:
        assert is_autocommit(connection)
        assert _autocommit(connection)


@pytest.fixture
def one_read_connection(fresh_database: URL) -> Iterator[Engine]:
    engine = make_engine(fresh_database, Settings(database_url=None, pool_size=1))
    yield engine
    engine.dispose()


def test_a_transaction_left_open_on_a_read_connection_is_rolled_back_on_return(
    one_read_connection: Engine,
) -> None:
    """The pool for reads does not roll back each connection it gets back (an
    autocommit one has nothing to roll back), but one left in a transaction
    by an explicit BEGIN must not reach the next reader with it. Sent on the
    driver's connection, as store._driver runs its reads: SQLAlchemy then
    knows of no transaction to end itself."""
    engine = one_read_connection
    with reads(engine) as connection:
        left = connection.connection.dbapi_connection
        assert left is not None
        left.execute("BEGIN")  # type: ignore[attr-defined]
        left.execute("CREATE TABLE left_open (id int)")  # type: ignore[attr-defined]
        assert left.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # type: ignore[attr-defined]
    with reads(engine) as connection:
        assert connection.connection.dbapi_connection is left  # the one connection
        assert left.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # type: ignore[attr-defined]
        assert connection.execute(text("SELECT to_regclass('left_open')")).scalar_one() is None


def test_disposing_the_engine_closes_the_connections_of_its_pool_for_reads(
    fresh_database: URL,
) -> None:
    engine = make_engine(fresh_database, TEST_SETTINGS)
    with reads(engine) as connection:
        connection.execute(text("SELECT 1"))
    assert _backends(fresh_database, "chatdb reads") == 1
    engine.dispose()
    # A backend leaves pg_stat_activity a moment after its client closes.
    for _ in range(100):
        if _backends(fresh_database, "chatdb reads") == 0:
            break
        time.sleep(0.05)
    assert _backends(fresh_database, "chatdb reads") == 0


def _backends(database: URL, application_name: str) -> int:
    with psycopg.connect(psycopg_conninfo(database), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_reads_on_an_engine_made_elsewhere_switch_its_connection_and_back(
    fresh_database: URL,
) -> None:
    """An engine chatdb did not make has no pool for reads: reads() sets
    autocommit on a connection of its pool, and the pool puts it back."""
    engine = create_engine(fresh_database, pool_size=1, max_overflow=0)
    try:
        assert engine_for_reads(engine) is engine
        with reads(engine) as connection:
            first, second = (connection.execute(_XACT_ID).scalar_one() for _ in range(2))
            assert _autocommit(connection)
            assert is_autocommit(connection)
        assert first != second
        with engine.connect() as connection:
            assert not _autocommit(connection)
            assert not is_autocommit(connection)
    finally:
        engine.dispose()
