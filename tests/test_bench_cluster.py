"""`bench fanout --workers N` and `bench cluster` run, and prove their runs exact (tiny smoke runs).

Each starts our server scaled out on a redis-server of its own beside one process of it and
checks, as every fan-out run does, that each subscriber received exactly 1 .. sent in order
(bench/js/loadgen.js); these tests check that both modes get that far and report it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_tools = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("redis-server") is None, reason="needs node and redis-server"
)


def _bench(tmp_path: Path, module: str, *extra: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        module,
        *("--subscribers", "30", "--duration", "0.5", "--warmup", "0.2", "--repeat", "1"),
        *("--headroom-burn", "0", "--idle-connections", "0", "--json", str(out)),
        # This checkout's server, not whichever realtime-core is on PATH.
        *("--server-cmd", f"{sys.executable} -m realtime_core serve"),
        *extra,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, done.stdout + done.stderr, report


def _assert_exact(report: dict[str, Any], scaled: str) -> None:
    assert report["exact"] is True
    servers = {run["server"] for run in report["runs"]}
    assert servers == {"ours", scaled}
    for run in report["runs"]:
        v = run["verification"]
        assert v["exact"] and v["subscribers_exact"] == 30 and v["sent"] > 0, run
    scaled_runs = [run for run in report["runs"] if run["server"] == scaled]
    assert all(run["redis_cpu_pct"] is not None for run in scaled_runs)
    assert report["compared"] == f"{scaled}/ours"


@pytest.mark.slow
@pytest.mark.pg
@needs_tools
def test_fanout_with_two_workers_against_one_is_exact(tmp_path: Path) -> None:
    code, output, report = _bench(tmp_path, "bench.fanout", "--workers", "2")
    assert code == 0, output
    _assert_exact(report, "workers-2")


@pytest.mark.slow
@pytest.mark.pg
@needs_tools
def test_cluster_of_three_nodes_against_one_is_exact(tmp_path: Path) -> None:
    code, output, report = _bench(tmp_path, "bench.cluster")
    assert code == 0, output
    _assert_exact(report, "nodes-3")
    assert report["config"]["nodes"] == 3


def test_workers_and_nodes_together_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--workers", "2", "--nodes", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers and --nodes take a positive count, and not both above 1" in done.stderr
