"""Passwords and tokens: hashing and generation, no database access."""

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chatdb.errors import Invalid

PASSWORD_MIN = 8
PASSWORD_MAX = 1024

# argon2id with the library's defaults (RFC 9106's second recommendation).
_hasher = PasswordHasher()
# Verified when the username is unknown, so a miss costs as long as a hit and
# response times do not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("chatdb: no such user")


def check_password_rules(password: str) -> str:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise Invalid(f"a password is {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    if "\x00" in password:
        raise Invalid("a password cannot contain the NUL character")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid("a password must be valid Unicode text") from exc
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password_rules(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; takes the same time when there is no hash."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        return False


def new_token() -> str:
    """A bearer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """What is stored for a token: its SHA-256 (the token itself is never stored)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )
