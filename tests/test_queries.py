"""The module project's four queries: the last messages with sender names, the
inbox, messages per user per day, and inactive users.

Inside one transaction now() does not move, so the tests set the timestamps a
query orders or groups by (last activity, message times) with an UPDATE; the
store itself always writes now().
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from chatdb import models, store
from chatdb.errors import Invalid
from chatdb.store import reports
from chatdb.store.types import ActivityRow, Conversation, InboxCursor, InboxEntry, User
from tests.factories import make_group, make_user, send

T = TypeVar("T")


def _set_activity(session: Session, conversation: Conversation, at: datetime) -> None:
    session.execute(
        update(models.Conversation)
        .where(models.Conversation.id == conversation.id)
        .values(last_activity_at=at)
    )


def _set_sent_at(session: Session, conversation: Conversation, seq: int, at: datetime) -> None:
    session.execute(
        update(models.Message)
        .where(models.Message.conversation_id == conversation.id, models.Message.seq == seq)
        .values(created_at=at)
    )


# --- the last messages with sender names ----------------------------------------------


def test_last_messages_default_to_twenty_with_every_kind_of_sender(session: Session) -> None:
    named = make_user(session, display_name="Named Person")
    plain = make_user(session)
    leaving = make_user(session, display_name="Soon Gone")
    group = make_group(session, named, plain, leaving)
    senders = [named, plain, leaving]
    for i in range(26):
        send(session, group, senders[i % 3], f"message {i + 1}")
    store.delete_message(session=session, conversation_id=group.id, seq=25)
    store.delete_user(session=session, user_id=leaving.id)

    page = store.list_messages(session=session, conversation_id=group.id)

    assert [m.seq for m in page.messages] == list(range(7, 27))
    assert page.has_older
    assert not page.has_newer
    expected_names = {1: "Named Person", 2: plain.username, 0: "(deleted user)"}
    for message in page.messages:
        assert message.sender_name == expected_names[message.seq % 3]
        assert message.body == (None if message.seq == 25 else f"message {message.seq}")
    by_leaving = [m for m in page.messages if m.seq % 3 == 0]
    assert all(m.sender_id is None and m.sender_username is None for m in by_leaving)
    older = store.list_messages(session=session, conversation_id=group.id, before=7)
    assert [m.seq for m in older.messages] == list(range(1, 7))
    assert not older.has_older


# --- the inbox ------------------------------------------------------------------------

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _entries(session: Session, user: User) -> dict[int, InboxEntry]:
    page = store.inbox(session=session, user_id=user.id, limit=200)
    assert page.next_cursor is None
    return {e.conversation_id: e for e in page.entries}


def test_inbox_shows_newest_activity_first_with_last_message_and_unread(session: Session) -> None:
    alice = make_user(session, display_name="Alice A.")
    bob = make_user(session, display_name="Bob B.")
    carol = make_user(session)  # no display name: the username is her name
    mallory = make_user(session)

    project = make_group(session, alice, bob, title="Project")
    quiet = make_group(session, bob, alice, title="Quiet")
    with_bob, _ = store.get_or_create_direct(
        session=session, user_id=alice.id, other_user_id=bob.id
    )
    with_carol, _ = store.get_or_create_direct(
        session=session, user_id=carol.id, other_user_id=alice.id
    )
    secret = make_group(session, mallory, bob, title="Secret")

    for i in range(3):
        send(session, project, bob, f"project {i}")
    store.mark_read(session=session, conversation_id=project.id, user_id=alice.id, seq=1)
    send(session, with_bob, alice, "hi bob")
    send(session, with_carol, carol, "hi alice")
    send(session, with_carol, carol, "oops")
    store.delete_message(session=session, conversation_id=with_carol.id, seq=2)
    send(session, secret, mallory, "alice must not see this")

    _set_activity(session, quiet, T0 - timedelta(days=3))
    _set_activity(session, project, T0 - timedelta(hours=1))
    _set_activity(session, with_bob, T0 - timedelta(minutes=5))
    _set_activity(session, with_carol, T0 - timedelta(days=1))
    _set_activity(session, secret, T0)

    page = store.inbox(session=session, user_id=alice.id)
    assert page.next_cursor is None
    assert [e.conversation_id for e in page.entries] == [
        with_bob.id,
        project.id,
        with_carol.id,
        quiet.id,
    ]
    entries = {e.conversation_id: e for e in page.entries}

    p = entries[project.id]
    assert (p.kind, p.title, p.role) == ("group", "Project", "owner")
    assert (p.last_seq, p.last_read_seq, p.unread_count) == (3, 1, 2)
    assert (p.last_message_seq, p.last_message_body) == (3, "project 2")
    assert (p.last_message_sender_id, p.last_message_sender_name) == (bob.id, "Bob B.")
    assert p.last_activity_at == T0 - timedelta(hours=1)
    assert not p.last_message_deleted

    q = entries[quiet.id]
    assert (q.title, q.role, q.unread_count) == ("Quiet", "member", 0)
    assert q.last_message_seq is None
    assert q.last_message_body is None
    assert q.last_message_sender_name is None
    assert q.last_message_at is None

    b = entries[with_bob.id]
    assert (b.kind, b.title, b.unread_count) == ("direct", "Bob B.", 0)
    assert (b.last_message_body, b.last_message_sender_name) == ("hi bob", "Alice A.")

    c = entries[with_carol.id]
    assert (c.title, c.unread_count) == (carol.username, 2)
    assert c.last_message_seq == 2
    assert c.last_message_deleted
    assert c.last_message_body is None
    assert c.last_message_sender_name == carol.username

    # The other side of each direct conversation sees it titled with alice's name.
    assert _entries(session, bob)[with_bob.id].title == "Alice A."
    assert _entries(session, bob)[with_bob.id].unread_count == 1
    assert _entries(session, carol)[with_carol.id].title == "Alice A."
    # Mallory sees only her own conversation.
    assert list(_entries(session, mallory)) == [secret.id]


def test_inbox_after_the_other_user_is_deleted(session: Session) -> None:
    alice, bob = make_user(session), make_user(session, display_name="Bob")
    direct, _ = store.get_or_create_direct(session=session, user_id=alice.id, other_user_id=bob.id)
    send(session, direct, bob, "bye")
    store.delete_user(session=session, user_id=bob.id)
    (entry,) = store.inbox(session=session, user_id=alice.id).entries
    assert entry.conversation_id == direct.id
    assert entry.last_message_body == "bye"
    assert entry.last_message_sender_id is None
    assert entry.last_message_sender_name is None


@pytest.mark.parametrize("limit", [1, 3, 7, 40])
def test_inbox_pages_cover_every_conversation_once(session: Session, limit: int) -> None:
    me = make_user(session)
    friend = make_user(session)
    groups = [make_group(session, me, friend, title=f"g{i}") for i in range(23)]
    outsider = make_group(session, friend, title="not mine")
    # Activity times with ties: several conversations share one instant, and
    # the keyset (last_activity_at, id) must still split them cleanly.
    for i, group in enumerate(groups):
        _set_activity(session, group, T0 - timedelta(minutes=i // 4))
    _set_activity(session, outsider, T0 - timedelta(minutes=2))
    expected = sorted(groups, key=lambda g: (T0 - timedelta(minutes=groups.index(g) // 4), g.id))
    expected_ids = [g.id for g in reversed(expected)]

    seen: list[int] = []
    cursor: InboxCursor | None = None
    while True:
        page = store.inbox(session=session, user_id=me.id, before=cursor, limit=limit)
        assert len(page.entries) <= limit
        seen.extend(e.conversation_id for e in page.entries)
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.entries[-1].cursor
        cursor = page.next_cursor

    assert seen == expected_ids
    assert outsider.id not in seen


def test_inbox_limits(session: Session) -> None:
    me = make_user(session)
    with pytest.raises(Invalid):
        store.inbox(session=session, user_id=me.id, limit=0)
    with pytest.raises(Invalid):
        store.inbox(session=session, user_id=me.id, limit=201)
    assert store.inbox(session=session, user_id=me.id).entries == []


def _committed(engine: Engine, work: Callable[[Session], T]) -> T:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        return work(session)


def test_a_new_message_moves_its_conversation_to_the_top(fresh_engine: Engine) -> None:
    """With real commits (and real time passing), no timestamps set by hand."""
    alice, bob = _committed(fresh_engine, lambda s: [make_user(s), make_user(s)])
    groups = [
        _committed(fresh_engine, lambda s, i=i: make_group(s, alice, bob, title=f"g{i}"))
        for i in range(3)
    ]

    def order() -> list[int]:
        page = _committed(fresh_engine, lambda s: store.inbox(session=s, user_id=alice.id))
        return [e.conversation_id for e in page.entries]

    assert order() == [groups[2].id, groups[1].id, groups[0].id]
    _committed(fresh_engine, lambda s: send(s, groups[0], bob, "news"))
    assert order() == [groups[0].id, groups[2].id, groups[1].id]
    _committed(fresh_engine, lambda s: send(s, groups[1], alice, "more"))
    assert order() == [groups[1].id, groups[0].id, groups[2].id]


# --- messages per user per day --------------------------------------------------------


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _activity_fixture(session: Session) -> tuple[User, User, User]:
    """Messages at chosen UTC instants around New York's midnights."""
    alice, bob, gone = make_user(session), make_user(session), make_user(session)
    group = make_group(session, alice, bob, gone)
    plan = [
        (alice, "2024-01-15 03:00"),  # New York: Jan 14, 22:00
        (alice, "2024-01-15 12:00"),  # New York: Jan 15, 07:00
        (alice, "2024-01-16 04:59"),  # New York: Jan 15, 23:59
        (bob, "2024-01-16 05:00"),  # New York: Jan 16, 00:00
        (bob, "2024-01-15 23:59"),  # New York: Jan 15, 18:59
        (gone, "2024-01-15 10:00"),  # sender deleted later
        (alice, "2024-01-20 00:00"),  # outside every range below
    ]
    for seq, (sender, at) in enumerate(plan, start=1):
        send(session, group, sender, f"m{seq}")
        _set_sent_at(session, group, seq, _at(at))
    store.delete_user(session=session, user_id=gone.id)
    return alice, bob, gone


def _counts(rows: list[ActivityRow]) -> list[tuple[int | None, date, int]]:
    return [(r.user_id, r.day, r.message_count) for r in rows]


def test_activity_per_user_per_day_in_utc(session: Session) -> None:
    alice, bob, _ = _activity_fixture(session)
    rows = store.activity(session=session, start=date(2024, 1, 14), end=date(2024, 1, 16))
    jan15, jan16 = date(2024, 1, 15), date(2024, 1, 16)
    # Ordered by day, then busiest first, then user id (None, a deleted sender, last).
    assert _counts(rows) == [
        (alice.id, jan15, 2),
        (bob.id, jan15, 1),
        (None, jan15, 1),
        (alice.id, jan16, 1),
        (bob.id, jan16, 1),
    ]
    assert {r.user_id: r.username for r in rows} == {
        alice.id: alice.username,
        bob.id: bob.username,
        None: None,
    }


def test_activity_days_follow_the_time_zone(session: Session) -> None:
    alice, bob, _ = _activity_fixture(session)
    rows = store.activity(
        session=session, start=date(2024, 1, 14), end=date(2024, 1, 16), tz="America/New_York"
    )
    jan14, jan15, jan16 = date(2024, 1, 14), date(2024, 1, 15), date(2024, 1, 16)
    assert _counts(rows) == [
        (alice.id, jan14, 1),
        (alice.id, jan15, 2),
        (bob.id, jan15, 1),
        (None, jan15, 1),
        (bob.id, jan16, 1),
    ]
    # One day only: the range ends at New York's midnight, not UTC's.
    one_day = store.activity(
        session=session, start=jan15, end=jan15, tz="America/New_York", user_id=alice.id
    )
    assert _counts(one_day) == [(alice.id, jan15, 2)]
    utc_day = store.activity(session=session, start=jan15, end=jan15, user_id=alice.id)
    assert _counts(utc_day) == [(alice.id, jan15, 2)]
    utc_16 = store.activity(session=session, start=jan16, end=jan16, user_id=alice.id)
    ny_16 = store.activity(
        session=session, start=jan16, end=jan16, tz="America/New_York", user_id=alice.id
    )
    assert _counts(utc_16) == [(alice.id, jan16, 1)]
    assert _counts(ny_16) == []


def test_activity_on_a_daylight_saving_day(session: Session) -> None:
    """New York's 2024-03-10 has 23 hours: 05:00Z to 04:00Z the next day."""
    alice = make_user(session)
    group = make_group(session, alice)
    instants = ["2024-03-10 04:59", "2024-03-10 05:00", "2024-03-11 03:59", "2024-03-11 04:00"]
    for seq, at in enumerate(instants, start=1):
        send(session, group, alice, f"m{seq}")
        _set_sent_at(session, group, seq, _at(at))
    rows = store.activity(
        session=session,
        start=date(2024, 3, 9),
        end=date(2024, 3, 11),
        tz="America/New_York",
        user_id=alice.id,
    )
    assert _counts(rows) == [
        (alice.id, date(2024, 3, 9), 1),
        (alice.id, date(2024, 3, 10), 2),
        (alice.id, date(2024, 3, 11), 1),
    ]


@pytest.mark.parametrize(
    "tz", ["Mars/Olympus_Mons", "", "../../etc/passwd", "UTC; DROP TABLE messages"]
)
def test_activity_refuses_an_unknown_time_zone(session: Session, tz: str) -> None:
    with pytest.raises(Invalid):
        store.activity(session=session, start=date(2024, 1, 1), end=date(2024, 1, 2), tz=tz)


@pytest.mark.parametrize(
    "tz", ["America/Coyhaique", "localtime", "posixrules", "posix/UTC", "right/UTC"]
)
def test_activity_zone_known_to_python_works_or_is_refused(session: Session, tz: str) -> None:
    """Python and PostgreSQL may know different zone names (their tz databases
    differ in age); a name only one of them knows is a clear Invalid, never a
    database error."""
    alice = make_user(session)
    group = make_group(session, alice)
    send(session, group, alice, "one")
    _set_sent_at(session, group, 1, _at("2024-01-01 12:00"))
    outcome: list[ActivityRow] | Invalid
    try:
        with session.begin_nested():
            outcome = store.activity(
                session=session, start=date(2024, 1, 1), end=date(2024, 1, 1), tz=tz
            )
    except Invalid as exc:
        outcome = exc
    if isinstance(outcome, Invalid):
        assert tz in str(outcome)
    else:
        assert [(r.user_id, r.message_count) for r in outcome] == [(alice.id, 1)]


def test_activity_refuses_a_bad_range(session: Session) -> None:
    with pytest.raises(Invalid, match="before"):
        store.activity(session=session, start=date(2024, 1, 2), end=date(2024, 1, 1))
    # At most 366 days, both ends included.
    with pytest.raises(Invalid, match="366"):
        store.activity(session=session, start=date(2023, 1, 1), end=date(2024, 1, 2))
    assert store.activity(session=session, start=date(2023, 1, 1), end=date(2024, 1, 1)) == []
    # One day is a valid range, even with nothing in it.
    assert store.activity(session=session, start=date(2024, 1, 1), end=date(2024, 1, 1)) == []


# --- inactive users -------------------------------------------------------------------

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_inactive_users(session: Session) -> None:
    never = make_user(session)
    recent = make_user(session)
    long_ago = make_user(session)
    came_back = make_user(session)
    deleted_only = make_user(session)
    group = make_group(session, never, recent, long_ago, came_back, deleted_only)
    plan = [
        (recent, NOW - timedelta(days=1)),
        (long_ago, NOW - timedelta(days=60)),
        (long_ago, NOW - timedelta(days=45)),
        (came_back, NOW - timedelta(days=90)),
        (came_back, NOW - timedelta(days=29, hours=23)),
        (deleted_only, NOW - timedelta(days=2)),
    ]
    for seq, (sender, at) in enumerate(plan, start=1):
        send(session, group, sender, f"m{seq}")
        _set_sent_at(session, group, seq, at)
    # A deleted message was still sent: its author was active.
    store.delete_message(session=session, conversation_id=group.id, seq=6)

    page = store.inactive_users(session=session, days=30, after_id=never.id - 1, now=NOW)
    assert page.next_after_id is None
    assert [(u.id, u.last_message_at) for u in page.users] == [
        (never.id, None),
        (long_ago.id, NOW - timedelta(days=45)),
    ]
    assert page.users[0].username == never.username

    # A longer window makes long_ago active too; a shorter one adds the others.
    wide = store.inactive_users(session=session, days=50, after_id=never.id - 1, now=NOW)
    assert [u.id for u in wide.users] == [never.id]
    narrow = store.inactive_users(session=session, days=1, after_id=never.id - 1, now=NOW)
    assert [u.id for u in narrow.users] == [never.id, long_ago.id, came_back.id, deleted_only.id]


def test_inactive_users_pages(session: Session) -> None:
    users = [make_user(session) for _ in range(11)]
    active = users[4]
    group = make_group(session, *users)
    send(session, group, active, "still here")
    expected = [u.id for u in users if u is not active]

    seen: list[int] = []
    after = users[0].id - 1
    while True:
        page = store.inactive_users(session=session, days=7, after_id=after, limit=3)
        assert len(page.users) <= 3
        seen.extend(u.id for u in page.users)
        if page.next_after_id is None:
            break
        assert page.next_after_id == page.users[-1].id
        after = page.next_after_id
    assert seen == expected


def test_inactive_users_limits(session: Session) -> None:
    for days in (0, -1, 36_501):
        with pytest.raises(Invalid):
            store.inactive_users(session=session, days=days)
    with pytest.raises(Invalid):
        store.inactive_users(session=session, limit=0)


@pytest.mark.parametrize("walk_from", [0, 10_000])
def test_inbox_both_ways_give_the_same_pages(
    session: Session, monkeypatch: pytest.MonkeyPatch, walk_from: int
) -> None:
    """A member of many conversations gets the inbox by walking conversations
    newest first, others by their memberships: the pages are the same."""
    me, other = make_user(session), make_user(session)
    mine = [make_group(session, me, other, title=f"g{i}") for i in range(7)]
    make_group(session, other, title="not mine")
    for group in mine[::2]:
        send(session, group, other, "hi")
    expected = store.inbox(session=session, user_id=me.id, limit=200).entries
    assert len(expected) == 7
    monkeypatch.setattr(reports, "INBOX_WALK_FROM", walk_from)
    seen = []
    cursor = None
    while True:
        page = store.inbox(session=session, user_id=me.id, before=cursor, limit=3)
        seen += page.entries
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected
