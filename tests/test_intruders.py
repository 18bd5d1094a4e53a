"""Intruders: sign-in throttling, usernames that do not leak, tokens refused at
once, secrets kept out of logs, and responses without server internals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx2
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from chatdb import security, store
from chatdb.api.app import create_app
from chatdb.db import make_engine, session_factory
from tests.api_support import PASSWORD, Api, api_settings
from tests.conftest import TEST_SETTINGS
from tests.test_serve import chatdb_env, serving

# A first block far longer than any test takes: whether the next attempt is
# refused never depends on how fast the machine is. The window passing is
# simulated by moving blocked_until back.
LONG_BLOCK = 3600.0


def throttled_api(engine: Engine, **overrides: Any) -> TestClient:
    settings = api_settings(**{"sign_in_first_block_seconds": LONG_BLOCK, **overrides})
    return TestClient(create_app(engine, settings), raise_server_exceptions=False)


@pytest.fixture
def client(fresh_engine: Engine) -> Iterator[TestClient]:
    with throttled_api(fresh_engine) as test_client:
        yield test_client


def sign_in(client: TestClient, username: str, password: str) -> httpx2.Response:
    return client.post("/v1/sessions", json={"username": username, "password": password})


def unblock(engine: Engine) -> None:
    """As if every block had run out."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE sign_in_failures SET blocked_until = now() - interval '1 second' "
                "WHERE blocked_until IS NOT NULL"
            )
        )


def test_failed_passwords_for_one_account_end_in_429(
    client: TestClient, fresh_engine: Engine
) -> None:
    api = Api(client)
    api.account("alice")
    for _ in range(4):
        assert sign_in(client, "alice", "wrong password").status_code == 401
    # The fifth failure is still answered 401, and blocks the account.
    assert sign_in(client, "alice", "wrong password").status_code == 401
    refused = sign_in(client, "ALICE", PASSWORD)  # even the right password, any case
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "too_many_attempts"
    retry_after = int(refused.headers["retry-after"])
    assert 0 < retry_after <= LONG_BLOCK
    assert "token" not in refused.json()

    # Other accounts are not affected.
    api.account("bob")
    assert sign_in(client, "bob", PASSWORD).status_code == 201

    unblock(fresh_engine)
    assert sign_in(client, "alice", PASSWORD).status_code == 201
    # A success starts the account's count over: four more failures are free.
    for _ in range(4):
        assert sign_in(client, "alice", "wrong again").status_code == 401
    assert sign_in(client, "alice", PASSWORD).status_code == 201


def test_blocks_grow_with_each_further_failure(fresh_engine: Engine) -> None:
    with throttled_api(fresh_engine, sign_in_first_block_seconds=10) as client:
        Api(client).account("alice")
        blocks = []
        for _ in range(8):
            sign_in(client, "alice", "wrong password")
            with fresh_engine.connect() as connection:
                seconds = connection.execute(
                    text(
                        "SELECT extract(epoch FROM blocked_until - last_failure_at) "
                        "FROM sign_in_failures WHERE scope = 'account'"
                    )
                ).scalar_one()
            blocks.append(None if seconds is None else round(float(seconds)))
            unblock(fresh_engine)
    assert blocks == [None, None, None, None, 10, 20, 40, 80]


def test_an_unknown_username_is_throttled_the_same_way(client: TestClient) -> None:
    """429 after the same number of failures whether the account exists or not,
    so the throttle does not reveal which usernames exist."""
    Api(client).account("alice")
    answers: dict[str, list[int]] = {}
    for name in ("alice", "nobody"):
        answers[name] = [sign_in(client, name, "wrong password").status_code for _ in range(6)]
    assert answers["alice"] == answers["nobody"] == [401] * 5 + [429]


def test_failures_from_one_address_across_accounts_end_in_429(fresh_engine: Engine) -> None:
    with throttled_api(fresh_engine, sign_in_address_failures=3) as client:
        Api(client).account("alice")
        for name in ("x1", "x2", "x3"):  # one failure each: no account is blocked
            assert sign_in(client, name, "guess").status_code == 401
        refused = sign_in(client, "alice", PASSWORD)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0


def test_throttle_state_is_shared_by_every_process(fresh_engine: Engine) -> None:
    """Two apps with engines of their own, as two worker processes have: the
    counts live in PostgreSQL, so the second sees the first's failures."""
    second_engine = make_engine(fresh_engine.url, TEST_SETTINGS)
    try:
        with throttled_api(fresh_engine) as first, throttled_api(second_engine) as second:
            Api(first).account("alice")
            for _ in range(5):
                assert sign_in(first, "alice", "wrong password").status_code == 401
            assert sign_in(second, "alice", PASSWORD).status_code == 429
    finally:
        second_engine.dispose()


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every hash the password check runs against (the real check still runs)."""
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            calls.append(str(hash))
            return super().verify(hash, password)

    monkeypatch.setattr(security, "_hasher", CountingHasher())
    return calls


def test_an_unknown_username_costs_one_password_hash_like_a_known_one(
    client: TestClient, fresh_engine: Engine, verify_calls: list[str]
) -> None:
    api = Api(client)
    api.account("alice")
    with session_factory(fresh_engine).begin() as session:
        store.create_user(session=session, username="nopassword", email="np@example.org")
    with fresh_engine.connect() as connection:
        alice_hash = connection.execute(
            text("SELECT password_hash FROM users WHERE username = 'alice'")
        ).scalar_one()
    verify_calls.clear()

    for name, password in (
        ("alice", "wrong password"),
        ("alice", PASSWORD),
        ("nobody", "wrong password"),
        ("nopassword", "wrong password"),
        ("nul\x00name", "wrong password"),
    ):
        sign_in(client, name, password)
    dummy = security._DUMMY_HASH
    assert verify_calls == [alice_hash, alice_hash, dummy, dummy, dummy]
    # The dummy is an argon2id hash with the same parameters as real ones.
    assert dummy.split("$")[:4] == alice_hash.split("$")[:4]
    # A blocked sign-in computes nothing at all, whoever it names.
    for _ in range(5):
        sign_in(client, "nobody", "wrong password")
    verify_calls.clear()
    assert sign_in(client, "nobody", "wrong password").status_code == 429
    assert verify_calls == []


# --- tokens ----------------------------------------------------------------------------


def test_tokens_revoked_everywhere_are_refused_on_the_next_request(
    api: Api, fresh_engine: Engine
) -> None:
    alice = api.account("alice")
    other = sign_in(api.client, "alice", PASSWORD).json()["token"]
    assert api.client.get("/v1/me", headers=alice.auth).status_code == 200
    with session_factory(fresh_engine).begin() as session:
        assert store.revoke_all_tokens(session=session, user_id=alice.id) == 2
    for token in (alice.token, other):
        refused = api.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthenticated"


def test_a_deleted_users_token_is_refused(api: Api) -> None:
    alice = api.account("alice")
    assert api.client.delete(f"/v1/users/{alice.id}", headers=api.admin).status_code == 204
    assert api.client.get("/v1/me", headers=alice.auth).status_code == 401


# --- what responses and logs give away ---------------------------------------------------


def test_an_unforeseen_error_is_a_plain_500_without_internals(fresh_engine: Engine) -> None:
    app = create_app(fresh_engine, api_settings())

    @app.get("/test-only/boom")
    def boom() -> None:
        raise RuntimeError("secret internals: /srv/chatdb/config.py line 42")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get("/test-only/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal"
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text


def test_no_token_or_password_in_the_logs_and_no_server_header(
    fresh_database: Any, tmp_path: Path
) -> None:
    """`chatdb serve` with SQL echo and access logs on: sign in (right and
    wrong), use the token on every kind of request, then read the whole log."""
    url = fresh_database.set(drivername="postgresql").render_as_string(hide_password=False)
    password, wrong_password = "eves-password-0c5e2d", "not-the-password-7a61c3"
    admin = {"Authorization": "Bearer log-test-admin-key-91f0"}
    env = chatdb_env(
        CHATDB_DATABASE_URL=url,
        CHATDB_ADMIN_KEY="log-test-admin-key-91f0",
        CHATDB_ECHO_SQL="1",
        CHATDB_SSE_KEEPALIVE_SECONDS="1",
    )
    log = tmp_path / "serve.log"
    with serving(env, log) as base, httpx2.Client(base_url=base, timeout=30) as client:
        created = client.post(
            "/v1/users",
            json={"username": "eve", "email": "eve@example.org", "password": password},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        bad = client.post("/v1/sessions", json={"username": "eve", "password": wrong_password})
        assert bad.status_code == 401
        good = client.post("/v1/sessions", json={"username": "eve", "password": password})
        assert good.status_code == 201
        token = good.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        responses = [
            bad,
            good,
            client.get("/v1/me", headers=auth),
            client.get("/v1/conversations", headers=auth),
            client.get("/v1/conversations/999999", headers=auth),
            client.get("/v1/no-such-route", headers=auth),
            client.post("/v1/conversations", json={"kind": "nonsense"}, headers=auth),
        ]
        with client.stream("GET", "/v1/events", headers=auth) as stream:
            responses.append(stream)
        responses.append(client.delete("/v1/sessions/current", headers=auth))
        responses.append(client.get("/v1/me", headers=auth))
        for response in responses:
            assert "server" not in response.headers, response.headers
    output = log.read_text(errors="replace")
    assert '"POST /v1/sessions HTTP/1.1" 201' in output  # the access log is there
    assert "SELECT" in output  # and so is the SQL echo
    for secret in (token, password, wrong_password):
        assert secret not in output
