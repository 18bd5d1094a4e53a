"""Migrations: up, down and up again on an empty database; they agree with the models;
a migration that fails halfway changes nothing; ensure_current guards the schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ProgrammingError

from chatdb import migrate
from chatdb.db import make_engine
from chatdb.errors import SchemaOutdated
from chatdb.models import Base
from tests.conftest import TEST_SETTINGS, create_database, drop_database

MIGRATION_LOCK_ID = migrate.MIGRATION_LOCK_ID

MODEL_TABLES = set(Base.metadata.tables)


@pytest.fixture
def empty_engine(server_url: URL) -> Iterator[Engine]:
    """An engine on a brand-new database with no schema at all."""
    name = f"chatdb_m_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    engine = make_engine(url, TEST_SETTINGS)
    yield engine
    engine.dispose()
    drop_database(server_url, name)


def _tables(engine: Engine) -> set[str]:
    """Tables of the schema; messages' partitions (CHATDB_MESSAGE_PARTITIONS) are its storage."""
    with engine.connect() as connection:
        return set(inspect(connection).get_table_names()) - migrate.partition_tables(connection)


def _compare(connection: Connection) -> list[Any]:
    partitions = migrate.partition_tables(connection)

    def include(item: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
        if kind == "table":
            return name not in partitions
        # A foreign key to a partitioned table has a clone per partition.
        if kind == "foreign_key_constraint" and reflected:
            return item.referred_table.name not in partitions
        return True

    context = MigrationContext.configure(connection, opts={"include_object": include})
    return list(compare_metadata(context, Base.metadata))


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return migrate.current_revision(connection)


def _functions(engine: Engine) -> set[str]:
    """Functions chatdb created in the public schema (triggers' functions)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public'"
            )
        )
        return {row[0] for row in rows}


def test_upgrade_downgrade_upgrade(empty_engine: Engine) -> None:
    assert _tables(empty_engine) == set()

    migrate.upgrade(empty_engine)
    assert _tables(empty_engine) == MODEL_TABLES | {"alembic_version"}
    assert _revision(empty_engine) == migrate.head_revision()

    migrate.downgrade(empty_engine, "base")
    assert _tables(empty_engine) == {"alembic_version"}
    assert _revision(empty_engine) is None
    assert _functions(empty_engine) == set()

    migrate.upgrade(empty_engine)
    assert _tables(empty_engine) == MODEL_TABLES | {"alembic_version"}
    assert _revision(empty_engine) == migrate.head_revision()


def test_each_step_downgrades_and_upgrades_again(empty_engine: Engine) -> None:
    revisions = [rev.revision for rev in reversed(migrate.history())]
    for revision in revisions:
        migrate.upgrade(empty_engine, revision)
        assert _revision(empty_engine) == revision
    for index in range(len(revisions) - 1, 0, -1):
        migrate.downgrade(empty_engine, revisions[index - 1])
        assert _revision(empty_engine) == revisions[index - 1]
        migrate.upgrade(empty_engine, revisions[index])
        assert _revision(empty_engine) == revisions[index]
        migrate.downgrade(empty_engine, revisions[index - 1])
    migrate.upgrade(empty_engine)
    assert _revision(empty_engine) == migrate.head_revision()


def test_migrated_schema_matches_the_models(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as connection:
        diff = _compare(connection)
    assert diff == []


def test_the_model_comparison_notices_a_difference(empty_engine: Engine) -> None:
    """The check above can fail: a schema that drifted from the models shows up."""
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_messages_created_at_sender_id"))
        connection.execute(text("ALTER TABLE users ADD COLUMN nickname text"))
    with empty_engine.connect() as connection:
        diff = _compare(connection)
    kinds = {entry[0] for entry in diff if isinstance(entry, tuple)}
    assert "add_index" in kinds
    assert "remove_column" in kinds


# --- a migration that fails halfway ---------------------------------------------------

BROKEN_REVISION = '''"""a migration that fails halfway

Revision ID: 9999_broken
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "9999_broken"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.BigInteger(), primary_key=True))
    op.add_column("users", sa.Column("half_done_flag", sa.Boolean()))
    op.execute("SELECT * FROM no_such_table_at_all")


def downgrade() -> None:
    op.drop_column("users", "half_done_flag")
    op.drop_table("half_done")
'''


@pytest.fixture
def broken_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """chatdb's migrations plus a broken newest one, used by chatdb.migrate.
    Returns the revision the broken one follows (the real head)."""
    real_head = migrate.head_revision()
    location = tmp_path / "migrations"
    shutil.copytree(
        str(files("chatdb") / "migrations"),
        location,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (location / "versions" / "9999_broken.py").write_text(
        BROKEN_REVISION.format(down=real_head), encoding="utf-8"
    )

    def broken_config(stdout: object = None) -> Config:
        config = Config()
        config.set_main_option("script_location", str(location))
        return config

    monkeypatch.setattr(migrate, "alembic_config", broken_config)
    assert migrate.head_revision() == "9999_broken"
    return real_head


def test_failed_migration_leaves_the_schema_as_it_was(
    empty_engine: Engine, broken_migrations: str
) -> None:
    migrate.upgrade(empty_engine, broken_migrations)
    assert _revision(empty_engine) == broken_migrations

    with pytest.raises(ProgrammingError, match="no_such_table_at_all"):
        migrate.upgrade(empty_engine)

    assert _revision(empty_engine) == broken_migrations
    assert _tables(empty_engine) == MODEL_TABLES | {"alembic_version"}
    with empty_engine.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("users")}
    assert "half_done_flag" not in columns


def test_failed_upgrade_from_empty_leaves_the_database_empty(
    empty_engine: Engine, broken_migrations: str
) -> None:
    """The whole upgrade is one transaction: the earlier, good migrations of the
    same run are rolled back too."""
    with pytest.raises(ProgrammingError, match="no_such_table_at_all"):
        migrate.upgrade(empty_engine)
    assert _tables(empty_engine) == set()
    assert _revision(empty_engine) is None


# --- ensure_current -------------------------------------------------------------------


def test_ensure_current_refuses_an_empty_database(empty_engine: Engine) -> None:
    with pytest.raises(SchemaOutdated, match="empty database"):
        migrate.ensure_current(empty_engine, auto_upgrade=False)
    assert _tables(empty_engine) == set()


def test_ensure_current_refuses_a_database_behind(empty_engine: Engine) -> None:
    first = migrate.history()[-1].revision
    migrate.upgrade(empty_engine, first)
    with pytest.raises(SchemaOutdated, match=f"migration {first}"):
        migrate.ensure_current(empty_engine, auto_upgrade=False)
    assert _revision(empty_engine) == first


def test_ensure_current_passes_on_a_migrated_database(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.ensure_current(empty_engine, auto_upgrade=False)
    assert _revision(empty_engine) == migrate.head_revision()


def test_ensure_current_refuses_an_unknown_newer_revision(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    for auto_upgrade in (False, True):
        with pytest.raises(SchemaOutdated, match="newer version"):
            migrate.ensure_current(empty_engine, auto_upgrade=auto_upgrade)


def test_ensure_current_auto_upgrade_migrates_an_empty_database(empty_engine: Engine) -> None:
    migrate.ensure_current(empty_engine, auto_upgrade=True)
    assert _revision(empty_engine) == migrate.head_revision()
    assert _tables(empty_engine) == MODEL_TABLES | {"alembic_version"}
    migrate.ensure_current(empty_engine, auto_upgrade=False)


# --- two upgrades at once ----------------------------------------------------------------


def test_a_second_upgrade_waits_for_the_first(empty_engine: Engine) -> None:
    """While one upgrade holds the migration lock, `chatdb db upgrade` in other
    processes waits (nobody runs the same migrations in parallel); when the
    first ends, they find nothing left to do."""
    url = empty_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATDB_")}
    env["CHATDB_DATABASE_URL"] = url
    holder = empty_engine.connect()
    holder.begin()
    # What a running upgrade holds (chatdb.migrations.env), taken here by hand.
    holder.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    upgrades = [
        subprocess.Popen(
            [sys.executable, "-m", "chatdb", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        waiting = 0
        with empty_engine.connect() as observer:
            for _ in range(600):  # a bound on the wait, not a speed claim
                waiting = observer.execute(
                    text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                        "WHERE l.locktype = 'advisory' AND NOT l.granted "
                        "AND d.datname = current_database()"
                    )
                ).scalar_one()
                observer.rollback()
                if waiting == 2 or any(u.poll() is not None for u in upgrades):
                    break
                time.sleep(0.1)
        assert waiting == 2
        assert all(u.poll() is None for u in upgrades)
        assert _tables(empty_engine) == set()
    finally:
        holder.rollback()
        holder.close()
        outputs = [u.communicate(timeout=120) for u in upgrades]
    for upgrade, (_, stderr) in zip(upgrades, outputs, strict=True):
        assert upgrade.returncode == 0, stderr
    assert _revision(empty_engine) == migrate.head_revision()
    assert _tables(empty_engine) == MODEL_TABLES | {"alembic_version"}
