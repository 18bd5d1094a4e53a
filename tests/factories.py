"""Small helpers to make test data through the store (never by raw SQL)."""

from __future__ import annotations

import itertools
from datetime import timedelta

from sqlalchemy.orm import Session

from chatdb import store
from chatdb.store.types import Conversation, SendResult, User

_counter = itertools.count(1)


def make_user(session: Session, name: str | None = None, display_name: str | None = None) -> User:
    name = name or f"user{next(_counter)}"
    return store.create_user(
        session=session, username=name, email=f"{name}@example.org", display_name=display_name
    )


def make_group(
    session: Session, owner: User, *members: User, title: str = "a group"
) -> Conversation:
    return store.create_group(
        session=session, creator_id=owner.id, title=title, member_ids=[m.id for m in members]
    )


def send(
    session: Session, conversation: Conversation, sender: User, body: str, key: str | None = None
) -> SendResult:
    return store.send_message(
        session=session,
        conversation_id=conversation.id,
        sender_id=sender.id,
        body=body,
        idempotency_key=key,
    )


PASSPHRASE = "a long passphrase"


def sign_in(session: Session, user: User) -> str:
    """A live token for `user`, through the store's own sign-in."""
    store.set_password(session=session, user_id=user.id, password=PASSPHRASE)
    signed_in = store.sign_in(
        session=session, username=user.username, password=PASSPHRASE, lifetime=timedelta(hours=1)
    )
    assert signed_in is not None
    return signed_in[0]
