"""Request dependencies: the database, the caller, the cursor codec."""

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from chatdb import store
from chatdb.api.cursors import CursorCodec
from chatdb.api.errors import ApiError
from chatdb.api.metrics import Metrics
from chatdb.config import Settings
from chatdb.db import connection_lost, retry_if_connection_lost, session_factory
from chatdb.replicas import ReadRouter
from chatdb.security import same_secret

T = TypeVar("T")

# Whom read-your-writes is kept for: a user's id, or this key for the operator.
_OPERATOR = 0


@dataclass(slots=True)
class Database:
    """The request's way to its transactions.

    A request signed in with a token makes one transaction: the token check
    opens it (get_principal) and the handler's transaction() continues it, so
    the check costs one statement, not a transaction of its own."""

    engine: Engine
    router: ReadRouter
    request: Request
    metrics: Metrics | None = None
    # Opened by the token check, not yet taken by transaction().
    _opened: Session | None = field(default=None, repr=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The request's unit of work, on the primary: commit on success, roll
        back on error."""
        session = self._take_opened()
        with session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise
            session.commit()
            writer = self._caller()
            if writer is not None and self.router.enabled and self.request.method != "GET":
                self.router.remember_write(session, writer)

    @contextmanager
    def read_transaction(self) -> Iterator[Session]:
        """For reads that may lag: a replica that has seen the caller's own
        writes, or the primary. Without replicas, the same as transaction()."""
        if not self.router.enabled:
            with self.transaction() as session:
                yield session
            return
        # The token was checked on the primary in a transaction of its own: a
        # replica may not have replayed a revocation yet, so the check cannot
        # run there (see get_principal).
        self.close_opened()
        with self.router.read_transaction(self._caller()) as session:
            self._connect(session)
            yield session

    def transaction_retried(self, work: Callable[[Session], T]) -> T:
        """`work` in a transaction, run again if the connection is lost on the
        way: only for work that is safe to repeat (see retry_if_connection_lost)."""

        def once() -> T:
            with self.transaction() as session:
                return work(session)

        return retry_if_connection_lost(once)

    def open_with(self, first: Callable[[Session], T]) -> T:
        """Open the request's transaction on the primary by running `first` in
        it; transaction() then continues it. Returns what `first` returned."""
        self.close_opened()
        self._opened, result = self._begin(first)
        return result

    @property
    def has_opened(self) -> bool:
        return self._opened is not None

    def close_opened(self) -> None:
        """Roll back and let go of a transaction open_with() opened and no
        handler took (one that failed early, or used no database)."""
        if self._opened is not None:
            session, self._opened = self._opened, None
            session.close()

    def _take_opened(self) -> Session:
        if self._opened is not None:
            session, self._opened = self._opened, None
            return session
        session, _ = self._begin(_ping)
        return session

    def _begin(self, first: Callable[[Session], T]) -> tuple[Session, T]:
        """A new session in a transaction begun by `first`.

        The pool does not ping connections before handing them out (a round
        trip per transaction). After a PostgreSQL restart a pooled connection
        is dead: `first`, the transaction's first statement, then fails with a
        disconnect having done nothing, SQLAlchemy has invalidated the whole
        pool, and one more try on a new connection is safe."""
        for attempt in (1, 2):
            session = session_factory(self.engine)()
            try:
                self._connect(session)
                return session, first(session)
            except DBAPIError as exc:
                session.close()
                if attempt == 2 or not connection_lost(exc):
                    raise
            except BaseException:
                session.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self, session: Session) -> None:
        if self.metrics is not None:
            # Take the connection now, so time spent waiting for one is seen.
            with self.metrics.waiting_for_connection():
                session.connection()

    def _caller(self) -> int | None:
        caller: int | None = getattr(self.request.state, "caller_key", None)
        return caller


def _ping(session: Session) -> None:
    """The first statement of a transaction that has no useful one to begin
    with, so a dead pooled connection is found where a retry is safe."""
    session.execute(text("SELECT 1"))


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


# The dependencies that do no I/O are async: a sync one costs a worker-thread hop.
async def get_database(request: Request) -> Database:
    return Database(
        request.app.state.engine,
        request.app.state.read_router,
        request,
        request.app.state.metrics,
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
    """The caller. A token is checked as the first statement of the request's
    own transaction (Database.open_with), always on the primary: revoking a
    token is a write there, and a replica that has not replayed it yet would
    still accept the token. With replicas, a read that goes to one therefore
    makes a second transaction; without them, a request makes one."""
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
    # key, a refusal and a handler that took the transaction take none).
    try:
        user_id = await run_in_threadpool(database.open_with, partial(_user_for_token, token=token))
        if user_id is None:
            raise ApiError(
                401, "unauthenticated", "the token is expired, revoked or unknown", _UNAUTHENTICATED
            )
        request.state.caller_key = user_id
        yield Principal(user_id=user_id, is_admin=False, token=token)
    finally:
        # Left open only if the handler made no transaction (or failed first).
        if database.has_opened:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(database.close_opened)


def _user_for_token(session: Session, *, token: str) -> int | None:
    return store.user_for_token(session=session, token=token)


Db = Annotated[Database, Depends(get_database)]
# Torn down when the handler returns, before the response goes out: a stream
# (/v1/events) must not keep the token check's transaction open while it runs.
Caller = Annotated[Principal, Depends(get_principal, scope="function")]
Cursors = Annotated[CursorCodec, Depends(get_cursors)]
AppSettings = Annotated[Settings, Depends(get_settings_dep)]
