"""Passwords and sign-in tokens. Every function runs in the caller's transaction."""

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from chatdb import models
from chatdb.errors import NotFound, TooManyAttempts
from chatdb.security import hash_password, new_token, token_digest, verify_password
from chatdb.store._driver import DriverBytes, fetch_all
from chatdb.store._validate import positive_id
from chatdb.store.types import Executor

T = models.AuthToken
F = models.SignInFailure


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


@dataclass(frozen=True, slots=True)
class SignInLimits:
    """Sign-in throttling. Each account, and each client address, may fail
    `*_failures` times within `window`; every failure after that blocks further
    sign-ins for it (429) for `first_block`, doubling each time up to
    `longest_block`. An address gets more leeway: many people can share one."""

    account_failures: int = 5
    address_failures: int = 20
    window: timedelta = timedelta(minutes=15)
    first_block: timedelta = timedelta(seconds=1)
    longest_block: timedelta = timedelta(minutes=15)


def _throttle_key(scope: str, subject: str) -> bytes:
    # A digest, so any username (NUL, lone surrogates, 10 kB) makes a valid key
    # and no client-chosen text is stored.
    return hashlib.sha256(f"{scope}\0{subject}".encode("utf-8", "surrogatepass")).digest()


_COUNT_FAILURE_SQL = text("""
INSERT INTO sign_in_failures AS f (key_hash, scope, failures)
VALUES (:key_hash, :scope, 1)
ON CONFLICT (key_hash) DO UPDATE SET
    failures = CASE WHEN f.last_failure_at < now() - make_interval(secs => :window)
                    THEN 1 ELSE least(f.failures + 1, 1000000) END,
    first_failure_at = CASE WHEN f.last_failure_at < now() - make_interval(secs => :window)
                            THEN now() ELSE f.first_failure_at END,
    last_failure_at = now()
RETURNING failures
""")


def _blocked_for(session: Session, keys: list[bytes]) -> int | None:
    """Seconds until sign-ins for these keys are allowed again, if they are blocked."""
    seconds = session.execute(
        select(func.ceil(func.extract("epoch", func.max(F.blocked_until) - func.now()))).where(
            F.key_hash.in_(keys), F.blocked_until > func.now()
        )
    ).scalar_one_or_none()
    return None if seconds is None else max(1, int(seconds))


def _count_failure(session: Session, scope: str, key: bytes, limits: SignInLimits) -> None:
    free = limits.account_failures if scope == "account" else limits.address_failures
    failures: int = session.execute(
        _COUNT_FAILURE_SQL,
        {"key_hash": key, "scope": scope, "window": limits.window.total_seconds()},
    ).scalar_one()
    if failures >= free:
        block = min(
            limits.longest_block.total_seconds(),
            limits.first_block.total_seconds() * 2 ** min(failures - free, 30),
        )
        session.execute(
            update(F)
            .where(F.key_hash == key)
            .values(blocked_until=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, block))
        )


def sign_in(
    *,
    session: Session,
    username: str,
    password: str,
    lifetime: timedelta,
    address: str | None = None,
    limits: SignInLimits | None = None,
) -> tuple[str, int, datetime] | None:
    """A new token for valid credentials, else None (the caller says why not,
    without telling whether the username exists).

    Raises TooManyAttempts while the account or the address is blocked; the
    password is not even checked then. A failure is counted in the caller's
    transaction, so the caller must commit it also when answering "no".
    Unknown usernames are counted and hashed exactly like known ones, so
    neither the answers nor their timing tell which usernames exist.
    """
    limits = limits or SignInLimits()
    keys = [("account", _throttle_key("account", username.lower()))]
    if address:
        keys.append(("address", _throttle_key("address", address)))
    wait = _blocked_for(session, [key for _, key in keys])
    if wait is not None:
        raise TooManyAttempts(
            f"too many failed sign-ins; try again in {wait} seconds", retry_after=wait
        )
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
        for scope, key in keys:
            _count_failure(session, scope, key, limits)
        return None
    # The account's own counter starts over; the address's does not, or one
    # good account would let an address guess others' passwords without end.
    session.execute(delete(F).where(F.key_hash == keys[0][1]))
    token = new_token()
    expires_at = datetime.now(UTC) + lifetime
    session.execute(
        insert(T).values(user_id=row.id, token_hash=token_digest(token), expires_at=expires_at)
    )
    return token, row.id, expires_at


_tokens = T.__table__.c
# Every signed-in request runs this first: built once, from the Core table, as
# the ORM path costs more than the lookup.
_USER_FOR_TOKEN = select(_tokens.user_id).where(
    _tokens.token_hash == bindparam("token_hash", type_=DriverBytes()),
    _tokens.revoked_at.is_(None),
    _tokens.expires_at > func.now(),
)


def user_for_token(*, session: Executor, token: str) -> int | None:
    """The user a live (not expired, not revoked) token belongs to."""
    # Every request asks this first: past SQLAlchemy's result layer (_driver).
    rows = fetch_all(session, _USER_FOR_TOKEN, {"token_hash": token_digest(token)}).rows
    # token_hash is unique: one row at most.
    return int(rows[0][0]) if rows else None


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
