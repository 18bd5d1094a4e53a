"""Interleaved A/B: the app before and after, same database, requests alternated,
so load on the machine falls on both alike.

    AB_BEFORE_SRC=/old/checkout/src AB_AFTER_SRC=/new/checkout/src \
        python docs/bench/ab_compare.py   # on the server chatdb uses, after `chatdb bench --size small`
"""

import os, random, socket, statistics, subprocess, sys, time
import httpx2
from chatdb.config import Settings
from chatdb.db import database_url, make_engine
from chatdb.bench.run import pick_targets, _sign_in

KEY = "ab-admin-key-0123456789abcdef"
url = database_url().set(database="chatdb_bench_small")
t = pick_targets(url, 8)
engine = make_engine(url, Settings(pool_size=2))
auth = _sign_in(engine, [t.reader_id])[t.reader_id]
engine.dispose()


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


servers = {}
procs = []
for name, src in (("before", os.environ["AB_BEFORE_SRC"]), ("after", os.environ["AB_AFTER_SRC"])):
    p = port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATDB_")}
    env.update(
        PYTHONPATH=src,
        CHATDB_DATABASE_URL=url.set(drivername="postgresql").render_as_string(hide_password=False),
        CHATDB_ADMIN_KEY=KEY,
    )
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "chatdb.api.main:app_from_environment",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(p),
                "--log-level",
                "warning",
            ],
            env=env,
        )
    )
    servers[name] = f"http://127.0.0.1:{p}"
try:
    for base in servers.values():
        for _ in range(300):
            try:
                if httpx2.get(base + "/readyz").status_code == 200:
                    break
            except Exception:
                pass
            time.sleep(0.1)
    calls = {
        "last 50 messages (token)": (
            "GET",
            f"/v1/conversations/{t.conversation_id}/messages",
            auth,
            200,
        ),
        "inbox first page (token)": ("GET", "/v1/conversations", auth, 200),
        "inactive users (admin key)": (
            "GET",
            "/v1/reports/inactive",
            {"Authorization": f"Bearer {KEY}"},
            200,
        ),
        "send (token)": ("POST", f"/v1/conversations/{t.conversation_id}/messages", auth, 201),
    }
    N = int(os.environ.get("AB_N", "600"))
    clients = {n: httpx2.Client(base_url=b) for n, b in servers.items()}
    for label, (method, path, headers, expect) in calls.items():
        times = {n: [] for n in servers}
        for i in range(N + 50):
            order = list(servers)
            random.shuffle(order)
            for n in order:
                kw = {"json": {"body": "ab"}} if method == "POST" else {}
                t0 = time.perf_counter()
                r = clients[n].request(method, path, headers=headers, **kw)
                dt = (time.perf_counter() - t0) * 1000
                assert r.status_code == expect, (n, r.status_code, r.text)
                if i >= 50:
                    times[n].append(dt)
        q = {
            n: (statistics.median(v), statistics.quantiles(v, n=100)[98]) for n, v in times.items()
        }
        print(
            f"{label:28s} before p50 {q['before'][0]:.2f} p99 {q['before'][1]:.1f} | after p50 {q['after'][0]:.2f} p99 {q['after'][1]:.1f} | after/before p50 {q['after'][0] / q['before'][0]:.2f}",
            flush=True,
        )
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
