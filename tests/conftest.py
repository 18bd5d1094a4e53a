"""Test databases: real PostgreSQL only.

The server is CHATDB_TEST_DATABASE_URL when set (a URL whose user may create
databases), else an embedded pgserver in a temporary directory. The schema is
built once by running the migrations into a template database; each test then
gets either a transaction rolled back at the end (`session`) or, when it needs
real commits and parallel connections, a fresh database cloned from the
template (`fresh_engine`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from chatdb import migrate
from chatdb.config import Settings
from chatdb.db import make_engine, normalize_url, psycopg_conninfo

TEST_SETTINGS = Settings(database_url=None, pool_size=5, pool_max_overflow=20)


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """An administrative URL of the PostgreSQL server the tests run against."""
    given = os.environ.get("CHATDB_TEST_DATABASE_URL")
    if given:
        yield normalize_url(given)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import pgserver

        data = Path(tempfile.mkdtemp(prefix="chatdb-test-"))
        server = pgserver.get_server(data / "pgdata", cleanup_mode="delete")
    yield make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


def _admin(url: URL) -> psycopg.Connection:
    return psycopg.connect(psycopg_conninfo(url), autocommit=True)


def create_database(server: URL, name: str, template: str | None = None) -> URL:
    with _admin(server) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)
    return server.set(database=name)


def drop_database(server: URL, name: str) -> None:
    with _admin(server) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_name(server_url: URL) -> Iterator[str]:
    """A database at the newest migration, built by running the migrations."""
    name = f"chatdb_tpl_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    engine = make_engine(url, TEST_SETTINGS)
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    drop_database(server_url, name)


@pytest.fixture
def fresh_database(server_url: URL, template_name: str) -> Iterator[URL]:
    """A new database cloned from the template, dropped after the test."""
    name = f"chatdb_t_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template=template_name)
    yield url
    drop_database(server_url, name)


@pytest.fixture
def fresh_engine(fresh_database: URL) -> Iterator[Engine]:
    engine = make_engine(fresh_database, TEST_SETTINGS)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def shared_engine(server_url: URL, template_name: str) -> Iterator[Engine]:
    """One database for all rolled-back tests."""
    name = f"chatdb_s_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name, template=template_name)
    engine = make_engine(url, TEST_SETTINGS)
    yield engine
    engine.dispose()
    drop_database(server_url, name)


@pytest.fixture
def session(shared_engine: Engine) -> Iterator[Session]:
    """A session whose work is rolled back when the test ends.

    Store functions never commit; where a test commits, the session turns the
    commit into a savepoint release, so nothing outlives the test.
    """
    with shared_engine.connect() as connection:
        transaction = connection.begin()
        with Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        ) as db_session:
            yield db_session
        transaction.rollback()


# The API fixtures live beside the others so every test module can use them.
def uses_index(session: Session, plan: str, index: str) -> bool:
    """Whether a plan scans `index`, or, with messages partitioned
    (CHATDB_MESSAGE_PARTITIONS), one of the partitions' indexes attached to it."""
    names = session.execute(
        text(
            "SELECT CAST(:index AS regclass)::text UNION ALL "
            "SELECT inhrelid::regclass::text FROM pg_inherits "
            "WHERE inhparent = CAST(:index AS regclass)"
        ),
        {"index": index},
    ).scalars()
    return any(f" {name} " in plan or plan.endswith(f" {name}") for name in names)


from tests.api_support import api  # noqa: E402, F401
