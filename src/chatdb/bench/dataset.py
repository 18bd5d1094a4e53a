"""The benchmark's datasets: one database per size, loaded once with `chatdb seed`.

Each size lives in a database of its own (`chatdb_bench_<size>`) on the server in
use, so a benchmark never touches the data of `chatdb serve`. The plan and the
load time are written into the database's comment; a later run with the same
plan reuses the data (and reports the load time measured when it was loaded).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from chatdb import migrate
from chatdb.config import Settings
from chatdb.db import make_engine, psycopg_conninfo
from chatdb.seed import ProgressCallback, SeedPlan, seed

SIZES: dict[str, SeedPlan] = {
    "small": SeedPlan(
        users=1_000, conversations=2_000, messages=100_000, big_groups=2, big_group_size=500
    ),
    "medium": SeedPlan(
        users=10_000,
        conversations=20_000,
        messages=1_000_000,
        big_groups=3,
        big_group_size=2_000,
    ),
    "large": SeedPlan(
        users=100_000,
        conversations=200_000,
        messages=10_000_000,
        big_groups=3,
        big_group_size=5_000,
    ),
}


@dataclass(frozen=True, slots=True)
class Dataset:
    size: str
    plan: SeedPlan
    url: URL
    load_seconds: float
    reused: bool
    load_phases: dict[str, float]  # seconds per phase of the load (chatdb.seed)


def database_name(size: str) -> str:
    return f"chatdb_bench_{size}"


def _admin(server: URL) -> psycopg.Connection[Any]:
    return psycopg.connect(psycopg_conninfo(server), autocommit=True)


def _stamp(server: URL, name: str) -> dict[str, Any] | None:
    with _admin(server) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    if row is None or row[0] is None:
        return None
    try:
        stamp: dict[str, Any] = json.loads(row[0])
    except ValueError:
        return None
    return stamp


def ensure_dataset(
    server: URL,
    size: str,
    *,
    reload: bool = False,
    progress: ProgressCallback | None = None,
    engine_settings: Settings | None = None,
    database: str | None = None,
) -> Dataset:
    """The dataset of `size` on `server` (in database `database`, by default
    chatdb_bench_SIZE), loaded unless an identical one is there."""
    plan = SIZES[size]
    name = database or database_name(size)
    url = server.set(database=name)
    stamp = None if reload else _stamp(server, name)
    if stamp is not None and stamp.get("plan") == asdict(plan):
        engine = make_engine(url, engine_settings)
        try:
            migrate.upgrade(engine)  # a newer chatdb may have added migrations since
        finally:
            engine.dispose()
        return Dataset(
            size,
            plan,
            url,
            float(stamp["load_seconds"]),
            reused=True,
            load_phases=stamp.get("load_phases", {}),
        )

    with _admin(server) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    engine = make_engine(url, engine_settings)
    try:
        migrate.upgrade(engine)
        report = seed(engine, plan, progress=progress)
    finally:
        engine.dispose()
    _vacuum(url)
    comment = json.dumps(
        {
            "plan": asdict(plan),
            "load_seconds": report.seconds,
            "load_phases": report.phase_seconds,
        }
    )
    with _admin(server) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(comment)
            )
        )
    return Dataset(size, plan, url, report.seconds, reused=False, load_phases=report.phase_seconds)


def _vacuum(url: URL) -> None:
    # COPY FREEZE leaves messages all-visible; the smaller tables get their
    # visibility map here, so index-only scans skip the heap at every size.
    with _admin(url) as conn:
        conn.execute("VACUUM (ANALYZE) users, conversations, conversation_members")
