"""The hot reads' rows straight from psycopg, past SQLAlchemy's result layer.

SQLAlchemy still builds each statement (once: the templates are cached) and
owns the pool, the transaction and the error handling; psycopg runs the
compiled SQL and hands back plain tuples. What this skips is SQLAlchemy's work
per execution: the statement's cache key, the execution context and the
result's metadata, for which it reads the cursor's description (psycopg builds
a Column object per column per query, 17 for a message page). On a page 500
messages deep that was 0.13 ms of a 0.36 ms read: SQLAlchemy's execute took
the read to 1.49x the bare driver, this to 1.11x (README, "Rows straight from
the driver").

Only for statements whose types need no processing on either side (plain
integers, text, timestamps, JSON that psycopg decodes itself): _compile refuses
any other.
"""

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, NamedTuple, cast

import psycopg
from sqlalchemy import Connection, LargeBinary, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.orm import Session

from chatdb.db import is_autocommit
from chatdb.store.types import AnySelect, Executor

# SQLAlchemy's echo logger: with echo on, these statements are logged with its own.
_echo = logging.getLogger("sqlalchemy.engine.Engine")


class Compiled:
    """A template's SQL for one dialect, its default parameters, and its columns' names."""

    __slots__ = ("defaults", "fields", "sql")

    def __init__(self, template: AnySelect, dialect: Dialect) -> None:
        compiled = template.compile(dialect=dialect)
        self.sql = str(compiled)
        if "POSTCOMPILE" in self.sql:
            raise ValueError("an expanding IN parameter needs SQLAlchemy's execution")
        for bind in compiled.binds.values():
            if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise ValueError(f"parameter {bind.key!r} needs SQLAlchemy's type processing")
        for column in template.selected_columns:
            if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
                raise ValueError(f"column {column.key!r} needs SQLAlchemy's type processing")
        # Literals SQLAlchemy made parameters of (a LIMIT 1, a constant), and
        # None for the bind parameters each call passes.
        self.defaults: dict[str, Any] = dict(compiled.params)
        self.fields: tuple[str, ...] = tuple(template.selected_columns.keys())


class DriverBytes(TypeDecorator[bytes]):
    """bytea for a bind parameter of a template run here: SQLAlchemy's own type
    wraps the value in psycopg.Binary, which psycopg 3 does not need (it sends
    bytes as bytea)."""

    impl = LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


@lru_cache(maxsize=64)
def compiled(template: AnySelect, dialect: Dialect) -> Compiled:
    """Compiled once per template: the templates are built once (lru_cache) too."""
    return Compiled(template, dialect)


class Fetched(NamedTuple):
    rows: list[tuple[Any, ...]]
    # The columns' names, in the rows' order.
    fields: tuple[str, ...]


def fetch_all(executor: Executor, template: AnySelect, params: Mapping[str, Any]) -> Fetched:
    """All rows of `template` run with `params`, as plain tuples. In the
    executor's transaction, if any; an error comes out as SQLAlchemy's would,
    and a lost connection is invalidated as SQLAlchemy's own execute does."""
    connection: Connection = executor.connection() if isinstance(executor, Session) else executor
    statement = compiled(template, connection.dialect)
    values = {**statement.defaults, **params}
    if not connection.in_transaction() and not is_autocommit(connection):
        # As SQLAlchemy's execute does ("autobegin"): so a later commit() or
        # rollback() of this connection covers the statement. With autocommit
        # there is nothing to cover, and its rollback at close costs 0.01 ms.
        connection.begin()
    driver = cast(psycopg.Connection[Any], connection.connection.driver_connection)
    cursor = driver.cursor()
    # Listeners see the statement as they see SQLAlchemy's (the /metrics round trips).
    connection.dispatch.before_cursor_execute(
        connection, cursor, statement.sql, values, None, False
    )
    if connection.engine.echo:
        _echo.info("%s\n%r", statement.sql, values)
    try:
        cursor.execute(statement.sql, values)
        return Fetched(cursor.fetchall(), statement.fields)
    except psycopg.Error as exc:
        # SQLAlchemy's own handling: its exception types, the handle_error
        # listeners (chatdb.db's lost-connection check), and invalidation.
        connection._handle_dbapi_exception(
            exc, statement.sql, values, cast(DBAPICursor, cursor), None
        )
    finally:
        cursor.close()
