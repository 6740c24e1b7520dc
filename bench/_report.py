"""What the benchmarks print and write: figures, the JSON report, the exit status.

Every benchmark's main() goes through run_main(), and its run ends with
finish(): the JSON file, the errors once more, and exit status 1 after an
error or 3 for a missed target under --check-targets. environment() opens
each JSON report; fmt(), percentile() and rounded() shape the figures.

The rest is bench/fanout.py's: summarize() turns its list of runs into the
rows that print_summary() shows and that go to the JSON file beside every
run. The targets live in each benchmark's report code and nowhere else:
unit tests never assert a speed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._servers import BenchError

__all__ = [
    "TARGET_KB_PER_CONN",
    "TARGET_RATIO_AT_1000",
    "TARGET_WORKERS_RATIO_AT_1000",
    "WARN_CPU_PCT",
    "WARN_FOREIGN_PCT",
    "WARN_IDLE_CORE_PCT",
    "environment",
    "finish",
    "fmt",
    "percentile",
    "print_run",
    "print_summary",
    "rounded",
    "run_main",
    "summarize",
    "target",
]

TARGET_RATIO_AT_1000 = 1.2  # ours / Node ws deliveries per second at S = 1000
TARGET_KB_PER_CONN = 10.0  # RSS growth per idle joined connection
# `bench fanout --workers 2` / one worker, deliveries per second at S = 1000, on a 2-core machine
# where the generator competes for the same cores (issue #16; 1.7 where it has its own).
TARGET_WORKERS_RATIO_AT_1000 = 1.5
WARN_CPU_PCT = 90.0  # a process using this share of one core may be the bottleneck
WARN_IDLE_CORE_PCT = 85.0  # a server core less busy than this was not the limit
WARN_FOREIGN_PCT = 15.0  # CPU of unrelated processes that makes a window suspect
HEADROOM_OK = 0.85  # with part of its core taken away, the generator still reached this share

_BENCH_DIR = Path(__file__).resolve().parent

Run = dict[str, Any]


# ------------------------------------------------------------ every bench


def run_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Return run(args), or 1 after a BenchError (printed), or 130 after Ctrl-C."""
    try:
        return run(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def finish(
    path: Path,
    report: dict[str, Any],
    errors: list[str],
    targets: dict[str, dict[str, Any]],
    check_targets: bool,
    elapsed_s: float | None = None,
) -> int:
    """Write `report` to `path`, print `errors` again, and return the exit status.

    The status is 1 after any error (a run that did not deliver exactly
    what was sent is one; callers then pass no targets), 3 when
    `check_targets` is set and a target was missed, 0 otherwise.
    `elapsed_s` goes into the closing line.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}" + ("" if elapsed_s is None else f" ({elapsed_s:.0f} s)"))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s): no target is scored", file=sys.stderr)
        return 1
    if check_targets and not all(t["met"] for t in targets.values()):
        return 3
    return 0


def _output(*cmd: str) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=_BENCH_DIR)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def environment(node: str) -> dict[str, Any]:
    """Return the machine part of a report's environment: time, commit, CPU, kernel, Python and Node.

    Each bench adds its own entries (versions, pinning) after these.
    """
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _output("git", "rev-parse", "--short", "HEAD"),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _output(node, "--version"),
    }


def target(want: Any, value: Any, met: bool) -> dict[str, Any]:
    """Return one entry of a report's targets: what was wanted, what was measured, whether it was met."""
    return {"target": want, "value": value, "met": met}


def fmt(v: Any, spec: str = ".0f") -> str:
    """Format a figure for a table; "-" when it was not measured."""
    return "-" if v is None else format(v, spec)


def rounded(v: float | None, digits: int) -> float | None:
    """round(), passing None through."""
    return None if v is None else round(v, digits)


def percentile(values: list[float], q: float) -> float | None:
    """Return the value below which a share `q` of `values` falls (nearest rank), None if empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------- bench/fanout.py


def print_run(r: Run) -> None:
    """Print one line per run, as it finishes."""
    kind = r["phase"] + (f" burn {r['burn']:g}" if r.get("burn") else "")
    lat = (
        f"p50 {fmt(r.get('p50_ms'), '.2f')} ms p99 {fmt(r.get('p99_ms'), '.2f')} ms " if r["phase"] == "latency" else ""
    )
    print(
        f"  {r['server']:<9} S={r['subscribers']:<5} {kind:<19} {r['deliveries_per_s']:>10.0f}/s {lat}"
        f"server {fmt(r.get('server_cpu_pct'))}% (core {fmt(r.get('server_core_busy_pct'))}%) "
        f"gen {fmt(r.get('generator_cpu_pct'))}% (core {fmt(r.get('generator_core_busy_pct'))}%) "
        f"others {fmt(r.get('foreign_cpu_pct'))}% "
        + (f"redis {fmt(r.get('redis_cpu_pct'))}% " if r.get("redis_cpu_pct") is not None else "")
        + f"exact ({r['verification']['sent']} x {r['subscribers']})",
        flush=True,
    )


def _select(runs: list[Run], server: str, s_count: int, phase: str, burn: bool = False) -> list[Run]:
    return [
        r
        for r in runs
        if r["server"] == server and r["subscribers"] == s_count and r["phase"] == phase and bool(r.get("burn")) == burn
    ]


def _row(runs: list[Run], server: str, s_count: int) -> Run | None:
    thr = _select(runs, server, s_count, "throughput")
    lat = _select(runs, server, s_count, "latency")
    burned = _select(runs, server, s_count, "throughput", burn=True)
    if not thr and not lat:
        return None
    values = [r["deliveries_per_s"] for r in thr]
    median = statistics.median(values) if values else None
    mid = min(thr, key=lambda r: abs(r["deliveries_per_s"] - median)) if thr else {}
    first_lat = lat[0] if lat else {}
    headroom = None
    headroom_noisy = False
    if burned and median:
        headroom = round(burned[0]["deliveries_per_s"] / median, 3)
        # Other processes' load moves a single run by more than the burn does.
        headroom_noisy = any((r.get("foreign_cpu_pct") or 0) >= WARN_FOREIGN_PCT for r in (burned[0], mid))
    every = thr + lat + burned
    return {
        "server": server,
        "subscribers": s_count,
        "deliveries_per_s": median,
        "deliveries_per_s_min": min(values, default=None),
        "deliveries_per_s_max": max(values, default=None),
        "throughput_runs": len(values),
        "server_cpu_pct": mid.get("server_cpu_pct"),
        "redis_cpu_pct": mid.get("redis_cpu_pct"),  # scaled out on the bench's own Redis
        "server_core_busy_pct": mid.get("server_core_busy_pct"),
        "generator_cpu_pct": max((r["generator_cpu_pct"] for r in thr), default=None),
        "generator_core_busy_pct": mid.get("generator_core_busy_pct"),
        "foreign_cpu_pct_max": max((r.get("foreign_cpu_pct") or 0 for r in thr), default=None),
        "window_peak_deliveries": mid.get("window_peak_deliveries"),
        "generator_headroom": headroom,
        "generator_headroom_noisy": headroom_noisy,
        "latency_rate_per_s": first_lat.get("rate"),
        "latency_deliveries_per_s": first_lat.get("deliveries_per_s"),
        "p50_ms": first_lat.get("p50_ms"),
        "p99_ms": first_lat.get("p99_ms"),
        "verified_runs": len(every),  # every run kept delivered exactly what was sent
    }


def _warnings(runs: list[Run], rows: list[Run], burn: float) -> list[str]:
    out = []
    for r in runs:
        where = f"{r['server']} S={r['subscribers']} {r['phase']}" + (" (burn)" if r.get("burn") else "")
        gen = r.get("generator_cpu_pct") or 0.0
        srv_core = r.get("server_core_busy_pct")
        foreign = r.get("foreign_cpu_pct") or 0.0
        if r["phase"] == "throughput" and not r.get("burn"):
            if gen >= WARN_CPU_PCT:
                out.append(f"{where}: the generator used {gen:.0f}% of a core: it may be the bottleneck")
            elif srv_core is not None and srv_core < WARN_IDLE_CORE_PCT and foreign < WARN_FOREIGN_PCT:
                out.append(
                    f"{where}: the server's core was only {srv_core:.0f}% busy: the generator "
                    f"({gen:.0f}% CPU) or the in-flight window limited this run"
                )
        if foreign >= WARN_FOREIGN_PCT:
            top = ", ".join(r.get("foreign_top", []))
            out.append(f"{where}: other processes used {foreign:.0f}% of a core meanwhile ({top}): figures may be low")
    for row in rows:
        h = row["generator_headroom"]
        if h is not None and h < HEADROOM_OK and row["generator_headroom_noisy"]:
            out.append(
                f"{row['server']} S={row['subscribers']}: the generator headroom check is inconclusive "
                f"({h:.0%} with {burn:.0%} of its core taken away, but other processes loaded the machine)"
            )
        elif h is not None and h < HEADROOM_OK:
            out.append(
                f"{row['server']} S={row['subscribers']}: with {burn:.0%} of the generator's core taken away the "
                f"rate fell to {h:.0%} of the median (its core was {fmt(row['generator_core_busy_pct'])}% busy, "
                "kernel network work included): the generator may be limiting this server"
            )
    return out


def summarize(
    runs: list[Run],
    servers: list[str],
    subscribers: list[int],
    idle: dict[str, Run],
    burn: float,
    compare: tuple[str, str] = ("ours", "reference"),
) -> dict[str, Any]:
    """Return {table, ratios, ratios_best, compared, targets, warnings} for the JSON file and print_summary.

    The ratios are `compare[0]` / `compare[1]`: ours against the reference server, or our
    server scaled out (`--workers`, `bench cluster`) against one process of it."""
    rows = [row for s in subscribers for name in servers if (row := _row(runs, name, s)) is not None]
    by = {(r["server"], r["subscribers"]): r for r in rows}
    ratios: dict[str, float] = {}
    best: dict[str, float] = {}
    top, bottom = compare
    for s in subscribers:
        ours, ref = by.get((top, s)), by.get((bottom, s))
        if ours and ref and ours["deliveries_per_s"] and ref["deliveries_per_s"]:
            ratios[str(s)] = round(ours["deliveries_per_s"] / ref["deliveries_per_s"], 3)
            best[str(s)] = round(ours["deliveries_per_s_max"] / ref["deliveries_per_s_max"], 3)
    targets: dict[str, Any] = {}
    if "1000" in ratios:
        v = ratios["1000"]
        if compare == ("ours", "reference"):
            targets["deliveries_ratio_at_1000"] = target(TARGET_RATIO_AT_1000, v, v >= TARGET_RATIO_AT_1000)
        elif top.startswith("workers"):
            targets["workers_ratio_at_1000"] = target(
                TARGET_WORKERS_RATIO_AT_1000, v, v >= TARGET_WORKERS_RATIO_AT_1000
            )
    if "ours" in idle:
        v = idle["ours"]["kb_per_connection"]
        targets["idle_kb_per_connection"] = target(TARGET_KB_PER_CONN, v, v <= TARGET_KB_PER_CONN)
    return {
        "table": rows,
        "ratios": ratios,
        "ratios_best": best,
        "compared": f"{top}/{bottom}",
        "targets": targets,
        "warnings": _warnings(runs, rows, burn),
    }


def print_summary(summary: dict[str, Any], idle: dict[str, Run]) -> None:
    """Print the table, the ratios, idle memory, targets and warnings."""
    print()
    head = (
        f"{'server':<10} {'S':>5} {'deliveries/s':>13} {'(min-max)':>19} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'gen CPU%':>9} {'srv CPU%':>9} {'headroom':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in summary["table"]:
        span = f"{fmt(r['deliveries_per_s_min'])}-{fmt(r['deliveries_per_s_max'])}"
        print(
            f"{r['server']:<10} {r['subscribers']:>5} {fmt(r['deliveries_per_s']):>13} {span:>19} "
            f"{fmt(r['p50_ms'], '.2f'):>8} {fmt(r['p99_ms'], '.2f'):>8} "
            f"{fmt(r['generator_cpu_pct']):>9} {fmt(r['server_cpu_pct']):>9} "
            f"{fmt(r['generator_headroom'], '.2f'):>9}"
        )
    for r in summary["table"]:
        if r.get("redis_cpu_pct") is not None:
            print(f"{r['server']} S={r['subscribers']}: redis-server {r['redis_cpu_pct']}% CPU (median run)")
    print(
        "(deliveries/s: median of the runs; p50/p99: latency at the same moderate rate for every server; "
        "headroom: rate with part of the generator's core taken away / median)"
    )
    if summary["ratios"]:
        print()
        for s, ratio in summary["ratios"].items():
            print(
                f"ratio {summary['compared']} at S={s}: {ratio:.2f}x (median), "
                f"{summary['ratios_best'][s]:.2f}x (best runs)"
            )
    if idle:
        print()
        for name, m in idle.items():
            print(
                f"idle memory {name}: {m['kb_per_connection']:.2f} KB per connection "
                f"(RSS {m['rss_before_kb']} -> {m['rss_after_kb']} KB over {m['connections']} connections)"
            )
    if summary["targets"]:
        print()
    for name, t in summary["targets"].items():
        print(f"target {name}: {t['value']} (target {t['target']}) {'met' if t['met'] else 'MISSED'}")
    for w in summary["warnings"]:
        print(f"warning: {w}")
