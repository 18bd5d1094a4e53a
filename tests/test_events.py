"""Live updates over Server-Sent Events, through a real server and real PostgreSQL.

Starlette's TestClient does not stream well, so these tests run the app under
uvicorn in a background thread and read `/v1/events` with an HTTP client, the
way a browser would. Waits are bounded ("until N events arrive or 20 s pass,
then assert"), never assertions about speed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import psycopg
import pytest
import uvicorn
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from chatdb import store
from chatdb.api.app import create_app
from chatdb.api.events import ChangeHub
from chatdb.config import Settings
from chatdb.db import psycopg_conninfo, session_factory, transaction
from tests.api_support import ADMIN_KEY, Account, Api, api_settings

WAIT = 20.0  # the longest any bounded wait here lasts
NO_ID = -1  # an event without an id
QUIET = 1.5  # how long "nothing arrives" is watched for (a safety check, not a speed claim)


# --- a real server in a thread -------------------------------------------------------


class LiveServer:
    """The app under uvicorn on a free local port, in a background thread."""

    def __init__(
        self, engine: Engine, settings: Settings | None = None, send_buffer: int | None = None
    ) -> None:
        self.app = create_app(engine, settings or api_settings())
        # Bound here and handed to uvicorn: the port is ours before the server starts.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if send_buffer is not None:
            # Accepted connections inherit it, and a fixed size stops the kernel
            # from growing the buffer to hold megabytes for a client that never reads.
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started and self._thread.is_alive():
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        assert self.server.started, "the server thread ended during startup"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the server did not stop"
        self._socket.close()


@contextmanager
def running(
    engine: Engine, settings: Settings | None = None, send_buffer: int | None = None
) -> Iterator[LiveServer]:
    server = LiveServer(engine, settings, send_buffer).start()
    try:
        yield server
    finally:
        server.stop()


# --- reading the stream ----------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        kind: str = self.data["kind"]
        return kind

    @property
    def conversation_id(self) -> int:
        conversation_id: int = self.data["conversation_id"]
        return conversation_id

    @property
    def change_seq(self) -> int:
        change_seq: int = self.data["change_seq"]
        return change_seq

    @property
    def body(self) -> str | None:
        message = self.data["message"]
        return None if message is None else message["body"]


def sse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the lines of a text/event-stream (comments and data-less
    blocks, such as `retry:` and keep-alives, dispatch nothing)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data" and "data" in fields:
                value = fields["data"] + "\n" + value
            fields[name] = value
            continue
        if "data" in fields:
            # `reset` carries no id: it takes the position away.
            yield Event(
                int(fields.get("id", NO_ID)),
                fields.get("event", "message"),
                json.loads(fields["data"]),
            )
        fields = {}


class Listener:
    """One `/v1/events` connection, read line by line in a background thread."""

    def __init__(self, url: str, token: str, last_event_id: int | str | None = None) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = str(last_event_id)
        self.url = f"{url}/v1/events"
        self.events: list[Event] = []
        self.status: int | None = None
        self.ended = False  # the server ended the stream
        self.done = False
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        with self._changed:
            self._changed.wait_for(lambda: self.status is not None or self.done, WAIT)
        self._raise()
        assert self.status == 200, f"/v1/events answered {self.status}"

    def _run(self) -> None:
        try:
            with (
                httpx2.Client(timeout=httpx2.Timeout(WAIT)) as client,
                client.stream("GET", self.url, headers=self.headers) as response,
            ):
                with self._changed:
                    self.status = response.status_code
                    self._changed.notify_all()
                if response.status_code != 200:
                    return
                for event in sse_events(self._lines(response.iter_lines())):
                    with self._changed:
                        self.events.append(event)
                        self._changed.notify_all()
                if not self._stop.is_set():
                    self.ended = True
        except Exception as exc:
            if not self._stop.is_set():
                self.error = exc
        finally:
            with self._changed:
                self.done = True
                self._changed.notify_all()

    def _lines(self, lines: Iterable[str]) -> Iterator[str]:
        # The server sends a keep-alive every second, so a stop is seen promptly.
        for line in lines:
            if self._stop.is_set():
                return
            yield line

    def _raise(self) -> None:
        if self.error is not None:
            raise AssertionError(f"reading the stream failed: {self.error!r}") from self.error

    def wait(self, done: Callable[[list[Event]], bool], timeout: float = WAIT) -> list[Event]:
        """The events once `done(events)` holds, the stream ends, or `timeout` passes."""
        with self._changed:
            self._changed.wait_for(lambda: done(self.events) or self.done, timeout)
            events = list(self.events)
        self._raise()
        return events

    def wait_count(self, count: int) -> list[Event]:
        return self.wait(lambda events: len(events) >= count)

    def wait_body(self, body: str) -> list[Event]:
        return self.wait(lambda events: any(e.body == body for e in events))

    def quiet(self, seconds: float = QUIET) -> list[Event]:
        """Whatever arrives in the next `seconds` (expected: nothing)."""
        before = len(self.events)
        time.sleep(seconds)
        self._raise()
        with self._changed:
            return self.events[before:]

    @property
    def last_id(self) -> int:
        return self.events[-1].id

    def stop(self) -> list[Event]:
        """Disconnect, as a client that goes away does."""
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the stream reader did not stop"
        self._raise()
        return list(self.events)


class StalledClient:
    """A client that opens the stream and then reads nothing: a small receive
    buffer, so the server's writes to it block soon."""

    def __init__(self, port: int, token: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        self.connection.sock = sock
        try:
            sock.connect(("127.0.0.1", port))
            self.connection.request(
                "GET", "/v1/events", headers={"Authorization": f"Bearer {token}"}
            )
            self.response = self.connection.getresponse()  # the status line and headers only
        except BaseException:
            self.connection.close()
            raise
        assert self.response.status == 200

    def read_to_end(self) -> list[Event]:
        """Everything the server sent, up to the end of the stream; fails if the
        stream has not ended within WAIT seconds (keep-alives keep it open)."""
        body = b""
        deadline = time.monotonic() + WAIT
        while chunk := self.response.read(65536):
            body += chunk
            assert time.monotonic() < deadline, "the server never ended the stalled stream"
        return list(sse_events(body.decode().splitlines()))

    def close(self) -> None:
        self.response.close()
        self.connection.close()


# --- helpers -------------------------------------------------------------------------------


def change_ids(engine: Engine, conversation_ids: Iterable[int], after_id: int) -> list[int]:
    """The change log itself: ids of the conversations' changes after `after_id`."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT id FROM changes WHERE conversation_id = ANY(:ids) AND id > :after "
                "ORDER BY id"
            ),
            {"ids": list(conversation_ids), "after": after_id},
        )
        return [row.id for row in rows]


def assert_consecutive_per_conversation(
    events: list[Event], seen: dict[int, int] | None = None
) -> dict[int, int]:
    """Per conversation, change_seq runs on from the last one seen by one, with no
    duplicate and no hole; stream ids only go up. Returns the last change_seq seen."""
    last = dict(seen or {})
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), "stream ids repeat or go backwards"
    for event in events:
        expected = last.get(event.conversation_id, event.change_seq - 1) + 1
        assert event.change_seq == expected, (
            f"conversation {event.conversation_id}: change_seq {event.change_seq} "
            f"after {expected - 1}"
        )
        last[event.conversation_id] = event.change_seq
    return last


def send(engine: Engine, conversation_id: int, sender_id: int, body: str) -> int:
    """Send through the store in a transaction of its own; returns the seq."""
    with transaction(engine) as session:
        result = store.send_message(
            session=session, conversation_id=conversation_id, sender_id=sender_id, body=body
        )
    return result.message.seq


def listening_connections(engine: Engine) -> int:
    with engine.connect() as connection:
        count: int = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
            )
        ).scalar_one()
    return count


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def server(fresh_engine: Engine) -> Iterator[LiveServer]:
    with running(fresh_engine) as live:
        yield live


@pytest.fixture
def web(server: LiveServer) -> Iterator[Api]:
    """Shortcuts (accounts, groups, sends) over real HTTP to the live server."""
    with httpx2.Client(base_url=server.url, timeout=WAIT) as client:
        yield Api(client)  # type: ignore[arg-type]  # the same interface as TestClient


@pytest.fixture
def listen(server: LiveServer) -> Iterator[Callable[..., Listener]]:
    """Open streams on the live server; all are closed before the server stops."""
    opened: list[Listener] = []

    def open_stream(who: Account, last_event_id: int | str | None = None) -> Listener:
        listener = Listener(server.url, who.token, last_event_id)
        opened.append(listener)
        return listener

    yield open_stream
    for listener in opened:
        listener.stop()


# --- what a member sees -----------------------------------------------------------------


def test_member_receives_every_kind_of_change_live(
    web: Api, listen: Callable[..., Listener]
) -> None:
    alice, bob, carol = web.account("alice"), web.account("bob"), web.account("carol")
    stream = listen(bob)
    c = web.client
    conversation = web.group(alice, bob, title="Lunch")
    seq = web.send(alice, conversation, "noodles?")["seq"]
    base = f"/v1/conversations/{conversation}"
    steps = [
        c.patch(f"{base}/messages/{seq}", json={"body": "noodles at 12?"}, headers=alice.auth),
        c.delete(f"{base}/messages/{seq}", headers=alice.auth),
        c.post(f"{base}/messages/{seq}/restore", headers=alice.auth),
        c.post(f"{base}/members", json={"user_id": carol.id}, headers=alice.auth),
        c.post(f"{base}/read", json={"seq": seq}, headers=bob.auth),
        c.patch(f"{base}/members/{carol.id}", json={"role": "owner"}, headers=alice.auth),
        c.delete(f"{base}/members/{carol.id}", headers=alice.auth),
        c.patch(base, json={"title": "Dinner"}, headers=alice.auth),
        c.delete(base, headers=alice.auth),
    ]
    for response in steps:
        assert response.status_code in (200, 201, 204), response.text

    events = stream.wait(lambda es: any(e.kind == "conversation.deleted" for e in es))
    assert [(e.kind, e.data["user_id"]) for e in events] == [
        ("member.added", alice.id),
        ("member.added", bob.id),
        ("message.created", None),
        ("message.edited", None),
        ("message.deleted", None),
        ("message.restored", None),
        ("member.added", carol.id),
        ("read", bob.id),
        ("member.role", carol.id),
        ("member.removed", carol.id),
        ("conversation.renamed", None),
        ("conversation.deleted", bob.id),  # addressed to bob; alice's is not his
    ]
    assert all(e.type == "change" and e.conversation_id == conversation for e in events)
    assert [e.data["message_seq"] for e in events[2:6]] == [seq] * 4
    assert events[7].data["message_seq"] == seq  # the read marker's new position
    assert {e.data["actor_id"] for e in events[2:7] + events[8:]} == {alice.id}
    # Every change of the conversation, in order, up to its deletion (which is
    # told to each member separately).
    assert [e.change_seq for e in events[:-1]] == list(range(1, 12))
    assert stream.quiet() == []


def test_non_member_receives_nothing_from_conversations_they_are_not_in(
    web: Api, listen: Callable[..., Listener]
) -> None:
    alice, bob, dave = web.account("alice"), web.account("bob"), web.account("dave")
    stream = listen(dave)
    private = web.group(alice, bob, title="private")
    seq = web.send(alice, private, "not for dave")["seq"]
    edited = web.client.patch(
        f"/v1/conversations/{private}/messages/{seq}",
        json={"body": "still not"},
        headers=alice.auth,
    )
    assert edited.status_code == 200
    direct = web.client.post(
        "/v1/conversations", json={"kind": "direct", "member_ids": [bob.id]}, headers=alice.auth
    )
    assert direct.status_code == 201
    web.send(bob, direct.json()["id"], "psst")
    shared = web.group(alice, dave, title="shared")
    web.send(alice, shared, "hello dave")

    events = stream.wait_body("hello dave")
    assert [e.kind for e in events] == ["member.added", "member.added", "message.created"]
    assert {e.conversation_id for e in events} == {shared}
    assert [e.body for e in events] == [None, None, "hello dave"]


def test_removed_member_gets_the_removal_and_nothing_after_it(
    web: Api, listen: Callable[..., Listener]
) -> None:
    alice, bob = web.account("alice"), web.account("bob")
    stream = listen(bob)
    left = web.group(alice, bob, title="left")
    still = web.group(alice, bob, title="still")
    seq = web.send(alice, left, "before")["seq"]
    stream.wait_body("before")
    removed = web.client.delete(f"/v1/conversations/{left}/members/{bob.id}", headers=alice.auth)
    assert removed.status_code == 204
    web.send(alice, left, "after")
    base = f"/v1/conversations/{left}"
    for response in (
        web.client.patch(f"{base}/messages/{seq}", json={"body": "edited"}, headers=alice.auth),
        web.client.patch(base, json={"title": "renamed"}, headers=alice.auth),
        web.client.delete(base, headers=alice.auth),
    ):
        assert response.status_code in (200, 204), response.text
    web.send(alice, still, "marker")

    events = stream.wait_body("marker")
    in_left = [e for e in events if e.conversation_id == left]
    assert in_left[-1].kind == "member.removed"
    assert in_left[-1].data["user_id"] == bob.id
    assert all(e.body != "after" for e in events)
    assert events[-1].body == "marker"
    assert events[-1].conversation_id == still

    # Resuming from just before the removal gives the removal again, not what followed.
    before_removal = events[events.index(in_left[-1]) - 1].id
    stream.stop()
    again = listen(bob, last_event_id=before_removal).wait_body("marker")
    assert [(e.kind, e.conversation_id) for e in again] == [
        ("member.removed", left),
        ("message.created", still),
    ]


# --- resuming -------------------------------------------------------------------------------


def test_resume_after_disconnect_gets_every_missed_change_once_in_order(
    fresh_engine: Engine, server: LiveServer, web: Api, listen: Callable[..., Listener]
) -> None:
    alice, bob = web.account("alice"), web.account("bob")
    first, second = web.group(alice, bob, title="one"), web.group(alice, bob, title="two")
    stream = listen(bob)
    web.send(alice, first, "hi")
    web.send(bob, second, "hey")
    seen = stream.wait_body("hey")
    stream.stop()
    last_seen = assert_consecutive_per_conversation(seen)
    resume_from = seen[-1].id

    # While bob is away: 300 messages, edits, deletes, restores, read markers, a rename.
    seqs: dict[int, list[int]] = {first: [], second: []}
    for n in range(300):
        conversation = (first, second)[n % 2]
        seqs[conversation].append(send(fresh_engine, conversation, alice.id, f"away {n}"))
    with transaction(fresh_engine) as session:
        for seq in seqs[first][:10]:
            store.edit_message(
                session=session,
                conversation_id=first,
                seq=seq,
                body=f"edited {seq}",
                actor_id=alice.id,
            )
        for seq in seqs[second][:10]:
            store.delete_message(
                session=session, conversation_id=second, seq=seq, actor_id=alice.id
            )
    with transaction(fresh_engine) as session:
        for seq in seqs[second][:5]:
            store.restore_message(
                session=session, conversation_id=second, seq=seq, actor_id=alice.id
            )
        store.mark_read(session=session, conversation_id=first, user_id=bob.id, seq=50)
        store.rename_conversation(
            session=session, conversation_id=second, title="two, renamed", actor_id=alice.id
        )
    missed = change_ids(fresh_engine, [first, second], resume_from)
    assert len(missed) == 300 + 10 + 10 + 5 + 1 + 1

    resumed = listen(bob, last_event_id=resume_from)
    caught_up = resumed.wait_count(len(missed))
    web.send(alice, first, "live again")
    events = resumed.wait_body("live again")

    assert [e.id for e in events[: len(missed)]] == missed
    assert events[-1].body == "live again"
    assert len(events) == len(missed) + 1, "a change arrived twice or one too many"
    assert_consecutive_per_conversation(events, seen=last_seen)
    # Catch-up shows messages as they are now.
    by_seq = {
        (e.conversation_id, e.data["message_seq"]): e
        for e in caught_up
        if e.kind == "message.created"
    }
    assert by_seq[first, seqs[first][0]].body == f"edited {seqs[first][0]}"
    assert by_seq[second, seqs[second][0]].body == "away 1"  # restored
    assert by_seq[second, seqs[second][7]].body is None  # still deleted
    assert by_seq[second, seqs[second][7]].data["message"]["deleted_at"] is not None


def test_resume_across_a_server_restart(fresh_engine: Engine) -> None:
    with running(fresh_engine) as old, httpx2.Client(base_url=old.url, timeout=WAIT) as client:
        api = Api(client)  # type: ignore[arg-type]
        alice, bob = api.account("alice"), api.account("bob")
        conversation = api.group(alice, bob, title="before")
        stream = Listener(old.url, bob.token)
        try:
            api.send(alice, conversation, "before the restart")
            seen = stream.wait_body("before the restart")
        finally:
            stream.stop()
    deadline = time.monotonic() + WAIT
    while listening_connections(fresh_engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listening_connections(fresh_engine) == 0  # the old server let go
    last_seen = assert_consecutive_per_conversation(seen)
    resume_from = seen[-1].id

    # While no server runs.
    seqs = [send(fresh_engine, conversation, alice.id, f"offline {n}") for n in range(50)]
    with transaction(fresh_engine) as session:
        store.edit_message(
            session=session,
            conversation_id=conversation,
            seq=seqs[0],
            body="edited offline",
            actor_id=alice.id,
        )
        store.delete_message(
            session=session, conversation_id=conversation, seq=seqs[1], actor_id=alice.id
        )
        other = store.create_group(
            session=session, creator_id=alice.id, title="made offline", member_ids=[bob.id]
        ).id
    send(fresh_engine, other, alice.id, "in the new group")
    missed = change_ids(fresh_engine, [conversation, other], resume_from)
    assert len(missed) == 50 + 2 + 2 + 1

    with running(fresh_engine) as new:
        resumed = Listener(new.url, bob.token, last_event_id=resume_from)
        try:
            resumed.wait_count(len(missed))
            send(fresh_engine, conversation, alice.id, "after the restart")
            events = resumed.wait_body("after the restart")
        finally:
            resumed.stop()

    assert [e.id for e in events[: len(missed)]] == missed
    assert len(events) == len(missed) + 1
    assert events[-1].body == "after the restart"
    assert_consecutive_per_conversation(events, seen=last_seen)
    assert events[0].body == "edited offline"


# --- the gap rule ------------------------------------------------------------------------


@contextmanager
def open_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction the test commits or rolls back itself."""
    with session_factory(engine)() as session:
        yield session


def test_an_id_taken_by_a_running_transaction_holds_back_later_changes(
    fresh_engine: Engine, web: Api, listen: Callable[..., Listener]
) -> None:
    alice, bob = web.account("alice"), web.account("bob")
    slow, fast = web.group(alice, bob, title="slow"), web.group(alice, bob, title="fast")
    stream = listen(bob)
    web.send(alice, fast, "ready")
    before = len(stream.wait_body("ready"))

    with open_session(fresh_engine) as pending:
        store.send_message(session=pending, conversation_id=slow, sender_id=alice.id, body="first")
        send(fresh_engine, fast, alice.id, "second")  # a higher id, committed first
        # "second" must wait: delivering it would move the stream past "first".
        assert stream.quiet() == []
        pending.commit()
    events = stream.wait_count(before + 2)[before:]
    assert [(e.body, e.conversation_id) for e in events] == [("first", slow), ("second", fast)]
    assert events[0].id < events[1].id


def test_an_id_of_a_rolled_back_transaction_is_skipped(
    fresh_engine: Engine, web: Api, listen: Callable[..., Listener]
) -> None:
    alice, bob = web.account("alice"), web.account("bob")
    slow, fast = web.group(alice, bob, title="slow"), web.group(alice, bob, title="fast")
    stream = listen(bob)
    web.send(alice, fast, "ready")
    before = len(stream.wait_body("ready"))

    with open_session(fresh_engine) as doomed:
        store.send_message(session=doomed, conversation_id=slow, sender_id=alice.id, body="never")
        send(fresh_engine, fast, alice.id, "after the gap")
        doomed.rollback()
    # Several gaps in a row are skipped too.
    for n in range(5):
        with open_session(fresh_engine) as doomed:
            store.send_message(
                session=doomed, conversation_id=slow, sender_id=alice.id, body=f"no {n}"
            )
            doomed.rollback()
    send(fresh_engine, slow, alice.id, "later")

    events = stream.wait_body("later")[before:]
    assert [e.body for e in events] == ["after the gap", "later"]
    assert events[1].change_seq == 3  # the rolled-back sends took no change_seq


def test_a_writer_that_starts_after_the_readers_snapshot_is_not_skipped(
    fresh_engine: Engine, web: Api, listen: Callable[..., Listener]
) -> None:
    """The hard case of the gap rule: the writer of the missing id got its
    transaction id after the change reader took its snapshot.

    To make the interleaving happen for sure, the reader is held between its
    statements: a waiting ACCESS EXCLUSIVE lock request on `changes` queues every
    new reader of the table behind it, while the two writers, which already hold
    their (compatible) locks, carry on.
    """
    alice, bob = web.account("alice"), web.account("bob")
    slow, fast = web.group(alice, bob, title="slow"), web.group(alice, bob, title="fast")
    stream = listen(bob)
    web.send(alice, fast, "ready")
    before = len(stream.wait_body("ready"))

    conninfo = psycopg_conninfo(fresh_engine.url)
    with (
        open_session(fresh_engine) as pending,
        open_session(fresh_engine) as quick,
        psycopg.connect(conninfo, autocommit=True) as watcher,
        psycopg.connect(conninfo) as blocker,
    ):
        # Both writers take their table lock now, without a transaction id yet.
        for writer in (pending, quick):
            writer.execute(text("LOCK TABLE changes IN ROW EXCLUSIVE MODE"))
            assert writer.execute(text("SELECT pg_current_xact_id_if_assigned()")).scalar() is None
        blocker_pid = blocker.info.backend_pid
        failure: list[BaseException] = []

        def block() -> None:
            try:
                blocker.execute("LOCK TABLE changes IN ACCESS EXCLUSIVE MODE")
            except psycopg.errors.QueryCanceled:
                blocker.rollback()
            except BaseException as exc:
                failure.append(exc)

        blocking = threading.Thread(target=block, daemon=True)
        blocking.start()
        waiting_reader = (
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND l.relation = 'changes'::regclass "
            "AND l.mode = 'AccessShareLock' AND a.datname = current_database()"
        )
        deadline = time.monotonic() + WAIT
        while watcher.execute(waiting_reader).fetchone() == (0,):
            assert time.monotonic() < deadline, "the change reader never queued"
            time.sleep(0.05)
        # The reader has its snapshot and waits. Now the writers get their ids.
        store.send_message(session=pending, conversation_id=slow, sender_id=alice.id, body="first")
        store.send_message(session=quick, conversation_id=fast, sender_id=alice.id, body="second")
        quick.commit()
        watcher.execute("SELECT pg_cancel_backend(%s)", (blocker_pid,))
        blocking.join(WAIT)
        assert not failure, failure

        assert stream.quiet() == []
        pending.commit()

    events = stream.wait_count(before + 2)[before:]
    assert [e.body for e in events] == ["first", "second"]


def test_a_writer_whose_transaction_id_is_newer_than_every_finished_one_is_not_skipped(
    fresh_engine: Engine, web: Api, listen: Callable[..., Listener]
) -> None:
    """The writer of the missing id took its transaction id after the writer
    of the next id took its own, but drew its change id first. When the reader
    sees the gap, no transaction with an id as new as the missing writer's has
    ended, so the snapshot's xmax (one past the newest finished id) is not
    above it. Once a newer transaction ends, the oldest running id (xmin) is
    the missing writer's own, not below that xmax: judged by xmax, the gap
    would be skipped while its writer still runs, and its change never sent."""
    alice, bob = web.account("alice"), web.account("bob")
    slow, fast = web.group(alice, bob, title="slow"), web.group(alice, bob, title="fast")
    stream = listen(bob)
    web.send(alice, fast, "ready")
    before = len(stream.wait_body("ready"))

    with (
        open_session(fresh_engine) as pending,
        open_session(fresh_engine) as quick,
        open_session(fresh_engine) as newer,
    ):
        quick.execute(text("SELECT pg_current_xact_id()"))  # the older transaction id
        store.send_message(session=pending, conversation_id=slow, sender_id=alice.id, body="first")
        store.send_message(session=quick, conversation_id=fast, sender_id=alice.id, body="second")
        quick.commit()
        assert stream.quiet() == []  # the reader has seen the gap, and waits
        newer.execute(text("SELECT pg_current_xact_id()"))  # newer than `pending`'s
        newer.commit()
        assert stream.quiet() == []  # still waits: `pending` runs
        pending.commit()

    events = stream.wait_count(before + 2)[before:]
    assert [e.body for e in events] == ["first", "second"]


def test_change_ids_are_drawn_in_order(session: Session) -> None:
    """The gap rule assumes a lower id was drawn earlier: a sequence cache would
    let each connection hand out ids from a block of its own."""
    cache = session.execute(
        text(
            "SELECT seqcache FROM pg_sequence "
            "WHERE seqrelid = pg_get_serial_sequence('changes', 'id')::regclass"
        )
    ).scalar_one()
    assert cache == 1


# --- refusals ------------------------------------------------------------------------------


def raw_get(port: int, path: str, headers: dict[bytes, bytes]) -> tuple[int, bytes, bytes]:
    """A GET with header bytes exactly as given (HTTP clients re-encode them);
    returns the status, the head and the body."""
    request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    request += b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request + b"\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def test_a_malformed_last_event_id_is_a_400(server: LiveServer, web: Api) -> None:
    bob = web.account("bob")
    malformed = [
        b"abc",
        b"-1",
        b"1.5",
        b" 12abc",
        b"0x10",
        b"1e3",
        b"99999999999999999999",  # more digits than any id
        b"9" * 41,
        b"\xb2",  # latin-1 superscript two: str.isdigit() says yes, int() says no
        b"1\xb3",
        "\u0661\u0662".encode(),  # Arabic-Indic digits, as UTF-8 bytes
    ]
    for value in malformed:
        status, head, body = raw_get(
            server.port,
            "/v1/events",
            {b"Authorization": f"Bearer {bob.token}".encode(), b"Last-Event-ID": value},
        )
        assert status == 400, (value, body)
        assert b"content-type: application/problem+json" in head.lower(), (value, head)
        assert json.loads(body)["code"] == "bad_event_id", (value, body)


def test_events_need_a_signed_in_user(api: Api) -> None:
    anonymous = api.client.get("/v1/events")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    wrong = api.client.get("/v1/events", headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401
    admin = api.client.get("/v1/events", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert admin.status_code == 403
    assert admin.json()["code"] == "user_required"


# --- many clients -----------------------------------------------------------------------


class ResumingListener:
    """Reads /v1/events and, whenever the stream breaks or ends (the server or
    its database went away), reconnects with Last-Event-ID = the last id it
    received, as a browser's EventSource does. Starts from Last-Event-ID 0, so
    it should receive every change of its conversations exactly once."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.events: list[Event] = []
        self.connections = 0
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                last = self.events[-1].id if self.events else 0
            headers = {"Authorization": f"Bearer {self.token}", "Last-Event-ID": str(last)}
            try:
                with (
                    httpx2.Client(timeout=httpx2.Timeout(5.0)) as client,
                    client.stream("GET", f"{self.base}/v1/events", headers=headers) as response,
                ):
                    if response.status_code != 200:
                        self.errors[str(response.status_code)] += 1
                    else:
                        self.connections += 1
                        for event in sse_events(self._lines(response.iter_lines())):
                            with self._lock:
                                self.events.append(event)
            except Exception as exc:  # the server went away mid-stream: resume
                self.errors[type(exc).__name__] += 1
            self._stop.wait(0.2)

    def _lines(self, lines: Any) -> Any:
        for line in lines:
            if self._stop.is_set():
                return
            yield line

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def wait_for(self, count: int, limit: float = WAIT * 3) -> list[Event]:
        deadline = time.monotonic() + limit
        while len(self.snapshot()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.snapshot()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the stream reader did not stop"


def _wait_for_body(reader: ResumingListener, body: str) -> list[Event]:
    deadline = time.monotonic() + WAIT
    while not any(e.body == body for e in reader.snapshot()):
        assert time.monotonic() < deadline, f"no event with that body within {WAIT} s"
        time.sleep(0.05)
    return reader.snapshot()


def test_a_slow_client_is_cut_off_without_holding_up_the_others(fresh_engine: Engine) -> None:
    with (
        running(fresh_engine, api_settings(sse_queue_size=10), send_buffer=8192) as live,
        httpx2.Client(base_url=live.url, timeout=WAIT) as client,
    ):
        api = Api(client)  # type: ignore[arg-type]
        alice, bob = api.account("alice"), api.account("bob")
        # Both connect before any change exists, so both are owed the same stream.
        stalled = StalledClient(live.port, bob.token)
        # Bob's other device, reading. On a loaded machine it too may fall a
        # queue behind and be cut off; like any client it then resumes from
        # its last event, and must still get everything exactly once.
        reader = ResumingListener(live.url, bob.token)
        try:
            conversation = api.group(alice, bob, title="busy")
            bodies = [f"{n:04d} " + "x" * 3990 for n in range(250)]
            for body in bodies:
                send(fresh_engine, conversation, alice.id, body)
            everything = _wait_for_body(reader, bodies[-1])
            # The stalled client's stream was ended by the server: reading it
            # now finds the end (a timeout here would mean it was never cut off).
            got = stalled.read_to_end()
        finally:
            stalled.close()
            reader.stop()

        assert [e.body for e in everything if e.kind == "message.created"] == bodies
        assert_consecutive_per_conversation(everything)
        # What it got is a prefix of the stream: nothing dropped in between.
        assert len(got) < len(everything)
        assert [e.id for e in got] == [e.id for e in everything[: len(got)]]
        # Resuming from its last event gives the rest, once.
        resumed = Listener(live.url, bob.token, last_event_id=got[-1].id if got else None)
        try:
            rest = resumed.wait_body(bodies[-1])
        finally:
            resumed.stop()
        assert [e.id for e in got + rest] == [e.id for e in everything]


def test_one_listening_connection_per_process(
    fresh_engine: Engine, web: Api, listen: Callable[..., Listener]
) -> None:
    users = [web.account(name) for name in ("alice", "bob", "carol")]
    streams = [listen(user) for user in users] + [listen(users[0]), listen(users[1])]
    deadline = time.monotonic() + WAIT
    while listening_connections(fresh_engine) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listening_connections(fresh_engine) == 1
    # And the one connection serves them all.
    conversation = web.group(users[0], users[1], users[2], title="all")
    web.send(users[2], conversation, "to everyone")
    for stream in streams:
        assert stream.wait_body("to everyone")[-1].body == "to everyone"


def test_stopping_the_hub_as_a_wake_up_lands_does_not_hang(fresh_engine: Engine) -> None:
    """In Python 3.11, asyncio.wait_for returns normally when it is cancelled
    just as its wait ends: the read loop, waiting for a wake-up that way, ran
    on after stop() cancelled it, and stop() waited for it for ever (a rare
    hang at shutdown, seen twice in full runs)."""

    async def stop_after(spins: int) -> None:
        hub = ChangeHub(fresh_engine, api_settings(sse_poll_seconds=3600))
        await hub.start()
        await asyncio.wait_for(hub._ready.wait(), WAIT)
        await asyncio.sleep(0.5)  # the listener is in, and its wake-up handled
        hub._wake.set()
        for _ in range(spins):  # each lets the wake-up go one step further
            await asyncio.sleep(0)
        stopping = asyncio.ensure_future(hub.stop())
        done, _ = await asyncio.wait({stopping}, timeout=WAIT)
        if not done:
            for task in hub._tasks:
                task.cancel()  # let asyncio.run end, then fail
            raise AssertionError(f"stop() hung with the wake-up {spins} steps along")

    for spins in range(6):
        asyncio.run(stop_after(spins))
