"""Where the CPU of an HTTP request goes: the API server, PostgreSQL and the
load generator, in CPU milliseconds per request, and the throughput the
machine's cores could give at that cost if nothing else ran.

HTTP sends, the last 50 messages and GET /healthz (no database), at 8 clients,
with the app in WORKERS uvicorn processes (as `chatdb bench --http-workers`).
CPU time is read from /proc (utime + stime, with those of ended children)
before and after each load: for the server and its worker processes, for the
PostgreSQL server the benchmark uses (which must run on this machine), and for
this process (the load generator). Linux only.

    python docs/bench/http_cpu_cost.py [SIZE] [WORKERS] [SECONDS]
        # after `chatdb bench --size SIZE` (default small, 1 worker, 10 s),
        # on the server chatdb uses
"""

import json
import os
import secrets
import sys
from pathlib import Path

import psycopg

from chatdb.bench import http
from chatdb.bench.dataset import database_name
from chatdb.bench.measure import Budget
from chatdb.bench.run import _sign_in, pick_targets
from chatdb.config import Settings
from chatdb.db import database_url, make_engine, psycopg_conninfo

TICK = os.sysconf("SC_CLK_TCK")
size = sys.argv[1] if len(sys.argv) > 1 else "small"
workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
url = database_url().set(database=database_name(size))


def processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds so far, its own and that of
    its children that have ended: a process that ends during a measurement
    still counts, through its parent)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime
        ticks = sum(int(f) for f in fields[11:15])
        found[int(entry.name)] = (int(fields[1]), name, ticks / TICK)
    return found


def postmaster_pid() -> int:
    """The PostgreSQL server the benchmark uses (on this machine): the parent
    of one of its backends."""
    with psycopg.connect(psycopg_conninfo(url)) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return processes()[int(row[0])][0]  # while the backend is still there


def cpu_by_part(server_pid: int, postmaster: int) -> dict[str, float]:
    table = processes()

    def under(pid: int, root: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = table[pid][0] if pid in table else 1
        return False

    parts = {"API server": 0.0, "PostgreSQL": 0.0, "load generator": 0.0}
    for pid, (_, _, cpu) in table.items():
        if under(pid, server_pid):
            parts["API server"] += cpu
        elif under(pid, postmaster):
            parts["PostgreSQL"] += cpu
    # This process alone: its children (the server) are counted above.
    self_ticks = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[11:13]
    parts["load generator"] = sum(int(t) for t in self_ticks) / TICK
    return parts


t = pick_targets(url, 8)
engine = make_engine(url, Settings(pool_size=2))
auth = _sign_in(engine, [u for _, u in t.senders])
engine.dispose()
loads = {
    "send": [
        http.HttpCall(
            "POST", f"/v1/conversations/{c}/messages", auth[u], json={"body": "x"}, expect=201
        )
        for c, u in t.senders
    ],
    "last 50 messages": [
        http.HttpCall("GET", f"/v1/conversations/{c}/messages", auth[u], params={"limit": 50})
        for c, u in t.senders
    ],
    "GET /healthz (no database)": [http.HttpCall("GET", "/healthz", {})],
}
cores = os.cpu_count() or 1
report: dict[str, object] = {"size": size, "workers": workers, "cores": cores, "clients": 8}
with http.serve(url, secrets.token_urlsafe(24), workers=workers) as base:
    server_pid = next(
        pid
        for pid, (parent, name, _) in processes().items()
        if parent == os.getpid() and name.startswith("python")
    )
    postmaster = postmaster_pid()
    for label, calls in loads.items():
        http.load(base, calls, 8, Budget(samples=400, seconds=1.0, warmup=100))  # warm up
        before = cpu_by_part(server_pid, postmaster)
        stats, _ = http.load(base, calls, 8, Budget(samples=10**9, seconds=seconds, warmup=0))
        after = cpu_by_part(server_pid, postmaster)
        requests = stats.samples
        per_request = {k: (after[k] - before[k]) * 1000 / requests for k in before}
        total = sum(per_request.values())
        report[label] = {
            "requests_per_second": round(stats.throughput),
            "cpu_ms_per_request": {k: round(v, 3) for k, v in per_request.items()},
            "cpu_ms_per_request_total": round(total, 3),
            "ceiling_requests_per_second_on_all_cores": round(cores * 1000 / total),
            "ceiling_requests_per_second_server_alone": round(
                min(cores, workers) * 1000 / per_request["API server"]
            ),
        }
        print(label, report[label], file=sys.stderr, flush=True)
print(json.dumps(report, indent=2))
