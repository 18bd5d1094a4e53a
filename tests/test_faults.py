"""Crashes and restarts: PostgreSQL SIGKILLed under load, `chatdb serve`
SIGKILLed under load, and the guarantees that must survive both.

A PostgreSQL of this module's own (initdb into a temporary directory, a free
port on 127.0.0.1) so killing it touches no other test's server, and `chatdb
serve` as a real process. Clients send at full speed with idempotency keys and
retry until acknowledged; a live-update client resumes with Last-Event-ID.
After every restart: every acknowledged message is stored once with the seq it
was acknowledged with, seqs and change_seqs are gapless, nothing is stored
twice, pg_amcheck finds no corruption, and the same serve process answers
again. Bounded by cycle counts and deadlines; timings are printed, not asserted.

More cycles (the README's long run): CHATDB_FAULT_CYCLES, CHATDB_SERVE_KILL_CYCLES.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.faults_support import (
    Person,
    Sender,
    ServeProcess,
    ThrowawayPostgres,
    acknowledged,
    all_changes,
    check_invariants,
    make_people_and_groups,
    stored_keys,
)
from tests.test_events import WAIT, ResumingListener

POSTGRES_CYCLES = int(os.environ.get("CHATDB_FAULT_CYCLES", "10"))
SERVE_CYCLES = int(os.environ.get("CHATDB_SERVE_KILL_CYCLES", "3"))
SENDERS = 4
GROUPS = 3
# Acknowledged sends to wait for between two crashes: the crash comes mid-load.
PER_CYCLE = 20


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


def _wait_for_acks(senders: list[Sender], count: int) -> None:
    deadline = time.monotonic() + WAIT * 3
    while len(acknowledged(senders)) < count:
        problems = [r for s in senders for r in s.refused]
        assert not problems, f"a send was refused: {problems[:3]}"
        assert time.monotonic() < deadline, "the clients made no progress"
        time.sleep(0.02)


def _stop(senders: list[Sender]) -> None:
    for sender in senders:
        sender.stop.set()
        # Each finishes the message in hand; bounded so a broken server fails the test.
        sender.give_up_at = time.monotonic() + WAIT * 3
    for sender in senders:
        sender.join()


def _final_checks(
    postgres: ThrowawayPostgres,
    database: str,
    groups: list[int],
    senders: list[Sender],
    listener: ResumingListener,
    also_stored: frozenset[tuple[int, str]] = frozenset(),
) -> tuple[int, Counter[str], int]:
    problems = [r for s in senders for r in s.refused]
    assert not problems, f"sends were refused: {problems[:5]}"
    statuses: Counter[str] = Counter()
    for sender in senders:
        statuses.update(sender.statuses)
    assert not [s for s in statuses if s.startswith("5") and s != "503"], statuses
    acks = acknowledged(senders)
    conninfo = postgres.conninfo(database)
    check_invariants(conninfo, groups, acks)
    # Every sender ended with its last message acknowledged, so whatever is
    # stored was acknowledged: nothing unacknowledged slipped in.
    assert stored_keys(conninfo, groups) == set(acks) | also_stored

    # The resuming client got every change of its conversations, once, in order.
    changes = all_changes(conninfo, groups)
    events = listener.wait_for(len(changes))
    got = [(e.id, e.conversation_id, e.change_seq) for e in events]
    assert len(got) == len(set(got)), "a change was delivered twice"
    missing = sorted(set(changes) - set(got))
    assert got == changes, (
        f"the stream missed or reordered changes: missing {missing[:10]}, "
        f"{listener.connections} stream connections, errors {dict(listener.errors)}"
    )
    replays = sum(a.replayed for a in acks.values())
    return len(acks), statuses, replays


def test_postgres_killed_under_load_loses_nothing_acknowledged(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    database = postgres.create_database()
    url = postgres.url(database)
    people, watcher, groups = make_people_and_groups(url, SENDERS, GROUPS)
    serve = ServeProcess(url, tmp_path / "serve.log")
    senders: list[Sender] = []
    listener: ResumingListener | None = None
    recoveries: list[float] = []
    try:
        serve.start()
        listener = ResumingListener(serve.base, watcher.token)
        senders = [Sender(serve.base, p, groups).start() for p in people]
        for cycle in range(POSTGRES_CYCLES):
            _wait_for_acks(senders, (cycle + 1) * PER_CYCLE)
            postgres.crash()
            time.sleep(0.3)  # clients meet a dead database for a moment
            postgres.start()
            # The same serve process, not restarted, answers again.
            recovered = serve.wait_ready(WAIT)
            assert recovered is not None, f"serve did not recover:\n{serve.tail()}"
            recoveries.append(recovered)
            check_invariants(postgres.conninfo(database), groups, acknowledged(senders))
            if postgres.can_amcheck:
                postgres.amcheck(database)
        _stop(senders)
        count, statuses, replays = _final_checks(postgres, database, groups, senders, listener)
    finally:
        for sender in senders:
            sender.stop.set()
        if listener is not None:
            listener.stop()
        serve.kill()
    assert serve.process is not None
    print(
        f"\nPostgreSQL SIGKILLed {POSTGRES_CYCLES} times: {count} messages acknowledged, "
        f"all found once; replays {replays}; responses {dict(statuses)}; "
        f"pg_amcheck {'clean after every restart' if postgres.can_amcheck else 'unavailable'} "
        f"({postgres.bin_dir}); serve ready again after "
        f"{min(recoveries):.2f}-{max(recoveries):.2f} s; stream reconnects "
        f"{listener.connections - 1 if listener else 0}"
    )


def test_serve_killed_under_load_loses_nothing_and_retries_get_the_original(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    database = postgres.create_database()
    url = postgres.url(database)
    people, watcher, groups = make_people_and_groups(url, SENDERS, GROUPS)
    serve = ServeProcess(url, tmp_path / "serve.log")
    senders: list[Sender] = []
    listener: ResumingListener | None = None
    try:
        serve.start()
        _a_retry_after_a_restart_gets_the_original(serve, people[0], groups[0])
        listener = ResumingListener(serve.base, watcher.token)
        senders = [Sender(serve.base, p, groups).start() for p in people]
        for cycle in range(SERVE_CYCLES):
            _wait_for_acks(senders, (cycle + 1) * PER_CYCLE)
            serve.kill()
            serve.start()
            check_invariants(postgres.conninfo(database), groups, acknowledged(senders))
            if postgres.can_amcheck:
                postgres.amcheck(database)
        _stop(senders)
        count, statuses, replays = _final_checks(
            postgres,
            database,
            groups,
            senders,
            listener,
            also_stored=frozenset({(people[0].id, "before-the-kill")}),
        )
    finally:
        for sender in senders:
            sender.stop.set()
        if listener is not None:
            listener.stop()
        serve.kill()
    print(
        f"\nchatdb serve SIGKILLed {SERVE_CYCLES} times: {count} messages acknowledged, "
        f"all found once; {replays} acknowledged as replays of a send whose answer was lost; "
        f"responses {dict(statuses)}; stream reconnects "
        f"{listener.connections - 1 if listener else 0}"
    )


def _a_retry_after_a_restart_gets_the_original(
    serve: ServeProcess, person: Person, conversation_id: int
) -> None:
    """The deterministic case: the send committed, the server died before the
    client heard back; the client's retry with the key gets the original."""
    path = f"{serve.base}/v1/conversations/{conversation_id}/messages"
    headers = {**person.auth, "Idempotency-Key": "before-the-kill"}
    first = httpx2.post(path, json={"body": "sent before the kill"}, headers=headers, timeout=WAIT)
    assert first.status_code == 201, first.text
    serve.kill()
    serve.start()
    retried = httpx2.post(
        path, json={"body": "sent before the kill"}, headers=headers, timeout=WAIT
    )
    assert retried.status_code == 200, retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json() == first.json()
