"""Prometheus metrics: request latency per route, the connection pool, database round trips.

Each app has a registry of its own (not the process-wide default), so several
apps in one process (the tests) never share or clash over metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, event
from sqlalchemy.pool import QueuePool

from chatdb.db import engine_for_reads, is_autocommit

# The pools, as /metrics labels them.
TRANSACTIONS, READS = "transactions", "reads"

# Milliseconds to seconds: the API's reads take about a millisecond, reports longer.
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "chatdb_http_request_duration_seconds",
            "Time from a request's arrival to its response's start, by route template.",
            ("method", "route", "status"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.round_trips = Counter(
            "chatdb_db_round_trips",
            "Round trips to PostgreSQL: statements, and the begin, commit and rollback "
            "of transactions (none for statements run without a transaction block).",
            ("kind",),
            registry=self.registry,
        )
        self.pool_waiting = Gauge(
            "chatdb_db_pool_waiting",
            "Requests waiting for a pooled connection, by pool.",
            ("pool",),
            registry=self.registry,
        )
        # Two pools (chatdb.db.make_engine): transactions, and reads without one.
        pools = {TRANSACTIONS: engine}
        if (readers := engine_for_reads(engine)) is not engine:
            pools[READS] = readers
        self.registry.register(_PoolCollector(pools))
        for pool in (TRANSACTIONS, READS):
            self.pool_waiting.labels(pool)  # a series from the start, at 0
        self._listeners: list[tuple[Engine, str, Any]] = []
        for watched in pools.values():
            self._watch(watched)

    def _watch(self, engine: Engine) -> None:
        statements = self.round_trips.labels("statement")
        begins = self.round_trips.labels("begin")
        commits = self.round_trips.labels("commit")
        rollbacks = self.round_trips.labels("rollback")

        def count(child: Any) -> Any:
            def listener(*_args: Any, **_kwargs: Any) -> None:
                child.inc()

            return listener

        def count_sent(child: Any) -> Any:
            # With autocommit, psycopg sends no BEGIN, COMMIT or ROLLBACK at all.
            def listener(connection: Connection) -> None:
                if not is_autocommit(connection):
                    child.inc()

            return listener

        for name, listener in (
            ("before_cursor_execute", count(statements)),
            ("begin", count_sent(begins)),
            ("commit", count_sent(commits)),
            ("rollback", count_sent(rollbacks)),
        ):
            event.listen(engine, name, listener)
            # Kept on the object: SQLAlchemy holds listeners weakly only when asked to.
            self._listeners.append((engine, name, listener))

    def close(self) -> None:
        """Stop counting (the engine may outlive the app, as in the tests)."""
        for engine, name, listener in self._listeners:
            if event.contains(engine, name, listener):
                event.remove(engine, name, listener)

    @contextmanager
    def waiting_for_connection(self, pool: str) -> Iterator[None]:
        """Around taking a connection from `pool` (TRANSACTIONS or READS)."""
        waiting = self.pool_waiting.labels(pool)
        waiting.inc()
        try:
            yield
        finally:
            waiting.dec()


class _PoolCollector(Collector):
    """The pools' state, read when scraped (nothing to keep up to date in between)."""

    def __init__(self, pools: dict[str, Engine]) -> None:
        self.pools = pools

    def collect(self) -> Iterable[GaugeMetricFamily]:
        in_use = GaugeMetricFamily(
            "chatdb_db_pool_in_use", "Pooled connections checked out now.", labels=("pool",)
        )
        idle = GaugeMetricFamily(
            "chatdb_db_pool_idle", "Pooled connections open and free now.", labels=("pool",)
        )
        size = GaugeMetricFamily(
            "chatdb_db_pool_size",
            "Connections the pool keeps (overflow aside).",
            labels=("pool",),
        )
        for name, engine in self.pools.items():
            pool = engine.pool
            if isinstance(pool, QueuePool):
                in_use.add_metric((name,), pool.checkedout())
                idle.add_metric((name,), pool.checkedin())
                size.add_metric((name,), pool.size())
        yield from (in_use, idle, size)


class RequestTimer:
    """Plain ASGI middleware: observes each HTTP request under its route template
    (`/v1/conversations/{conversation_id}`, never the raw path, so the number of
    series stays bounded). Timed to the response's start: an event stream's
    latency is how soon it starts, not how long it stays open."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unmatched)"
            self.metrics.requests.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start" and not observed:
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException:
            if not observed:
                observe(500)
            raise
