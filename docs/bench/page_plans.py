"""How PostgreSQL plans the message page's prepared statements, on a benchmark
dataset (README, "The newest page, planned once"):

- each page shape (newest, a page deep in the history, a page after a
  cursor) run 20 times as chatdb runs it, on one connection of the pool for
  reads, then its generic and custom plans as pg_prepared_statements counts
  them (the driver prepares a statement on its fifth run);
- the newest page timed at the floor (bare psycopg, prepared), 1 000 runs
  each: as it runs now (the page before bigint's largest seq), and as it ran
  before 2db7a26 (a template with no cursor condition), with plan_cache_mode
  auto and force_generic_plan.

    python docs/bench/page_plans.py [SIZE]   # after `chatdb bench --size SIZE`; default large
"""

import sys
import time
from typing import Any

from sqlalchemy import text

from chatdb.bench.run import _floor_connection, compile_sql, pick_targets
from chatdb.config import Settings
from chatdb.db import database_url, engine_for_reads, make_engine
from chatdb.store import list_messages, page_statement

size = sys.argv[1] if len(sys.argv) > 1 else "large"
url = database_url().set(database=f"chatdb_bench_{size}")
t = pick_targets(url, 8)
c, reader, last = t.conversation_id, t.reader_id, t.conversation_messages
engine = make_engine(url, Settings(pool_size=1))

print(f"{size}: conversation {c}, {last:,} messages")
shapes = {"newest": {}, "deep": {"before": last - t.depth + 1}, "after": {"after": last - 100}}
with engine_for_reads(engine).connect() as connection:
    for name, cursor in shapes.items():
        prepared = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_prepared_statements"
        ).scalar()
        for _ in range(20):
            list_messages(
                session=connection, conversation_id=c, limit=50, actor_id=reader, **cursor
            )
        generic, custom = connection.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " ORDER BY prepare_time DESC LIMIT 1"
            )
        ).one()
        grew = connection.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar()
        new = "a new statement" if grew != prepared else "an earlier statement"
        print(f"  {name:7s} 20 runs: {generic} generic plans, {custom} custom ({new})")


def timed(conn: Any, sql: str, params: dict[str, Any], runs: int = 1000) -> str:
    for _ in range(50):
        conn.execute(sql, params, prepare=True).fetchall()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute(sql, params, prepare=True).fetchall()
        times.append(time.perf_counter() - started)
    times.sort()
    return f"p50 {times[runs // 2] * 1e3:.3f} ms, p99 {times[runs * 99 // 100] * 1e3:.3f} ms"


now_sql, now_params = compile_sql(page_statement(c, limit=50, actor_id=reader), engine.dialect)
# As before 2db7a26: the same statement without its cursor condition.
old_sql = now_sql.replace(" AND messages.seq < %(cursor)s::BIGINT", "")
if old_sql == now_sql:
    raise SystemExit("the page's SQL has changed: cannot rebuild the old newest page")
for mode in ("auto", "force_generic_plan"):
    for label, sql in (("now (before 2^63-1)", now_sql), ("before 2db7a26", old_sql)):
        floor = _floor_connection(url)
        floor.execute(f"SET plan_cache_mode = {mode}")
        print(f"  newest page, {label:20s} plan_cache_mode={mode}: {timed(floor, sql, now_params)}")
        floor.close()
engine.dispose()
