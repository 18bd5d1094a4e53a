"""Request dependencies: the database, the caller, the cursor codec."""

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from chatdb import store
from chatdb.api.cursors import CursorCodec
from chatdb.api.errors import ApiError
from chatdb.api.metrics import READS, TRANSACTIONS, Metrics
from chatdb.config import Settings
from chatdb.db import (
    connection_lost,
    read_connection,
    retry_if_connection_lost,
    session_factory,
)
from chatdb.replicas import ReadRouter
from chatdb.security import same_secret
from chatdb.store import Executor

T = TypeVar("T")
# What a request opens: a Session for a transaction, a Connection for reads.
Opened = TypeVar("Opened", Session, Connection)

# Whom read-your-writes is kept for: a user's id, or this key for the operator.
_OPERATOR = 0


@dataclass(slots=True)
class Database:
    """The request's way to the database.

    A signed-in request's token check runs on the connection the handler then
    uses (get_principal, open_with). In a write it is the first statement of
    the handler's transaction, so the check costs no transaction of its own. A
    GET changes nothing: its token check and reads run on a Connection without
    a transaction block (reads()), two round trips fewer than BEGIN ... COMMIT,
    unless its endpoint is marked reads_in_one_transaction. Those reads take
    their connection from a pool of their own (chatdb.db.engine_for_reads);
    writes and reads in a transaction (a search) from the engine's."""

    engine: Engine
    router: ReadRouter
    request: Request
    metrics: Metrics | None = None
    # Statements commit one by one (see reads()).
    autocommit_reads: bool = False
    # Opened by the token check, not yet taken by the handler: a Session in a
    # transaction, or with autocommit_reads a Connection.
    _opened: Session | Connection | None = field(default=None, repr=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The request's unit of work, on the primary: commit on success, roll
        back on error."""
        session = self._take(Session, self._new_session)
        with self._committed(session):
            yield session

    @contextmanager
    def reads(self) -> Iterator[Executor]:
        """The handler's reads, on the primary. In a GET, on a Connection
        without a transaction block: each statement commits on its own. Under
        READ COMMITTED each statement of a transaction takes its own snapshot
        anyway, so the reads see what they would inside one. Not for anything
        that needs SET LOCAL or a lock held to the end: an endpoint marked
        reads_in_one_transaction, like any request but a GET, gets transaction()."""
        if not self.autocommit_reads:
            with self.transaction() as session:
                yield session
            return
        with self._take(Connection, self._new_connection) as connection:
            yield connection

    @contextmanager
    def replica_reads(self) -> Iterator[Executor]:
        """For reads that may lag: a replica that has seen the caller's own
        writes (in a transaction there), or the primary. Without replicas, the
        same as reads()."""
        if self.router.enabled or not self.autocommit_reads:
            with self.replica_transaction() as session:
                yield session
            return
        with self.reads() as connection:
            yield connection

    @contextmanager
    def replica_transaction(self) -> Iterator[Session]:
        """replica_reads() in one transaction, for an endpoint marked
        reads_in_one_transaction (its token check began it on the primary)."""
        if not self.router.enabled:
            with self.transaction() as session:
                yield session
            return
        with self._on_replica() as session:
            yield session

    def transaction_retried(self, work: Callable[[Session], T]) -> T:
        """`work` in a transaction, run again if the connection is lost on the
        way: only for work that is safe to repeat (see retry_if_connection_lost)."""

        def once() -> T:
            with self.transaction() as session:
                return work(session)

        return retry_if_connection_lost(once)

    def open_with(self, first: Callable[[Executor], T]) -> T:
        """Open the request's connection to the primary by running `first` on
        it (in a transaction, unless autocommit_reads); the handler's
        transaction() or reads() then continues there. Returns what `first`
        returned."""
        self.close_opened()
        if self.autocommit_reads:
            self._opened, result = self._begin(self._new_connection, first)
        else:
            self._opened, result = self._begin(self._new_session, first)
        return result

    @property
    def has_opened(self) -> bool:
        return self._opened is not None

    def close_opened(self) -> None:
        """Roll back and let go of what open_with() opened and no handler took
        (one that failed early, or used no database)."""
        if self._opened is not None:
            opened, self._opened = self._opened, None
            opened.close()

    @contextmanager
    def _committed(self, session: Session) -> Iterator[None]:
        with session:
            try:
                yield
            except BaseException:
                session.rollback()
                raise
            session.commit()
            writer = self._caller()
            if writer is not None and self.router.enabled and self.request.method != "GET":
                self.router.remember_write(session, writer)

    @contextmanager
    def _on_replica(self) -> Iterator[Session]:
        # The token was checked on the primary: a replica may not have
        # replayed a revocation yet, so the check cannot run there (see
        # get_principal).
        self.close_opened()
        with self.router.read_transaction(self._caller()) as session:
            with self._waiting_for_connection(TRANSACTIONS):
                session.connection()
            yield session

    def _take(self, kind: type[Opened], open_new: Callable[[], Opened]) -> Opened:
        """What open_with() opened, if it is of `kind`; else a new one. (A GET
        endpoint that asks for a transaction without being marked
        reads_in_one_transaction gets one: the token check's connection goes
        back to the pool and another is taken, with a statement more.)"""
        opened, self._opened = self._opened, None
        if isinstance(opened, kind):
            return opened
        if opened is not None:
            opened.close()
        new, _ = self._begin(open_new, _ping)
        return new

    def _begin(
        self, open_new: Callable[[], Opened], first: Callable[[Opened], T]
    ) -> tuple[Opened, T]:
        """A new session or connection whose first statement is `first`.

        The pool does not ping connections before handing them out (a round
        trip per transaction). After a PostgreSQL restart a pooled connection
        is dead: `first` then fails with a disconnect having done nothing,
        SQLAlchemy has invalidated the whole pool, and one more try on a new
        connection is safe."""
        for attempt in (1, 2):
            opened = open_new()
            try:
                return opened, first(opened)
            except DBAPIError as exc:
                opened.close()
                if attempt == 2 or not connection_lost(exc):
                    raise
            except BaseException:
                opened.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _new_session(self) -> Session:
        """A session with its connection taken, so time spent waiting for one
        is seen."""
        session = session_factory(self.engine)()
        try:
            with self._waiting_for_connection(TRANSACTIONS):
                session.connection()
        except BaseException:
            session.close()
            raise
        return session

    def _new_connection(self) -> Connection:
        """A connection for reads without a transaction block (chatdb.db.reads),
        from the pool for reads."""
        with self._waiting_for_connection(READS):
            return read_connection(self.engine)

    def _waiting_for_connection(self, pool: str) -> AbstractContextManager[None]:
        if self.metrics is None:
            return nullcontext()
        return self.metrics.waiting_for_connection(pool)

    def _caller(self) -> int | None:
        caller: int | None = getattr(self.request.state, "caller_key", None)
        return caller


def _ping(executor: Executor) -> None:
    """The first statement of a transaction that has no useful one to begin
    with, so a dead pooled connection is found where a retry is safe."""
    executor.execute(text("SELECT 1"))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a signed-in user, or the operator holding the admin key."""

    user_id: int | None
    is_admin: bool
    token: str

    @property
    def actor_id(self) -> int | None:
        """For the store: None means an operator, allowed everything."""
        return None if self.is_admin else self.user_id

    def require_user(self) -> int:
        if self.user_id is None:
            raise ApiError(403, "user_required", "this needs a signed-in user, not the admin key")
        return self.user_id

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ApiError(403, "admin_required", "this needs the admin key")


# GET endpoints whose reads need one transaction.
_IN_ONE_TRANSACTION: set[Callable[..., object]] = set()

Endpoint = TypeVar("Endpoint", bound=Callable[..., object])


def reads_in_one_transaction(endpoint: Endpoint) -> Endpoint:
    """Mark a GET endpoint whose reads need one transaction (a search's SET
    LOCAL must reach its query): its token check then begins the transaction,
    as a write's does, and the handler's transaction() or replica_transaction()
    continue it."""
    _IN_ONE_TRANSACTION.add(endpoint)
    return endpoint


# The dependencies that do no I/O are async: a sync one costs a worker-thread hop.
async def get_database(request: Request) -> Database:
    return Database(
        request.app.state.engine,
        request.app.state.read_router,
        request,
        request.app.state.metrics,
        autocommit_reads=request.method == "GET"
        and request.scope.get("endpoint") not in _IN_ONE_TRANSACTION,
    )


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_cursors(request: Request) -> CursorCodec:
    codec: CursorCodec = request.app.state.cursors
    return codec


_bearer = HTTPBearer(
    auto_error=False, description="A token from POST /v1/sessions, or the admin key."
)

_UNAUTHENTICATED = {"WWW-Authenticate": "Bearer"}


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    database: Annotated[Database, Depends(get_database)],
    settings: Annotated[Settings, Depends(get_settings_dep)],
) -> AsyncIterator[Principal]:
    """The caller. A token is checked on the request's own connection, as the
    first statement of its transaction or, in a GET, of its reads
    (Database.open_with), always on the primary: revoking a token is a write
    there, and a replica that has not replayed it yet would still accept the
    token. With replicas, a read that goes to one therefore takes a second
    connection; without them, a request takes one."""
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "unauthenticated",
            "sign in first (Authorization: Bearer <token>)",
            _UNAUTHENTICATED,
        )
    token = credentials.credentials
    if same_secret(token, settings.admin_key):
        request.state.caller_key = _OPERATOR
        yield Principal(user_id=None, is_admin=True, token=token)
        return
    if len(token) > 512:
        raise ApiError(401, "unauthenticated", "the token is not valid", _UNAUTHENTICATED)
    # Async, so that only the database work takes a worker thread (the admin
    # key, a refusal and a handler that took the session take none).
    try:
        user_id = await run_in_threadpool(database.open_with, partial(_user_for_token, token=token))
        if user_id is None:
            raise ApiError(
                401, "unauthenticated", "the token is expired, revoked or unknown", _UNAUTHENTICATED
            )
        request.state.caller_key = user_id
        yield Principal(user_id=user_id, is_admin=False, token=token)
    finally:
        # Left open only if the handler used no database (or failed first).
        if database.has_opened:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(database.close_opened)


def _user_for_token(executor: Executor, *, token: str) -> int | None:
    return store.user_for_token(session=executor, token=token)


Db = Annotated[Database, Depends(get_database)]
# Torn down when the handler returns, before the response goes out: a stream
# (/v1/events) must not keep the token check's connection while it runs.
Caller = Annotated[Principal, Depends(get_principal, scope="function")]
Cursors = Annotated[CursorCodec, Depends(get_cursors)]
AppSettings = Annotated[Settings, Depends(get_settings_dep)]
