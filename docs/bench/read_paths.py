"""Where a read's time goes between the bare driver and the data layer: the
benchmark's own reads, each step timed in turn in one loop, in random order
(bench.measure.time_interleaved), so load on the machine falls on all alike:

- bare: psycopg, a prepared statement on an autocommit connection set up as
  chatdb's are (the benchmark's floor);
- SQLAlchemy connection: the same statement on a pooled Connection with
  isolation_level AUTOCOMMIT, rows fetched, as chatdb.db.reads() opens it
  (the benchmark's SQLAlchemy floor);
- SQLAlchemy session: the same in a Session on such a connection, as
  chatdb.db.reads() opened it until a Connection replaced it;
- data layer, switched: the store function on a connection of the pool for
  transactions, switched to autocommit and back, as chatdb.db.reads() took
  one until it had a pool of its own;
- data layer: the store function in chatdb.db.reads(), as the API's GETs run it.

    python docs/bench/read_paths.py [SIZE] [ROUNDS]   # after `chatdb bench --size SIZE`
        # SIZE: small (default), medium or large; ROUNDS: 3000 timed of each
"""

import json
import sys
from typing import Any

from chatdb.bench.measure import Budget, time_interleaved
from chatdb.bench.run import (
    _floor_connection,
    compile_sql,
    floor_call,
    pick_targets,
    read_call,
    read_ops,
    sqlalchemy_floor,
)
from chatdb.config import Settings
from chatdb.db import AUTOCOMMIT, database_url, make_engine, session_factory

size = sys.argv[1] if len(sys.argv) > 1 else "small"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
# Each call `rounds` times after 300 of warm-up, however long that takes.
budget = Budget(samples=rounds, seconds=3600, warmup=300)
READS = ("last_50", "deep_page", "inbox_500", "inactive_30d")

url = database_url().set(database=f"chatdb_bench_{size}")
t = pick_targets(url, 8)
users = {t.reader_id, *(u for u, _ in t.inbox_users.values())}
ops = [op for op in read_ops(t, {u: {} for u in users}, {}) if op.name in READS]
engine = make_engine(url, Settings(pool_size=2))
bare = _floor_connection(url)

report: dict[str, Any] = {"size": size, "rounds": rounds, "reads": {}}
for op in ops:
    statement = op.statement
    sql, params = compile_sql(statement, engine.dialect)

    def on_session(statement: Any = statement) -> object:
        with session_factory(engine)() as session:
            session.connection(execution_options=AUTOCOMMIT)
            return session.execute(statement).all()

    def switched(call: Any = op.call) -> object:
        with engine.connect() as connection:
            connection.execution_options(**AUTOCOMMIT)
            return call(connection)

    timed = time_interleaved(
        {
            "bare": floor_call(bare, sql, params),
            "SQLAlchemy connection": sqlalchemy_floor(engine, statement, custom_plans=False),
            "SQLAlchemy session": on_session,
            "data layer, switched": switched,
            "data layer": read_call(engine, op.call, in_transaction=False),
        },
        budget,
    )
    floor = timed["bare"].p50_ms
    report["reads"][op.name] = entry = {}
    print(op.label)
    for name, stats in timed.items():
        ratio = stats.p50_ms / floor
        entry[name] = {
            "p50_ms": stats.p50_ms,
            "p99_ms": stats.p99_ms,
            "x_bare_p50": round(ratio, 2),
        }
        print(f"  {name:22s} p50 {stats.p50_ms:.3f}  p99 {stats.p99_ms:.3f}  x bare {ratio:.2f}")

bare.close()
engine.dispose()
print(json.dumps(report))
