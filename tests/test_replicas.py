"""Reads on a streaming replica: routing, read-your-writes, and a replica that
goes away and comes back. A primary and a replica of the test's own, on
loopback, started by chatdb.devcluster (what `chatdb dev cluster` runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from chatdb import devcluster, migrate
from chatdb.api.app import create_app
from chatdb.config import Settings
from chatdb.db import EMBEDDED_DATABASE, ensure_database, make_engine, normalize_url
from chatdb.replicas import ReadRouter
from tests.api_support import Account, Api, api_settings
from tests.conftest import TEST_SETTINGS
from tests.test_serve import free_port

WAIT = 60.0


def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll until `check` holds; a timeout, not a speed requirement."""
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT:.0f} s: {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster() -> Iterator[devcluster.Cluster]:
    root = Path(tempfile.mkdtemp(prefix="chatdb-cluster-"))
    cluster = devcluster.start_cluster(root, [free_port(), free_port()])
    try:
        admin_url = normalize_url(cluster.primary.url())
        ensure_database(admin_url, EMBEDDED_DATABASE)
        engine = make_engine(admin_url.set(database=EMBEDDED_DATABASE), TEST_SETTINGS)
        migrate.upgrade(engine)
        engine.dispose()
        # Until then the replica may not have the database yet: the first read
        # routed to it failed to connect, and went to the primary (seen in CI).
        cluster.wait_replayed()
        yield cluster
    finally:
        cluster.stop()
        devcluster.remove(root)


def _replica_sql(cluster: devcluster.Cluster, statement: str) -> object:
    with psycopg.connect(cluster.replicas[0].url(EMBEDDED_DATABASE), autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
    return row[0] if row else None


def _settings(cluster: devcluster.Cluster) -> Settings:
    return api_settings(
        database_url=cluster.primary.url(EMBEDDED_DATABASE),
        replica_urls=[cluster.replicas[0].url(EMBEDDED_DATABASE)],
        replica_retry_seconds=0.2,
    )


@pytest.fixture
def api(cluster: devcluster.Cluster) -> Iterator[Api]:
    settings = _settings(cluster)
    engine = make_engine(normalize_url(cluster.primary.url(EMBEDDED_DATABASE)), settings)
    try:
        with TestClient(create_app(engine, settings)) as client:
            yield Api(client)
    finally:
        engine.dispose()


def _bodies(api: Api, who: Account, conversation_id: int) -> list[str]:
    response = api.client.get(f"/v1/conversations/{conversation_id}/messages", headers=who.auth)
    assert response.status_code == 200, response.text
    return [m["body"] for m in response.json()["messages"]]


def _router(api: Api) -> ReadRouter:
    router: ReadRouter = api.client.app.state.read_router  # type: ignore[attr-defined]
    return router


def test_replica_urls_are_a_comma_separated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATDB_REPLICA_URLS", "postgresql://a/x, postgresql://b/x")
    assert Settings().replica_urls == ["postgresql://a/x", "postgresql://b/x"]
    monkeypatch.setenv("CHATDB_REPLICA_URLS", "")
    assert Settings().replica_urls == []


def test_reads_go_to_a_replica_and_writes_to_the_primary(api: Api) -> None:
    router = _router(api)
    with router.read_transaction(None) as session:
        assert session.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is True
    with router.read_transaction(None) as session:  # every read, not only the first
        assert session.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is True


def test_a_writer_reads_its_own_write_while_the_replica_lags(
    api: Api, cluster: devcluster.Cluster
) -> None:
    alice, bob = api.account("rw_alice"), api.account("rw_bob")
    group = api.group(alice, bob)
    api.send(alice, group, "before the pause")
    cluster.wait_replayed()
    assert _bodies(api, bob, group) == ["before the pause"]

    _replica_sql(cluster, "SELECT pg_wal_replay_pause()")
    try:
        api.send(alice, group, "while paused")
        # Alice wrote: her reads wait for a replica that has her write, or use the primary.
        assert _bodies(api, alice, group) == ["before the pause", "while paused"]
        inbox = api.client.get("/v1/conversations", headers=alice.auth).json()
        assert inbox["entries"][0]["last_message_body"] == "while paused"
        # Bob did not: his reads go to the (paused) replica, which has not seen it yet.
        assert _bodies(api, bob, group) == ["before the pause"]
    finally:
        _replica_sql(cluster, "SELECT pg_wal_replay_resume()")
    eventually(lambda: len(_bodies(api, bob, group)) == 2, "bob sees the message once replayed")


def test_a_replica_that_goes_away_is_left_out_and_comes_back(
    api: Api, cluster: devcluster.Cluster
) -> None:
    alice, bob = api.account("fo_alice"), api.account("fo_bob")
    group = api.group(alice, bob)
    api.send(alice, group, "one")
    cluster.wait_replayed()

    cluster.replicas[0].stop("immediate")
    try:
        # Reads carry on, on the primary; nothing fails.
        for _ in range(3):
            assert _bodies(api, bob, group) == ["one"]
        api.send(alice, group, "two")
        assert _bodies(api, bob, group) == ["one", "two"]
        assert _router(api).replicas[0].down_until > 0
    finally:
        cluster.replicas[0].start()

    cluster.wait_replayed()
    _replica_sql(cluster, "SELECT pg_wal_replay_pause()")
    try:
        api.send(alice, group, "three")
        # Bob reads from the replica again once it answers: it has not replayed "three".
        eventually(
            lambda: _bodies(api, bob, group) == ["one", "two"], "the replica is back in rotation"
        )
    finally:
        _replica_sql(cluster, "SELECT pg_wal_replay_resume()")


def _free_port_pair() -> int:
    """A port that is free with the next one (the replica takes it): the
    module's cluster already listens on two ports of its own."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def test_dev_cluster_command_starts_a_primary_and_a_replica_and_stops_them() -> None:
    root = Path(tempfile.mkdtemp(prefix="chatdb-devcluster-"))
    port = _free_port_pair()
    process = subprocess.Popen(
        [sys.executable, "-m", "chatdb", "dev", "cluster", "--dir", str(root), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        # As a script's `cmd &` would start it: Ctrl+C must still stop it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "running" in line:
                break
        output = "".join(lines)
        assert f"CHATDB_DATABASE_URL=postgresql://postgres@127.0.0.1:{port}/chatdb" in output
        replica = f"postgresql://postgres@127.0.0.1:{port + 1}/chatdb"
        assert f"CHATDB_REPLICA_URLS={replica}" in output
        with psycopg.connect(replica) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), (SELECT count(*) FROM alembic_version)"
            ).fetchone()
        assert row == (True, 1)
        process.send_signal(signal.SIGINT)
        # A hang guard, not a speed check: each server's clean stop (its
        # shutdown checkpoint) may take up to pg_ctl's own 60 s on a busy disk,
        # and CI once took longer than 60 s for the two.
        try:
            assert process.wait(timeout=3 * WAIT) == 0
        except subprocess.TimeoutExpired:
            logs = {log.name: log.read_text(errors="replace")[-3000:] for log in root.glob("*.log")}
            processes = subprocess.run(["ps", "-ef"], capture_output=True, text=True).stdout
            pytest.fail(f"dev cluster did not stop; logs: {logs}\nprocesses:\n{processes}")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(replica, connect_timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        for pgdata in root.glob("*/postmaster.pid"):
            subprocess.run(["pkill", "-f", str(pgdata.parent)], check=False)
        devcluster.remove(root)


def test_a_token_revoked_on_the_primary_is_refused_while_the_replica_lags(
    api: Api, cluster: devcluster.Cluster
) -> None:
    """The token check runs on the primary even for reads that go to a replica:
    a revocation made elsewhere (another instance, an operator), which this
    process's read-your-writes knows nothing of, holds at once."""
    alice, bob = api.account("rv_alice"), api.account("rv_bob")
    group = api.group(alice, bob)
    api.send(alice, group, "hello")
    cluster.wait_replayed()
    assert _bodies(api, bob, group) == ["hello"]

    _replica_sql(cluster, "SELECT pg_wal_replay_pause()")
    try:
        with psycopg.connect(cluster.primary.url(EMBEDDED_DATABASE), autocommit=True) as primary:
            primary.execute(
                "UPDATE auth_tokens SET revoked_at = now() WHERE user_id = %s", (bob.id,)
            )
        response = api.client.get(f"/v1/conversations/{group}/messages", headers=bob.auth)
        assert response.status_code == 401, response.text
        # Other callers are unaffected.
        assert api.client.get("/v1/conversations", headers=alice.auth).status_code == 200
    finally:
        _replica_sql(cluster, "SELECT pg_wal_replay_resume()")
