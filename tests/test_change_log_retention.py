"""The change log behind live updates is pruned past CHATDB_CHANGE_RETENTION_DAYS,
and a client whose position is older is told to reload (410 Gone over HTTP,
`event: reset` on the stream): never handed a history with a hole in it. Age
is simulated by moving created_at back, never by waiting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from chatdb import models, store
from chatdb.db import transaction
from chatdb.errors import Gone
from chatdb.store.types import Conversation, User
from tests.api_support import Api
from tests.factories import make_group, make_user, send
from tests.test_events import WAIT, Listener, running

DAYS = 30
CH = models.Change


def change_ids(session: Session) -> list[int]:
    return list(session.execute(select(CH.id).order_by(CH.id)).scalars())


def age_changes(session: Session, up_to_id: int, days: int = DAYS + 1) -> None:
    """As if every change up to `up_to_id` had been recorded `days` days ago."""
    session.execute(
        update(CH)
        .where(CH.id <= up_to_id)
        .values(created_at=func.now() - func.make_interval(0, 0, 0, days))
    )


def prune(session: Session) -> int:
    """What `chatdb purge` does to the change log, in batches of two."""
    horizon = store.change_log_horizon(session=session, change_retention_days=DAYS)
    total = 0
    while pruned := store.prune_changes_batch(session=session, below_id=horizon, limit=2):
        total += pruned
    return total


@contextmanager
def unit(engine: Engine) -> Iterator[Session]:
    with transaction(engine) as session:
        yield session


def a_group_with_messages(engine: Engine, count: int) -> tuple[User, User, Conversation]:
    with unit(engine) as session:
        alice, bob = make_user(session), make_user(session)
        group = make_group(session, alice, bob)
        for n in range(count):
            send(session, group, alice, f"m{n}")
    return alice, bob, group


def test_purge_removes_changes_past_the_window_and_keeps_the_newest(fresh_engine: Engine) -> None:
    a_group_with_messages(fresh_engine, 6)
    with unit(fresh_engine) as session:
        ids = change_ids(session)
        assert len(ids) >= 6
        old, young = ids[:-2], ids[-2:]
        age_changes(session, old[-1])
        due = store.purge_due(session=session, retention_days=DAYS, change_retention_days=DAYS)
        assert due.changes == len(old)
        assert prune(session) == len(old)
        assert change_ids(session) == young
        assert prune(session) == 0  # again: nothing more is due

        # Everything old: the newest stays, so stream positions count on from it.
        age_changes(session, young[-1])
        assert prune(session) == 1
        assert change_ids(session) == [young[-1]]
        assert store.latest_change_id(session=session) == young[-1]


def test_a_change_inside_the_window_holds_back_older_ids_behind_it(fresh_engine: Engine) -> None:
    """The window is walked in id order: pruning stops at the first change
    inside it, so what is kept is always an unbroken run of ids."""
    a_group_with_messages(fresh_engine, 4)
    with unit(fresh_engine) as session:
        ids = change_ids(session)
        age_changes(session, ids[-1])
        # The third change is young (a long transaction's, say): it and all after it stay.
        session.execute(update(CH).where(CH.id == ids[2]).values(created_at=func.now()))
        assert prune(session) == 2
        assert change_ids(session) == ids[2:]


def test_catching_up_a_conversation_from_a_pruned_position_is_gone(fresh_engine: Engine) -> None:
    alice, bob, group = a_group_with_messages(fresh_engine, 5)
    with unit(fresh_engine) as session:
        seqs = list(
            session.execute(
                select(CH.change_seq).where(CH.conversation_id == group.id).order_by(CH.id)
            ).scalars()
        )
        last = seqs[-1]
        age_changes(session, change_ids(session)[-3])  # all but the last two
        prune(session)

    def since(position: int) -> list[int]:
        with unit(fresh_engine) as session:
            page = store.changes_since(
                session=session, conversation_id=group.id, since=position, actor_id=bob.id
            )
        return [c.change_seq for c in page.changes]

    for position in range(0, last - 2):
        with pytest.raises(Gone, match="no longer kept"):
            since(position)
    assert since(last - 2) == [last - 1, last]
    assert since(last) == []
    assert since(last + 5) == []  # ahead of the log: nothing, as before

    # No change left after the position (another conversation holds the newest):
    # still gone, not an empty page.
    with unit(fresh_engine) as session:
        other = make_group(session, alice, bob)
        send(session, other, alice, "elsewhere")
        age_changes(session, change_ids(session)[-2])
        prune(session)
    for position in (last - 2, last - 1):
        with pytest.raises(Gone):
            since(position)
    assert since(last) == []


def test_over_http_a_pruned_position_is_410_and_the_stream_says_reset(
    fresh_engine: Engine,
) -> None:
    with running(fresh_engine) as live, httpx2.Client(base_url=live.url, timeout=WAIT) as client:
        web = Api(client)  # type: ignore[arg-type]  # the same interface as TestClient
        alice, bob = web.account("alice"), web.account("bob")
        cid = web.group(alice, bob)
        stream = Listener(live.url, bob.token)
        web.send(alice, cid, "before")
        seen = stream.wait_body("before")
        stream.stop()
        position = seen[-1].id
        # The server reads the sends before they are pruned, as it always has,
        # days before, outside tests; else its reader would still be behind
        # them when the fresh stream below starts, and hand it the newest.
        watcher = Listener(live.url, alice.token)
        for n in range(3):
            web.send(alice, cid, f"while away {n}")
        watcher.wait_body("while away 2")
        watcher.stop()
        with unit(fresh_engine) as session:
            age_changes(session, change_ids(session)[-2])
            assert prune(session) > 0

        resumed = Listener(live.url, bob.token, last_event_id=position)
        events = resumed.wait(lambda _: False)  # until the server ends the stream
        assert resumed.ended, "the stream should end after the reset"
        assert [e.type for e in events] == ["reset"]
        resumed.stop()

        response = client.get(f"/v1/conversations/{cid}/changes?since=0", headers=bob.auth)
        assert response.status_code == 410, response.text
        assert response.json()["code"] == "gone"
        # A fresh stream (no position) works, and so does catching up from the newest.
        fresh = Listener(live.url, bob.token)
        web.send(alice, cid, "after")
        assert [e.body for e in fresh.wait_body("after")] == ["after"]
        fresh.stop()
        last = client.get(f"/v1/conversations/{cid}", headers=bob.auth).json()["last_change_seq"]
        caught_up = client.get(
            f"/v1/conversations/{cid}/changes?since={last - 1}", headers=bob.auth
        )
        assert caught_up.status_code == 200
        assert [c["change_seq"] for c in caught_up.json()["changes"]] == [last]


def test_a_quiet_stream_keeps_its_position_inside_the_window(fresh_engine: Engine) -> None:
    """A client that gets no change for a long time still has its position
    moved along by the keep-alives, so after the changes it never saw are
    pruned it resumes, instead of being told to reload."""
    with running(fresh_engine) as live, httpx2.Client(base_url=live.url, timeout=WAIT) as client:
        web = Api(client)  # type: ignore[arg-type]  # the same interface as TestClient
        alice, bob, carol = web.account("alice"), web.account("bob"), web.account("carol")
        web.group(alice, bob)
        elsewhere = web.group(alice, carol)
        position = None
        with client.stream("GET", "/v1/events", headers=bob.auth) as response:
            web.send(alice, elsewhere, "not for bob")
            with unit(fresh_engine) as session:
                newest = change_ids(session)[-1]
            deadline = time.monotonic() + WAIT
            for line in response.iter_lines():  # a keep-alive comes every second
                if line.startswith("id: ") and int(line[4:]) >= newest:
                    position = int(line[4:])
                if position is not None or time.monotonic() > deadline:
                    break
        assert position == newest
        with unit(fresh_engine) as session:
            web.send(alice, elsewhere, "still not for bob")
            age_changes(session, newest)
            assert prune(session) > 0
        resumed = Listener(live.url, bob.token, last_event_id=position)
        web.send(alice, elsewhere, "nor this")
        assert resumed.quiet() == []  # nothing to catch up on, and no reset
        assert not resumed.ended
        resumed.stop()
