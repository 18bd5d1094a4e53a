"""Where a read's time goes between the bare driver and the data layer, each
step timed in the same loop in random order, so load on the machine falls on
all alike:

- bare: psycopg, a prepared statement on an autocommit connection set up as
  chatdb's are (the benchmark's floor);
- SQLAlchemy connection: the same statement on a pooled Connection with
  isolation_level AUTOCOMMIT, rows fetched;
- SQLAlchemy session: the same in a Session, as chatdb.db.reads() opens it;
- data layer: the store function in chatdb.db.reads(), as the API's GETs run it.

    python docs/bench/read_paths.py [SIZE] [ROUNDS]   # after `chatdb bench --size SIZE`
        # SIZE: small (default), medium or large; ROUNDS: 3000 timed of each
"""

import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chatdb import store
from chatdb.bench.run import (
    INACTIVE_PAGE,
    INBOX_PAGE,
    MESSAGE_PAGE,
    _floor_connection,
    compile_sql,
    pick_targets,
)
from chatdb.config import Settings
from chatdb.db import AUTOCOMMIT, database_url, make_engine, reads

size = sys.argv[1] if len(sys.argv) > 1 else "small"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
WARM_UP = 300

url = database_url().set(database=f"chatdb_bench_{size}")
t = pick_targets(url, 8)
engine = make_engine(url, Settings(pool_size=2))
bare = _floor_connection(url)
c, reader = t.conversation_id, t.reader_id
before = t.conversation_messages - t.depth + 1
inbox_user = t.inbox_users.get("500", next(iter(t.inbox_users.values())))[0]
moment = datetime.now(UTC)

reads_to_time: dict[str, tuple[Any, Callable[[Any], object]]] = {
    "last 50 messages": (
        store.page_statement(c, limit=MESSAGE_PAGE, actor_id=reader),
        lambda s: store.list_messages(
            session=s, conversation_id=c, limit=MESSAGE_PAGE, actor_id=reader
        ),
    ),
    "a page deep in the longest conversation": (
        store.page_statement(c, before=before, limit=MESSAGE_PAGE, actor_id=reader),
        lambda s: store.list_messages(
            session=s, conversation_id=c, before=before, limit=MESSAGE_PAGE, actor_id=reader
        ),
    ),
    "inbox first page": (
        store.inbox_statement(inbox_user, None, INBOX_PAGE),
        lambda s: store.inbox(session=s, user_id=inbox_user, limit=INBOX_PAGE),
    ),
    "users inactive for 30 days": (
        store.inactive_statement(30, 0, INACTIVE_PAGE, moment),
        lambda s: store.inactive_users(session=s, days=30, limit=INACTIVE_PAGE, now=moment),
    ),
}

report: dict[str, Any] = {"size": size, "rounds": rounds, "reads": {}}
for label, (statement, call) in reads_to_time.items():
    sql, params = compile_sql(statement, engine.dialect)

    def bare_floor(sql: str = sql, params: dict[str, Any] = params) -> object:
        return bare.execute(sql, params, prepare=True).fetchall()

    def on_connection(statement: Any = statement) -> object:
        with engine.connect() as connection:
            connection.execution_options(**AUTOCOMMIT)
            return connection.execute(statement).all()

    def in_session(statement: Any = statement) -> object:
        with reads(engine) as session:
            return session.execute(statement).all()

    def data_layer(call: Callable[[Any], object] = call) -> object:
        with reads(engine) as session:
            return call(session)

    steps = {
        "bare": bare_floor,
        "SQLAlchemy connection": on_connection,
        "SQLAlchemy session": in_session,
        "data layer": data_layer,
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(WARM_UP + rounds):
        order = list(steps)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            steps[name]()
            elapsed = (time.perf_counter() - start) * 1000
            if i >= WARM_UP:
                times[name].append(elapsed)
    floor = statistics.median(times["bare"])
    entry = {}
    print(label)
    for name, samples in times.items():
        p50 = statistics.median(samples)
        p99 = statistics.quantiles(samples, n=100)[98]
        entry[name] = {
            "p50_ms": round(p50, 4),
            "p99_ms": round(p99, 4),
            "x_bare_p50": round(p50 / floor, 2),
        }
        print(f"  {name:22s} p50 {p50:.3f}  p99 {p99:.3f}  x bare {p50 / floor:.2f}")
    report["reads"][label] = entry

bare.close()
engine.dispose()
print(json.dumps(report))
