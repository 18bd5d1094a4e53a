"""Where the data lives: the database URL, the embedded server, the engine and pool."""

from __future__ import annotations

import os
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, TypeVar
from weakref import WeakKeyDictionary, WeakSet

import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, Dialect, ExceptionContext, make_url
from sqlalchemy.engine.interfaces import IsolationLevel
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolResetState

from chatdb.config import Settings, get_settings
from chatdb.errors import DatabaseUnavailable

EMBEDDED_DATABASE = "chatdb"


def normalize_url(raw: str) -> URL:
    """Parse a PostgreSQL URL and pin the driver to psycopg 3."""
    try:
        url = make_url(raw.strip())
    except ArgumentError as exc:
        raise DatabaseUnavailable(
            f"CHATDB_DATABASE_URL is not a valid URL ({raw!r}); "
            "expected postgresql://user:password@host:port/database"
        ) from exc
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseUnavailable(
            f"CHATDB_DATABASE_URL must point to PostgreSQL, not {url.get_backend_name()!r}"
        )
    return url.set(drivername="postgresql+psycopg")


def describe_target(url: URL) -> str:
    """Where a URL points, for error messages (never includes the password)."""
    host = url.host or url.query.get("host") or "local socket"
    if isinstance(host, tuple):
        host = ",".join(host)
    port = f":{url.port}" if url.port else ""
    return f"{host}{port}/{url.database or ''}"


def explain_connection_error(url: URL, exc: BaseException) -> DatabaseUnavailable:
    """One line that says which server failed and what to check."""
    target = describe_target(url)
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    reason = re.sub(r"^connection failed: ", "", reason)
    reason = re.sub(r"^connection to server at .*? failed: (FATAL:\s*)?", "", reason)
    lowered = reason.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        hint = "check the user name and password in CHATDB_DATABASE_URL"
    elif "does not exist" in lowered and "database" in lowered:
        hint = "create the database (createdb) or fix its name in CHATDB_DATABASE_URL"
    elif "role" in lowered and "does not exist" in lowered:
        hint = "check the user name in CHATDB_DATABASE_URL"
    elif "refused" in lowered or "no such file" in lowered:
        hint = "is PostgreSQL running there and accepting connections?"
    elif "resolve host" in lowered or "name or service" in lowered:
        hint = "check the host name in CHATDB_DATABASE_URL"
    elif "timeout" in lowered or "timed out" in lowered:
        hint = "the server did not answer in time; check the host, port and firewall"
    else:
        hint = "check CHATDB_DATABASE_URL and the server's log"
    return DatabaseUnavailable(f"cannot connect to PostgreSQL at {target}: {reason} ({hint})")


# --- the embedded server -----------------------------------------------------


def embedded_pgdata(settings: Settings) -> Path:
    return (settings.data_dir / "pgdata").expanduser().resolve()


def start_embedded_server(settings: Settings) -> URL:
    """Start (or reuse) the embedded PostgreSQL and return the URL of chatdb's database.

    The server is left running when the process exits, so the next command
    reuses it at no cost; `chatdb db stop` stops it. Its data stays in data_dir.
    """
    pgdata = embedded_pgdata(settings)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine.
        warnings.simplefilter("ignore", UserWarning)
        import pgserver

        try:
            server = pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
        except Exception as exc:
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc} (see {pgdata / 'log'})"
            ) from exc
    admin_url = make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    ensure_database(admin_url, EMBEDDED_DATABASE)
    return admin_url.set(database=EMBEDDED_DATABASE)


def stop_embedded_server(settings: Settings) -> bool:
    """Stop the embedded server if it runs. Returns whether one was running.

    pg_ctl directly: pgserver's own cleanup skips the stop while any other
    process that once used the server is still listed, even a dead one.
    """
    pgdata = embedded_pgdata(settings)
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from pgserver import _commands

    user = "pgserver" if os.name == "posix" and os.geteuid() == 0 else None
    try:
        _commands.pg_ctl(  # type: ignore[attr-defined]  # made at import by pgserver
            ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60
        )
    except subprocess.CalledProcessError:
        return False  # it was not running after all (a stale postmaster.pid)
    (pgdata / ".handle_pids.json").unlink(missing_ok=True)
    return True


def psycopg_conninfo(url: URL) -> str:
    """A libpq connection string for psycopg from a SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def ensure_database(admin_url: URL, name: str) -> None:
    """Create database `name` on the server of admin_url unless it exists."""
    with psycopg.connect(psycopg_conninfo(admin_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            # Another process may create it first; that is fine.
            with suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# --- engine and sessions -----------------------------------------------------


@lru_cache(maxsize=1)
def database_url() -> URL:
    """The URL in use: CHATDB_DATABASE_URL, or the embedded server's."""
    settings = get_settings()
    if settings.database_url is None:
        return start_embedded_server(settings)
    return normalize_url(settings.database_url)


def make_engine(
    url: URL,
    settings: Settings | None = None,
    *,
    pre_ping: bool = False,
    read_pool: bool = True,
) -> Engine:
    """The engine and pool for transactions and, unless `read_pool` is False,
    beside it a pool of its own for reads() (engine_for_reads), sized by
    settings.read_pool_size and read_pool_max_overflow. Without `pre_ping` a
    pooled connection is not checked before use (that check is a round trip
    per transaction): the API's transactions and reads find a dead one with
    their first statement and retry it (api.deps.Database); `pre_ping` is for
    callers that cannot."""
    settings = settings or get_settings()
    # What chatdb's concurrency reasoning assumes (see reads()), whatever the
    # server's default_transaction_isolation; SQLAlchemy sets it again on a
    # connection that ran with another level (the live-update hub).
    engine = _create_engine(
        url,
        settings,
        pre_ping,
        "READ COMMITTED",
        "chatdb",
        (settings.pool_size, settings.pool_max_overflow),
    )
    if read_pool:
        # In autocommit from connect to close: switching a pooled connection to
        # autocommit and back for each read cost 0.034 ms, and the rollback on
        # its return 0.006 ms more, of a 0.45 ms page read.
        readers = _create_engine(
            url,
            settings,
            pre_ping,
            "AUTOCOMMIT",
            "chatdb reads",
            settings.read_pool,
        )
        _read_engines[engine] = readers
        _autocommit_dialects.add(readers.dialect)
        event.listen(engine, "engine_disposed", partial(_dispose_too, readers, os.getpid()))
    return engine


def _create_engine(
    url: URL,
    settings: Settings,
    pre_ping: bool,
    isolation_level: IsolationLevel,
    application_name: str,
    pool: tuple[int, int],
) -> Engine:
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout_seconds,
        # Which pool a server process serves, in pg_stat_activity.
        "application_name": application_name,
    }
    # Settings go in the startup packet, not a SET after connecting (two round
    # trips per connection). All timestamps go out and come back in UTC,
    # whatever the server's zone. No parallel query: chatdb's queries take
    # milliseconds, and starting workers costs more than that (PostgreSQL
    # starts them even for a branch a one-time filter then skips, as the inbox's).
    options = ["-c timezone=UTC", "-c max_parallel_workers_per_gather=0"]
    if settings.statement_timeout_ms:
        options.append(f"-c statement_timeout={settings.statement_timeout_ms}")
    connect_args["options"] = " ".join(options)
    autocommit = isolation_level == "AUTOCOMMIT"
    size, overflow = pool
    engine = create_engine(
        url,
        isolation_level=isolation_level,
        pool_size=size,
        max_overflow=overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_pre_ping=pre_ping,
        # An autocommit connection has no transaction to roll back when it is
        # returned: only one left open by an explicit BEGIN is
        # (_end_transaction_left_open).
        pool_reset_on_return=None if autocommit else "rollback",
        echo=settings.echo_sql,
        connect_args=connect_args,
    )
    if autocommit:
        event.listen(engine.pool, "reset", _end_transaction_left_open)
    event.listen(engine, "handle_error", _unusable_connection_is_lost)
    return engine


# Each make_engine() engine's engine for reads(), dropped with it; and the
# dialects of those (an engine's execution_options() copies share its dialect).
_read_engines: WeakKeyDictionary[Engine, Engine] = WeakKeyDictionary()
_autocommit_dialects: WeakSet[Dialect] = WeakSet()


def engine_for_reads(engine: Engine) -> Engine:
    """The engine whose pool reads() takes connections from: the autocommit
    one make_engine() made beside `engine`, or `engine` itself for an engine
    made otherwise (reads() then switches its connection to autocommit and
    back)."""
    return _read_engines.get(engine, engine)


def _dispose_too(readers: Engine, made_in: int, _engine: Engine) -> None:
    # In a forked child the connections are the parent's: drop them from the
    # pool without closing them, as SQLAlchemy's dispose(close=False) is for.
    readers.dispose(close=os.getpid() == made_in)


def _end_transaction_left_open(
    dbapi_connection: Any, _record: object, state: PoolResetState
) -> None:
    """Reset on return for an autocommit pool: roll back only a connection
    that is in a transaction after all (an explicit BEGIN on it)."""
    if state.transaction_was_reset or state.terminate_only:
        return
    if dbapi_connection.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        # A broken connection raises here; the pool then discards it.
        dbapi_connection.rollback()


# The server ended the session: administrator command, crash, startup,
# database dropped, idle-session timeout.
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05"})


def _unusable_connection_is_lost(context: ExceptionContext) -> None:
    """Count an error that leaves the connection unusable as a lost one.

    SQLAlchemy asks psycopg whether the connection is closed or broken, and
    psycopg says so only once libpq has seen the socket close. A backend the
    server ended can leave libpq mid-command instead (every statement then
    fails with "another command is already in progress"); taken for a live
    connection, it was handed on to the next transaction. As a lost one, the
    pool drops it and retry_if_connection_lost may run the work again."""
    if context.is_disconnect:
        return
    error = context.original_exception
    if not isinstance(error, psycopg.Error):
        return
    if getattr(error, "sqlstate", None) in _SESSION_ENDED:
        # As for any disconnect, the pool's other connections may be dead too.
        context.is_disconnect = True
        return
    connection = context.connection
    if connection is None or connection.invalidated or connection.closed:
        return
    raw = connection.connection.dbapi_connection
    if isinstance(raw, psycopg.Connection):
        status = raw.pgconn.transaction_status
        # ACTIVE after an error: libpq still waits for a command's results.
        if raw.broken or status in (
            psycopg.pq.TransactionStatus.ACTIVE,
            psycopg.pq.TransactionStatus.UNKNOWN,
        ):
            context.is_disconnect = True
            # This connection's state, not news about the server: the pool's
            # other connections stay.
            context.invalidate_pool_on_disconnect = False


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return make_engine(database_url())


def check_connection(engine: Engine) -> None:
    """Connect once, turning any failure into a one-line DatabaseUnavailable."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError as exc:
        raise explain_connection_error(engine.url, exc.orig or exc) from exc


# One sessionmaker per engine. Each sessionmaker makes a Session subclass of
# its own, and SQLAlchemy builds a class's event dispatch on first use: a new
# sessionmaker per transaction cost about 0.2 ms of CPU in every unit of work.
_session_factories: WeakKeyDictionary[Engine, sessionmaker[Session]] = WeakKeyDictionary()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = _session_factories.get(engine)
    if factory is None:
        factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
        _session_factories[engine] = factory
    return factory


@contextmanager
def transaction(engine: Engine | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    engine = engine or get_engine()
    with session_factory(engine).begin() as session:
        yield session


# For reads only: each statement commits on its own, with no BEGIN or COMMIT.
AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def is_autocommit(connection: Connection) -> bool:
    """Whether `connection` runs without transaction blocks (reads())."""
    level = connection.get_execution_options().get("isolation_level")
    if level is not None:
        return bool(level == "AUTOCOMMIT")
    return connection.dialect in _autocommit_dialects


def reads(engine: Engine | None = None) -> Connection:
    """Reads without a transaction block, two round trips fewer than
    transaction(). Under READ COMMITTED, PostgreSQL's default, each statement
    of a transaction takes its own snapshot anyway, so the reads see what they
    would inside one. Not for writes (each would commit alone), nor for
    anything that needs SET LOCAL or a lock held to the end (a search).

    A Connection, not a Session: the store's reads take either
    (store.types.Executor), and a Session cost a read 0.09 to 0.23 ms more on
    the large benchmark set (README, "Reads on a Connection").

    Used as `with reads() as connection:`, which closes it (a Connection is
    its own context manager; a generator around it cost 1.2 µs a read)."""
    return read_connection(engine or get_engine())


def read_connection(engine: Engine) -> Connection:
    """A pooled connection for reads(), from `engine`'s pool for reads
    (engine_for_reads), whose connections stay in autocommit."""
    readers = engine_for_reads(engine)
    connection = readers.connect()
    if readers is not engine:
        return connection  # from make_engine's pool for reads, in autocommit
    try:
        # Set before the first statement, which costs no round trip; the pool
        # puts the isolation level back when the connection is returned.
        connection.execution_options(**AUTOCOMMIT)
    except BaseException:
        connection.close()
        raise
    return connection


T = TypeVar("T")

# Tries of a unit of work whose connection was lost (see retry_if_connection_lost).
RETRIES_ON_CONNECTION_LOSS = 3


def connection_lost(exc: BaseException) -> bool:
    """Whether a database error means the connection died (server killed or
    restarted, backend terminated, network cut), as opposed to a statement
    PostgreSQL refused. SQLAlchemy marks those by invalidating the connection."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_if_connection_lost(
    run: Callable[[], T], *, attempts: int = RETRIES_ON_CONNECTION_LOSS
) -> T:
    """Call `run` (one whole transaction), and call it again, on a new
    connection, if the connection is lost on the way.

    Only for work that is safe to repeat. A lost connection rolls back what
    was not committed, but a loss during COMMIT leaves unknown whether it went
    through; a repeat must then find the first run's result instead of doing
    it twice. An idempotent send is such work (its key finds the message);
    other writes are not retried, and their caller sees the error.
    """
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except DBAPIError as exc:
            if not connection_lost(exc) or attempt == attempts:
                raise
            # The pool has been invalidated with the connection; a short pause
            # lets a restarting server accept connections again.
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover
