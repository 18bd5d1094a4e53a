"""GET /metrics: Prometheus text, request latency per route template, the pool,
database round trips."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import pq
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL

from chatdb.api.app import create_app
from chatdb.db import engine_for_reads, make_engine, read_connection
from tests.api_support import Api, api_settings
from tests.conftest import TEST_SETTINGS

MESSAGES_ROUTE = "/v1/conversations/{conversation_id}/messages"


def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels."""
    response = api.client.get("/metrics", headers=api.admin)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def request_count(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str
) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "chatdb_http_request_duration_seconds_count" and ("route", route) in labels
    )


def round_trips(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], kind: str) -> float:
    return samples[("chatdb_db_round_trips_total", (("kind", kind),))]


def test_latency_is_recorded_per_route_template(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    first = api.group(alice, bob)
    second = api.group(alice, bob)
    for conversation in (first, second, first):
        response = api.client.get(f"/v1/conversations/{conversation}/messages", headers=bob.auth)
        assert response.status_code == 200
    assert api.client.get("/no/such/path").status_code == 404

    samples = scrape(api)
    labels = (("method", "GET"), ("route", MESSAGES_ROUTE), ("status", "200"))
    assert samples[("chatdb_http_request_duration_seconds_count", labels)] == 3
    assert samples[("chatdb_http_request_duration_seconds_sum", labels)] > 0
    buckets = [
        value
        for (name, sample_labels), value in samples.items()
        if name == "chatdb_http_request_duration_seconds_bucket"
        and ("route", MESSAGES_ROUTE) in sample_labels
    ]
    assert max(buckets) == 3  # the +Inf bucket holds them all
    routes = {
        dict(sample_labels)["route"]
        for (name, sample_labels), _ in samples.items()
        if name == "chatdb_http_request_duration_seconds_count"
    }
    # Templates only: no raw path (with an id in it) becomes a series of its own.
    assert not any(re.search(r"/\d", route) for route in routes), routes
    assert "(unmatched)" in routes


def test_round_trips_of_a_message_page(fresh_engine: Engine) -> None:
    """A page of messages over HTTP is two statements, the token check and the
    page (membership check and all), with no transaction block: a GET changes
    nothing. (No lifespan here, so the change reader's polls do not mix in.)"""
    api = Api(TestClient(create_app(fresh_engine, api_settings())))
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    api.send(alice, conversation, "hello")
    before = scrape(api)
    readers = engine_for_reads(fresh_engine)
    checkouts: dict[Engine, list[object]] = {fresh_engine: [], readers: []}

    def checked_out(engine: Engine) -> Callable[..., None]:
        return lambda *args: checkouts[engine].append(args)

    listeners = [(engine, checked_out(engine)) for engine in checkouts]
    for engine, listener in listeners:
        event.listen(engine, "checkout", listener)
    response = api.client.get(f"/v1/conversations/{conversation}/messages", headers=bob.auth)
    for engine, listener in listeners:
        event.remove(engine, "checkout", listener)
    assert response.status_code == 200
    after = scrape(api)
    assert round_trips(after, "statement") - round_trips(before, "statement") == 2
    for kind in ("begin", "commit", "rollback"):
        assert round_trips(after, kind) == round_trips(before, kind), kind
    # Both on one connection for reads: the handler continued the token check's.
    assert len(checkouts[readers]) == 1
    assert checkouts[fresh_engine] == []

    # A send is a write: one transaction, the token check its first statement.
    before = after
    api.send(bob, conversation, "hi")
    after = scrape(api)
    assert round_trips(after, "begin") - round_trips(before, "begin") == 1
    assert round_trips(after, "commit") - round_trips(before, "commit") == 1
    assert round_trips(after, "rollback") == round_trips(before, "rollback")


def _requests_sent(trace: Path) -> list[str]:
    """What the client sent, one entry per round trip: a simple Query, or the
    messages of an extended-protocol query up to its Sync. From libpq's trace.
    A Bind of a prepared statement is shown with the statement's SQL."""
    sent: list[str] = []
    pending: list[str] = []
    prepared: dict[str, str] = {}
    for line in trace.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0] != "F":
            continue
        kind = fields[2]
        message = " ".join(fields[2:])
        if parse := re.match(r'Parse\s+"(_pg3_\d+)"\s+(".{0,60})', message):
            prepared[parse[1]] = parse[2]
        if bind := re.match(r'Bind\s+""\s+"(_pg3_\d+)"', message):
            message = f"Bind {prepared.get(bind[1], bind[1])}"
        pending.append(message[:80])
        if kind in ("Query", "Sync"):
            sent.append(" | ".join(pending))
            pending = []
    return sent


def test_round_trips_on_the_wire_of_a_read_a_write_and_a_search(
    fresh_database: URL, tmp_path: Path
) -> None:
    """Counted where nothing can hide: libpq's trace of every message chatdb's
    connections send. A page (a GET) is the token check and the page, with no
    BEGIN or COMMIT; a send is one transaction with the token check in it, and
    so is a search (its SET LOCAL needs one). No liveness ping, no SET, no
    second transaction for the token."""
    engine = make_engine(fresh_database, TEST_SETTINGS)
    # A file per pool (transactions, reads): each connection names its
    # prepared statements _pg3_0, _pg3_1, ... on its own.
    traces = [tmp_path / "transactions.trace", tmp_path / "reads.trace"]
    with ExitStack() as files:
        outs = [files.enter_context(trace.open("w")) for trace in traces]

        def tracing_to(out: TextIO) -> Callable[[Any, Any], None]:
            def traced(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.pgconn.trace(out.fileno())
                dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

            return traced

        def sent_by(request: Callable[[], int]) -> list[str]:
            already = [len(_requests_sent(trace)) for trace in traces]
            assert request() in (200, 201)
            for out in outs:
                out.flush()
            new = (_requests_sent(trace)[n:] for trace, n in zip(traces, already, strict=True))
            return [sent for each in new for sent in each]

        event.listen(engine, "connect", tracing_to(outs[0]))
        event.listen(engine_for_reads(engine), "connect", tracing_to(outs[1]))
        try:
            api = Api(TestClient(create_app(engine, api_settings())))
            alice, bob = api.account("alice"), api.account("bob")
            conversation = api.group(alice, bob)
            api.send(alice, conversation, "hello")
            page = f"/v1/conversations/{conversation}/messages"

            def get_page() -> int:
                return api.client.get(page, headers=bob.auth).status_code

            def send() -> int:
                return api.client.post(page, json={"body": "hi"}, headers=bob.auth).status_code

            def search() -> int:
                return api.client.get(
                    "/v1/search", params={"q": "hello"}, headers=bob.auth
                ).status_code

            # Warm: the first request connects, and psycopg prepares a statement
            # after its fifth run (a Parse of its own). Then each reuses the pool.
            for _ in range(8):
                for request in (get_page, send, search):
                    sent_by(request)
            read, write, found = sent_by(get_page), sent_by(send), sent_by(search)
        finally:
            engine.dispose()
    assert len(read) == 2, "\n".join(read)
    assert "auth_tokens" in read[0]
    assert "BEGIN" not in read[1]

    assert "BEGIN" in write[0], "\n".join(write)
    assert "auth_tokens" in write[1]
    assert "COMMIT" in write[-1]
    assert sum("BEGIN" in r or "COMMIT" in r for r in write) == 2

    assert len(found) == 5, "\n".join(found)
    assert "BEGIN" in found[0]
    assert "auth_tokens" in found[1]
    assert "querytree" in found[2]  # and its set_config
    assert "COMMIT" in found[4]


@pytest.fixture
def one_connection_api(fresh_database: URL) -> Iterator[tuple[Api, Engine]]:
    # The live-update hub reads the change log through the pool on every poll:
    # poll rarely, so it does not take the one connection from under the test.
    settings = api_settings(
        sse_poll_seconds=3600,
        pool_size=1,
        pool_max_overflow=0,
        pool_timeout_seconds=10,
    )
    engine = make_engine(fresh_database, settings)
    with TestClient(create_app(engine, settings), raise_server_exceptions=False) as client:
        yield Api(client), engine
    engine.dispose()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def pool_gauge(samples: Samples, name: str, pool: str) -> float:
    return samples[(f"chatdb_db_pool_{name}", (("pool", pool),))]


def scrape_until(api: Api, name: str, pool: str, value: float) -> Samples:
    """Scrape until the gauge `name` of `pool` reads `value`, or give up after
    a while (a bounded poll, not a timing claim). A request's connection goes
    back to the pool as its last step, which may finish just after the client
    has its response; a leak keeps it in use for good and still fails."""
    for _ in range(200):
        samples = scrape(api)
        if pool_gauge(samples, name, pool) == value:
            break
        time.sleep(0.02)
    return samples


@pytest.mark.parametrize("pool", ["reads", "transactions"])
def test_pool_in_use_idle_and_waiting(one_connection_api: tuple[Api, Engine], pool: str) -> None:
    """Each pool on its own: a GET waits for the pool for reads, a write for
    the pool for transactions."""
    api, engine = one_connection_api
    alice = api.account("alice")  # writes: a connection for transactions
    assert api.client.get("/v1/me", headers=alice.auth).status_code == 200  # and one for reads
    for each in ("reads", "transactions"):
        samples = scrape_until(api, "in_use", each, 0)
        assert pool_gauge(samples, "size", each) == 1
        assert pool_gauge(samples, "in_use", each) == 0
        assert pool_gauge(samples, "idle", each) == 1
        assert pool_gauge(samples, "waiting", each) == 0

    if pool == "reads":
        held = read_connection(engine)  # the only connection for reads

        def request() -> int:
            return api.client.get("/v1/me", headers=alice.auth).status_code

    else:
        held = engine.connect()  # the only connection for transactions

        def request() -> int:
            return api.client.patch(
                f"/v1/users/{alice.id}", json={"display_name": "Alice"}, headers=alice.auth
            ).status_code

    statuses: list[int] = []
    waiter = threading.Thread(target=lambda: statuses.append(request()))
    waiter.start()
    try:
        samples = scrape_until(api, "waiting", pool, 1)
        assert pool_gauge(samples, "waiting", pool) == 1
        assert pool_gauge(samples, "in_use", pool) == 1
        assert pool_gauge(samples, "idle", pool) == 0
    finally:
        held.close()
        waiter.join()
    assert statuses == [200]
    samples = scrape_until(api, "in_use", pool, 0)
    assert pool_gauge(samples, "waiting", pool) == 0
    assert pool_gauge(samples, "in_use", pool) == 0


def test_metrics_need_the_admin_key(api: Api) -> None:
    assert api.client.get("/metrics").status_code == 401
    alice = api.account("alice")
    assert api.client.get("/metrics", headers=alice.auth).status_code == 403
