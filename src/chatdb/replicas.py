"""Reads on streaming replicas, with read-your-writes and a way around a dead replica.

Reads that may lag a little (history pages, the inbox, reports) go to a
replica. A caller who has just written must see the write, so after a write
commits the API remembers the primary's WAL position for that caller; their
next read uses a replica only once it has replayed that far, and the primary
otherwise. A replica that cannot be reached is left out for `retry_seconds`,
then tried again.

A replica's snapshot is a consistent earlier state of the primary (WAL is
replayed in commit order), so a lagging replica can show less, never a mix: a
member removed on the primary never sees, on a replica, a message sent after
the removal.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from chatdb.db import session_factory

# Read-your-writes positions kept per process; the oldest are forgotten first.
_REMEMBERED_WRITERS = 100_000


def parse_lsn(lsn: str) -> int:
    """A pg_lsn ('16/B374D848') as a number, to compare positions in Python."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class Replica:
    engine: Engine
    down_until: float = 0.0
    # The furthest replay position seen; a read needing less skips the check.
    replayed: int = 0


class ReadRouter:
    """Chooses where a read runs: a caught-up replica, or the primary."""

    def __init__(self, primary: Engine, replicas: list[Engine], retry_seconds: float) -> None:
        self.primary = primary
        self.replicas = [Replica(engine) for engine in replicas]
        self.retry_seconds = retry_seconds
        self._turn = itertools.count()
        self._positions: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.replicas)

    def remember_write(self, session: Session, writer: int) -> None:
        """After `writer`'s transaction committed on `session`'s connection:
        note the primary's WAL position, which covers that commit."""
        position = session.execute(text("SELECT pg_current_wal_insert_lsn()::text")).scalar_one()
        with self._lock:
            self._positions[writer] = parse_lsn(position)
            self._positions.move_to_end(writer)
            while len(self._positions) > _REMEMBERED_WRITERS:
                self._positions.popitem(last=False)

    def required_position(self, reader: int | None) -> int:
        if reader is None:
            return 0
        with self._lock:
            return self._positions.get(reader, 0)

    @contextmanager
    def read_transaction(self, reader: int | None) -> Iterator[Session]:
        """A read-only transaction on a replica that has replayed `reader`'s
        last write, or on the primary when none has (or none answers)."""
        connection = self._replica_connection(self.required_position(reader))
        if connection is None:
            with session_factory(self.primary).begin() as session:
                yield session
            return
        with connection, Session(bind=connection) as session, session.begin():
            yield session

    def _replica_connection(self, needed: int) -> Connection | None:
        if not self.replicas:
            return None
        start = next(self._turn)
        count = len(self.replicas)
        for replica in (self.replicas[(start + i) % count] for i in range(count)):
            now = time.monotonic()
            if replica.down_until > now:
                continue
            try:
                connection = replica.engine.connect()
            except DBAPIError:
                replica.down_until = now + self.retry_seconds
                continue
            if needed <= replica.replayed:
                return connection
            try:
                position = connection.execute(
                    text("SELECT pg_last_wal_replay_lsn()::text")
                ).scalar_one()
                connection.rollback()
            except DBAPIError:
                connection.invalidate()
                connection.close()
                replica.down_until = now + self.retry_seconds
                continue
            replica.replayed = max(replica.replayed, parse_lsn(position or "0/0"))
            if needed <= replica.replayed:
                return connection
            connection.close()
        return None

    def dispose(self) -> None:
        for replica in self.replicas:
            replica.engine.dispose()
