"""Races through the HTTP API, with real parallel requests to a real server.

Each race has one expected outcome: one side wins cleanly, the other gets a
clear 4xx, nothing answers 5xx, and the data's invariants hold afterwards.
Where a race needs a particular interleaving, a gate (a transaction holding
the conversation row's lock until the racers queue behind it) makes it happen
on every run; the unforced versions repeat the race without one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx2
import pytest
from sqlalchemy import Engine, text

from tests.api_support import PASSWORD, Account, Api
from tests.test_concurrency import _gate, _lock_waiters
from tests.test_events import WAIT, LiveServer, running

T = TypeVar("T")


@pytest.fixture
def live(fresh_engine: Engine) -> Iterator[tuple[LiveServer, Api]]:
    with (
        running(fresh_engine) as server,
        httpx2.Client(base_url=server.url, timeout=WAIT) as client,
    ):
        yield server, Api(client)  # type: ignore[arg-type]


def _parallel(*calls: Callable[[], T]) -> list[T]:
    """Run the calls at once (a barrier lines them up); their results in order."""
    barrier = threading.Barrier(len(calls))

    def lined_up(call: Callable[[], T]) -> T:
        barrier.wait(WAIT)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(lined_up, c) for c in calls]]


def _request(base: str, method: str, path: str, who: Account, **kwargs: Any) -> httpx2.Response:
    # A client per call: parallel requests must not share one connection.
    with httpx2.Client(base_url=base, timeout=WAIT) as client:
        return client.request(
            method, path, headers={**who.auth, **kwargs.pop("headers", {})}, **kwargs
        )


def _change_kinds(engine: Engine, conversation_id: int) -> list[tuple[str, int | None, int | None]]:
    """(kind, message_seq, user_id) of the conversation's changes in change_seq order."""
    with engine.connect() as connection:
        return [
            (r.kind, r.message_seq, r.user_id)
            for r in connection.execute(
                text(
                    "SELECT kind, message_seq, user_id FROM changes "
                    "WHERE conversation_id = :c ORDER BY change_seq"
                ),
                {"c": conversation_id},
            )
        ]


def test_two_owners_removing_each_other_leave_one_owner(live: tuple[LiveServer, Api]) -> None:
    server, api = live
    alice, bob = api.account("alice"), api.account("bob")
    for _ in range(5):
        group = api.group(alice, bob)
        made_owner = api.client.patch(
            f"/v1/conversations/{group}/members/{bob.id}",
            json={"role": "owner"},
            headers=alice.auth,
        )
        assert made_owner.status_code == 200, made_owner.text
        outcomes = _parallel(
            lambda a=alice, b=bob, g=group: _request(
                server.url, "DELETE", f"/v1/conversations/{g}/members/{b.id}", a
            ),
            lambda a=alice, b=bob, g=group: _request(
                server.url, "DELETE", f"/v1/conversations/{g}/members/{a.id}", b
            ),
        )
        statuses = sorted(r.status_code for r in outcomes)
        # The second to get the lock finds it is no longer a member (404) or
        # no longer an owner (403): one removal wins, cleanly.
        assert statuses in ([204, 403], [204, 404]), [r.text for r in outcomes]
        winner = alice if outcomes[0].status_code == 204 else bob
        members = api.client.get(f"/v1/conversations/{group}/members", headers=winner.auth)
        assert [(m["user_id"], m["role"]) for m in members.json()] == [(winner.id, "owner")]


def test_edit_versus_delete_of_one_message(
    live: tuple[LiveServer, Api], fresh_engine: Engine
) -> None:
    """The author edits while an owner deletes. Either order is clean: edit
    then delete (both 200; restoring shows the edit), or delete then edit (the
    edit is refused with 422: a deleted message cannot be edited)."""
    server, api = live
    owner, author = api.account("owner"), api.account("author")
    group = api.group(owner, author)
    orders = set()
    for n in range(10):
        seq = api.send(author, group, f"original {n}")["seq"]
        path = f"/v1/conversations/{group}/messages/{seq}"
        edit, delete = _parallel(
            lambda p=path, n=n: _request(
                server.url, "PATCH", p, author, json={"body": f"edited {n}"}
            ),
            lambda p=path: _request(server.url, "DELETE", p, owner),
        )
        assert delete.status_code == 200, delete.text
        assert delete.json()["deleted_at"] is not None
        assert edit.status_code in (200, 422), edit.text
        edit_won = edit.status_code == 200
        orders.add("edit first" if edit_won else "delete first")
        kinds = [k for k, s, _ in _change_kinds(fresh_engine, group) if s == seq]
        assert kinds == (
            ["message.created", "message.edited", "message.deleted"]
            if edit_won
            else ["message.created", "message.deleted"]
        )
        restored = api.client.post(f"{path}/restore", headers=owner.auth)
        assert restored.json()["body"] == (f"edited {n}" if edit_won else f"original {n}")
    print(f"\nedit versus delete: {sorted(orders)}")


def _wait_for_lock_waiters(engine: Engine, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while _lock_waiters(engine) < count:
        assert time.monotonic() < deadline, f"{count} requests never queued for the lock"
        time.sleep(0.005)


@pytest.mark.parametrize("keyed", [False, True], ids=["without key", "with key"])
def test_a_send_queued_behind_the_removal_of_its_sender_is_refused(
    live: tuple[LiveServer, Api], fresh_engine: Engine, keyed: bool
) -> None:
    """Forced interleaving: the removal takes the conversation's lock first and
    the member's send queues behind it. When the removal commits, the send must
    see it: 404, and no message of the member after member.removed."""
    server, api = live
    owner, member = api.account("owner"), api.account("member")
    group = api.group(owner, member)
    api.send(member, group, "before")
    headers = {"Idempotency-Key": "late"} if keyed else {}
    with _gate(fresh_engine, group) as release, ThreadPoolExecutor(2) as pool:
        removal = pool.submit(
            _request, server.url, "DELETE", f"/v1/conversations/{group}/members/{member.id}", owner
        )
        _wait_for_lock_waiters(fresh_engine, 1)
        send = pool.submit(
            _request,
            server.url,
            "POST",
            f"/v1/conversations/{group}/messages",
            member,
            json={"body": "after my removal"},
            headers=headers,
        )
        release([removal, send], 2)
        removed, sent = removal.result(), send.result()
    assert removed.status_code == 204, removed.text
    assert sent.status_code == 404, sent.text
    assert _change_kinds(fresh_engine, group)[-1] == ("member.removed", None, member.id)
    page = api.client.get(f"/v1/conversations/{group}/messages", headers=owner.auth).json()
    assert [m["body"] for m in page["messages"]] == ["before"]


def test_a_member_removed_while_sending_unforced(
    live: tuple[LiveServer, Api], fresh_engine: Engine
) -> None:
    """The member sends as fast as it can while an owner removes it: every
    send is a 201 before the removal or a 404 after it, every 201 is stored,
    and the log shows no message of the member after member.removed."""
    server, api = live
    owner, member = api.account("owner"), api.account("member")
    for _ in range(3):
        group = api.group(owner, member)
        statuses: list[int] = []
        acknowledged: list[int] = []
        removed = threading.Event()

        def keep_sending(
            m: Account = member,
            g: int = group,
            statuses: list[int] = statuses,
            acknowledged: list[int] = acknowledged,
            removed: threading.Event = removed,
        ) -> None:
            with httpx2.Client(base_url=server.url, timeout=WAIT) as client:
                for n in range(400):  # bounded; stops at the first 404
                    r = client.post(
                        f"/v1/conversations/{g}/messages",
                        json={"body": f"m{n}"},
                        headers={**m.auth, "Idempotency-Key": f"k{n}"},
                    )
                    statuses.append(r.status_code)
                    if r.status_code != 201:
                        return
                    acknowledged.append(r.json()["seq"])
                    if n == 20:
                        removed.set()

        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(keep_sending)
            assert removed.wait(WAIT)
            removal = _request(
                server.url, "DELETE", f"/v1/conversations/{group}/members/{member.id}", owner
            )
            sending.result()
        assert removal.status_code == 204, removal.text
        assert statuses[-1] == 404, statuses[-3:]
        assert set(statuses[:-1]) == {201}, statuses[-3:]
        log = _change_kinds(fresh_engine, group)
        removed_at = log.index(("member.removed", None, member.id))
        created = [s for k, s, _ in log if k == "message.created"]
        assert sorted(created) == acknowledged
        assert all(k != "message.created" for k, _, _ in log[removed_at:])


def test_the_same_user_signing_in_from_many_clients(live: tuple[LiveServer, Api]) -> None:
    """Each client gets its own token; every token works; signing out one
    leaves the others signed in."""
    server, api = live
    alice = api.account("alice")

    def sign_in() -> httpx2.Response:
        with httpx2.Client(base_url=server.url, timeout=WAIT) as client:
            return client.post("/v1/sessions", json={"username": "alice", "password": PASSWORD})

    results = _parallel(*[sign_in for _ in range(8)])
    assert [r.status_code for r in results] == [201] * 8, [r.text for r in results]
    tokens = [r.json()["token"] for r in results]
    assert len(set(tokens)) == 8
    for token in tokens:
        me = api.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
        assert me.json()["id"] == alice.id
    out = api.client.delete(
        "/v1/sessions/current", headers={"Authorization": f"Bearer {tokens[0]}"}
    )
    assert out.status_code == 204
    statuses = [
        api.client.get("/v1/me", headers={"Authorization": f"Bearer {t}"}).status_code
        for t in tokens
    ]
    assert statuses == [401] + [200] * 7


def test_deleting_a_conversation_while_messages_arrive(live: tuple[LiveServer, Api]) -> None:
    """Members send as fast as they can while the owner deletes the
    conversation. Every send answers 201 or 404, nothing else; once the
    delete has returned, every send, read and page answers 404, and the
    conversation has left everyone's inbox."""
    server, api = live
    owner = api.account("owner")
    members = [api.account(f"member{i}") for i in range(4)]
    group = api.group(owner, *members)
    deleted_at: list[float] = []
    results: dict[int, list[tuple[float, float, int]]] = {m.id: [] for m in members}
    started = threading.Barrier(len(members) + 1)

    def keep_sending(member: Account) -> None:
        with httpx2.Client(base_url=server.url, timeout=WAIT) as client:
            started.wait(WAIT)
            for n in range(2000):  # bounded; ends a while after the delete
                sent_at = time.monotonic()
                r = client.post(
                    f"/v1/conversations/{group}/messages",
                    json={"body": f"{member.username} {n}"},
                    headers={**member.auth, "Idempotency-Key": f"k{n}"},
                )
                results[member.id].append((sent_at, time.monotonic(), r.status_code))
                if deleted_at and sum(s == 404 for *_, s in results[member.id]) >= 5:
                    return

    with ThreadPoolExecutor(len(members)) as pool:
        senders = [pool.submit(keep_sending, m) for m in members]
        started.wait(WAIT)
        while sum(len(r) for r in results.values()) < 40:
            time.sleep(0.01)
        deleted = api.client.delete(f"/v1/conversations/{group}", headers=owner.auth)
        deleted_at.append(time.monotonic())
        for sender in senders:
            sender.result()
    assert deleted.status_code == 204, deleted.text
    for outcomes in results.values():
        assert {s for *_, s in outcomes} <= {201, 404}, outcomes
        # Sent after the delete returned: refused, every one.
        after = [s for sent_at, _, s in outcomes if sent_at > deleted_at[0]]
        assert after, "no send was made after the delete"
        assert set(after) == {404}
        # Answered before the delete was sent: accepted, every one.
        statuses = [s for *_, s in outcomes]
        assert statuses == sorted(statuses, key=lambda s: s == 404), "a 201 after a 404"
    for who in (owner, members[0]):
        for path in ("", "/messages", "/members", "/changes?since=0", "/messages/1"):
            r = api.client.get(f"/v1/conversations/{group}{path}", headers=who.auth)
            assert r.status_code == 404, (path, r.text)
        inbox = api.client.get("/v1/conversations", headers=who.auth).json()
        assert group not in [e["conversation_id"] for e in inbox["entries"]]
