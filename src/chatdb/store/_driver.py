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
integers, text, timestamps, JSON that psycopg decodes itself): Compiled
refuses any other. Listeners get before_cursor_execute and
after_cursor_execute (with no execution context), but a listener cannot
replace the statement (retval=True) here.
"""

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple, cast
from weakref import WeakKeyDictionary

import psycopg
from sqlalchemy import Connection, LargeBinary, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.orm import Session

from chatdb.db import is_autocommit
from chatdb.store.types import AnySelect, Executor


class Compiled:
    """A template's SQL for one dialect, its default parameters, the parameters
    each call must give, and its columns' names."""

    __slots__ = ("defaults", "fields", "required", "sql")

    def __init__(self, template: AnySelect, dialect: Dialect) -> None:
        compiled = template.compile(dialect=dialect)
        self.sql = str(compiled)
        if "POSTCOMPILE" in self.sql:
            raise ValueError("an expanding IN parameter needs SQLAlchemy's execution")
        for bind in compiled.binds.values():
            if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise ValueError(f"parameter {bind.key!r} needs SQLAlchemy's type processing")
        for column in template.selected_columns:
            if _result_processed(column.type, dialect):
                raise ValueError(f"column {column.key!r} needs SQLAlchemy's type processing")
        # Literals SQLAlchemy made parameters of (a LIMIT 1, a constant), and
        # None for the bind parameters each call passes.
        self.defaults: dict[str, Any] = dict(compiled.params)
        self.required = frozenset(bind.key for bind in compiled.binds.values() if bind.required)
        self.fields: tuple[str, ...] = tuple(template.selected_columns.keys())


def _result_processed(type_: Any, dialect: Dialect) -> bool:
    try:
        return type_.dialect_impl(dialect).result_processor(dialect, None) is not None
    except Exception:
        # A processor that needs the column's database type to decide: refused too.
        return True


class DriverBytes(TypeDecorator[bytes]):
    """bytea for a bind parameter of a template run here: SQLAlchemy's own type
    wraps the value in psycopg.Binary, which psycopg 3 does not need (it sends
    bytes as bytea)."""

    impl = LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


# Per dialect (each engine has its own), dropped with it; the templates are few.
_compiled: WeakKeyDictionary[Dialect, dict[AnySelect, Compiled]] = WeakKeyDictionary()


def compiled(template: AnySelect, dialect: Dialect) -> Compiled:
    """Compiled once per template and dialect: the templates are built once too."""
    per_dialect = _compiled.setdefault(dialect, {})
    statement = per_dialect.get(template)
    if statement is None:
        statement = per_dialect[template] = Compiled(template, dialect)
    return statement


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
    if not statement.required.issubset(params):
        missing = ", ".join(sorted(statement.required.difference(params)))
        # As SQLAlchemy's execute: never a NULL in place of a forgotten value.
        raise ValueError(f"no value given for bind parameter(s) {missing}")
    values = {**statement.defaults, **params}
    if not connection.in_transaction() and not is_autocommit(connection):
        # As SQLAlchemy's execute does ("autobegin"): so a later commit() or
        # rollback() of this connection covers the statement. With autocommit
        # there is nothing to cover, and its rollback at close costs 0.01 ms.
        connection.begin()
    cursor = None
    try:
        driver = cast(psycopg.Connection[Any], connection.connection.driver_connection)
        cursor = driver.cursor()
        # Listeners see the statement as they see SQLAlchemy's (the /metrics round trips).
        connection.dispatch.before_cursor_execute(
            connection, cursor, statement.sql, values, None, False
        )
        log = connection.engine.logger
        if log.isEnabledFor(logging.INFO):
            # Where SQLAlchemy's echo logs its own statements.
            log.info("%s", statement.sql)
            log.info("[driver] %r", "[hidden]" if connection.engine.hide_parameters else values)
        cursor.execute(statement.sql, values)
        rows = cursor.fetchall()
        connection.dispatch.after_cursor_execute(
            connection, cursor, statement.sql, values, None, False
        )
        return Fetched(rows, statement.fields)
    except BaseException as exc:
        # SQLAlchemy's own handling, as its execute does for any exception:
        # its exception types for psycopg's, the handle_error listeners
        # (chatdb.db's lost-connection check), invalidation of a lost
        # connection; anything else is raised as it is.
        connection._handle_dbapi_exception(
            exc, statement.sql, values, cast(DBAPICursor | None, cursor), None
        )
    finally:
        if cursor is not None:
            cursor.close()
