"""Rendering a run: Rich tables for people, JSON for comparing runs, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SIZE_ORDER = ("small", "medium", "large")


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _framework(entry: dict[str, Any]) -> tuple[str, str]:
    # Reports from before the SQLAlchemy floor existed have no such entry.
    if "floor_through_sqlalchemy" not in entry:
        return "", ""
    return (
        _ms(entry["floor_through_sqlalchemy"]["p50_ms"]),
        f"{entry['data_layer_vs_floor_through_sqlalchemy']['p50']:.2f}",
    )


def _source_line(source: dict[str, Any]) -> str:
    line = f"chatdb {source['version']}"
    if commit := source.get("commit"):
        line += f" at {commit[:12]}"
        line += {True: ", with uncommitted changes", None: ", changes unknown"}.get(
            source.get("modified"), ""
        )
    else:
        line += " (no git checkout: commit unknown)"
    if source.get("same_at_end") is False:
        line += "; the checkout changed during the run"
    return line


def print_tables(console: Console, report: dict[str, Any]) -> None:
    d = report["dataset"]
    console.print(
        f"[bold]chatdb bench[/bold] — {report['size']}: {d['messages']:,} messages, "
        f"{d['users']:,} users, {d['conversations']:,} conversations "
        f"({'reused' if d['reused'] else 'loaded'}; load {d['load_seconds']:.1f} s)",
        highlight=False,
    )
    if source := report.get("source"):
        console.print(_source_line(source), highlight=False)
    if phases := d.get("load_phases"):
        console.print(
            "load by phase, s: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()),
            highlight=False,
        )
    reads = Table(title="Reads: latency in ms (floor = bare psycopg, prepared, same SQL)")
    for column in (
        "operation",
        "floor p50",
        "floor p99",
        "data layer p50 / p95 / p99",
        "x floor p50",
        "x floor p99",
        # What a transaction would add; only searches (and sends) run in one.
        "floor + BEGIN, COMMIT p50",
        "through SQLAlchemy p50",
        "x that p50",
    ):
        reads.add_column(column, justify="left" if column == "operation" else "right")
    for entry in report["reads"].values():
        f, s, r = entry["floor"], entry["data_layer"], entry["data_layer_vs_floor"]
        rt = entry["floor_with_round_trips"]
        reads.add_row(
            entry["label"],
            _ms(f["p50_ms"]),
            _ms(f["p99_ms"]),
            f"{_ms(s['p50_ms'])} / {_ms(s['p95_ms'])} / {_ms(s['p99_ms'])}",
            f"{r['p50']:.2f}",
            f"{r['p99']:.2f}",
            _ms(rt["p50_ms"]),
            *_framework(entry),
        )
    console.print(reads)

    if any(entry["http"] for entry in report["reads"].values()):
        table = Table(title="HTTP: latency p50 / p99 in ms, and requests/s, by concurrent clients")
        table.add_column("operation")
        clients = sorted({int(c) for e in report["reads"].values() for c in e["http"]})
        for c in clients:
            table.add_column(f"{c} client{'s' if c > 1 else ''}", justify="right")
        table.add_column("floor req/s (8 threads)", justify="right")
        table.add_column("HTTP / floor req/s", justify="right")
        bare = report.get("http_no_database") or {}
        if bare:
            table.add_row(
                "no database work (GET /healthz)",
                *(
                    f"{_ms(h['p50_ms'])} / {_ms(h['p99_ms'])}  {h['throughput']:,.0f}/s"
                    if h
                    else ""
                    for h in (bare.get(str(c)) for c in clients)
                ),
                "",
                "",
            )
        for entry in report["reads"].values():
            cells = []
            for c in clients:
                h = entry["http"].get(str(c))
                refused = entry.get("http_refused", {}).get(str(c), 0)
                cell = (
                    f"{_ms(h['p50_ms'])} / {_ms(h['p99_ms'])}  {h['throughput']:,.0f}/s"
                    if h
                    else ""
                )
                cells.append(f"{cell}  ({refused} refused: 503)" if refused else cell)
            share = entry.get("http_vs_floor", {}).get("throughput_share")
            table.add_row(
                entry["label"],
                *cells,
                f"{entry['floor_parallel']['throughput']:,.0f}",
                f"{share:.2f}" if share is not None else "",
            )
        console.print(table)

    send = report["writes"].get("send")
    if send:
        table = Table(title="Send a message, durable commit: messages/s (p50 / p99 ms)")
        table.add_column("level")
        levels = sorted({int(c) for part in ("floor", "data_layer", "http") for c in send[part]})
        for c in levels:
            table.add_column(f"{c} sender{'s' if c > 1 else ''}", justify="right")
        for part, name in (
            ("floor", "floor (psycopg)"),
            ("floor_without_flush_wait", "floor, not waiting for the flush (not durable)"),
            ("data_layer", "data layer"),
            ("data_layer_without_search_index", "data layer, search index dropped"),
            ("http", "HTTP"),
        ):
            if part not in send:
                continue
            cells = []
            for c in levels:
                s = send[part].get(str(c))
                cells.append(
                    f"{s['throughput']:,.0f}/s ({_ms(s['p50_ms'])} / {_ms(s['p99_ms'])})"
                    if s
                    else ""
                )
            table.add_row(name, *cells)
        console.print(table)

    comparisons = report["comparisons"]
    if comparisons:
        table = Table(title="Side by side (floor level): p50 / p99 ms")
        for column in ("question", "the usual way", "chatdb's way", "x slower"):
            table.add_column(column, justify="left" if column == "question" else "right")
        o = comparisons["offset_vs_keyset"]
        table.add_row(
            f"{o['label']}: OFFSET vs keyset",
            f"{_ms(o['offset']['p50_ms'])} / {_ms(o['offset']['p99_ms'])}",
            f"{_ms(o['keyset']['p50_ms'])} / {_ms(o['keyset']['p99_ms'])}",
            f"{o['offset_vs_keyset_p50']:,.1f}",
        )
        n = comparisons["naive_inbox_vs_chatdb"]
        table.add_row(
            f"{n['label']}: GROUP BY over messages vs chatdb",
            f"{_ms(n['naive_group_by']['p50_ms'])} / {_ms(n['naive_group_by']['p99_ms'])}",
            f"{_ms(n['chatdb']['p50_ms'])} / {_ms(n['chatdb']['p99_ms'])}",
            f"{n['naive_vs_chatdb_p50']:,.1f}",
        )
        console.print(table)

    checks = Table(title="The issue's targets")
    for column in ("target", "goal", "measured", "met"):
        checks.add_column(column, justify="left" if column == "target" else "right")
    for c in report["checks"]:
        checks.add_row(
            c["name"],
            c["target"],
            f"{c['measured']:,} {c['unit']}".strip(),
            "[green]yes[/green]" if c["met"] else "[red]no[/red]",
        )
    console.print(checks)


def write_json(out: Path, report: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{report['size']}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def draw_plots(out: Path, report: dict[str, Any]) -> list[Path]:
    """The PNGs; none (and no error) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")  # files only, no display
    paths = [_per_operation(out, report)]
    growth = _growth(out)
    if growth is not None:
        paths.append(growth)
    return paths


def _per_operation(out: Path, report: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    entries = list(report["reads"].values())
    labels = [e["label"] for e in entries]
    series: list[tuple[str, list[float], list[float]]] = [
        (
            "floor (psycopg)",
            [e["floor"]["p50_ms"] for e in entries],
            [e["floor"]["p99_ms"] for e in entries],
        ),
        (
            "data layer",
            [e["data_layer"]["p50_ms"] for e in entries],
            [e["data_layer"]["p99_ms"] for e in entries],
        ),
    ]
    for clients in ("1", "32"):
        if all(clients in e["http"] for e in entries):
            series.append(
                (
                    f"HTTP, {clients} client{'s' if clients != '1' else ''}",
                    [e["http"][clients]["p50_ms"] for e in entries],
                    [e["http"][clients]["p99_ms"] for e in entries],
                )
            )
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / len(series)
    for i, (name, p50, p99) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(entries))]
        bars = ax.bar(xs, p50, width, label=f"{name} p50")
        ax.scatter(xs, p99, marker="_", s=200, color=bars.patches[0].get_facecolor(), zorder=3)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (bar: p50, tick: p99; log scale)")
    ax.set_xticks(range(len(entries)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    d = report["dataset"]
    ax.set_title(f"chatdb bench, {report['size']}: {d['messages']:,} messages")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path = out / f"bench-{report['size']}-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _growth(out: Path) -> Path | None:
    """Data-layer p50 per operation against the number of messages, from the
    reports of every size found in `out`."""
    import matplotlib.pyplot as plt

    runs = []
    for size in SIZE_ORDER:
        path = out / f"bench-{size}.json"
        if path.exists():
            runs.append(json.loads(path.read_text()))
    if len(runs) < 2:
        return None
    names = [n for n in runs[-1]["reads"] if all(n in r["reads"] for r in runs)]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs = [r["dataset"]["messages"] for r in runs]
    for name in names:
        label = name.replace("_", " ")
        ax.plot(
            xs,
            [r["reads"][name]["data_layer"]["p50_ms"] for r in runs],
            marker="o",
            label=f"{label} p50",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("messages in the dataset")
    ax.set_ylabel("data layer latency p50, ms")
    ax.set_title("chatdb: latency as the dataset grows")
    ax.legend(fontsize=8)
    ax.grid(which="both", alpha=0.3)
    fig.tight_layout()
    path = out / "bench-growth.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
