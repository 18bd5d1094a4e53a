"""Point-in-time recovery, as the README describes it for a production server,
performed on loopback: a throwaway PostgreSQL (the embedded server's own
binaries) with WAL archiving, a base backup, an accident, and a recovery to the
moment before it. Every wait is bounded; the servers are stopped even when the
test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chatdb.backup import pgserver_bin

BIN = pgserver_bin()
# initdb refuses to run as root; pgserver makes this user for the same reason.
RUN_AS = "pgserver" if os.geteuid() == 0 else None
STEP_TIMEOUT = 120  # seconds, for any one command or wait: a bound, not a speed claim

pytestmark = pytest.mark.skipif(
    BIN is None or not (BIN / "pg_basebackup").exists(), reason="pgserver binaries not found"
)


def pg(tool: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    assert BIN is not None
    return subprocess.run(
        [str(BIN / tool), *args],
        user=RUN_AS,
        check=True,
        text=True,
        timeout=STEP_TIMEOUT,
        # Not pipes: a started postmaster would inherit them and keep them open.
        stdout=kwargs.pop("stdout", subprocess.DEVNULL),
        stderr=kwargs.pop("stderr", subprocess.DEVNULL),
        **kwargs,
    )


@dataclass
class Cluster:
    data: Path
    port: int
    socket_dir: Path

    def start(self) -> None:
        pg("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w",
           "-t", str(STEP_TIMEOUT), "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres",
            autocommit=True,
        )  # fmt: skip

    def configure(self, **settings: str | int) -> None:
        lines = [f"{key} = '{value}'" for key, value in settings.items()]
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: the server's user must be able to reach it.
    path = Path(tempfile.mkdtemp(prefix="chatdb-pitr-"))
    if RUN_AS:
        shutil.chown(path, RUN_AS, RUN_AS)
    try:
        yield path
    finally:
        # Whatever still runs (a failed test): stopped at once, then removed.
        for pid_file in path.glob("*/postmaster.pid"):
            with contextlib.suppress(subprocess.SubprocessError):
                Cluster(pid_file.parent, 0, path).stop("immediate")
        shutil.rmtree(path, ignore_errors=True)


def notes(cluster: Cluster) -> list[int]:
    with cluster.connect() as conn:
        return [row[0] for row in conn.execute("SELECT id FROM notes ORDER BY id")]


def test_point_in_time_recovery_to_just_before_an_accident(workdir: Path) -> None:
    archive = workdir / "archive"
    primary = Cluster(workdir / "primary", 54000 + os.getpid() % 1000, workdir)
    pg("initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust", "--no-sync")
    archive.mkdir()
    if RUN_AS:
        shutil.chown(archive, RUN_AS, RUN_AS)
    primary.configure(
        port=primary.port,
        listen_addresses="",
        unix_socket_directories=str(workdir),
        wal_level="replica",
        archive_mode="on",
        archive_command=f"test ! -f {archive}/%f && cp %p {archive}/%f",
    )
    primary.start()

    with primary.connect() as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes SELECT g, 'before the backup' FROM generate_series(1, 3) g")
    base = workdir / "base"
    pg("pg_basebackup", "-D", str(base), "-h", str(workdir), "-p", str(primary.port),
       "-U", "postgres", "--checkpoint=fast", "--wal-method=stream")  # fmt: skip

    with primary.connect() as conn:
        conn.execute("INSERT INTO notes SELECT g, 'after the backup' FROM generate_series(4, 6) g")
        # The moment to go back to: every record from here on is undone.
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        conn.execute("DELETE FROM notes")  # the accident
        conn.execute("INSERT INTO notes VALUES (7, 'after the accident')")
        last_segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]  # type: ignore[index]
        conn.execute("SELECT pg_switch_wal()")
    wait_until(lambda: (archive / last_segment).exists(), f"{last_segment} to be archived")
    assert notes(primary) == [7]
    primary.stop()

    # Recovery: the base backup, the archived WAL replayed up to the target.
    restored = Cluster(workdir / "restored", primary.port + 1, workdir)
    subprocess.run(["cp", "-a", str(base), str(restored.data)], check=True, user=RUN_AS,
                   timeout=STEP_TIMEOUT)  # fmt: skip
    restored.configure(
        port=restored.port,
        archive_mode="off",
        restore_command=f"cp {archive}/%f %p",
        recovery_target_lsn=str(target),
        recovery_target_inclusive="off",
        recovery_target_action="promote",
    )
    (restored.data / "recovery.signal").touch()
    if RUN_AS:
        shutil.chown(restored.data / "recovery.signal", RUN_AS, RUN_AS)
    restored.start()

    def promoted() -> bool:
        with restored.connect() as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]

    wait_until(promoted, "recovery to reach its target and promote")
    assert notes(restored) == [1, 2, 3, 4, 5, 6]
    log = (restored.data / "server.log").read_text()
    assert f'recovery stopping before WAL location (LSN) "{target}"' in log
    # The recovered server takes writes again, on a new timeline.
    with restored.connect() as conn:
        conn.execute("INSERT INTO notes VALUES (8, 'after the recovery')")
    assert notes(restored) == [1, 2, 3, 4, 5, 6, 8]
    restored.stop()
