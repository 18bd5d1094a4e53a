"""Schema migrations (Alembic) driven from Python, for the CLI and the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from chatdb import partitioning
from chatdb.errors import Invalid, SchemaOutdated

# Any number, the same in every chatdb process: two schema changes never run at once.
MIGRATION_LOCK_ID = 0x63686174  # "chat"


def alembic_config(stdout: TextIO | None = None) -> Config:
    config = Config(stdout=stdout) if stdout is not None else Config()
    config.set_main_option("script_location", str(files("chatdb") / "migrations"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "chatdb ships at least one migration"
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _run(engine: Engine, action: Callable[[Config], None]) -> None:
    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        action(config)
        connection.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    _check_revision(revision)
    _run(engine, lambda config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    _check_revision(revision)
    _run(engine, lambda config: command.downgrade(config, revision))


def _check_revision(revision: str) -> None:
    if revision in ("head", "base") or revision.startswith(("+", "-")):
        return
    script = ScriptDirectory.from_config(alembic_config())
    try:
        found = script.get_revision(revision)
    except Exception as exc:  # alembic raises several kinds for a bad name
        raise Invalid(f"unknown migration revision {revision!r}") from exc
    if found is None:
        raise Invalid(f"unknown migration revision {revision!r}")


@dataclass(frozen=True, slots=True)
class Revision:
    revision: str
    down_revision: str | None
    message: str
    is_head: bool


def history() -> list[Revision]:
    """Every migration, newest first."""
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    result = []
    for rev in script.walk_revisions():
        down = rev.down_revision
        result.append(
            Revision(
                revision=rev.revision,
                down_revision=down if isinstance(down, str) or down is None else ",".join(down),
                message=rev.doc or "",
                is_head=rev.revision in heads,
            )
        )
    return result


def ensure_current(engine: Engine, *, auto_upgrade: bool) -> None:
    """Make sure the schema matches this version of chatdb.

    On the embedded server pending migrations are applied; elsewhere a schema
    that is behind stops the command, since upgrading a shared server is the
    operator's decision.
    """
    with engine.connect() as connection:
        current = current_revision(connection)
    head = head_revision()
    if current == head:
        return
    known = {rev.revision for rev in history()}
    if current is not None and current not in known:
        raise SchemaOutdated(
            f"the database is at migration {current}, which this chatdb does not know "
            "(it was migrated by a newer version); upgrade chatdb"
        )
    if auto_upgrade:
        upgrade(engine)
        return
    where = "an empty database" if current is None else f"migration {current}"
    raise SchemaOutdated(
        f"the database schema is behind: it is at {where}, chatdb needs {head}; "
        "run `chatdb db upgrade`"
    )


def partition_tables(connection: Connection) -> set[str]:
    """The partitions in the current schema (messages_p00 … when messages is partitioned).

    They are storage, not schema: the models name only their parent.
    """
    rows = connection.exec_driver_sql(
        "SELECT relname FROM pg_class "
        "WHERE relispartition AND relkind IN ('r', 'p') "
        "AND relnamespace = current_schema()::regnamespace"
    )
    return {row[0] for row in rows}


def repartition_messages(engine: Engine, partitions: int) -> int:
    """Rebuild messages with `partitions` hash partitions (0: one plain table),
    in one transaction, under the migrations' lock. Returns the previous count."""
    if not 0 <= partitions <= 1024:
        raise Invalid("partitions must be between 0 and 1024")
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        before = partitioning.partition_count(connection)
        if before != partitions:
            partitioning.rebuild(connection, partitions)
    return before
