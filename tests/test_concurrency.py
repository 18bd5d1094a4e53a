"""Concurrency claims, tested with real parallel connections on a fresh database.

Each thread has its own Session and commits its own transactions, as API
requests do. Where a race needs a particular interleaving, a "gate" connection
holds the conversation row's lock until every thread is queued behind it, so the
interleaving happens on every run instead of by luck.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from chatdb import models, store
from chatdb.errors import Forbidden, NotFound
from chatdb.store.types import Conversation, SendResult, User
from tests.factories import make_group, make_user

T = TypeVar("T")


def _committed(engine: Engine, work: Callable[[Session], T]) -> T:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        return work(session)


def _run_parallel(count: int, work: Callable[[int], T]) -> list[T]:
    """Run work(0..count-1) in `count` threads at once; re-raise the first error."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(work, i) for i in range(count)]
        return [f.result() for f in futures]


def _lock_waiters(engine: Engine) -> int:
    with engine.connect() as connection:
        waiting: int = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
        return waiting


@contextmanager
def _gate(engine: Engine, conversation_id: int) -> Iterator[Callable[[list[Future[T]], int], None]]:
    """Hold the conversation row's lock; `release(futures, n)` lets go once n
    threads wait for a lock (or every thread has finished: then the code under
    test did not wait, and the test's assertions judge the outcome)."""
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(
            select(models.Conversation.id)
            .where(models.Conversation.id == conversation_id)
            .with_for_update()
        )

        def release(futures: list[Future[T]], waiters: int) -> None:
            while _lock_waiters(engine) < waiters and not all(f.done() for f in futures):
                time.sleep(0.005)
            transaction.commit()

        yield release
        if transaction.is_active:
            transaction.rollback()


def _users(engine: Engine, count: int) -> list[User]:
    return _committed(engine, lambda s: [make_user(s) for _ in range(count)])


def _group(engine: Engine, owner: User, *members: User) -> Conversation:
    return _committed(engine, lambda s: make_group(s, owner, *members))


def _message_seqs(engine: Engine, conversation_id: int) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(models.Message.seq)
                .where(models.Message.conversation_id == conversation_id)
                .order_by(models.Message.seq)
            ).scalars()
        )


def _last_seq(engine: Engine, conversation_id: int) -> int:
    return _committed(
        engine, lambda s: store.get_conversation(session=s, conversation_id=conversation_id)
    ).last_seq


# --- sends ----------------------------------------------------------------------------

WRITERS = 8
SENDS_PER_WRITER = 50


def _write(engine: Engine, conversation_id: int, senders: list[User], writer: int) -> list[int]:
    seqs = []
    for n in range(SENDS_PER_WRITER):
        result = _committed(
            engine,
            lambda s, n=n: store.send_message(
                session=s,
                conversation_id=conversation_id,
                sender_id=senders[writer].id,
                body=f"writer {writer} message {n}",
            ),
        )
        seqs.append(result.message.seq)
    return seqs


def test_parallel_senders_get_gapless_unique_seqs(fresh_engine: Engine) -> None:
    senders = _users(fresh_engine, WRITERS)
    group = _group(fresh_engine, senders[0], *senders[1:])
    total = WRITERS * SENDS_PER_WRITER

    returned = _run_parallel(WRITERS, lambda w: _write(fresh_engine, group.id, senders, w))

    assert sorted(seq for seqs in returned for seq in seqs) == list(range(1, total + 1))
    # Each writer's own messages come in the order it sent them.
    assert all(seqs == sorted(seqs) for seqs in returned)
    assert _message_seqs(fresh_engine, group.id) == list(range(1, total + 1))
    assert _last_seq(fresh_engine, group.id) == total


def test_reader_paging_forward_during_sends_sees_each_message_once(fresh_engine: Engine) -> None:
    senders = _users(fresh_engine, WRITERS)
    group = _group(fresh_engine, senders[0], *senders[1:])
    total = WRITERS * SENDS_PER_WRITER
    writers_done = threading.Event()
    rng = random.Random(1234)

    def read() -> list[tuple[int, str | None]]:
        seen: list[tuple[int, str | None]] = []
        after = 0
        while True:
            # Read "are the writers done?" before the page, so a page that
            # ends the loop was read after the last send committed.
            finished = writers_done.is_set()
            page = _committed(
                fresh_engine,
                lambda s, after=after: store.list_messages(
                    session=s,
                    conversation_id=group.id,
                    after=after,
                    limit=rng.randint(1, 30),
                    actor_id=senders[0].id,
                ),
            )
            seen.extend((m.seq, m.body) for m in page.messages)
            if page.messages:
                after = page.messages[-1].seq
            if finished and not page.has_newer:
                return seen

    with ThreadPoolExecutor(max_workers=WRITERS + 1) as pool:
        reader = pool.submit(read)
        writers = [pool.submit(_write, fresh_engine, group.id, senders, w) for w in range(WRITERS)]
        try:
            for writer in writers:
                writer.result()
        finally:
            # Also when a writer failed: the reader then stops once caught up.
            writers_done.set()
        seen = reader.result()

    assert [seq for seq, _ in seen] == list(range(1, total + 1))
    # Every message arrived with its text: nothing half-written was visible.
    assert all(body is not None and body.startswith("writer ") for _, body in seen)


def test_concurrent_duplicate_sends_collapse_to_one_message(fresh_engine: Engine) -> None:
    (alice,) = _users(fresh_engine, 1)
    group = _group(fresh_engine, alice)
    threads = 8
    results: list[list[SendResult]] = []

    for round_ in range(5):
        barrier = threading.Barrier(threads)

        def send(_: int, round_: int = round_, barrier: threading.Barrier = barrier) -> SendResult:
            with Session(fresh_engine) as session, session.begin():
                session.connection()  # connected before the start line
                barrier.wait()
                return store.send_message(
                    session=session,
                    conversation_id=group.id,
                    sender_id=alice.id,
                    body=f"once {round_}",
                    idempotency_key=f"key-{round_}",
                )

        results.append(_run_parallel(threads, send))

    for round_, outcome in enumerate(results):
        assert sum(r.created for r in outcome) == 1
        assert len({r.message.seq for r in outcome}) == 1
        assert {r.message.body for r in outcome} == {f"once {round_}"}
    assert _message_seqs(fresh_engine, group.id) == [1, 2, 3, 4, 5]
    assert _last_seq(fresh_engine, group.id) == 5


def test_duplicate_sends_queued_behind_a_lock_collapse_to_one(fresh_engine: Engine) -> None:
    """The same race, forced: all duplicates are already in flight when the
    conversation becomes free, so each must see the winner's row afterwards."""
    (alice,) = _users(fresh_engine, 1)
    group = _group(fresh_engine, alice)
    threads = 8

    def send(_: int) -> SendResult:
        return _committed(
            fresh_engine,
            lambda s: store.send_message(
                session=s,
                conversation_id=group.id,
                sender_id=alice.id,
                body="once",
                idempotency_key="the-key",
            ),
        )

    with _gate(fresh_engine, group.id) as release, ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(send, i) for i in range(threads)]
        release(futures, threads)
        outcome = [f.result() for f in futures]

    assert sum(r.created for r in outcome) == 1
    assert {r.message.seq for r in outcome} == {1}
    assert _message_seqs(fresh_engine, group.id) == [1]
    assert _last_seq(fresh_engine, group.id) == 1


# --- direct conversations -------------------------------------------------------------


def test_concurrent_get_or_create_direct_makes_one_conversation(fresh_engine: Engine) -> None:
    threads = 8
    for _ in range(5):
        alice, bob = _users(fresh_engine, 2)
        barrier = threading.Barrier(threads)

        def start(
            i: int, alice: User = alice, bob: User = bob, barrier: threading.Barrier = barrier
        ) -> tuple[Conversation, bool]:
            # Half the callers name the pair one way round, half the other.
            me, other = (alice, bob) if i % 2 else (bob, alice)
            with Session(fresh_engine, expire_on_commit=False) as session, session.begin():
                session.connection()
                barrier.wait()
                return store.get_or_create_direct(
                    session=session, user_id=me.id, other_user_id=other.id
                )

        outcome = _run_parallel(threads, start)

        assert len({conversation.id for conversation, _ in outcome}) == 1
        assert sum(created for _, created in outcome) == 1
        conversation = outcome[0][0]
        members = _committed(
            fresh_engine,
            lambda s, c=conversation: store.list_members(session=s, conversation_id=c.id),
        )
        assert sorted(m.user_id for m in members) == sorted([alice.id, bob.id])
        assert {m.role for m in members} == {"owner"}
        with fresh_engine.connect() as connection:
            directs = connection.execute(
                select(func.count())
                .select_from(models.Conversation)
                .where(
                    models.Conversation.kind == "direct",
                    models.Conversation.direct_user_low_id == min(alice.id, bob.id),
                )
            ).scalar_one()
        assert directs == 1


# --- owners removing each other -------------------------------------------------------


def _owners(engine: Engine, conversation_id: int) -> list[int]:
    members = _committed(
        engine, lambda s: store.list_members(session=s, conversation_id=conversation_id)
    )
    return [m.user_id for m in members if m.role == "owner"]


def _try_remove(engine: Engine, conversation_id: int, user_id: int, actor_id: int) -> str:
    try:
        _committed(
            engine,
            lambda s: store.remove_member(
                session=s, conversation_id=conversation_id, user_id=user_id, actor_id=actor_id
            ),
        )
    except (NotFound, Forbidden) as exc:
        return type(exc).__name__
    return "removed"


@pytest.mark.parametrize("with_plain_member", [False, True])
def test_owners_removing_each_other_leave_one_owner(
    fresh_engine: Engine, with_plain_member: bool
) -> None:
    """Both removals are in flight at once (both passed the first permission
    check); the one that gets the lock second must find its actor gone."""
    alice, bob, carol = _users(fresh_engine, 3)
    others = [bob, carol] if with_plain_member else [bob]
    group = _group(fresh_engine, alice, *others)
    _committed(
        fresh_engine,
        lambda s: store.set_member_role(
            session=s, conversation_id=group.id, user_id=bob.id, role="owner"
        ),
    )

    with _gate(fresh_engine, group.id) as release, ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(_try_remove, fresh_engine, group.id, bob.id, alice.id),
            pool.submit(_try_remove, fresh_engine, group.id, alice.id, bob.id),
        ]
        release(futures, 2)
        outcomes = [f.result() for f in futures]

    assert sorted(outcomes) in (["NotFound", "removed"], ["Forbidden", "removed"])
    owners = _owners(fresh_engine, group.id)
    assert len(owners) == 1
    assert owners[0] in (alice.id, bob.id)
    members = _committed(
        fresh_engine, lambda s: store.list_members(session=s, conversation_id=group.id)
    )
    assert len(members) == (2 if with_plain_member else 1)


def test_owners_removing_each_other_unforced(fresh_engine: Engine) -> None:
    """The same race without a gate, many times: whatever the timing, one owner stays."""
    for _ in range(10):
        alice, bob = _users(fresh_engine, 2)
        group = _group(fresh_engine, alice, bob)
        _committed(
            fresh_engine,
            lambda s, g=group, b=bob: store.set_member_role(
                session=s, conversation_id=g.id, user_id=b.id, role="owner"
            ),
        )
        barrier = threading.Barrier(2)
        pairs = [(bob.id, alice.id), (alice.id, bob.id)]

        def remove(
            i: int,
            g: Conversation = group,
            pairs: list[tuple[int, int]] = pairs,
            barrier: threading.Barrier = barrier,
        ) -> str:
            barrier.wait()
            return _try_remove(fresh_engine, g.id, *pairs[i])

        outcomes = _run_parallel(2, remove)
        assert outcomes.count("removed") == 1
        assert len(_owners(fresh_engine, group.id)) == 1


def test_owners_leaving_together_hand_over_to_a_member(fresh_engine: Engine) -> None:
    """Two owners leave at once: the remaining member is promoted, once."""
    alice, bob, carol = _users(fresh_engine, 3)
    group = _group(fresh_engine, alice, bob, carol)
    _committed(
        fresh_engine,
        lambda s: store.set_member_role(
            session=s, conversation_id=group.id, user_id=bob.id, role="owner"
        ),
    )

    with _gate(fresh_engine, group.id) as release, ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(_try_remove, fresh_engine, group.id, user.id, user.id)
            for user in (alice, bob)
        ]
        release(futures, 2)
        outcomes = [f.result() for f in futures]

    assert outcomes == ["removed", "removed"]
    assert _owners(fresh_engine, group.id) == [carol.id]
