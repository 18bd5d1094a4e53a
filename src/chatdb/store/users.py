"""Users: create, read, update, delete. Every function runs in the caller's transaction."""

from contextlib import suppress

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from chatdb import models
from chatdb.errors import Invalid, NotFound
from chatdb.store._errors import translated_errors
from chatdb.store._validate import clean_text, page_limit, positive_id
from chatdb.store.conversations import remove_member
from chatdb.store.types import AnyRow, Executor, User

_USER_COLUMNS = (
    models.User.id,
    models.User.username,
    models.User.email,
    models.User.display_name,
    models.User.created_at,
)


def _user(row: AnyRow) -> User:
    return User(
        id=row.id,
        username=row.username,
        email=row.email,
        display_name=row.display_name,
        created_at=row.created_at,
    )


def _clean_fields(
    username: str | None, email: str | None, display_name: str | None
) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    if username is not None:
        values["username"] = clean_text(username.strip(), field="username", max_length=50)
    if email is not None:
        values["email"] = clean_text(email.strip(), field="email", max_length=254)
    if display_name is not None:
        cleaned = clean_text(
            display_name.strip(), field="display name", max_length=100, allow_blank=True
        )
        values["display_name"] = cleaned or None
    return values


def create_user(
    *, session: Session, username: str, email: str, display_name: str | None = None
) -> User:
    values = _clean_fields(username, email, display_name)
    with translated_errors():
        row = session.execute(insert(models.User).values(**values).returning(*_USER_COLUMNS)).one()
    return _user(row)


def get_user(*, session: Executor, user_id: int) -> User:
    positive_id(user_id, field="user id")
    row = session.execute(select(*_USER_COLUMNS).where(models.User.id == user_id)).one_or_none()
    if row is None:
        raise NotFound(f"no user with id {user_id}")
    return _user(row)


def get_user_by_username(*, session: Executor, username: str) -> User:
    row = session.execute(
        select(*_USER_COLUMNS).where(func.lower(models.User.username) == username.lower())
    ).one_or_none()
    if row is None:
        raise NotFound(f"no user named {username!r}")
    return _user(row)


def list_users(*, session: Session, after_id: int = 0, limit: int = 50) -> list[User]:
    """Users in id order, a keyset page after `after_id`."""
    rows = session.execute(
        select(*_USER_COLUMNS)
        .where(models.User.id > after_id)
        .order_by(models.User.id)
        .limit(page_limit(limit))
    )
    return [_user(row) for row in rows]


def update_user(
    *,
    session: Session,
    user_id: int,
    username: str | None = None,
    email: str | None = None,
    display_name: str | None = None,
) -> User:
    """Change the given fields; display_name="" clears the display name."""
    positive_id(user_id, field="user id")
    values = _clean_fields(username, email, display_name)
    if not values and display_name is None:
        raise Invalid("nothing to change: give a username, email or display name")
    with translated_errors():
        row = session.execute(
            update(models.User)
            .where(models.User.id == user_id)
            .values(**values)
            .returning(*_USER_COLUMNS)
        ).one_or_none()
    if row is None:
        raise NotFound(f"no user with id {user_id}")
    return _user(row)


def delete_user(*, session: Session, user_id: int) -> None:
    """Delete a user: memberships go with them, their messages stay with no sender."""
    positive_id(user_id, field="user id")
    # Leave each conversation first, as the user would: a group whose last
    # owner this was gets a new one, and the other members are told. (The
    # foreign key's cascade alone would leave such a group without an owner.)
    member = models.ConversationMember
    conversation_ids = session.execute(
        select(member.conversation_id)
        .where(member.user_id == user_id)
        .order_by(member.conversation_id)  # one lock order, with other deletions
    ).scalars()
    for conversation_id in list(conversation_ids):
        with suppress(NotFound):  # removed concurrently: nothing left to do
            remove_member(
                session=session, conversation_id=conversation_id, user_id=user_id, actor_id=user_id
            )
    deleted = session.execute(
        delete(models.User).where(models.User.id == user_id).returning(models.User.id)
    ).one_or_none()
    if deleted is None:
        raise NotFound(f"no user with id {user_id}")
