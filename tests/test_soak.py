"""Sustained mixed load on `chatdb serve`: many clients sending, paging,
reading the inbox, editing and moving read markers, for a bounded number of
operations.

Asserted: no 5xx (a deadlock would surface as one, and PostgreSQL's deadlock
counter must not move), no unexpected 4xx, the pool's connections back to
idle at the end and never more than the pool allows, and the data's
invariants. Reported, not asserted: latency percentiles and the server's
resident memory at start and end.

Longer (the README's soak): CHATDB_SOAK_OPERATIONS=50000.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx2
import psycopg
from sqlalchemy.engine import URL

from chatdb.db import psycopg_conninfo
from tests.faults_support import (
    Ack,
    Person,
    ServeProcess,
    check_invariants,
    make_people_and_groups,
)
from tests.test_events import WAIT

OPERATIONS = int(os.environ.get("CHATDB_SOAK_OPERATIONS", "800"))
CLIENTS = 12
GROUPS = 4
POOL_SIZE, POOL_OVERFLOW = 6, 4


def _chatdb_connections(conninfo: str, database: str) -> list[str]:
    """States of the serve process's connections (both pools and the listener)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return [
            r[0] or ""
            for r in conn.execute(
                "SELECT state FROM pg_stat_activity WHERE datname = %s AND application_name "
                "IN ('chatdb', 'chatdb reads') AND pid <> pg_backend_pid()",
                (database,),
            )
        ]


def _deadlocks(conninfo: str, database: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    assert row is not None
    return int(row[0])


class Client(threading.Thread):
    """One user doing a random mix of what a chat client does."""

    def __init__(self, base: str, person: Person, groups: list[int], budget: list[int]) -> None:
        super().__init__(daemon=True)
        self.base, self.person, self.groups, self.budget = base, person, groups, budget
        self.random = random.Random(person.id)
        self.latencies: dict[str, list[float]] = {}
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.unexpected: list[str] = []
        self.mine: dict[int, list[int]] = {g: [] for g in groups}
        self.acks: dict[str, tuple[int, int, str]] = {}
        self.lock = threading.Lock()

    def _take(self) -> bool:
        with self.lock:  # the budget is shared; a list of one int
            if self.budget[0] <= 0:
                return False
            self.budget[0] -= 1
            return True

    def run(self) -> None:
        with httpx2.Client(base_url=self.base, timeout=WAIT, headers=self.person.auth) as client:
            n = 0
            while self._take():
                n += 1
                group = self.random.choice(self.groups)
                kind = self.random.choices(
                    ["send", "page", "inbox", "edit", "read"], [40, 20, 15, 10, 15]
                )[0]
                if kind == "edit" and not self.mine[group]:
                    kind = "send"
                started = time.perf_counter()
                response = self._do(client, kind, group, n)
                self.latencies.setdefault(kind, []).append(time.perf_counter() - started)
                self.statuses[(kind, response.status_code)] += 1
                if response.status_code not in (200, 201):
                    self.unexpected.append(f"{kind}: {response.status_code} {response.text[:200]}")
                elif kind == "send":
                    seq = response.json()["seq"]
                    self.mine[group].append(seq)
                    key = f"{self.person.username}-{n}"
                    self.acks[key] = (group, seq, f"soak {key}")

    def _do(self, client: httpx2.Client, kind: str, group: int, n: int) -> httpx2.Response:
        messages = f"/v1/conversations/{group}/messages"
        if kind == "send":
            key = f"{self.person.username}-{n}"
            return client.post(
                messages, json={"body": f"soak {key}"}, headers={"Idempotency-Key": key}
            )
        if kind == "page":
            page = client.get(messages, params={"limit": 50})
            if page.status_code == 200 and page.json()["has_older"]:
                oldest = page.json()["messages"][0]["seq"]
                return client.get(messages, params={"limit": 50, "before": oldest})
            return page
        if kind == "inbox":
            return client.get("/v1/conversations", params={"limit": 20})
        if kind == "edit":
            seq = self.random.choice(self.mine[group])
            return client.patch(f"{messages}/{seq}", json={"body": f"edited {n}"})
        return client.post(
            f"/v1/conversations/{group}/read", json={"seq": self.random.randint(1, 10_000)}
        )


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def test_mixed_load_has_no_errors_no_deadlock_and_no_pool_leak(
    fresh_database: URL, tmp_path: Path
) -> None:
    url = fresh_database.set(drivername="postgresql").render_as_string(hide_password=False)
    database = fresh_database.database
    assert database is not None
    admin = psycopg_conninfo(fresh_database)
    people, _, groups = make_people_and_groups(url, CLIENTS, GROUPS)
    serve = ServeProcess(
        url,
        tmp_path / "serve.log",
        CHATDB_POOL_SIZE=str(POOL_SIZE),
        CHATDB_POOL_MAX_OVERFLOW=str(POOL_OVERFLOW),
        CHATDB_POOL_TIMEOUT_SECONDS="30",
    )
    try:
        serve.start()
        deadlocks_before = _deadlocks(admin, database)
        rss_start = serve.rss_kib()
        budget = [OPERATIONS]
        clients = [Client(serve.base, p, groups, budget) for p in people]
        started = time.monotonic()
        for client in clients:
            client.start()
        most_connections = 0
        while any(c.is_alive() for c in clients):
            most_connections = max(most_connections, len(_chatdb_connections(admin, database)))
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        for client in clients:
            client.join(WAIT)
        rss_end = serve.rss_kib()

        unexpected = [u for c in clients for u in c.unexpected]
        assert not unexpected, unexpected[:5]
        statuses: Counter[tuple[str, int]] = Counter()
        for client in clients:
            statuses.update(client.statuses)
        assert sum(statuses.values()) == OPERATIONS
        assert _deadlocks(admin, database) == deadlocks_before
        # The two pools, for transactions and for reads (and the one
        # listening connection) never grew past their bound, and every
        # connection is idle again once the load stops: nothing was left
        # checked out or inside a transaction.
        assert most_connections <= 2 * (POOL_SIZE + POOL_OVERFLOW) + 1
        deadline = time.monotonic() + WAIT
        while set(states := _chatdb_connections(admin, database)) - {"idle"}:
            assert time.monotonic() < deadline, f"connections not idle: {states}"
            time.sleep(0.1)
        # Every acknowledged send is stored with its seq, seqs are gapless
        # (bodies change with edits, so they are not compared).
        acks = {
            (c.person.id, key): Ack(group, seq, body, replayed=False)
            for c in clients
            for key, (group, seq, body) in c.acks.items()
        }
        check_invariants(admin, groups, acks, compare_bodies=False)
    finally:
        serve.kill()
    latencies = [x for c in clients for values in c.latencies.values() for x in values]
    by_kind = {
        kind: _percentile([x for c in clients for x in c.latencies.get(kind, [])], 0.99)
        for kind in ("send", "page", "inbox", "edit", "read")
    }
    print(
        f"\nsoak: {OPERATIONS} operations from {CLIENTS} clients in {elapsed:.1f} s, 0 5xx; "
        f"p50 {_percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {_percentile(latencies, 0.99) * 1000:.1f} ms "
        f"({', '.join(f'{k} {v * 1000:.0f}' for k, v in by_kind.items())} ms); "
        f"connections at most {most_connections} "
        f"(2 pools of {POOL_SIZE}+{POOL_OVERFLOW}, +1 listener), "
        f"all idle after; server RSS {rss_start / 1024:.1f} MiB at start, "
        f"{rss_end / 1024:.1f} MiB at end"
    )
