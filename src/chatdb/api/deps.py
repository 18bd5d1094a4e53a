"""Request dependencies: the database, the caller, the cursor codec."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from chatdb import store
from chatdb.api.cursors import CursorCodec
from chatdb.api.errors import ApiError
from chatdb.api.metrics import Metrics
from chatdb.config import Settings
from chatdb.db import retry_if_connection_lost, session_factory
from chatdb.replicas import ReadRouter
from chatdb.security import same_secret

T = TypeVar("T")

# Whom read-your-writes is kept for: a user's id, or this key for the operator.
_OPERATOR = 0


@dataclass(frozen=True, slots=True)
class Database:
    engine: Engine
    router: ReadRouter
    request: Request
    metrics: Metrics | None = None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The request's unit of work, on the primary: commit on success, roll
        back on error."""
        with session_factory(self.engine)() as session:
            with session.begin():
                self._connect(session)
                yield session
            writer = self._caller()
            if writer is not None and self.router.enabled and self.request.method != "GET":
                self.router.remember_write(session, writer)

    @contextmanager
    def read_transaction(self) -> Iterator[Session]:
        """For reads that may lag: a replica that has seen the caller's own
        writes, or the primary. Without replicas, the same as transaction()."""
        with self.router.read_transaction(self._caller()) as session:
            self._connect(session)
            yield session

    def _connect(self, session: Session) -> None:
        if self.metrics is not None:
            # Take the connection now, so time spent waiting for one is seen.
            with self.metrics.waiting_for_connection():
                session.connection()

    def transaction_retried(self, work: Callable[[Session], T]) -> T:
        """`work` in a transaction, run again if the connection is lost on the
        way: only for work that is safe to repeat (see retry_if_connection_lost)."""

        def once() -> T:
            with self.transaction() as session:
                return work(session)

        return retry_if_connection_lost(once)

    def _caller(self) -> int | None:
        caller: int | None = getattr(self.request.state, "caller_key", None)
        return caller


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


def get_database(request: Request) -> Database:
    return Database(
        request.app.state.engine,
        request.app.state.read_router,
        request,
        request.app.state.metrics,
    )


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_cursors(request: Request) -> CursorCodec:
    codec: CursorCodec = request.app.state.cursors
    return codec


_bearer = HTTPBearer(
    auto_error=False, description="A token from POST /v1/sessions, or the admin key."
)

_UNAUTHENTICATED = {"WWW-Authenticate": "Bearer"}


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    database: Annotated[Database, Depends(get_database)],
    settings: Annotated[Settings, Depends(get_settings_dep)],
) -> Principal:
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
        return Principal(user_id=None, is_admin=True, token=token)
    if len(token) > 512:
        raise ApiError(401, "unauthenticated", "the token is not valid", _UNAUTHENTICATED)
    with database.transaction() as session:
        user_id = store.user_for_token(session=session, token=token)
    if user_id is None:
        raise ApiError(
            401, "unauthenticated", "the token is expired, revoked or unknown", _UNAUTHENTICATED
        )
    request.state.caller_key = user_id
    return Principal(user_id=user_id, is_admin=False, token=token)


Db = Annotated[Database, Depends(get_database)]
Caller = Annotated[Principal, Depends(get_principal)]
Cursors = Annotated[CursorCodec, Depends(get_cursors)]
AppSettings = Annotated[Settings, Depends(get_settings_dep)]
