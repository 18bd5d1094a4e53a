"""Machinery for the fault tests: a PostgreSQL of the test's own that can be
SIGKILLed and restarted, `chatdb serve` as a process that can be SIGKILLed and
restarted, clients that send with idempotency keys and retry until they get an
answer, a live-update client that resumes with Last-Event-ID, and the checks
run after every crash.

Everything here talks to 127.0.0.1 only, and every loop is bounded by a count
or a deadline. Processes are started in sessions of their own and ended by
killing their process group, never by name.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx2
import psycopg

from chatdb import devcluster, migrate, store
from chatdb.db import make_engine, normalize_url, session_factory
from tests.api_support import PASSWORD
from tests.conftest import TEST_SETTINGS
from tests.test_events import WAIT
from tests.test_serve import chatdb_env, free_port

FAULT_ADMIN_KEY = "fault-test-admin-key-8d2e41"


# --- which PostgreSQL binaries -------------------------------------------------------


def _has_amcheck(bin_dir: Path) -> bool:
    """Whether this installation ships the amcheck extension pg_amcheck needs."""
    if not (bin_dir / "pg_amcheck").exists():
        return False
    major = bin_dir.parent.name  # Debian: /usr/lib/postgresql/<major>/bin
    candidates = [
        bin_dir.parent / "share" / "postgresql" / "extension",
        bin_dir.parent / "share" / "extension",
        Path("/usr/share/postgresql") / major / "extension",
    ]
    return any((c / "amcheck.control").exists() for c in candidates)


def postgres_binaries() -> tuple[Path, bool]:
    """The binaries for the throwaway server, and whether pg_amcheck works with them.

    pgserver's PostgreSQL (what chatdb embeds) is built without the contrib
    modules, so it has pg_amcheck but not the amcheck extension it needs. A
    machine's own PostgreSQL with contrib (Debian's, on CI) has both; it is
    preferred so that every crash is followed by a real corruption check.
    """
    embedded = devcluster.embedded_bin_dir()
    if _has_amcheck(embedded):
        return embedded, True
    system = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bin_dir in system:
        if (bin_dir / "postgres").exists() and _has_amcheck(bin_dir):
            return bin_dir, True
    return embedded, False


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal a process started with start_new_session=True and all its children."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=WAIT)


# --- a PostgreSQL of the test's own ------------------------------------------------------


class ThrowawayPostgres:
    """initdb into a temporary directory and run `postgres` on a free port.

    `crash()` SIGKILLs the postmaster and every backend at once (its process
    group), as an out-of-memory kill or a power cut of the database host would;
    `start()` then brings it up on the same port, through crash recovery.
    """

    def __init__(self) -> None:
        self.bin_dir, self.can_amcheck = postgres_binaries()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="chatdb-fault-pg-"))
        self.pgdata = self.root / "pgdata"
        # PostgreSQL refuses to run as root; pgserver makes a "pgserver" user then.
        self.user = devcluster.run_as(self.bin_dir)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.node = devcluster.Node(
            self.pgdata,
            self.port,
            self.bin_dir,
            self.user,
            settings={"max_connections": "80", "shared_buffers": "32MB"},
        )
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=utf8",
                "--username=postgres",
                "--no-instructions",
            ],
            user=self.user,
            check=True,
            capture_output=True,
            timeout=120,
        )

    @property
    def admin_conninfo(self) -> str:
        return self.conninfo("postgres")

    def conninfo(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start it, or again after a crash: it runs crash recovery first."""
        self.node.start()

    def crash(self) -> None:
        """SIGKILL the postmaster and all its backends at once."""
        assert self.node.process is not None
        kill_group(self.node.process)

    def create_database(self) -> str:
        """A new database at the newest migration; its name."""
        name = f"chatdb_fault_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a generated name, not input
        engine = make_engine(normalize_url(self.url(name)), TEST_SETTINGS)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        return name

    def amcheck(self, database: str) -> str:
        """pg_amcheck over every table and index (heap and B-tree, with
        heapallindexed); raises with its report if it finds corruption. Not
        --parent-check: that locks out writers, and the load goes on meanwhile."""
        result = subprocess.run(
            [
                str(self.bin_dir / "pg_amcheck"),
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--username=postgres",
                "--install-missing",
                "--heapallindexed",
                database,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"pg_amcheck found problems:\n{result.stdout}{result.stderr}"
        return result.stdout

    def close(self) -> None:
        if self.node.process is not None:
            kill_group(self.node.process)
        shutil.rmtree(self.root, ignore_errors=True)


# --- `chatdb serve` as a process -------------------------------------------------------------


class ServeProcess:
    """`chatdb serve` on a fixed port against a given database. `kill()` is a
    SIGKILL of its process group; `start()` again reuses the port, so clients
    keep their base URL."""

    def __init__(self, database_url: str, log: Path, **extra_env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        settings = {
            "CHATDB_DATABASE_URL": database_url,
            "CHATDB_ADMIN_KEY": FAULT_ADMIN_KEY,
            "CHATDB_SSE_KEEPALIVE_SECONDS": "1",
            "CHATDB_SSE_POLL_SECONDS": "0.5",
            "CHATDB_POOL_TIMEOUT_SECONDS": "2",
            "CHATDB_CONNECT_TIMEOUT_SECONDS": "2",
        }
        self.env = chatdb_env(**{**settings, **extra_env})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chatdb", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        assert self.wait_ready(90.0) is not None, f"serve never got ready:\n{self.tail()}"

    def wait_ready(self, limit: float) -> float | None:
        """Seconds until /readyz answers 200, or None if not within `limit`."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            assert self.process is not None
            assert self.process.poll() is None, f"chatdb serve exited:\n{self.tail()}"
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{self.base}/readyz", timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.05)
        return None

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS), in KiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)

    def count_in_log(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text) if self.log.exists() else 0


# --- the data the clients work on ---------------------------------------------------------


@dataclass
class Person:
    id: int
    username: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_people_and_groups(
    database_url: str, senders: int, groups: int
) -> tuple[list[Person], Person, list[int]]:
    """Senders, a watcher (a member of every group who only listens) and the
    groups, everyone a member of each; made through the store, in one go."""
    engine = make_engine(normalize_url(database_url), TEST_SETTINGS)
    try:
        with session_factory(engine).begin() as session:
            people: list[Person] = []
            for i in range(senders + 1):
                name = f"sender{i}" if i < senders else "watcher"
                user = store.create_user(session=session, username=name, email=f"{name}@ex.org")
                store.set_password(session=session, user_id=user.id, password=PASSWORD)
                signed_in = store.sign_in(
                    session=session, username=name, password=PASSWORD, lifetime=timedelta(days=1)
                )
                assert signed_in is not None
                people.append(Person(user.id, name, signed_in[0]))
            conversation_ids = [
                store.create_group(
                    session=session,
                    creator_id=people[0].id,
                    title=f"group {g}",
                    member_ids=[p.id for p in people[1:]],
                ).id
                for g in range(groups)
            ]
    finally:
        engine.dispose()
    return people[:senders], people[senders], conversation_ids


# --- clients that send and retry -------------------------------------------------------------


@dataclass
class Ack:
    conversation_id: int
    seq: int
    body: str
    replayed: bool


@dataclass
class Sender:
    """Sends at full speed with a new idempotency key per message; on any
    failure (no answer, a 503) retries the same key until a 2xx. When told to
    stop it finishes the message in hand, so every key it tried ends acknowledged."""

    base: str
    person: Person
    conversation_ids: list[int]
    acks: dict[str, Ack] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)  # a 4xx: a bug in the test or the server
    stop: threading.Event = field(default_factory=threading.Event)
    give_up_at: float = 0.0
    _thread: threading.Thread | None = None

    def start(self) -> Sender:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx2.Client(base_url=self.base, timeout=10.0) as client:
            n = 0
            while not self.stop.is_set():
                key = f"{self.person.username}-{n}"
                conversation_id = self.conversation_ids[n % len(self.conversation_ids)]
                if not self._send_until_acknowledged(client, conversation_id, key):
                    return
                n += 1

    def _send_until_acknowledged(
        self, client: httpx2.Client, conversation_id: int, key: str
    ) -> bool:
        body = f"message {key}"
        pause = 0.02
        while True:
            if self.give_up_at and time.monotonic() > self.give_up_at:
                self.refused.append(f"{key}: gave up retrying")
                return False
            try:
                response = client.post(
                    f"/v1/conversations/{conversation_id}/messages",
                    json={"body": body},
                    headers={**self.person.auth, "Idempotency-Key": key},
                )
            except httpx2.TransportError as exc:
                self.statuses[type(exc).__name__] += 1
            else:
                self.statuses[str(response.status_code)] += 1
                if response.status_code in (200, 201):
                    sent = response.json()
                    self.acks[key] = Ack(
                        conversation_id, sent["seq"], body, response.status_code == 200
                    )
                    return True
                if response.status_code != 503:
                    self.refused.append(f"{key}: {response.status_code} {response.text}")
                    return False
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(WAIT * 4)
        assert not self._thread.is_alive(), f"{self.person.username} never finished its send"


def acknowledged(senders: list[Sender]) -> dict[tuple[int, str], Ack]:
    """Every acknowledged send so far, by (sender id, key)."""
    return {(s.person.id, k): a for s in senders for k, a in list(s.acks.items())}


# --- the checks after a crash -------------------------------------------------------------------


@dataclass
class Report:
    messages: int
    conversations: int


def check_invariants(
    conninfo: str,
    conversation_ids: list[int],
    acks: dict[tuple[int, str], Ack],
    *,
    compare_bodies: bool = True,
) -> Report:
    """What must hold after any crash, read in one snapshot:

    - every acknowledged message is there once, with the seq and body it was
      acknowledged with;
    - seqs in every conversation run 1..last_seq with no gap, and the change
      log's change_seq likewise 1..last_change_seq;
    - no message appears twice (no body, and no key, more than once).

    `acks` must be taken before this is called: those sends have committed,
    so the snapshot sees them."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rows = conn.execute(
            "SELECT conversation_id, seq, sender_id, idempotency_key, body FROM messages "
            "WHERE conversation_id = ANY(%s)",
            (conversation_ids,),
        ).fetchall()
        counters = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                "SELECT id, last_seq, last_change_seq FROM conversations WHERE id = ANY(%s)",
                (conversation_ids,),
            )
        }
        change_seqs: dict[int, list[int]] = {c: [] for c in conversation_ids}
        for conversation_id, change_seq in conn.execute(
            "SELECT conversation_id, change_seq FROM changes WHERE conversation_id = ANY(%s)",
            (conversation_ids,),
        ):
            change_seqs[conversation_id].append(change_seq)
    seqs: dict[int, list[int]] = {c: [] for c in conversation_ids}
    by_key: dict[tuple[int, str], tuple[int, int, str]] = {}
    bodies = Counter(r[4] for r in rows)
    for conversation_id, seq, sender_id, key, body in rows:
        seqs[conversation_id].append(seq)
        assert key is not None
        assert (sender_id, key) not in by_key, f"key {key} of {sender_id} twice"
        by_key[(sender_id, key)] = (conversation_id, seq, body)
    twice = [b for b, n in bodies.items() if n > 1]
    assert not twice or not compare_bodies, f"messages stored twice: {twice[:5]}"
    for conversation_id in conversation_ids:
        last_seq, last_change_seq = counters[conversation_id]
        assert sorted(seqs[conversation_id]) == list(range(1, last_seq + 1)), (
            f"conversation {conversation_id}: seqs are not 1..{last_seq}"
        )
        assert sorted(change_seqs[conversation_id]) == list(range(1, last_change_seq + 1)), (
            f"conversation {conversation_id}: change_seqs are not 1..{last_change_seq}"
        )
    for (sender_id, key), ack in acks.items():
        stored = by_key.get((sender_id, key))
        assert stored is not None, f"acknowledged message {key} is missing"
        if not compare_bodies:
            stored = (*stored[:2], ack.body)
        assert stored == (ack.conversation_id, ack.seq, ack.body), (
            f"acknowledged message {key}: stored {stored}, acknowledged {ack}"
        )
    return Report(messages=len(rows), conversations=len(conversation_ids))


def stored_keys(conninfo: str, conversation_ids: list[int]) -> set[tuple[int, str]]:
    with psycopg.connect(conninfo) as conn:
        return {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT sender_id, idempotency_key FROM messages WHERE conversation_id = ANY(%s)",
                (conversation_ids,),
            )
        }


def all_changes(conninfo: str, conversation_ids: list[int]) -> list[tuple[int, int, int]]:
    """(id, conversation_id, change_seq) of every change in the conversations, by id."""
    with psycopg.connect(conninfo) as conn:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT id, conversation_id, change_seq FROM changes "
                "WHERE conversation_id = ANY(%s) ORDER BY id",
                (conversation_ids,),
            )
        ]


# --- a live-update client that resumes ---------------------------------------------------------
