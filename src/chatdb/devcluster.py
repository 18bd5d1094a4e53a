"""A primary and streaming replicas on loopback, for development and tests.

Built from PostgreSQL's own tools: `initdb` for the primary, `pg_basebackup -R`
for each replica (which writes `standby.signal` and `primary_conninfo`), and
physical streaming replication. The binaries are the embedded server's (pgserver
ships a whole PostgreSQL) unless `bin_dir` names others.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from chatdb.errors import DatabaseUnavailable

# PostgreSQL refuses to run as root; pgserver creates this user for that case.
_ROOT_RUNS_AS = "pgserver"


def embedded_bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from pgserver import _commands

    path: Path = _commands.POSTGRES_BIN_PATH
    return path


def run_as(bin_dir: Path) -> str | None:
    """The system user to run PostgreSQL as: none unless we are root. Then, as
    pgserver does, make its user and let it read pgserver's binaries (pgserver
    may never have run on this machine)."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from pgserver import utils

    utils.ensure_user_exists(_ROOT_RUNS_AS)
    if bin_dir == embedded_bin_dir():
        utils.ensure_prefix_permissions(bin_dir)
        utils.ensure_folder_permissions(
            bin_dir, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        )
        utils.ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return _ROOT_RUNS_AS


@dataclass
class Node:
    """One PostgreSQL server: its data directory, port and process."""

    pgdata: Path
    port: int
    bin_dir: Path
    user: str | None = None
    # Further server settings (-c name=value), beside the loopback-only ones.
    settings: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> Path:
        return self.pgdata.parent / f"{self.pgdata.name}.log"

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            return
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.pgdata),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    *(f"-c{name}={value}" for name, value in self.settings.items()),
                ],
                user=self.user,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise DatabaseUnavailable(f"PostgreSQL in {self.pgdata} exited:\n{tail}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise DatabaseUnavailable(
                        f"PostgreSQL on port {self.port} did not accept connections "
                        f"within {timeout:.0f} s (see {self.log})"
                    ) from None
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (clean) or `immediate` (as if it crashed)."""
        if not self.running:
            return
        subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
            user=self.user,
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert self.process is not None
        self.process.wait(timeout=60)


@dataclass
class Cluster:
    primary: Node
    replicas: list[Node]

    def stop(self) -> None:
        for node in [*self.replicas, self.primary]:
            node.stop()

    def wait_replayed(self, timeout: float = 60.0) -> None:
        """Until every replica has replayed all the primary has written so far."""
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert row is not None
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            with psycopg.connect(replica.url(), autocommit=True) as conn:
                while True:
                    done = conn.execute(
                        "SELECT pg_last_wal_replay_lsn() >= %s", (row[0],)
                    ).fetchone()
                    if done and done[0]:
                        break
                    if time.monotonic() > deadline:
                        raise DatabaseUnavailable(
                            f"the replica on port {replica.port} did not catch up "
                            f"within {timeout:.0f} s (see {replica.log})"
                        )
                    time.sleep(0.05)


def start_cluster(
    root: Path, ports: list[int], bin_dir: Path | None = None, timeout: float = 60.0
) -> Cluster:
    """A primary on ports[0] and a streaming replica on each further port, with
    their data under `root` (created; reused when it already holds a cluster)."""
    if not ports:
        raise ValueError("a cluster needs at least the primary's port")
    bin_dir = bin_dir or embedded_bin_dir()
    user = run_as(bin_dir)
    root.mkdir(parents=True, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)

    primary = Node(root / "primary", ports[0], bin_dir, user)
    if not (primary.pgdata / "PG_VERSION").exists():
        _tool(
            bin_dir,
            user,
            "initdb",
            "-D",
            str(primary.pgdata),
            "--auth=trust",
            "--username=postgres",
            "--encoding=utf8",
            "--no-instructions",
        )
        # wal_level=replica and max_wal_senders are already PostgreSQL's defaults;
        # loopback replication connections are trusted like the others.
        with (primary.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
    primary.start(timeout)

    replicas = []
    for index, port in enumerate(ports[1:], start=1):
        replica = Node(root / f"replica{index}", port, bin_dir, user)
        if not (replica.pgdata / "PG_VERSION").exists():
            _tool(
                bin_dir,
                user,
                "pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(replica.pgdata),
                "--write-recovery-conf",
                "--checkpoint=fast",
                "--wal-method=stream",
            )
        replica.start(timeout)
        replicas.append(replica)
    return Cluster(primary, replicas)


def _tool(bin_dir: Path, user: str | None, name: str, *args: str) -> None:
    result = subprocess.run(
        [str(bin_dir / name), *args],
        user=user,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise DatabaseUnavailable(f"{name} failed: {result.stderr.strip() or result.stdout}")


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
