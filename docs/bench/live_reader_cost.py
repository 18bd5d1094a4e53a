"""What the live-update reader costs the API's sends: HTTP sends (and, as a
control, reads of the last 50 messages) at 8 clients, with the app as it is,
with its change-log reader switched off, and optionally with an older checkout;
the variants alternate, so load on the machine falls on all alike.

    python docs/bench/live_reader_cost.py [ROUNDS] [OLD_SRC]
        # after `chatdb bench --size small`, on the server chatdb uses;
        # OLD_SRC: the src/ of an older checkout, run as a third variant
"""

import statistics
import sys
import tempfile
from pathlib import Path

from chatdb.bench import http
from chatdb.bench.measure import Budget
from chatdb.bench.run import _sign_in, pick_targets
from chatdb.config import Settings
from chatdb.db import database_url, make_engine

KEY = "reader-cost-admin-key-0123456789"
# An app whose reader never reads (it still starts, listens and says it is ready).
READER_OFF = """
import asyncio
from chatdb.api import events
async def _idle(self):
    self._ready.set()
    await asyncio.Event().wait()
events.ChangeHub._read_loop = _idle
from chatdb.api.main import app_from_environment
"""

url = database_url().set(database="chatdb_bench_small")
t = pick_targets(url, 8)
engine = make_engine(url, Settings(pool_size=2))
auth = _sign_in(engine, [u for _, u in t.senders])
engine.dispose()
sends = [
    http.HttpCall(
        "POST", f"/v1/conversations/{c}/messages", auth[u], json={"body": "x"}, expect=201
    )
    for c, u in t.senders
]
reads = [
    http.HttpCall("GET", f"/v1/conversations/{c}/messages", auth[u], params={"limit": 50})
    for c, u in t.senders
]
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
shim = Path(tempfile.mkdtemp())
(shim / "reader_off.py").write_text(READER_OFF)
variants = {"now": ("", "chatdb.api.main"), "reader off": (str(shim), "reader_off")}
if len(sys.argv) > 2:
    variants["old"] = (sys.argv[2], "chatdb.api.main")
results: dict[str, dict[str, list[float]]] = {v: {"sends": [], "reads": []} for v in variants}
for round_ in range(rounds):
    for name, (path, module) in variants.items():
        with http.serve(url, KEY, module=module, pythonpath=path or None) as base:
            for kind, calls in (("sends", sends), ("reads", reads)):
                stats, _ = http.load(base, calls, 8, Budget(3000, 8.0, 100))
                results[name][kind].append(stats.throughput)
        print(round_, name, {k: v[-1] for k, v in results[name].items()}, flush=True)
for name, kinds in results.items():
    medians = {kind: round(statistics.median(values)) for kind, values in kinds.items()}
    print(f"{name}: requests/s, medians of {rounds}: {medians}")
