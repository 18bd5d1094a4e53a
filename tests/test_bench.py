"""`chatdb bench --size small --quick`: the command keeps working and its report
keeps its shape. A smoke run, not a benchmark: no time is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

import chatdb
from chatdb.bench.measure import Budget, time_interleaved
from chatdb.bench.report import _source_line
from chatdb.bench.run import source_info
from tests.conftest import drop_database
from tests.test_cli import base_env, run_chatdb

READS = (
    "last_50",
    "deep_page",
    "inbox_most",
    "search_word",
    "search_phrase",
    "activity_30d",
    "inactive_30d",
)
STATS = {"samples", "concurrency", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms", "throughput"}


@pytest.fixture
def bench_database(server_url: URL) -> Iterator[str]:
    name = f"chatdb_bench_t_{uuid.uuid4().hex[:10]}"
    yield name
    drop_database(server_url, name)


def assert_stats(stats: dict[str, Any], concurrency: int = 1) -> None:
    assert set(stats) == STATS
    assert stats["samples"] > 0
    assert stats["concurrency"] == concurrency
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["throughput"] > 0


def test_bench_small_quick(server_url: URL, bench_database: str, tmp_path: Path) -> None:
    env = base_env(
        CHATDB_DATABASE_URL=server_url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
    )
    args = ("bench", "--size", "small", "--quick", "--out", str(tmp_path), "--json")
    # Two uvicorn workers: the multi-process path of the HTTP part works too.
    result = run_chatdb(
        *args, "--database", bench_database, "--http-workers", "2", env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "bench-small.json").read_text())

    assert report["format"] == "chatdb-bench/1"
    assert report["size"] == "small"
    assert report["quick"] is True
    assert report["dataset"]["messages"] == 100_000
    assert report["dataset"]["reused"] is False
    assert report["dataset"]["load_seconds"] > 0
    assert report["machine"]["cpus"] >= 1
    source = dict(report["source"])
    assert source.pop("same_at_end") is True
    assert source == source_info()
    assert source["version"] == chatdb.__version__
    targets = report["targets"]
    assert 0 < targets["depth"] < targets["conversation_messages"]
    assert targets["inbox_users"]["most"]["conversations"] > 1
    assert targets["http_workers"] == 2

    assert set(READS) <= set(report["reads"])
    for entry in report["reads"].values():
        assert entry["label"]
        assert_stats(entry["floor"])
        assert_stats(entry["data_layer"])
        assert_stats(entry["floor_parallel"], concurrency=8)
        assert_stats(entry["floor_with_round_trips"])
        assert_stats(entry["floor_through_sqlalchemy"])
        assert set(entry["data_layer_vs_floor_through_sqlalchemy"]) == {"p50", "p95", "p99"}
        assert set(entry["data_layer_vs_floor"]) == {"p50", "p95", "p99"}
        assert set(entry["http"]) == set(entry["http_refused"]) == {"1", "8", "32"}
        for clients, stats in entry["http"].items():
            # On a busy machine a slow report may find every pooled connection
            # taken: the app answers 503 (counted), which is not a broken bench.
            if stats["samples"] or not entry["http_refused"][clients]:
                assert_stats(stats, concurrency=int(clients))
        assert entry["http_vs_floor"]["throughput_share"] > 0

    assert set(report["http_no_database"]) == {"1", "8", "32"}
    for clients, stats in report["http_no_database"].items():
        assert_stats(stats, concurrency=int(clients))

    send = report["writes"]["send"]
    assert set(send["floor"]) == set(send["data_layer"]) == {"1", "8"}
    assert set(send["data_layer_without_search_index"]) == {"1", "8"}
    assert set(send["floor_without_flush_wait"]) == {"8"}
    assert set(send["http"]) == {"1", "8", "32"}
    for part in (
        "floor",
        "floor_without_flush_wait",
        "data_layer",
        "data_layer_without_search_index",
        "http",
    ):
        for workers, stats in send[part].items():
            assert_stats(stats, concurrency=int(workers))

    offset = report["comparisons"]["offset_vs_keyset"]
    assert_stats(offset["offset"])
    naive = report["comparisons"]["naive_inbox_vs_chatdb"]
    assert_stats(naive["naive_group_by"])
    assert naive["chatdb"] == report["reads"]["inbox_most"]["floor"]

    assert report["checks"]
    for check in report["checks"]:
        assert set(check) == {"name", "target", "measured", "unit", "met"}
        assert isinstance(check["met"], bool)
    for name, entry in report["reads"].items():
        (check,) = (c for c in report["checks"] if c["name"] == f"{name}: data layer / floor, p50")
        ratio = entry["data_layer"]["p50_ms"] / entry["floor"]["p50_ms"]
        assert check["met"] == (ratio <= 1.3), "judged on the unrounded ratio"
        assert check["measured"] == round(ratio, 3)

    plot = tmp_path / "bench-small-latency.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run reuses the dataset (and its measured load time).
    again = run_chatdb(*args, "--no-http", "--database", bench_database, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["dataset"]["reused"] is True
    assert second["dataset"]["load_seconds"] == report["dataset"]["load_seconds"]
    assert all(entry["http"] == {} for entry in second["reads"].values())
    assert second["writes"]["send"]["http"] == {}
    assert second["targets"]["http_workers"] is None
    assert second["http_no_database"] == {}


def test_interleaved_timing_takes_the_calls_in_turn_in_changing_orders() -> None:
    """Each call is timed once per round, in a new order each round, so a drift
    of the machine's speed falls on all of them alike. (No time is asserted.)"""
    made: list[str] = []
    calls = {name: (lambda name=name: made.append(name)) for name in ("a", "b", "c")}
    stats = time_interleaved(calls, Budget(samples=20, seconds=60, warmup=2))
    assert made[:6] == ["a", "a", "b", "b", "c", "c"]  # the warm-up, call by call
    rounds = [tuple(made[i : i + 3]) for i in range(6, len(made), 3)]
    assert len(rounds) == 20
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len(set(rounds)) > 1
    assert {name: s.samples for name, s in stats.items()} == {"a": 20, "b": 20, "c": 20}


def test_a_report_names_the_commit_it_measured() -> None:
    """In a git checkout of chatdb, as the tests run: the commit checked out,
    and whether the package's files differ from it."""
    repo = Path(chatdb.__file__).parents[2]
    if not (repo / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout, or no git")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=normal", "--", "src/chatdb"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert source_info() == {
        "version": chatdb.__version__,
        "commit": head,
        "modified": bool(status),
    }


def test_without_git_a_report_still_names_the_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to be found
    source = source_info()
    assert source == {"version": chatdb.__version__, "commit": None, "modified": None}
    assert _source_line(source) == f"chatdb {chatdb.__version__} (no git checkout: commit unknown)"


def test_the_report_says_when_the_checkout_changed_during_the_run() -> None:
    source = {"version": "1.0", "commit": "0123456789abcdef", "modified": True}
    assert _source_line({**source, "same_at_end": True}) == (
        "chatdb 1.0 at 0123456789ab, with uncommitted changes"
    )
    assert _source_line({**source, "modified": None, "same_at_end": False}) == (
        "chatdb 1.0 at 0123456789ab, changes unknown; the checkout changed during the run"
    )
