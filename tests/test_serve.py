"""`chatdb serve` as a user runs it: a real process on a real database, driven
over HTTP like the README's curl session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from sqlalchemy.engine import URL

from chatdb.demo import DEMO_PASSWORD
from tests.test_events import WAIT, Listener

ADMIN_KEY = "serve-test-admin-key-5f1c9e"
STARTUP = 90.0  # a cold start creates the demo data (password hashing) first


def chatdb_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any CHATDB_ setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATDB_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def database_url(fresh_database: URL) -> str:
    """A migrated, empty database as a CHATDB_DATABASE_URL string."""
    return fresh_database.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """`chatdb serve --demo` on a free port until /readyz answers; the base URL.
    The process is always ended, and its output shown if the test fails."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatdb", "serve", "--port", str(port), "--demo"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP
        while True:
            assert process.poll() is None, f"chatdb serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"/readyz never answered:\n{log.read_text()}"
            try:
                if httpx2.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)


def test_the_readme_session_against_chatdb_serve(database_url: str, tmp_path: Path) -> None:
    env = chatdb_env(
        CHATDB_DATABASE_URL=database_url,
        CHATDB_ADMIN_KEY=ADMIN_KEY,
        # The stream reader notices it should stop on the next line it reads.
        CHATDB_SSE_KEEPALIVE_SECONDS="1",
    )
    log = tmp_path / "serve.log"
    with serving(env, log) as base, httpx2.Client(base_url=base, timeout=WAIT) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        # Sign in as two demo users.
        tokens, ids = {}, {}
        for name in ("alice", "bob"):
            signed_in = client.post(
                "/v1/sessions", json={"username": name, "password": DEMO_PASSWORD}
            )
            assert signed_in.status_code == 201, signed_in.text
            tokens[name], ids[name] = signed_in.json()["token"], signed_in.json()["user_id"]
        alice = {"Authorization": f"Bearer {tokens['alice']}"}

        # bob listens for live updates.
        stream = Listener(base, tokens["bob"])
        try:
            # alice creates a group with bob and sends; a retry sends nothing twice.
            created = client.post(
                "/v1/conversations",
                json={"title": "Lunch", "member_ids": [ids["bob"]]},
                headers=alice,
            )
            assert created.status_code == 201, created.text
            lunch = created.json()["id"]
            messages = f"/v1/conversations/{lunch}/messages"
            key = {**alice, "Idempotency-Key": "7f3c"}
            sent = client.post(messages, json={"body": "Noodles at 12?"}, headers=key)
            assert sent.status_code == 201, sent.text
            retried = client.post(messages, json={"body": "Noodles at 12?"}, headers=key)
            assert retried.status_code == 200
            assert retried.headers["Idempotent-Replayed"] == "true"
            assert retried.json()["seq"] == sent.json()["seq"]

            # bob's stream has the message.
            events = stream.wait_body("Noodles at 12?")
            assert events[-1].kind == "message.created"
            assert events[-1].conversation_id == lunch
            assert events[-1].data["message"]["sender_id"] == ids["alice"]
        finally:
            stream.stop()

        # Page history: the newest page, then older ones with ?before=<seq>.
        page = client.get(messages, params={"limit": 50}, headers=alice).json()
        assert [m["body"] for m in page["messages"]] == ["Noodles at 12?"]
        inbox = client.get("/v1/conversations", headers=alice)
        assert inbox.status_code == 200
        entries = inbox.json()["entries"]
        assert entries[0]["conversation_id"] == lunch  # newest activity first
        team = next(e["conversation_id"] for e in entries if e["title"] == "Demo team")
        history: list[str] = []
        before: int | None = None
        for _ in range(10):
            params = {"limit": 3} if before is None else {"limit": 3, "before": before}
            older = client.get(f"/v1/conversations/{team}/messages", params=params, headers=alice)
            assert older.status_code == 200, older.text
            batch = older.json()
            history = [m["body"] for m in batch["messages"]] + history
            if not batch["has_older"]:
                break
            before = batch["messages"][0]["seq"]
        assert len(history) == 8
        assert history[0] == "Morning all! Stand-up in 10 minutes?"
        assert history[-1] == "30 days for deleted conversations, then purge."

        # The configured admin key works; the development default does not.
        assert (
            client.get(
                "/v1/reports/inactive", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ).status_code
            == 200
        )
        dev = client.get(
            "/v1/reports/inactive", headers={"Authorization": "Bearer chatdb-dev-admin-key"}
        )
        assert dev.status_code == 401


def test_serving_a_configured_database_with_the_default_admin_key_is_refused(
    database_url: str,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatdb", "serve", "--port", str(free_port()), "--demo"],
        env=chatdb_env(CHATDB_DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "CHATDB_ADMIN_KEY" in lines[0]
    assert "Traceback" not in result.stderr
