"""`chatdb backup`, `chatdb restore` and `chatdb purge` as a user runs them: real
processes, pg_dump/pg_restore of the server's own major version."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from chatdb import backup
from chatdb.db import make_engine
from chatdb.models import Base
from tests.conftest import TEST_SETTINGS, create_database, drop_database
from tests.test_cli import assert_one_line_error, base_env, run_chatdb

TABLES = [*sorted(Base.metadata.tables), "alembic_version"]


def as_env_url(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def fingerprint(url: URL) -> dict[str, tuple[int, str]]:
    """Every table's row count and an md5 of its rows in a fixed order."""
    engine = make_engine(url, TEST_SETTINGS)
    try:
        with engine.connect() as connection:
            return {
                table: tuple(  # type: ignore[misc]
                    connection.execute(
                        text(
                            f"SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' "  # noqa: S608
                            f"ORDER BY t::text)), '') FROM {table} t"
                        )
                    ).one()
                )
                for table in TABLES
            }
    finally:
        engine.dispose()


@pytest.fixture
def empty_url(server_url: URL) -> Iterator[URL]:
    """A database without any schema: where a backup is restored."""
    name = f"chatdb_r_{uuid.uuid4().hex[:12]}"
    yield create_database(server_url, name)
    drop_database(server_url, name)


def ok(*args: str, env: dict[str, str]) -> str:
    result = run_chatdb(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_backup_and_restore_reproduce_every_row(
    fresh_database: URL, empty_url: URL, tmp_path: Path
) -> None:
    source = base_env(CHATDB_DATABASE_URL=as_env_url(fresh_database))
    ok("seed", "--users", "40", "--conversations", "30", "--messages", "600", "--big-groups", "1",
       "--big-group-size", "10", env=source)  # fmt: skip
    # Every kind of row: a deleted message, a deleted conversation, a token, a throttle
    # counter, archived messages.
    ok("message", "delete", "1", "1", env=source)
    ok("archive", "--older-than-days", "60", env=source)
    ok("conversation", "delete", "2", env=source)
    # A reply that mentions a member, and a reaction.
    first, second = json.loads(ok("member", "list", "1", "--json", env=source))[:2]
    ok("message", "send", "1", f"@{second['username']} see above", "--sender",
       first["username"], "--reply-to", "2", env=source)  # fmt: skip
    ok("message", "react", "1", "2", "👍", "--user", first["username"], env=source)
    engine = make_engine(fresh_database, TEST_SETTINGS)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO auth_tokens (user_id, token_hash, expires_at) "
                "VALUES (1, sha256('t'), now() + interval '1 day')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO sign_in_failures (key_hash, scope, failures) "
                "VALUES (sha256('k'), 'account', 3)"
            )
        )
    engine.dispose()
    before = fingerprint(fresh_database)
    assert before["messages"][0] + before["messages_archive"][0] >= 600
    before_last_seq = json.loads(ok("conversation", "show", "1", "--json", env=source))["last_seq"]
    assert all(before[t][0] > 0 for t in TABLES), before

    file = tmp_path / "chat.backup"
    assert "backed up to" in ok("backup", str(file), env=source)
    assert file.read_bytes().startswith(b"PGDMP")

    target = base_env(CHATDB_DATABASE_URL=as_env_url(empty_url))
    assert "restored from" in ok("restore", str(file), env=target)
    assert fingerprint(empty_url) == before
    # The identity counters came along: new rows do not collide with restored ones.
    ok("user", "create", "after_restore", "after@example.org", env=target)
    sender = json.loads(ok("member", "list", "1", "--json", env=target))[0]["user_id"]
    sent = json.loads(
        ok("message", "send", "1", "after", "--sender", str(sender), "--json", env=target)
    )
    assert sent["message"]["seq"] == before_last_seq + 1
    restored = json.loads(ok("conversation", "restore", "2", "--json", env=target))
    assert restored["id"] == 2

    # A database that holds data is replaced only when asked, and then exactly.
    assert_one_line_error(run_chatdb("restore", str(file), env=target), "--yes")
    ok("restore", str(file), "--yes", env=target)
    assert fingerprint(empty_url) == before


def test_bad_files_and_paths_are_one_line_errors(fresh_database: URL, tmp_path: Path) -> None:
    env = base_env(CHATDB_DATABASE_URL=as_env_url(fresh_database))
    before = fingerprint(fresh_database)
    garbage = tmp_path / "garbage.backup"
    garbage.write_bytes(b"this is not a backup")
    truncated = tmp_path / "truncated.backup"
    good = tmp_path / "good.backup"
    ok("backup", str(good), env=env)
    truncated.write_bytes(good.read_bytes()[:200])

    for args, fragment in [
        (("restore", str(tmp_path / "missing.backup")), "does not exist"),
        (("restore", str(tmp_path)), "not a file"),
        (("restore", str(garbage)), "not a chatdb backup"),
        (("restore", str(truncated), "--yes"), "not a readable backup"),
        (("backup", str(tmp_path / "no" / "such" / "dir.backup")), "does not exist"),
        (("backup", str(tmp_path)), "is a directory"),
        (("backup", str(good)), "--force"),
    ]:
        assert_one_line_error(run_chatdb(*args, env=env), fragment)
    assert fingerprint(fresh_database) == before
    ok("backup", str(good), "--force", env=env)


def test_a_backup_cut_short_in_its_data_restores_nothing(
    fresh_database: URL, tmp_path: Path
) -> None:
    """The table of contents reads fine, the rows run out: the restore rolls back."""
    env = base_env(CHATDB_DATABASE_URL=as_env_url(fresh_database))
    ok("seed", "--users", "20", "--conversations", "10", "--messages", "2000", "--big-groups",
       "0", env=env)  # fmt: skip
    good = tmp_path / "good.backup"
    ok("backup", str(good), env=env)
    ok("message", "delete", "1", "1", env=env)  # so that a restore would show
    before = fingerprint(fresh_database)
    cut = tmp_path / "cut.backup"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    result = run_chatdb("restore", str(cut), "--yes", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: restore failed")
    assert len(result.stderr.strip().splitlines()) == 1
    assert fingerprint(fresh_database) == before


def test_tools_match_the_servers_major_version(fresh_engine: Engine) -> None:
    major = backup.server_major(fresh_engine)
    for name in ("pg_dump", "pg_restore"):
        tool = backup.find_tool(name, major, embedded=False)
        assert tool.major == major
        embedded = backup.find_tool(name, major, embedded=True)
        own = backup.pgserver_bin()
        assert own is not None
        assert embedded.path == own / name
    with pytest.raises(Exception, match="postgresql-client-99"):
        backup.find_tool("pg_dump", 99, embedded=False)


def test_purge_from_the_command_line(fresh_database: URL) -> None:
    env = base_env(
        CHATDB_DATABASE_URL=as_env_url(fresh_database),
        CHATDB_RETENTION_DAYS="7",
        CHATDB_CHANGE_RETENTION_DAYS="3",
    )
    ok("user", "create", "alice", "alice@example.org", env=env)
    ok("user", "create", "bob", "bob@example.org", env=env)
    for _ in range(2):
        ok("conversation", "create-group", "--owner", "alice", "--title", "t", "--member", "bob",
           env=env)  # fmt: skip
        ok("message", "send", "1", "hi", "--sender", "bob", env=env)
    assert "restorable for 7 days" in ok("conversation", "delete", "1", env=env)
    ok("conversation", "delete", "2", env=env)
    engine = make_engine(fresh_database, TEST_SETTINGS)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE conversations SET deleted_at = now() - interval '8 days' WHERE id = 1")
        )
        # Every change but the newest two is past the change log's window.
        changes = connection.execute(text("SELECT count(*) FROM changes")).scalar_one()
        connection.execute(
            text(
                "UPDATE changes SET created_at = now() - interval '4 days' "
                "WHERE id <= (SELECT max(id) - 2 FROM changes)"
            )
        )
    listed = json.loads(ok("conversation", "deleted", "--json", env=env))
    assert [c["id"] for c in listed] == [1, 2]

    due = json.loads(ok("purge", "--dry-run", "--json", env=env))
    assert (due["conversations"], due["conversation_messages"]) == (1, 2)
    assert due["changes"] == changes - 2
    assert json.loads(ok("purge", "--dry-run", "--json", env=env)) == due  # changed nothing
    done = json.loads(ok("purge", "--json", "--batch-size", "1", env=env))
    assert done["conversations"] == 1
    assert done["changes"] == changes - 2
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM changes")).scalar_one() == 2
    engine.dispose()
    assert [c["id"] for c in json.loads(ok("conversation", "deleted", "--json", env=env))] == [2]
    result = run_chatdb("conversation", "restore", "1", env=env)
    assert result.returncode == 1
    assert "no conversation with id 1" in result.stderr
    ok("conversation", "restore", "2", env=env)
    assert json.loads(ok("conversation", "deleted", "--json", env=env)) == []
