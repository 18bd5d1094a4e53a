"""The connection pool under the API: exhaustion and lost connections."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from chatdb.api.app import create_app
from chatdb.db import engine_for_reads, make_engine, psycopg_conninfo, read_connection
from tests.api_support import PASSWORD, Account, Api, api_settings


@pytest.fixture
def small_pool_api(fresh_database: URL) -> Iterator[tuple[Api, Engine]]:
    # The live-update hub reads the change log through the pool on every poll:
    # poll rarely, so it does not take the one connection from under the test.
    settings = api_settings(
        sse_poll_seconds=3600,
        pool_size=1,
        pool_max_overflow=0,
        pool_timeout_seconds=0.3,
    )
    engine = make_engine(fresh_database, settings)
    with TestClient(create_app(engine, settings), raise_server_exceptions=False) as client:
        yield Api(client), engine
    engine.dispose()


def test_pool_exhaustion_answers_503_with_retry_after(
    small_pool_api: tuple[Api, Engine],
) -> None:
    """Each pool on its own: with no connection for reads left, a GET gets 503
    and a write still goes through; with none for transactions, the reverse."""
    api, engine = small_pool_api
    alice = api.account("alice")

    def read() -> Response:
        return api.client.get("/v1/me", headers=alice.auth)

    def write() -> Response:
        return api.client.patch(
            f"/v1/users/{alice.id}", json={"display_name": "Alice"}, headers=alice.auth
        )

    assert read().status_code == 200
    for held, busy, free in ((read_connection, read, write), (Engine.connect, write, read)):
        with held(engine):  # the pool's only connection
            refused = busy()
            assert free().status_code == 200
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["code"] == "busy"
        # Once the connection is back, requests succeed again.
        assert busy().status_code == 200


def test_requests_succeed_after_the_server_drops_every_connection(
    api: Api, fresh_database: URL
) -> None:
    """What a PostgreSQL restart does to a pool: every pooled connection dies.
    A request's first statement finds its connection dead having done nothing,
    and runs again on a new one, so no request fails once the server answers
    again, and chatdb needs no restart."""
    alice, bob = api.account("alice"), api.account("bob")
    conversation = api.group(alice, bob)
    api.send(alice, conversation, "before")
    _both_pools_hold_a_connection(api, alice)
    _drop_every_connection(fresh_database)
    for _ in range(3):
        response = api.client.get(f"/v1/conversations/{conversation}/messages", headers=bob.auth)
        assert response.status_code == 200, response.text
    assert api.send(bob, conversation, "after")["seq"] == 2


def _both_pools_hold_a_connection(api: Api, who: Account) -> None:
    """A GET, so the pool for reads has a connection to lose too (the writes
    before it used the pool for transactions)."""
    assert api.client.get("/v1/me", headers=who.auth).status_code == 200


def _drop_every_connection(database: URL) -> None:
    """Terminate every backend of the database, and check that both of
    chatdb's pools had one."""
    with psycopg.connect(psycopg_conninfo(database), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    assert {"chatdb", "chatdb reads"} <= {name for name, _ in killed}, killed


@pytest.mark.parametrize(
    "first_request",
    ["token", "admin key", "sign-in", "readyz", "search", "admin search"],
)
def test_the_first_request_of_any_kind_after_the_connections_die_succeeds(
    api: Api, fresh_database: URL, first_request: str
) -> None:
    """Requests without a token check to begin with (the admin key, signing in,
    /readyz) must survive a dead pool as well as those with one, and so must a
    search, which reads in a transaction where other GETs read without one."""
    alice = api.account("alice")
    _both_pools_hold_a_connection(api, alice)
    _drop_every_connection(fresh_database)
    if first_request == "token":
        response = api.client.get("/v1/me", headers=alice.auth)
    elif first_request == "admin key":
        response = api.client.get(f"/v1/users/{alice.id}", headers=api.admin)
    elif first_request in ("search", "admin search"):
        auth = alice.auth if first_request == "search" else api.admin
        response = api.client.get("/v1/search", params={"q": "hello"}, headers=auth)
    elif first_request == "sign-in":
        response = api.client.post("/v1/sessions", json={"username": "alice", "password": PASSWORD})
    else:
        response = api.client.get("/readyz")
    assert response.status_code in (200, 201), response.text


def test_a_refused_request_gives_its_connection_back(
    small_pool_api: tuple[Api, Engine],
) -> None:
    """The token check opens the request's transaction before the handler runs;
    a request refused after that (bad input, no right, a handler that makes no
    transaction) must still hand the one connection back."""
    api, engine = small_pool_api
    alice, bob = api.account("alice"), api.account("bob")
    refused = [
        api.client.get("/v1/conversations?limit=100000", headers=alice.auth),  # 422
        api.client.patch(f"/v1/users/{bob.id}", json={"display_name": "x"}, headers=alice.auth),
        api.client.get("/metrics", headers=alice.auth),  # 403, no transaction at all
        api.client.get("/v1/conversations/999999", headers=alice.auth),  # 404
    ]
    assert [r.status_code for r in refused] == [422, 403, 403, 404]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert engine_for_reads(engine).pool.checkedout() == 0  # type: ignore[attr-defined]
    assert api.client.get("/v1/me", headers=alice.auth).status_code == 200
