"""Live updates: one change-log reader per process, fanned out to SSE clients.

The database is the source of truth. NOTIFY (sent by a trigger when changes
commit) only wakes the reader up; a periodic poll covers a missed wake-up.

Stream positions are the global `changes.id`. Ids are drawn before commit, so
they can become visible out of order: id 7 may commit after id 8, or never
(rolled back). The reader therefore delivers ids strictly in order and stops
at the first gap. A gap is skipped only once PostgreSQL proves that the
transaction that took the id has ended without committing it. Every writer
locks its conversation row (which gives it a transaction id) before drawing a
change id, and ids come in drawing order (the identity keeps CACHE 1). The
reader that first sees the gap takes a transaction id of its own
(store.xid_bound), above every id handed out so far, the missing writer's
included; once the oldest running transaction id (xmin) reaches that bound,
the writer is gone. (A snapshot's xmax is not such a bound: it is one past the
newest finished id, and a writer that took a later id and still runs is above
it. Judging by it skipped a running writer's change, about once per 200
restarts in tests/test_faults.py.) So a position N means "every change up to N
has been delivered", and a client resuming from N misses nothing and gets
nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from chatdb import store
from chatdb.config import Settings
from chatdb.db import psycopg_conninfo, retry_if_connection_lost, session_factory
from chatdb.store.changes import Change

log = logging.getLogger("chatdb.events")

CHANNEL = "chatdb_changes"
BATCH = 1000
# The least time between two reads of the change log (unless one read a full batch).
GATHER_SECONDS = 0.02

T = TypeVar("T")


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """run_in_threadpool that a cancelled caller still waits out. Cancelling
    an await of a worker thread does not stop the thread: stop() would return
    while the thread still holds a pooled connection, which it then hands back
    to a pool the engine's owner may have disposed (a leaked connection)."""
    work = asyncio.ensure_future(run_in_threadpool(func, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


@dataclass(eq=False)
class Subscriber:
    user_id: int
    queue: asyncio.Queue[Change | None]
    # Changes up to here come from the database (catch-up), later ones live.
    live_from: int
    # Changes at or below this were already seen by the client.
    seen_up_to: int
    overflowed: bool = False


@dataclass
class _Gap:
    """Ids first..last were missing from a read."""

    first: int
    last: int
    # A transaction id above the missing ids' writers' (store.xid_bound).
    xid_bound: int


@dataclass
class ChangeHub:
    engine: Engine
    settings: Settings
    watermark: int = 0
    _subscribers: dict[int, set[Subscriber]] = field(default_factory=lambda: defaultdict(set))
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _gap: _Gap | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="chatdb-listen"),
            asyncio.create_task(self._read_loop(), name="chatdb-changes"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                _end_stream(subscriber)

    async def _find_start(self) -> None:
        """Start after the newest id such that no lower id can still commit:
        wait until every transaction in flight now has ended. Streams wait for
        this (normally milliseconds); other routes do not."""

        def begin() -> tuple[int, int]:
            with session_factory(self.engine).begin() as session:
                latest = store.latest_change_id(session=session)
                # Taken after `latest`: above the id of any writer of a lower change.
                return latest, store.xid_bound(session=session)

        def oldest_running() -> int:
            with session_factory(self.engine).begin() as session:
                return store.oldest_running_xid(session=session)

        latest, bound = await _in_thread(begin)
        rounds = 0
        while await _in_thread(oldest_running) < bound:
            rounds += 1
            if rounds % 200 == 0:  # every ~10 s
                log.warning("live updates wait for a long-running transaction to end")
            await asyncio.sleep(0.05)
        self.watermark = latest
        self._ready.set()

    # --- reading the change log ----------------------------------------------------

    async def _listen(self) -> None:
        """Hold one LISTEN connection per process; reconnect when it drops."""
        conninfo = psycopg_conninfo(self.engine.url)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._wake.set()  # catch up on anything missed while away
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away; the poll covers meanwhile
                log.warning("change listener lost its connection: %s", exc)
                await asyncio.sleep(1.0)

    async def _read_loop(self) -> None:
        while not self._ready.is_set():
            try:
                await self._find_start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot read the change log yet: %s", exc)
                await asyncio.sleep(1.0)
        while True:
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for returns
            # normally when it is cancelled just as the wait ends, and stop()
            # then waited for this loop for ever (a rare hang at shutdown).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.sse_poll_seconds):
                    await self._wake.wait()
            self._wake.clear()
            try:
                more = await self.advance()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading changes failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if more:
                self._wake.set()
            else:
                # Let the wake-ups of a burst of commits gather, so that one
                # read serves many of them: a read per commit cost a third of
                # the API's sends per second. A lone change still goes at once.
                await asyncio.sleep(GATHER_SECONDS)

    async def advance(self) -> bool:
        """Deliver the next changes; returns whether a full batch was read."""
        async with self._lock:
            users = set(self._subscribers)
            # Reads, safe to repeat on a new connection if a pooled one died.
            changes, watermark, gap, members, full = await _in_thread(
                partial(
                    retry_if_connection_lost,
                    partial(self._read, self.watermark, self._gap, users),
                )
            )
            self.watermark, self._gap = watermark, gap
            for change in changes:
                self._dispatch(change, members)
        return full

    def _read(
        self, watermark: int, gap: _Gap | None, users: set[int]
    ) -> tuple[list[Change], int, _Gap | None, set[tuple[int, int]], bool]:
        with session_factory(self.engine).begin() as session:
            # One snapshot for the whole read: a skipped gap's writers ended
            # before it (xmin), so the changes read in it include any they
            # committed. (Rows read in a later snapshot would too; one is simpler
            # to reason about.)
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            oldest_running = store.oldest_running_xid(session=session)
            rows = store.changes_after(session=session, after_id=watermark, limit=BATCH)
            delivered: list[Change] = []
            expected = watermark + 1
            for change in rows:
                if change.id > expected:  # ids expected..change.id-1 are missing
                    if (
                        gap
                        and gap.first <= expected <= gap.last
                        and oldest_running >= gap.xid_bound
                    ):
                        # Their writers have ended without committing them (a
                        # committed one would be in `rows`, in order, before this).
                        expected, gap = min(gap.last, change.id - 1) + 1, None
                    elif gap is None or not gap.first <= expected <= gap.last:
                        gap = _Gap(expected, change.id - 1, store.xid_bound(session=session))
                if change.id != expected:
                    break
                delivered.append(change)
                expected = change.id + 1
            members = store.memberships(
                session=session,
                conversation_ids={c.conversation_id for c in delivered},
                user_ids=users,
            )
            # Messages only for changes someone here receives: a process with
            # no stream open for a conversation does not load its messages.
            delivered = store.attach_messages(
                session=session,
                changes=[c for c in delivered if _audience(c, members, users)],
            )
        return delivered, expected - 1, gap, members, len(rows) == BATCH

    def _dispatch(self, change: Change, members: set[tuple[int, int]]) -> None:
        for user_id, subscribers in self._subscribers.items():
            if not store.receives(change, user_id, members):
                continue
            for subscriber in subscribers:
                if change.id <= subscriber.seen_up_to or subscriber.overflowed:
                    continue
                try:
                    subscriber.queue.put_nowait(change)
                except asyncio.QueueFull:
                    # A slow client must not hold the others up: it is cut off
                    # and resumes from its last event id.
                    subscriber.overflowed = True
                    _end_stream(subscriber)

    # --- subscribers ------------------------------------------------------------------

    async def subscribe(self, user_id: int, last_event_id: int | None) -> Subscriber:
        await self._ready.wait()
        async with self._lock:  # never between a read and its dispatch
            subscriber = Subscriber(
                user_id=user_id,
                queue=asyncio.Queue(self.settings.sse_queue_size),
                live_from=self.watermark,
                seen_up_to=last_event_id if last_event_id is not None else self.watermark,
            )
            self._subscribers[user_id].add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(subscriber.user_id)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[subscriber.user_id]

    async def catch_up(self, subscriber: Subscriber) -> AsyncIterator[Change]:
        """What the subscriber missed before going live, from the database.
        Raises Gone if some of it has been pruned (the position is older than
        the change log's retention window)."""
        position = subscriber.seen_up_to
        while position < subscriber.live_from:
            changes = await run_in_threadpool(
                retry_if_connection_lost,
                partial(self._changes_for, subscriber.user_id, position, subscriber.live_from),
            )
            if not changes:
                break
            for change in changes:
                yield change
            position = changes[-1].id

    def _changes_for(self, user_id: int, after_id: int, up_to_id: int) -> list[Change]:
        with session_factory(self.engine).begin() as session:
            # One snapshot: a prune must not slip between the check and the read.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            return store.changes_for_user(
                session=session, user_id=user_id, after_id=after_id, up_to_id=up_to_id
            )


def _audience(change: Change, members: set[tuple[int, int]], users: set[int]) -> bool:
    return any(store.receives(change, user_id, members) for user_id in users)


def _end_stream(subscriber: Subscriber) -> None:
    """End a subscriber's stream after what it has already been sent.

    Everything still queued is dropped, not just enough to make room: the client
    then has an unbroken prefix of its changes and gets the rest by resuming
    from its last event id. Dropping only the oldest queued change would leave
    a hole that resuming cannot see."""
    while True:
        try:
            subscriber.queue.get_nowait()
        except asyncio.QueueEmpty:
            break
    subscriber.queue.put_nowait(None)
