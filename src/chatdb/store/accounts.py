"""Passwords and sign-in tokens. Every function runs in the caller's transaction."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from chatdb import models
from chatdb.errors import NotFound
from chatdb.security import hash_password, new_token, token_digest, verify_password
from chatdb.store._validate import positive_id

T = models.AuthToken


def set_password(*, session: Session, user_id: int, password: str) -> None:
    positive_id(user_id, field="user id")
    changed = session.execute(
        update(models.User)
        .where(models.User.id == user_id)
        .values(password_hash=hash_password(password))
        .returning(models.User.id)
    ).one_or_none()
    if changed is None:
        raise NotFound(f"no user with id {user_id}")


def _storable(text: str) -> bool:
    """Whether PostgreSQL can hold this text (no NUL, no lone surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sign_in(
    *, session: Session, username: str, password: str, lifetime: timedelta
) -> tuple[str, int, datetime] | None:
    """A new token for valid credentials, else None (the caller says why not,
    without telling whether the username exists)."""
    row = None
    # A username no user can have (NUL, a lone surrogate) cannot even be sent
    # to the database; it is answered like any other unknown username.
    if _storable(username):
        row = session.execute(
            select(models.User.id, models.User.password_hash).where(
                func.lower(models.User.username) == username.lower()
            )
        ).one_or_none()
    if not verify_password(row.password_hash if row else None, password) or row is None:
        return None
    token = new_token()
    expires_at = datetime.now(UTC) + lifetime
    session.execute(
        insert(T).values(user_id=row.id, token_hash=token_digest(token), expires_at=expires_at)
    )
    return token, row.id, expires_at


def user_for_token(*, session: Session, token: str) -> int | None:
    """The user a live (not expired, not revoked) token belongs to."""
    user_id: int | None = session.execute(
        select(T.user_id).where(
            T.token_hash == token_digest(token),
            T.revoked_at.is_(None),
            T.expires_at > func.now(),
        )
    ).scalar_one_or_none()
    return user_id


def revoke_token(*, session: Session, token: str) -> bool:
    revoked = session.execute(
        update(T)
        .where(T.token_hash == token_digest(token), T.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(T.id)
    ).one_or_none()
    return revoked is not None


def revoke_all_tokens(*, session: Session, user_id: int) -> int:
    """Sign a user out everywhere (e.g. after a password change)."""
    result = session.execute(
        update(T)
        .where(T.user_id == user_id, T.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(T.id)
    )
    return len(result.all())
