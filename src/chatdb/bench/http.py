"""The HTTP level: the real app under uvicorn in a subprocess, and a load generator
(async httpx2 clients) on the same machine."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from sqlalchemy.engine import URL

from chatdb.bench.measure import Budget, Stats, summarize


@dataclass(frozen=True, slots=True)
class HttpCall:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    expect: int = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve(
    url: URL,
    admin_key: str,
    *,
    workers: int = 1,
    module: str = "chatdb.api.main",
    pythonpath: str | None = None,
) -> Iterator[str]:
    """Run `chatdb serve`'s app on the benchmark database, in `workers`
    processes; yields its base URL. `module` and `pythonpath` let a comparison
    serve another build of the app (an older checkout's src/, a patched app)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATDB_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    env["CHATDB_DATABASE_URL"] = url.set(drivername="postgresql").render_as_string(
        hide_password=False
    )
    env["CHATDB_ADMIN_KEY"] = admin_key
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "uvicorn",
                f"{module}:app_from_environment",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base, process, log)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            output = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"the API server exited with status {process.returncode}: {output}")
        try:
            if httpx2.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API server did not become ready within 60 s")


def load(base: str, calls: list[HttpCall], concurrency: int, budget: Budget) -> tuple[Stats, int]:
    """`concurrency` clients, each with its own keep-alive connection, calling in
    a loop (client i uses calls[i % len(calls)]) until the budget is spent.
    Returns the latencies of answered requests and how many were refused with
    503 (the app's answer when every pooled connection stays busy)."""
    return asyncio.run(_load(base, calls, concurrency, budget))


async def _load(
    base: str, calls: list[HttpCall], concurrency: int, budget: Budget
) -> tuple[Stats, int]:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # No limit on waiting for a pooled connection: with slow reports and 32
    # clients, a request may queue behind many others; that wait is measured.
    timeout = httpx2.Timeout(120.0, pool=None)
    refused = 0
    async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:

        async def once(call: HttpCall) -> bool:
            nonlocal refused
            response = await client.request(
                call.method, call.path, headers=call.headers, json=call.json, params=call.params
            )
            if response.status_code == 503:
                refused += 1
                return False
            if response.status_code != call.expect:
                raise RuntimeError(
                    f"{call.method} {call.path}: {response.status_code} {response.text[:300]}"
                )
            return True

        warm = [calls[i % len(calls)] for i in range(max(budget.warmup, concurrency))]
        await asyncio.gather(*(once(c) for c in warm))
        refused = 0
        latencies: list[int] = []
        per_client = max(1, budget.samples // concurrency)
        clock = time.perf_counter_ns
        started = clock()
        deadline = started + int(budget.seconds * 1e9)

        async def client_loop(i: int) -> None:
            call = calls[i % len(calls)]
            done = 0
            while done < per_client:
                t0 = clock()
                answered = await once(call)
                t1 = clock()
                if answered:
                    latencies.append(t1 - t0)
                done += 1
                if t1 > deadline and len(latencies) >= budget.min_samples:
                    return

        await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
        return summarize(latencies, (clock() - started) / 1e9, concurrency), refused
