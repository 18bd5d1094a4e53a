"""The `chatdb` command as a user runs it: a real process, a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL

from tests.conftest import create_database, drop_database


def run_chatdb(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatdb", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATDB_")}
    env.update({"COLUMNS": "200", **extra})
    return env


@pytest.fixture
def empty_database(server_url: URL) -> Iterator[str]:
    """A database with no schema, as a CHATDB_DATABASE_URL string."""
    name = f"chatdb_cli_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    yield url.set(drivername="postgresql").render_as_string(hide_password=False)
    drop_database(server_url, name)


@pytest.fixture
def migrated_url(fresh_database: URL) -> str:
    return fresh_database.set(drivername="postgresql").render_as_string(hide_password=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", ["127.0.0.1:1", "refused"]),
        ("postgresql://postgres@nohost.invalid:5432/test", ["nohost.invalid", "host name"]),
        ("mysql://root@127.0.0.1/test", ["must point to PostgreSQL"]),
        ("::not a url::", ["not a valid URL"]),
    ],
)
def test_unreachable_database_is_one_clear_line(url: str, fragments: list[str]) -> None:
    result = run_chatdb("user", "list", env=base_env(CHATDB_DATABASE_URL=url))
    assert_one_line_error(result, *fragments)


def test_missing_database_and_bad_user_name_what_to_check(server_url: URL) -> None:
    missing = server_url.set(drivername="postgresql", database="chatdb_no_such_db")
    result = run_chatdb(
        "user",
        "list",
        env=base_env(CHATDB_DATABASE_URL=missing.render_as_string(hide_password=False)),
    )
    assert_one_line_error(result, "chatdb_no_such_db", "does not exist")
    bad_role = server_url.set(drivername="postgresql", username="no_such_role_x")
    result = run_chatdb(
        "user",
        "list",
        env=base_env(CHATDB_DATABASE_URL=bad_role.render_as_string(hide_password=False)),
    )
    assert_one_line_error(result, "no_such_role_x")


def test_a_statement_timeout_is_not_called_a_connection_failure(migrated_url: str) -> None:
    env = base_env(CHATDB_DATABASE_URL=migrated_url, CHATDB_STATEMENT_TIMEOUT_MS="300")
    with psycopg.connect(migrated_url) as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        result = run_chatdb("user", "list", env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "statement timeout (300 ms, CHATDB_STATEMENT_TIMEOUT_MS)" in lines[0]
    assert "cannot connect" not in lines[0]


def test_schema_behind_stops_with_a_pointer_to_upgrade(empty_database: str) -> None:
    env = base_env(CHATDB_DATABASE_URL=empty_database)
    result = run_chatdb("user", "list", env=env)
    assert_one_line_error(result, "chatdb db upgrade")

    assert run_chatdb("db", "upgrade", env=env).returncode == 0
    current = run_chatdb("db", "current", env=env)
    assert "up to date" in current.stdout
    assert run_chatdb("user", "list", env=env).returncode == 0

    assert run_chatdb("db", "downgrade", "base", env=env).returncode == 0
    assert_one_line_error(run_chatdb("user", "list", env=env), "behind")
    assert_one_line_error(run_chatdb("db", "upgrade", "nope", env=env), "unknown migration")


def test_bad_arguments_are_one_line_and_exit_2(migrated_url: str) -> None:
    env = base_env(CHATDB_DATABASE_URL=migrated_url)
    assert_one_line_error(run_chatdb("message", "list", "abc", env=env), "conversation_id")
    assert_one_line_error(run_chatdb("user", "list", "--limit", "0", env=env), "--limit")
    assert_one_line_error(run_chatdb("no-such-command", env=env), "no-such-command")
    assert_one_line_error(
        run_chatdb("query", "activity", "--tz", "Mars/Olympus", env=env), "time zone"
    )
    assert_one_line_error(
        run_chatdb("user", "create", "bad name!", "x@example.org", env=env), "username"
    )


def test_a_chat_through_the_cli(migrated_url: str) -> None:
    env = base_env(CHATDB_DATABASE_URL=migrated_url)

    def ok(*args: str) -> str:
        result = run_chatdb(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    alice = json.loads(ok("user", "create", "alice", "alice@example.org", "--json"))
    ok("user", "create", "bob", "bob@example.org", "--display-name", "Bob B.")
    group = json.loads(
        ok(
            "conversation",
            "create-group",
            "--owner",
            "alice",
            "--title",
            "Team",
            "--member",
            "bob",
            "--json",
        )
    )
    cid = str(group["id"])
    first = json.loads(
        ok("message", "send", cid, "hello", "--sender", "alice", "--key", "k", "--json")
    )
    again = json.loads(
        ok("message", "send", cid, "hello", "--sender", "alice", "--key", "k", "--json")
    )
    assert first["created"]
    assert not again["created"]
    assert again["message"]["seq"] == first["message"]["seq"] == 1
    ok("message", "send", cid, "hi alice", "--sender", "bob")

    page = json.loads(ok("query", "last-messages", cid, "--json"))
    assert [
        (m["seq"], m["sender_display_name"] or m["sender_username"]) for m in page["messages"]
    ] == [
        (1, "alice"),
        (2, "Bob B."),
    ]
    inbox = json.loads(ok("query", "inbox", "alice", "--json"))
    (entry,) = inbox["entries"]
    assert entry["title"] == "Team"
    assert entry["last_message_body"] == "hi alice"
    assert entry["unread_count"] == 1

    assert "read up to 2; 0 unread" in ok("message", "read", cid, "2", "--user", "alice")
    ok("message", "delete", cid, "1")
    assert json.loads(ok("message", "list", cid, "--json"))["messages"][0]["body"] is None
    ok("message", "restore", cid, "1")
    assert json.loads(ok("message", "list", cid, "--json"))["messages"][0]["body"] == "hello"

    inactive = json.loads(ok("query", "inactive", "--json"))
    assert inactive["users"] == []
    activity = json.loads(ok("query", "activity", "--json"))
    assert sorted((r["username"], r["message_count"]) for r in activity) == [
        ("alice", 1),
        ("bob", 1),
    ]

    refused = run_chatdb("user", "create", "ALICE", "other@example.org", env=env)
    assert refused.returncode == 1
    assert "username is taken" in refused.stderr
    ok("user", "delete", str(alice["id"]))
    gone = run_chatdb("user", "show", "alice", env=env)
    assert gone.returncode == 1
    assert "no user named" in gone.stderr


def test_replies_reactions_and_mentions_through_the_cli(migrated_url: str) -> None:
    env = base_env(CHATDB_DATABASE_URL=migrated_url)

    def ok(*args: str) -> str:
        result = run_chatdb(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    ok("user", "create", "alice", "alice@example.org")
    ok("user", "create", "bob", "bob@example.org")
    group = json.loads(
        ok(
            "conversation",
            "create-group",
            "--owner",
            "alice",
            "--title",
            "T",
            "--member",
            "bob",
            "--json",
        )
    )
    cid = str(group["id"])
    ok("message", "send", cid, "lunch, @bob?", "--sender", "alice")
    reply = json.loads(
        ok("message", "send", cid, "yes", "--sender", "bob", "--reply-to", "1", "--json")
    )
    assert reply["message"]["reply_to"]["body"] == "lunch, @bob?"
    thread = json.loads(ok("message", "replies", cid, "1", "--json"))
    assert thread["parent"]["reply_count"] == 1
    assert [m["body"] for m in thread["replies"]] == ["yes"]
    reacted = json.loads(ok("message", "react", cid, "1", "🎉", "--user", "bob", "--json"))
    assert reacted["reactions"] == [{"emoji": "🎉", "count": 1, "me": True}]
    assert "🎉1" in ok("message", "list", cid)
    removed = json.loads(
        ok("message", "react", cid, "1", "🎉", "--user", "bob", "--remove", "--json")
    )
    assert removed["reactions"] == []
    assert_one_line_error(
        run_chatdb("message", "react", cid, "1", "ok", "--user", "bob", env=env), "not an emoji"
    )
    (entry,) = json.loads(ok("query", "inbox", "bob", "--json"))["entries"]
    assert entry["unread_mention_count"] == 0  # bob's reply read up to it
    (entry,) = json.loads(ok("query", "inbox", "alice", "--json"))["entries"]
    assert entry["unread_mention_count"] == 0


def test_explain_prints_the_plan(migrated_url: str) -> None:
    env = base_env(CHATDB_DATABASE_URL=migrated_url)
    run_chatdb("user", "create", "alice", "alice@example.org", env=env)
    run_chatdb("conversation", "create-group", "--owner", "alice", "--title", "T", env=env)
    run_chatdb("message", "send", "1", "hello", "--sender", "alice", env=env)
    for query in ("last-messages", "inbox", "activity", "inactive"):
        result = run_chatdb("explain", query, env=env)
        assert result.returncode == 0, result.stderr
        assert "Execution Time" in result.stdout


def test_embedded_server_keeps_data_across_restarts(tmp_path: Path) -> None:
    """No CHATDB_DATABASE_URL: an embedded server under .chatdb/ in the working
    directory (or CHATDB_DATA_DIR), reused across commands and restarts."""
    env = base_env()
    work = tmp_path / "project"
    work.mkdir()
    try:
        url = run_chatdb("db", "url", env=env, cwd=work)
        assert url.returncode == 0, url.stderr
        assert str(work / ".chatdb") in url.stdout.replace("%2F", "/")
        created = run_chatdb("user", "create", "carol", "carol@example.org", env=env, cwd=work)
        assert created.returncode == 0, created.stderr
        assert run_chatdb("db", "stop", env=env, cwd=work).returncode == 0
        again = run_chatdb("user", "show", "carol", "--json", env=env, cwd=work)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["username"] == "carol"
    finally:
        run_chatdb("db", "stop", env=env, cwd=work)

    elsewhere = tmp_path / "data"
    try:
        result = run_chatdb("db", "url", env=base_env(CHATDB_DATA_DIR=str(elsewhere)), cwd=work)
        assert result.returncode == 0, result.stderr
        assert (elsewhere / "pgdata" / "PG_VERSION").exists()
    finally:
        run_chatdb("db", "stop", env=base_env(CHATDB_DATA_DIR=str(elsewhere)), cwd=work)


def test_search_through_the_cli(migrated_url: str) -> None:
    env = base_env(CHATDB_DATABASE_URL=migrated_url)

    def ok(*args: str) -> str:
        result = run_chatdb(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    ok("user", "create", "alice", "alice@example.org")
    ok("user", "create", "bob", "bob@example.org")
    ok("user", "create", "eve", "eve@example.org")
    group = json.loads(
        ok(
            "conversation",
            "create-group",
            "--owner",
            "alice",
            "--title",
            "T",
            "--member",
            "bob",
            "--json",
        )
    )
    cid = str(group["id"])
    for body in ("deploy tonight", "deploy the release", "lunch plans", "deploy docs"):
        ok("message", "send", cid, body, "--sender", "alice")
    ok("message", "send", cid, "@bob deploy is yours", "--sender", "alice")

    found = json.loads(ok("search", "deploy -docs", "--as", "bob", "--json"))
    assert sorted(h["message"]["body"] for h in found["results"]) == [
        "@bob deploy is yours",
        "deploy the release",
        "deploy tonight",
    ]
    assert json.loads(ok("search", "deploy", "--as", "eve", "--json"))["results"] == []
    first = json.loads(ok("search", "deploy", "--limit", "2", "--json"))
    rest = json.loads(ok("search", "deploy", "--cursor", first["next_cursor"], "--json"))
    seqs = [h["message"]["seq"] for h in first["results"] + rest["results"]]
    assert sorted(seqs) == [1, 2, 4, 5]
    assert rest["next_cursor"] is None
    table = ok("search", '"the release"', "--from", "alice", "--conversation", cid)
    assert "deploy the «release»" in table
    assert_one_line_error(run_chatdb("search", "--", "-deploy", env=env), "nothing to search for")
    assert_one_line_error(run_chatdb("search", "x", "--cursor", "nope", env=env), "cursor")
    mentions = json.loads(ok("search", "deploy", "--as", "bob", "--mentions", "--json"))
    assert [h["message"]["seq"] for h in mentions["results"]] == [5]
    assert_one_line_error(run_chatdb("search", "deploy", "--mentions", env=env), "--as")
