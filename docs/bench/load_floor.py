"""What loading a dataset cannot go below: the time PostgreSQL needs to compute
the messages' search vectors (the stored column `search_vector`, migration 0009),
which any load of those messages pays, set against the load's own phases.

The vectors of a sample of the loaded messages are computed again, on one core
(no parallel workers) and with PostgreSQL's parallel workers, one process per core;
the scan alone (summing the body lengths) is measured the same way and taken
off. The per-message cost times the dataset's messages is the floor. Each
measurement runs ROUNDS times; medians are reported.

    python docs/bench/load_floor.py [SIZE] [SAMPLE_PERCENT] [ROUNDS]
        # after `chatdb bench --size SIZE` (default large, 10 %, 3 rounds),
        # on the server chatdb uses
"""

import json
import os
import re
import statistics
import sys
import time

import psycopg
from psycopg import sql

from chatdb.bench.dataset import database_name
from chatdb.db import database_url, psycopg_conninfo

size = sys.argv[1] if len(sys.argv) > 1 else "large"
percent = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
name = database_name(size)
url = database_url().set(database=name)

# The same sample every time (REPEATABLE), copied once into a table of its own so
# that every measurement reads the same rows from memory. Not a temporary table:
# parallel workers cannot read those. Dropped at the end.
SAMPLE = sql.SQL(
    "CREATE UNLOGGED TABLE load_floor_sample AS "
    "SELECT body FROM messages TABLESAMPLE SYSTEM ({}) REPEATABLE (42)"
).format(sql.Literal(percent))
VECTORS = "SELECT sum(length(chatdb_search_vector(body))) FROM load_floor_sample"
SCAN = "SELECT sum(length(body)) FROM load_floor_sample"


def timed(conn: psycopg.Connection, statement: str) -> float:
    started = time.perf_counter()
    conn.execute(statement)
    return time.perf_counter() - started


with psycopg.connect(psycopg_conninfo(url), autocommit=True) as conn:
    comment = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    stamp = json.loads(comment[0]) if comment and comment[0] else {}
    messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.execute("SET statement_timeout = 0")
    conn.execute("DROP TABLE IF EXISTS load_floor_sample")
    try:
        conn.execute(SAMPLE)
        conn.execute("VACUUM ANALYZE load_floor_sample")
        sampled = conn.execute("SELECT count(*) FROM load_floor_sample").fetchone()[0]
        cores = os.cpu_count() or 1
        results = {}
        for label, settings in (
            ("one core", ["SET max_parallel_workers_per_gather = 0"]),
            (
                "parallel",
                [
                    # The leader scans too: one process per core.
                    f"SET max_parallel_workers_per_gather = {cores - 1}",
                    "SET parallel_setup_cost = 0",
                    "SET parallel_tuple_cost = 0",
                    "SET min_parallel_table_scan_size = 0",
                ],
            ),
        ):
            for statement in settings:
                conn.execute(statement)
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + VECTORS))
            vectors = statistics.median(timed(conn, VECTORS) for _ in range(rounds))
            scan = statistics.median(timed(conn, SCAN) for _ in range(rounds))
            per_message = (vectors - scan) / sampled
            results[label] = {
                "workers_planned": int(m.group(1))
                if (m := re.search(r"Workers Planned: (\d+)", plan))
                else 0,
                "sample_seconds": round(vectors, 3),
                "scan_seconds": round(scan, 3),
                "microseconds_per_message": round(per_message * 1e6, 2),
                "floor_seconds_for_dataset": round(per_message * messages, 1),
            }
    finally:
        conn.execute("DROP TABLE IF EXISTS load_floor_sample")

report = {
    "size": size,
    "messages": messages,
    "sampled_messages": sampled,
    "rounds": rounds,
    "cores": cores,
    "search_vectors": results,
    "load_seconds": stamp.get("load_seconds"),
    "load_phases": stamp.get("load_phases"),
}
print(json.dumps(report, indent=2))
