"""The benchmarks' delivery checks can fail: broken servers and crafted observations are rejected.

A figure is published only from a run that proves every subscriber received
exactly what was sent (bench/_verify.py, StreamCheck in bench/js/client.js).
These tests feed the checks duplicates, losses, disorder and closed
subscribers, and run `bench fanout` against the reference Node server
broken on purpose (bench/js/ws_server.js --fault): each run must end with
exit status 1 and the diagnosis line that names the fault. A run of the
unbroken reference shows that the same configuration passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench._verify import check_stream, diagnose, is_exact, runs_to_ids, verify_subscribers
from bench.postgres_changes import expected_rows, writer_lanes

ROOT = Path(__file__).resolve().parent.parent
CLIENT_JS = ROOT / "bench" / "js" / "client.js"

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")


# ------------------------------------------------------------ check_stream


def test_an_exact_stream_passes() -> None:
    s = check_stream([1, 2, 3, 4], {1, 2, 3, 4})
    assert is_exact(s)
    assert s["received"] == 4


def test_a_duplicate_and_a_loss_with_equal_counts_are_both_reported() -> None:
    # 4 deliveries for 4 rows: a count check passes, the identities do not
    s = check_stream([10, 11, 11, 13], {10, 11, 12, 13})
    assert not is_exact(s)
    assert s["received"] == 4
    assert s["missing"] == 1 and s["first_missing"] == [12]
    assert s["duplicates"] == 1 and s["first_duplicate"] == {"key": 11, "copies": 2}
    assert s["out_of_order"] == 0 and s["unexpected"] == 0


def test_a_reorder_within_a_lane_is_reported() -> None:
    s = check_stream([1, 3, 2, 4], {1, 2, 3, 4})
    assert s["out_of_order"] == 1
    assert s["first_out_of_order"] == {"key": 2, "after": 3}
    assert s["missing"] == 0 and s["duplicates"] == 0


def test_interleaved_lanes_are_in_order_but_a_reorder_inside_one_is_not() -> None:
    lane_of = {1: 0, 2: 0, 3: 0, 101: 1, 102: 1, 103: 1}
    # two writers: their transactions interleave in any way, each writer's rows in its own order
    assert is_exact(check_stream([101, 1, 102, 2, 103, 3], set(lane_of), lane_of))
    s = check_stream([101, 1, 103, 2, 102, 3], set(lane_of), lane_of)
    assert s["out_of_order"] == 1 and s["first_out_of_order"] == {"key": 102, "after": 103}


def test_a_row_of_another_subscriber_is_unexpected() -> None:
    s = check_stream([1, 2, 7, 3], {1, 2, 3})
    assert s["unexpected"] == 1 and s["first_unexpected"] == 7
    assert s["missing"] == 0


def test_runs_expand_to_keys() -> None:
    assert runs_to_ids([5, 3, 20, 1]) == [5, 6, 7, 20]
    assert runs_to_ids([]) == []


# ---------------------------------------------------------------- diagnose


def _summary(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "received": 0,
        "missing": 0,
        "first_missing": [],
        "duplicates": 0,
        "first_duplicate": None,
        "out_of_order": 0,
        "first_out_of_order": None,
        "unexpected": 0,
        "first_unexpected": None,
        "closed": False,
        "close": None,
    }
    return base | kw


def test_diagnose_groups_subscribers_by_fault() -> None:
    dup = _summary(duplicates=1, first_duplicate={"key": 17, "copies": 2})
    lines = diagnose([dup] * 1000, "seq")
    assert lines == ["FAILED: 1000 subscribers received 2 copies of seq 17"]


def test_diagnose_names_every_kind_of_problem() -> None:
    problems = [
        _summary(missing=3, first_missing=[5, 6, 7]),
        _summary(missing=1, first_missing=[5]),
        _summary(out_of_order=1, first_out_of_order={"key": 9, "after": 10}),
        _summary(unexpected=1, first_unexpected=99),
        _summary(closed=True, close="close 1011 going away", missing=2, first_missing=[40, 41]),
    ]
    assert diagnose(problems, "id") == [
        "FAILED: 1 subscriber closed by the server (close 1011 going away)",
        "FAILED: 2 subscribers never received id 5 (4 missing in all)",
        "FAILED: 1 subscriber never received id 40 (2 missing in all)",
        "FAILED: 1 subscriber received id 9 after id 10",
        "FAILED: 1 subscriber received id 99, which was not sent to them",
    ]


def test_diagnose_names_the_largest_groups_and_counts_the_rest() -> None:
    problems = [_summary(missing=1, first_missing=[k]) for k in (5, 5, 5, 6, 6, 7, 8, 9)]
    assert diagnose(problems, "seq") == [
        "FAILED: 3 subscribers never received seq 5",
        "FAILED: 2 subscribers never received seq 6",
        "FAILED: 1 subscriber never received seq 7",
        "FAILED: 2 more subscribers never received some seqs",
    ]


def test_diagnose_of_nothing_is_empty() -> None:
    assert diagnose([], "seq") == []


# ------------------------------------------ Postgres Changes observations


ROWS = [(1, "user0", "w0"), (2, "user1", "w0"), (3, "user0", "w1"), (4, "user1", "w1"), (5, "user2", "w0")]


def _observed(ids: list[int], **kw: Any) -> dict[str, Any]:
    runs = [x for i in ids for x in (i, 1)]
    return {"ids": runs, "closed": False, "close": None, "bad_frames": 0} | kw


def test_expected_rows_follow_the_policy() -> None:
    every = expected_rows(ROWS, 3, rls=False)
    assert every == [{1, 2, 3, 4, 5}] * 3
    assert every[0] is every[2]  # one set: identical streams are checked once
    assert expected_rows(ROWS, 3, rls=True) == [{1, 3}, {2, 4}, {5}]
    assert writer_lanes(ROWS) == {1: 0, 2: 0, 3: 1, 4: 1, 5: 0}
    assert writer_lanes([(1, "user0", "1733400000000")]) is None


def test_verify_subscribers_rejects_a_duplicate_plus_a_loss_that_keeps_the_count() -> None:
    expected = expected_rows(ROWS, 2, rls=True)  # {1, 3} and {2, 4}
    v = verify_subscribers([_observed([1, 3]), _observed([2, 2])], expected, writer_lanes(ROWS), "id")
    assert v["received_per_subscriber_min"] == v["received_per_subscriber_max"] == 2  # the counts all match
    assert not v["exact"]
    assert v["subscribers_exact"] == 1
    assert v["diagnosis"] == [
        "FAILED: 1 subscriber received 2 copies of id 2",
        "FAILED: 1 subscriber never received id 4",
    ]


def test_verify_subscribers_rejects_a_reorder_inside_one_writers_rows() -> None:
    expected = expected_rows(ROWS, 2, rls=False)
    lanes = writer_lanes(ROWS)
    # writer 1's rows (3, 4) may come before writer 0's (1, 2, 5), but not 2 before 1
    v = verify_subscribers([_observed([3, 4, 1, 2, 5]), _observed([3, 2, 1, 4, 5])], expected, lanes, "id")
    assert v["subscribers_exact"] == 1
    assert v["diagnosis"] == ["FAILED: 1 subscriber received id 1 after id 2"]


def test_verify_subscribers_rejects_rows_of_another_owner_closed_sockets_and_bad_frames() -> None:
    expected = expected_rows(ROWS, 3, rls=True)
    observed = [
        _observed([1, 3, 2]),
        _observed([2, 4], closed=True, close="closed 1011 slow consumer"),
        _observed([5], bad_frames=1),
    ]
    v = verify_subscribers(observed, expected, writer_lanes(ROWS), "id")
    assert v["subscribers_exact"] == 0 and v["subscribers_closed"] == 1
    assert v["diagnosis"] == [
        "FAILED: 1 subscriber closed by the server (closed 1011 slow consumer)",
        "FAILED: 1 subscriber received id 2, which was not sent to them",
        "FAILED: 1 subscriber received malformed frames",
    ]


def test_verify_subscribers_accepts_exact_streams() -> None:
    expected = expected_rows(ROWS, 2, rls=False)
    v = verify_subscribers([_observed([1, 2, 3, 4, 5])] * 2, expected, writer_lanes(ROWS), "id")
    assert v["exact"] and v["problems"] == [] and v["diagnosis"] == []
    assert v["expected_per_subscriber_max"] == 5


# ----------------------------------------------------- StreamCheck (Node)


def _stream_check(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run StreamCheck over each case {keys, count, lanes?} in Node; return the summaries."""
    script = f"""
const {{ StreamCheck }} = require({json.dumps(str(CLIENT_JS))});
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = cases.map(({{ keys, count, lanes, first }}) => {{
  const s = new StreamCheck(first === undefined ? 1 : first);
  keys.forEach((k, i) => (lanes ? s.addOnLane(k, lanes[i]) : s.add(k)));
  return {{ ...s.summary(count), highest: s.highest }};
}});
process.stdout.write(JSON.stringify(out));
"""
    done = subprocess.run(
        ["node", "-e", script], input=json.dumps(cases), capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


@needs_node
def test_stream_check_in_node_agrees_with_check_stream() -> None:
    """The Node check gives the summary the Python one gives, on the same arrivals."""
    cases = [
        [1, 2, 3, 4],
        [1, 2, 2, 4],  # duplicate + loss, equal count
        [1, 3, 2, 4],  # reorder
        [1, 2, 3, 4, 5, 6],  # two never sent
        [2, 3, 4],  # the first lost
        [1, 1, 1, 2, 3, 4],  # three copies of the first
        [*range(1, 20001), 19999],  # a late copy after the fast path ran far
    ]
    count = {6: 20000}
    got = _stream_check([{"keys": k, "count": count.get(i, 4)} for i, k in enumerate(cases)])
    for i, (keys, summary) in enumerate(zip(cases, got, strict=True)):
        n = count.get(i, 4)
        want = check_stream(keys, set(range(1, n + 1)))
        assert {k: summary[k] for k in want} == want, keys[:10]
    assert got[0]["highest"] == 4
    assert got[5]["first_duplicate"] == {"key": 1, "copies": 3}


@needs_node
def test_stream_check_keeps_order_per_lane() -> None:
    lanes = [0, 1, 0, 1, 0, 1]
    ok, bad = _stream_check(
        [
            {"keys": [3, 0, 4, 1, 5, 2], "lanes": lanes, "count": 6, "first": 0},
            {"keys": [3, 0, 5, 1, 4, 2], "lanes": lanes, "count": 6, "first": 0},
        ]
    )
    assert ok["out_of_order"] == 0 and ok["missing"] == 0 and ok["duplicates"] == 0
    assert bad["out_of_order"] == 1 and bad["first_out_of_order"] == {"key": 4, "after": 5}


@needs_node
def test_stream_check_counts_frames_without_a_sequence_number() -> None:
    (s,) = _stream_check([{"keys": [1, -1, 2], "count": 2}])
    assert s["unexpected"] == 1 and s["first_unexpected"] == -1 and s["missing"] == 0


# -------------------------------------------- bench fanout, broken servers


def _fanout(tmp_path: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "fanout.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.fanout",
        "--skip-ours",
        *("--subscribers", "20", "--duration", "0.5", "--warmup", "0.2", "--repeat", "1"),
        *("--headroom-burn", "0", "--idle-connections", "0", "--json", str(out)),
        *extra,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, done.stdout + done.stderr, report


@pytest.mark.slow
@needs_node
def test_fanout_passes_the_unbroken_reference(tmp_path: Path) -> None:
    code, output, report = _fanout(tmp_path)
    assert code == 0, output
    assert "FAILED" not in output
    assert report["exact"] is True
    (throughput, *_) = report["runs"]
    v = throughput["verification"]
    assert v["exact"] and v["subscribers_exact"] == 20 and v["sent"] > 0
    assert v["received_per_subscriber_min"] == v["received_per_subscriber_max"] == v["sent"]
    assert report["table"][0]["deliveries_per_s"] > 0


@pytest.mark.slow
@needs_node
@pytest.mark.parametrize(
    ("fault", "diagnosis"),
    [
        ("duplicate", "FAILED: 20 subscribers received 2 copies of seq 1 ("),
        ("drop", "FAILED: 20 subscribers never received seq 17\n"),
        ("reorder", "FAILED: 20 subscribers received seq 17 after seq 18\n"),
        ("close", "FAILED: 2 subscribers closed by the server (close 1011 fault: close)\n"),
    ],
)
def test_fanout_rejects_a_broken_reference(tmp_path: Path, fault: str, diagnosis: str) -> None:
    code, output, report = _fanout(tmp_path, "--reference-fault", fault)
    assert code == 1, output
    assert diagnosis in output
    assert "no target is scored" in output
    assert report["exact"] is False
    assert report["runs"] == [] and report["table"] == [] and report["targets"] == {}
    failed = report["failed_runs"][0]["verification"]
    assert failed["exact"] is False
    assert diagnosis.strip() in "\n".join(failed["diagnosis"]) + "\n"


@pytest.mark.slow
@needs_node
def test_fanout_idle_memory_rejects_connections_the_server_closed(tmp_path: Path) -> None:
    code, output, report = _fanout(
        tmp_path, "--reference-fault", "close", "--idle-connections", "30", "--subscribers", "20"
    )
    assert code == 1, output
    assert "idle memory: no figure" in output
    assert "idle connections closed by the server" in output
    assert report["idle_memory"] == {}


# ------------------------------- bench postgres-changes, falsified subscriber


@pytest.mark.slow
@pytest.mark.pg
@needs_node
@pytest.mark.parametrize(
    ("fault", "diagnosis"),
    [
        ("duplicate-loss", ["FAILED: 1 subscriber received 2 copies of id ", "FAILED: 1 subscriber never received id"]),
        ("reorder", ["FAILED: 1 subscriber received id "]),
    ],
)
def test_postgres_changes_rejects_what_a_faulty_server_would_deliver(
    tmp_path: Path, fault: str, diagnosis: list[str]
) -> None:
    """pg_subscribers.js --fault falsifies subscriber 0's record as a faulty server would: the phase fails."""
    out = tmp_path / "pg.json"
    cmd = [sys.executable, "-m", "bench.postgres_changes", "--phases", "a", "--duration", "1", "--warmup", "0.3"]
    cmd += ["--subscriber-fault", fault, "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    for line in diagnosis:
        assert line in output
    report = json.loads(out.read_text())
    assert report["exact"] is False and report["phases"] == {} and report["targets"] == {}
    assert report["failed_phases"]["a"]["verification"]["exact"] is False


@pytest.mark.slow
@pytest.mark.pg
@needs_node
def test_private_rejects_what_a_faulty_server_would_deliver(tmp_path: Path) -> None:
    """private_subscribers.js --fault falsifies socket 0's record as a faulty server would: (2) and (3) fail."""
    out = tmp_path / "private.json"
    cmd = [sys.executable, "-m", "bench.private", "--phases", "broadcast,latency", "--repeat", "1"]
    cmd += ["--duration", "1", "--warmup", "0.3", "--subscribers", "10", "--latency-duration", "0.5"]
    cmd += ["--drain-timeout", "2", "--subscriber-fault", "duplicate-loss", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "FAILED: 1 subscriber received 2 copies of message " in output
    assert "FAILED: 1 subscriber never received message " in output
    report = json.loads(out.read_text())
    assert report["exact"] is False and report["phases"] == {} and report["targets"] == {}
    assert set(report["failed_phases"]) == {"broadcast.0", "latency.0"}
    v = report["failed_phases"]["broadcast.0"]["verification"]
    assert v["subscribers_exact"] == 9 and v["missing"] == 1 and v["duplicates"] == 1
