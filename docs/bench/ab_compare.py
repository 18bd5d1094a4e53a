"""Interleaved A/B: the app before and after, same database, requests alternated,
so load on the machine falls on both alike.

    AB_BEFORE_SRC=/old/checkout/src AB_AFTER_SRC=/new/checkout/src \
        python docs/bench/ab_compare.py   # on the server chatdb uses, after `chatdb bench --size small`

AB_SIZE=large reads the large set instead; AB_N requests each (600).
"""

import contextlib
import os
import random
import statistics
import time

import httpx2

from chatdb.bench import http
from chatdb.bench.run import _sign_in, pick_targets
from chatdb.config import Settings
from chatdb.db import database_url, make_engine

KEY = "ab-admin-key-0123456789abcdef"
url = database_url().set(database=f"chatdb_bench_{os.environ.get('AB_SIZE', 'small')}")
t = pick_targets(url, 8)
engine = make_engine(url, Settings(pool_size=2))
auth = _sign_in(engine, [t.reader_id])[t.reader_id]
engine.dispose()


with contextlib.ExitStack() as running:
    servers = {
        name: running.enter_context(http.serve(url, KEY, pythonpath=src))
        for name, src in (
            ("before", os.environ["AB_BEFORE_SRC"]),
            ("after", os.environ["AB_AFTER_SRC"]),
        )
    }
    calls = {
        "last 50 messages (token)": (
            "GET",
            f"/v1/conversations/{t.conversation_id}/messages",
            auth,
            200,
        ),
        "inbox first page (token)": ("GET", "/v1/conversations", auth, 200),
        "search (token)": ("GET", "/v1/search?q=invoice", auth, 200),
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
