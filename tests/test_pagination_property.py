"""Property: keyset pages of messages never skip or repeat, whatever happens in between.

A walk fetches pages of random sizes; between two fetches, messages are sent
and soft-deleted. Forward (after=) the walk sees every message exactly once and
in order, including those sent during the walk; backward (before=) it sees
every message that existed when it started exactly once and in order. A
deleted message keeps its place, with no text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from chatdb import store
from chatdb.store.types import Conversation, MessagePage, User
from tests.factories import make_group, make_user, send

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Chat:
    """A fresh group and what the test knows it holds."""

    session: Session
    group: Conversation
    senders: list[User]
    bodies: dict[int, str] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, session: Session, initial: int) -> Chat:
        alice, bob = make_user(session), make_user(session)
        chat = cls(session, make_group(session, alice, bob), [alice, bob])
        chat.send(initial)
        return chat

    def send(self, count: int) -> None:
        for _ in range(count):
            n = len(self.bodies) + 1
            sent = send(self.session, self.group, self.senders[n % 2], f"message {n}").message
            assert sent.seq == n
            self.bodies[n] = sent.body or ""

    def delete(self, seq: int) -> None:
        store.delete_message(session=self.session, conversation_id=self.group.id, seq=seq)
        self.deleted.add(seq)

    def page(
        self, *, limit: int, before: int | None = None, after: int | None = None
    ) -> MessagePage:
        page = store.list_messages(
            session=self.session,
            conversation_id=self.group.id,
            before=before,
            after=after,
            limit=limit,
            actor_id=self.senders[0].id,
        )
        assert len(page.messages) <= limit
        seqs = [m.seq for m in page.messages]
        last_seq = len(self.bodies)
        if seqs:
            # Ascending and contiguous: deleted messages keep their place.
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        # "More this way" is exact, so a client never fetches an empty page in vain
        # and never stops early.
        if after is not None:
            assert page.has_newer == ((seqs[-1] if seqs else after) < last_seq)
            assert page.has_older == (after > 0)
        else:
            assert page.has_older == (bool(seqs) and seqs[0] > 1)
            newest = seqs[-1] if seqs else (before or 1) - 1
            assert page.has_newer == (before is not None and newest < last_seq)
        for message in page.messages:
            expected = None if message.seq in self.deleted else self.bodies[message.seq]
            assert message.body == expected
            assert (message.deleted_at is not None) == (message.seq in self.deleted)
        return page

    def meanwhile(self, data: st.DataObject) -> None:
        """What other members do between two page fetches."""
        self.send(data.draw(st.integers(0, 4), label="sent meanwhile"))
        if self.bodies:
            seqs = sorted(self.bodies)
            for seq in data.draw(st.lists(st.sampled_from(seqs), max_size=3), label="deleted"):
                if seq not in self.deleted:
                    self.delete(seq)


@PROPERTY_SETTINGS
@given(initial=st.integers(0, 60), data=st.data())
def test_forward_walk_sees_every_message_once_in_order(
    session: Session, initial: int, data: st.DataObject
) -> None:
    chat = Chat.start(session, initial)
    for seq in data.draw(st.lists(st.integers(1, max(initial, 1)), max_size=5), label="pre"):
        if seq in chat.bodies and seq not in chat.deleted:
            chat.delete(seq)

    seen: list[int] = []
    after = 0
    while True:
        page = chat.page(limit=data.draw(st.integers(1, 25), label="limit"), after=after)
        seen.extend(m.seq for m in page.messages)
        if not page.has_newer:
            break
        assert page.messages, "a page that says there is more must not be empty"
        after = page.messages[-1].seq
        chat.meanwhile(data)

    assert seen == sorted(chat.bodies)
    assert seen == list(range(1, len(chat.bodies) + 1))


@PROPERTY_SETTINGS
@given(initial=st.integers(0, 60), data=st.data())
def test_backward_walk_sees_every_earlier_message_once_in_order(
    session: Session, initial: int, data: st.DataObject
) -> None:
    chat = Chat.start(session, initial)
    at_start = list(range(1, initial + 1))

    pages: list[list[int]] = []
    page = chat.page(limit=data.draw(st.integers(1, 25), label="limit"))
    while True:
        pages.append([m.seq for m in page.messages])
        if not page.has_older:
            break
        assert page.messages, "a page that says there is more must not be empty"
        before = page.messages[0].seq
        chat.meanwhile(data)
        page = chat.page(limit=data.draw(st.integers(1, 25), label="limit"), before=before)
        # Everything after this page exists, so the page says there is newer.
        assert page.has_newer

    seen = [seq for chunk in reversed(pages) for seq in chunk]
    assert seen == at_start
