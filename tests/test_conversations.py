"""Users, conversations and members: the rules a user of the product runs into."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from chatdb import models, store
from chatdb.errors import Conflict, Forbidden, Invalid, NotFound
from chatdb.store.types import Conversation, User
from tests.factories import make_group, make_user, send


@contextmanager
def refused(session: Session, error: type[Exception], match: str | None = None) -> Iterator[None]:
    """Expect `error`, in a savepoint: a refused write can abort the transaction
    (a broken constraint), and the test goes on using it, as a caller would after
    rolling back."""
    with pytest.raises(error, match=match), session.begin_nested():
        yield


def _count(session: Session, model: type[models.Base], *where: ColumnElement[bool]) -> int:
    count: int = session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
    return count


def _roles(session: Session, conversation: Conversation) -> dict[int, str]:
    members = store.list_members(session=session, conversation_id=conversation.id)
    return {m.user_id: m.role for m in members}


# --- users ----------------------------------------------------------------------------


def test_create_and_get_user(session: Session) -> None:
    user = store.create_user(
        session=session, username=" Alice_1 ", email="alice@example.org", display_name=" Alice "
    )
    assert user.username == "Alice_1"
    assert user.display_name == "Alice"
    assert store.get_user(session=session, user_id=user.id) == user
    assert store.get_user_by_username(session=session, username="alice_1") == user


def test_username_and_email_are_unique_ignoring_case(session: Session) -> None:
    make_user(session, "Carol")
    with refused(session, Conflict, match="username"):
        store.create_user(session=session, username="cAROL", email="other@example.org")
    with refused(session, Conflict, match="email"):
        store.create_user(session=session, username="carol2", email="CAROL@Example.org")
    dave = make_user(session, "dave")
    with refused(session, Conflict, match="username"):
        store.update_user(session=session, user_id=dave.id, username="CAROL")


@pytest.mark.parametrize(
    ("username", "email"),
    [
        ("has space", "a@example.org"),
        ("", "a@example.org"),
        ("x" * 51, "a@example.org"),
        ("semi;colon", "a@example.org"),
        ("nul\x00", "a@example.org"),
        ("okname", "no-at-sign"),
        ("okname", "two@@example.org"),
        ("okname", "spa ce@example.org"),
        ("okname", ""),
        ("okname", "a@" + "b" * 254),
    ],
)
def test_invalid_username_or_email_is_refused(session: Session, username: str, email: str) -> None:
    with refused(session, Invalid):
        store.create_user(session=session, username=username, email=email)


def test_update_user(session: Session) -> None:
    user = make_user(session, "erin", display_name="Erin")
    changed = store.update_user(
        session=session, user_id=user.id, email="erin@new.example", display_name="Erin E."
    )
    assert changed.email == "erin@new.example"
    assert changed.display_name == "Erin E."
    assert changed.username == "erin"
    cleared = store.update_user(session=session, user_id=user.id, display_name="")
    assert cleared.display_name is None
    with refused(session, Invalid):
        store.update_user(session=session, user_id=user.id)
    with refused(session, Invalid):
        store.update_user(session=session, user_id=user.id, username="not valid")
    with refused(session, NotFound):
        store.update_user(session=session, user_id=2**62, email="x@example.org")


def test_delete_user_removes_memberships_and_keeps_messages(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    direct, _ = store.get_or_create_direct(session=session, user_id=alice.id, other_user_id=bob.id)
    send(session, group, bob, "from bob")
    send(session, direct, bob, "hi alice")

    store.delete_user(session=session, user_id=bob.id)

    with refused(session, NotFound):
        store.get_user(session=session, user_id=bob.id)
    assert (
        _count(session, models.ConversationMember, models.ConversationMember.user_id == bob.id) == 0
    )
    assert _roles(session, group) == {alice.id: "owner"}
    bodies = [
        (m.sender_id, m.body)
        for m in store.list_messages(session=session, conversation_id=group.id).messages
    ]
    assert bodies == [(None, "from bob")]
    (in_direct,) = store.list_messages(session=session, conversation_id=direct.id).messages
    assert (in_direct.sender_id, in_direct.body) == (None, "hi alice")
    with refused(session, NotFound):
        store.delete_user(session=session, user_id=bob.id)


# --- groups ---------------------------------------------------------------------------


def test_group_creator_is_owner_and_others_members(session: Session) -> None:
    alice, bob, carol = make_user(session), make_user(session), make_user(session)
    group = store.create_group(
        session=session,
        creator_id=alice.id,
        title="  Lunch  ",
        member_ids=[bob.id, carol.id, bob.id, alice.id],
    )
    assert group.kind == "group"
    assert group.title == "Lunch"
    assert group.last_seq == 0
    assert group.direct_user_ids is None
    assert _roles(session, group) == {alice.id: "owner", bob.id: "member", carol.id: "member"}


def test_group_with_unknown_member_is_refused(session: Session) -> None:
    alice = make_user(session)
    with refused(session, NotFound):
        store.create_group(session=session, creator_id=alice.id, title="x", member_ids=[2**62])


@pytest.mark.parametrize("title", ["", "   ", "t" * 201])
def test_group_title_limits(session: Session, title: str) -> None:
    alice = make_user(session)
    with refused(session, Invalid):
        store.create_group(session=session, creator_id=alice.id, title=title)


# --- direct conversations -------------------------------------------------------------


def test_direct_conversation_is_get_or_create(session: Session) -> None:
    alice, bob = make_user(session), make_user(session)
    first, created = store.get_or_create_direct(
        session=session, user_id=alice.id, other_user_id=bob.id
    )
    assert created
    assert first.kind == "direct"
    assert first.direct_user_ids == (min(alice.id, bob.id), max(alice.id, bob.id))
    again, created_again = store.get_or_create_direct(
        session=session, user_id=bob.id, other_user_id=alice.id
    )
    assert not created_again
    assert again.id == first.id
    assert _roles(session, first) == {alice.id: "owner", bob.id: "owner"}


def test_direct_conversation_rules(session: Session) -> None:
    alice, bob, carol = make_user(session), make_user(session), make_user(session)
    direct, _ = store.get_or_create_direct(session=session, user_id=alice.id, other_user_id=bob.id)
    with refused(session, Invalid):
        store.add_member(
            session=session, conversation_id=direct.id, user_id=carol.id, actor_id=alice.id
        )
    with refused(session, Invalid):
        store.add_member(session=session, conversation_id=direct.id, user_id=carol.id)
    with refused(session, Invalid):
        store.get_or_create_direct(session=session, user_id=alice.id, other_user_id=alice.id)
    with refused(session, Invalid):
        store.rename_conversation(
            session=session, conversation_id=direct.id, title="ours", actor_id=alice.id
        )
    with refused(session, NotFound):
        store.get_or_create_direct(session=session, user_id=alice.id, other_user_id=2**62)
    assert _roles(session, direct) == {alice.id: "owner", bob.id: "owner"}


# --- rename and delete ----------------------------------------------------------------


def test_rename_is_for_owners(session: Session) -> None:
    alice, bob, mallory = make_user(session), make_user(session), make_user(session)
    group = make_group(session, alice, bob, title="old")
    with refused(session, Forbidden):
        store.rename_conversation(
            session=session, conversation_id=group.id, title="bob's", actor_id=bob.id
        )
    with refused(session, NotFound):
        store.rename_conversation(
            session=session, conversation_id=group.id, title="mine", actor_id=mallory.id
        )
    assert store.get_conversation(session=session, conversation_id=group.id).title == "old"
    renamed = store.rename_conversation(
        session=session, conversation_id=group.id, title="new", actor_id=alice.id
    )
    assert renamed.title == "new"
    assert store.get_conversation(session=session, conversation_id=group.id).title == "new"
    untitled = store.rename_conversation(
        session=session, conversation_id=group.id, title=None, actor_id=alice.id
    )
    assert untitled.title is None
    with refused(session, NotFound):
        store.rename_conversation(session=session, conversation_id=2**62, title="x")


def test_non_member_cannot_see_a_conversation(session: Session) -> None:
    alice, mallory = make_user(session), make_user(session)
    group = make_group(session, alice)
    assert store.get_conversation(session=session, conversation_id=group.id, actor_id=alice.id)
    with refused(session, NotFound):
        store.get_conversation(session=session, conversation_id=group.id, actor_id=mallory.id)
    with refused(session, NotFound):
        store.list_members(session=session, conversation_id=group.id, actor_id=mallory.id)


def test_purging_a_deleted_conversation_cascades(session: Session) -> None:
    """Delete hides; purge, after the retention window, removes the rows with
    their members and messages (tests/test_retention.py has the rest)."""
    alice, bob = make_user(session), make_user(session)
    group = make_group(session, alice, bob)
    other = make_group(session, alice, bob)
    for i in range(3):
        send(session, group, bob, f"m{i}")
    send(session, other, bob, "stays")

    with refused(session, Forbidden):
        store.delete_conversation(session=session, conversation_id=group.id, actor_id=bob.id)
    store.delete_conversation(session=session, conversation_id=group.id, actor_id=alice.id)

    with refused(session, NotFound):
        store.get_conversation(session=session, conversation_id=group.id)
    assert _count(session, models.Message, models.Message.conversation_id == group.id) == 3
    # As if the retention window had passed.
    session.execute(
        update(models.Conversation)
        .where(models.Conversation.id == group.id)
        .values(deleted_at=func.now() - timedelta(days=31))
    )
    purged = store.purge_conversations_batch(session=session, retention_days=30, limit=1000)
    assert group.id in purged
    assert other.id not in purged
    assert _count(session, models.Message, models.Message.conversation_id == group.id) == 0
    assert (
        _count(
            session,
            models.ConversationMember,
            models.ConversationMember.conversation_id == group.id,
        )
        == 0
    )
    # The users and their other conversation are untouched.
    assert store.get_user(session=session, user_id=bob.id) == bob
    assert [
        m.body for m in store.list_messages(session=session, conversation_id=other.id).messages
    ] == ["stays"]
    with refused(session, NotFound):
        store.delete_conversation(session=session, conversation_id=group.id)


# --- members --------------------------------------------------------------------------


def test_owner_adds_members_others_cannot(session: Session) -> None:
    alice, bob, carol, dave = (make_user(session) for _ in range(4))
    group = make_group(session, alice, bob)
    added = store.add_member(
        session=session, conversation_id=group.id, user_id=carol.id, actor_id=alice.id
    )
    assert (added.user_id, added.role, added.username) == (carol.id, "member", carol.username)
    with refused(session, Forbidden):
        store.add_member(
            session=session, conversation_id=group.id, user_id=dave.id, actor_id=bob.id
        )
    with refused(session, NotFound):
        store.add_member(
            session=session, conversation_id=group.id, user_id=bob.id, actor_id=dave.id
        )
    with refused(session, Conflict):
        store.add_member(
            session=session, conversation_id=group.id, user_id=carol.id, actor_id=alice.id
        )
    with refused(session, NotFound):
        store.add_member(
            session=session, conversation_id=group.id, user_id=2**62, actor_id=alice.id
        )
    with refused(session, NotFound):
        store.add_member(session=session, conversation_id=2**62, user_id=dave.id)
    with refused(session, Invalid):
        store.add_member(session=session, conversation_id=group.id, user_id=dave.id, role="admin")
    as_owner = store.add_member(
        session=session, conversation_id=group.id, user_id=dave.id, role="owner"
    )
    assert as_owner.role == "owner"
    assert _roles(session, group) == {
        alice.id: "owner",
        bob.id: "member",
        carol.id: "member",
        dave.id: "owner",
    }


def test_remove_and_leave(session: Session) -> None:
    alice, bob, carol, mallory = (make_user(session) for _ in range(4))
    group = make_group(session, alice, bob, carol)
    with refused(session, Forbidden):
        store.remove_member(
            session=session, conversation_id=group.id, user_id=carol.id, actor_id=bob.id
        )
    with refused(session, NotFound):
        store.remove_member(
            session=session, conversation_id=group.id, user_id=carol.id, actor_id=mallory.id
        )
    store.remove_member(
        session=session, conversation_id=group.id, user_id=carol.id, actor_id=alice.id
    )
    # A member may leave on their own.
    store.remove_member(session=session, conversation_id=group.id, user_id=bob.id, actor_id=bob.id)
    assert _roles(session, group) == {alice.id: "owner"}
    with refused(session, NotFound):
        store.remove_member(
            session=session, conversation_id=group.id, user_id=bob.id, actor_id=alice.id
        )
    # A removed member no longer sees the conversation.
    with refused(session, NotFound):
        store.get_conversation(session=session, conversation_id=group.id, actor_id=bob.id)


def _joined(session: Session, conversation: Conversation, user: User, days_ago: int) -> None:
    member = models.ConversationMember
    session.execute(
        update(member)
        .where(member.conversation_id == conversation.id, member.user_id == user.id)
        .values(joined_at=func.now() - timedelta(days=days_ago))
    )


def test_last_owner_leaving_promotes_the_longest_standing_member(session: Session) -> None:
    owner = make_user(session)
    # Created in this order, so user ids rise; join times say the opposite.
    newcomer, veteran, middle = make_user(session), make_user(session), make_user(session)
    group = make_group(session, owner, newcomer, veteran, middle)
    _joined(session, group, owner, 100)
    _joined(session, group, newcomer, 1)
    _joined(session, group, veteran, 50)
    _joined(session, group, middle, 10)

    store.remove_member(
        session=session, conversation_id=group.id, user_id=owner.id, actor_id=owner.id
    )

    assert _roles(session, group) == {
        newcomer.id: "member",
        veteran.id: "owner",
        middle.id: "member",
    }


def test_an_owner_leaving_with_another_owner_promotes_nobody(session: Session) -> None:
    alice, bob, carol = make_user(session), make_user(session), make_user(session)
    group = make_group(session, alice, bob, carol)
    store.set_member_role(session=session, conversation_id=group.id, user_id=carol.id, role="owner")
    store.remove_member(
        session=session, conversation_id=group.id, user_id=alice.id, actor_id=alice.id
    )
    assert _roles(session, group) == {bob.id: "member", carol.id: "owner"}


def test_set_member_role(session: Session) -> None:
    alice, bob, carol, mallory = (make_user(session) for _ in range(4))
    group = make_group(session, alice, bob, carol)
    with refused(session, Forbidden):
        store.set_member_role(
            session=session, conversation_id=group.id, user_id=bob.id, role="owner", actor_id=bob.id
        )
    with refused(session, NotFound):
        store.set_member_role(
            session=session,
            conversation_id=group.id,
            user_id=bob.id,
            role="owner",
            actor_id=mallory.id,
        )
    with refused(session, Invalid):
        store.set_member_role(
            session=session, conversation_id=group.id, user_id=bob.id, role="boss"
        )
    # Demoting the only owner would leave the conversation without one.
    with refused(session, Invalid):
        store.set_member_role(
            session=session,
            conversation_id=group.id,
            user_id=alice.id,
            role="member",
            actor_id=alice.id,
        )
    promoted = store.set_member_role(
        session=session, conversation_id=group.id, user_id=bob.id, role="owner", actor_id=alice.id
    )
    assert promoted.role == "owner"
    # With another owner, alice may step down; then bob is the last owner.
    store.set_member_role(
        session=session,
        conversation_id=group.id,
        user_id=alice.id,
        role="member",
        actor_id=alice.id,
    )
    assert _roles(session, group) == {alice.id: "member", bob.id: "owner", carol.id: "member"}
    with refused(session, Invalid):
        store.set_member_role(
            session=session,
            conversation_id=group.id,
            user_id=bob.id,
            role="member",
            actor_id=bob.id,
        )
    with refused(session, NotFound):
        store.set_member_role(
            session=session, conversation_id=group.id, user_id=mallory.id, role="owner"
        )
    assert _roles(session, group) == {alice.id: "member", bob.id: "owner", carol.id: "member"}


def test_list_members_keyset_pages(session: Session) -> None:
    owner = make_user(session)
    others = [make_user(session) for _ in range(11)]
    group = make_group(session, owner, *others)
    expected = sorted(u.id for u in [owner, *others])

    seen: list[int] = []
    after = 0
    while True:
        page = store.list_members(
            session=session,
            conversation_id=group.id,
            after_user_id=after,
            limit=5,
            actor_id=others[3].id,
        )
        assert len(page) <= 5
        if not page:
            break
        seen.extend(m.user_id for m in page)
        after = page[-1].user_id
    assert seen == expected
    with refused(session, Invalid):
        store.list_members(session=session, conversation_id=group.id, limit=0)
    with refused(session, NotFound):
        store.list_members(session=session, conversation_id=2**62)


def test_deleting_the_only_owner_hands_the_group_over(session: Session) -> None:
    """A deleted user leaves every conversation as if they had left it themselves,
    so a group whose only owner is deleted still has an owner."""
    owner, veteran, newcomer = make_user(session), make_user(session), make_user(session)
    group = make_group(session, owner, newcomer, veteran)
    shared = make_group(session, veteran, owner)
    _joined(session, group, newcomer, 1)
    _joined(session, group, veteran, 30)
    since = store.get_conversation(session=session, conversation_id=group.id).last_change_seq

    store.delete_user(session=session, user_id=owner.id)

    assert _roles(session, group) == {veteran.id: "owner", newcomer.id: "member"}
    assert _roles(session, shared) == {veteran.id: "owner"}
    # The remaining members' clients learn of it through the change log.
    changes = store.changes_since(
        session=session, conversation_id=group.id, since=since, actor_id=newcomer.id
    ).changes
    assert [(c.kind, c.user_id) for c in changes] == [
        ("member.removed", owner.id),
        ("member.role", veteran.id),
    ]
