"""Turning database errors into domain errors, in one place."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, IntegrityError

from chatdb.errors import Conflict, Invalid, NotFound

# What each named constraint means to a user when a write breaks it.
CONSTRAINT_MESSAGES: dict[str, tuple[type[Exception], str]] = {
    "uq_users_username_lower": (Conflict, "that username is taken"),
    "uq_users_email_lower": (Conflict, "that email address is already in use"),
    "ck_users_username_format": (
        Invalid,
        "a username is 1 to 50 letters, digits, '_', '.' or '-'",
    ),
    "ck_users_email_format": (Invalid, "that is not a valid email address"),
    "ck_users_display_name_length": (Invalid, "a display name is 1 to 100 characters"),
    "ck_conversations_title_length": (Invalid, "a title is 1 to 200 characters"),
    "ck_messages_body_length": (Invalid, "a message is 1 to 4000 characters, not only spaces"),
    "ck_messages_idempotency_key_length": (Invalid, "an idempotency key is 1 to 100 characters"),
    "uq_conversations_direct_pair": (
        Conflict,
        "these two users have started a new direct conversation since this one was deleted",
    ),
    "pk_conversation_members": (Conflict, "that user is already a member"),
    "fk_conversation_members_user_id_users": (NotFound, "no such user"),
    "fk_conversation_members_conversation_id_conversations": (
        NotFound,
        "no such conversation",
    ),
    "fk_messages_sender_id_users": (NotFound, "no such user"),
    "fk_conversations_direct_user_low_id_users": (NotFound, "no such user"),
    "fk_conversations_direct_user_high_id_users": (NotFound, "no such user"),
}


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise constraint violations as NotFound / Conflict / Invalid."""
    try:
        yield
    except IntegrityError as exc:
        diag = getattr(exc.orig, "diag", None)
        name = getattr(diag, "constraint_name", None)
        if name in CONSTRAINT_MESSAGES:
            error_class, message = CONSTRAINT_MESSAGES[name]
            raise error_class(message) from exc
        raise
    except DBAPIError as exc:
        # Invalid text (e.g. a time zone name PostgreSQL does not know).
        if getattr(getattr(exc.orig, "diag", None), "sqlstate", "") in ("22023", "22P02"):
            raise Invalid(str(exc.orig).splitlines()[0]) from exc
        raise
