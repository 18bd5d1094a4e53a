"""Request dependencies: the database, the caller, the cursor codec."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from chatdb import store
from chatdb.api.cursors import CursorCodec
from chatdb.api.errors import ApiError
from chatdb.api.metrics import Metrics
from chatdb.config import Settings
from chatdb.db import session_factory
from chatdb.security import same_secret


@dataclass(frozen=True, slots=True)
class Database:
    engine: Engine
    metrics: Metrics | None = None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The request's unit of work: commit on success, roll back on error."""
        with session_factory(self.engine).begin() as session:
            if self.metrics is not None:
                # Take the connection now, so time spent waiting for one is seen.
                with self.metrics.waiting_for_connection():
                    session.connection()
            yield session


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
    return Database(request.app.state.engine, request.app.state.metrics)


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
        return Principal(user_id=None, is_admin=True, token=token)
    if len(token) > 512:
        raise ApiError(401, "unauthenticated", "the token is not valid", _UNAUTHENTICATED)
    with database.transaction() as session:
        user_id = store.user_for_token(session=session, token=token)
    if user_id is None:
        raise ApiError(
            401, "unauthenticated", "the token is expired, revoked or unknown", _UNAUTHENTICATED
        )
    return Principal(user_id=user_id, is_admin=False, token=token)


Db = Annotated[Database, Depends(get_database)]
Caller = Annotated[Principal, Depends(get_principal)]
Cursors = Annotated[CursorCodec, Depends(get_cursors)]
AppSettings = Annotated[Settings, Depends(get_settings_dep)]
