"""Did every subscriber receive exactly what was sent? The checks behind every published figure.

A benchmark's figures count only for a run whose every subscriber received
exactly the expected keys (fan-out: sequence numbers 1 .. sent; Postgres
Changes: the ids of its rows; database broadcasts: message numbers), each
once, in order on every lane (one sender whose order is defined), and that
the server did not close. Anything else makes the run an error.

Per subscriber the check yields a summary: {received, missing,
first_missing, duplicates, first_duplicate {key, copies}, out_of_order,
first_out_of_order {key, after}, unexpected, first_unexpected}. Node makes
them for the fan-out and the database broadcasts (StreamCheck in
bench/js/client.js, where the deliveries are too many to ship); for
Postgres Changes check_stream() makes them here from the ids each subscriber
received. diagnose() turns the summaries of the subscribers that failed into
the lines a run's error prints, e.g. "FAILED: 1000 subscribers received 2
copies of seq 17".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["check_stream", "diagnose", "is_exact", "runs_to_ids", "verify_subscribers"]

GROUPS_SHOWN = 3  # per kind of problem, the largest groups of subscribers named in full

Summary = dict[str, Any]


def is_exact(s: Summary) -> bool:
    """Whether a summary shows exactly the expected keys, each once, in order."""
    return not (s["missing"] or s["duplicates"] or s["out_of_order"] or s["unexpected"])


def check_stream(received: Iterable[int], expected: set[int], lane_of: Mapping[int, int] | None = None) -> Summary:
    """Compare the keys one subscriber received, in arrival order, with the set it should have received once each.

    Keys of one lane (lane_of[key]; one lane for all when None) must arrive
    in increasing order: a key below the highest already seen on its lane is
    out of order. A key outside `expected` is unexpected, every copy of it.
    """
    seen: set[int] = set()
    high: dict[int, int] = {}
    n = duplicates = out_of_order = unexpected = 0
    first_duplicate: dict[str, int] | None = None
    first_out_of_order: dict[str, int] | None = None
    first_unexpected: int | None = None
    for key in received:
        n += 1
        if key not in expected:
            unexpected += 1
            if first_unexpected is None:
                first_unexpected = key
            continue
        if key in seen:
            duplicates += 1
            if first_duplicate is None:
                first_duplicate = {"key": key, "copies": 2}
            elif first_duplicate["key"] == key:
                first_duplicate["copies"] += 1
            continue
        seen.add(key)
        lane = 0 if lane_of is None else lane_of.get(key, 0)
        top = high.get(lane)
        if top is not None and key < top:
            out_of_order += 1
            if first_out_of_order is None:
                first_out_of_order = {"key": key, "after": top}
        else:
            high[lane] = key
    missing = len(expected) - len(seen)
    return {
        "received": n,
        "missing": missing,
        "first_missing": sorted(expected - seen)[:5] if missing else [],
        "duplicates": duplicates,
        "first_duplicate": first_duplicate,
        "out_of_order": out_of_order,
        "first_out_of_order": first_out_of_order,
        "unexpected": unexpected,
        "first_unexpected": first_unexpected,
    }


def runs_to_ids(runs: Sequence[int]) -> list[int]:
    """Expand [start, length, start, length, ...] (consecutive keys as runs, bench/js) into the keys."""
    out: list[int] = []
    for i in range(0, len(runs), 2):
        out.extend(range(runs[i], runs[i] + runs[i + 1]))
    return out


def verify_subscribers(
    observed: Sequence[Mapping[str, Any]],
    expected: Sequence[set[int]],
    lane_of: Mapping[int, int] | None,
    noun: str,
) -> dict[str, Any]:
    """Check every subscriber's keys against its expected set; return the run's verification.

    observed[i] is what subscriber i got: {"ids": runs (see runs_to_ids),
    "closed", "close", "bad_frames"}; expected[i] its set (subscribers that
    may see the same rows share one set object: an identical stream is then
    checked once). The result holds exact, per-subscriber extremes, totals,
    the summaries of the subscribers that failed ("problems") and the
    diagnosis lines.
    """
    memo: dict[tuple[int, tuple[int, ...]], Summary] = {}
    problems: list[Summary] = []
    totals = dict.fromkeys(("missing", "duplicates", "out_of_order", "unexpected", "bad_frames"), 0)
    received: list[int] = []
    closed = 0
    for i, (o, want) in enumerate(zip(observed, expected, strict=True)):
        key = (id(want), tuple(o["ids"]))
        s = memo.get(key)
        if s is None:
            s = memo[key] = check_stream(runs_to_ids(o["ids"]), want, lane_of)
        s = {**s, "bad_frames": o.get("bad_frames", 0)}
        received.append(s["received"])
        for k in totals:
            totals[k] += s[k]
        closed += bool(o.get("closed"))
        if o.get("closed") or s["bad_frames"] or not is_exact(s):
            problems.append({"subscriber": i, "closed": bool(o.get("closed")), "close": o.get("close"), **s})
    sizes = [len(e) for e in expected]
    return {
        "exact": not problems,
        "subscribers": len(observed),
        "subscribers_exact": len(observed) - len(problems),
        "subscribers_closed": closed,
        "expected_per_subscriber_min": min(sizes, default=0),
        "expected_per_subscriber_max": max(sizes, default=0),
        "received_per_subscriber_min": min(received, default=0),
        "received_per_subscriber_max": max(received, default=0),
        **totals,
        "problems": problems,
        "diagnosis": diagnose(problems, noun),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def diagnose(problems: Iterable[Summary], noun: str) -> list[str]:
    """Return one "FAILED: ..." line per kind of problem and key, the largest groups of subscribers first.

    `problems` are the summaries of the subscribers that failed, each with
    "closed" (the server closed it) and "close" (how) beside the counts;
    `noun` names a key ("seq", "id", "message").
    """
    groups: dict[tuple[str, Any], list[Summary]] = defaultdict(list)
    for p in problems:
        if p.get("closed"):
            groups[("closed", p.get("close") or "")].append(p)
        if p["duplicates"]:
            d = p["first_duplicate"] or {}
            groups[("duplicates", (d.get("copies"), d.get("key")))].append(p)
        if p["missing"]:
            groups[("missing", p["first_missing"][0] if p["first_missing"] else None)].append(p)
        if p["out_of_order"]:
            o = p["first_out_of_order"] or {}
            groups[("out_of_order", (o.get("key"), o.get("after")))].append(p)
        if p["unexpected"]:
            groups[("unexpected", p["first_unexpected"])].append(p)
        if p.get("bad_frames"):
            groups[("bad_frames", None)].append(p)
    lines: list[str] = []
    for kind in ("closed", "duplicates", "missing", "out_of_order", "unexpected", "bad_frames"):
        mine = sorted(((k, v) for (g, k), v in groups.items() if g == kind), key=lambda kv: -len(kv[1]))
        for key, subs in mine[:GROUPS_SHOWN]:
            lines.append("FAILED: " + _line(kind, key, subs, noun))
        rest = sum(len(v) for _, v in mine[GROUPS_SHOWN:])
        if rest:
            lines.append(f"FAILED: {_plural(rest, 'more subscriber')} {_REST[kind].format(noun=noun)}")
    return lines


_REST = {
    "closed": "closed by the server",
    "duplicates": "received repeated {noun}s",
    "missing": "never received some {noun}s",
    "out_of_order": "received {noun}s out of order",
    "unexpected": "received {noun}s not sent to them",
    "bad_frames": "received malformed frames",
}


_IN_ALL = {
    "duplicates": "extra copies",
    "missing": "missing",
    "out_of_order": "out of order",
    "unexpected": "such deliveries",
    "bad_frames": "malformed frames",
}


def _line(kind: str, key: Any, subs: list[Summary], noun: str) -> str:
    who = _plural(len(subs), "subscriber")
    if kind == "closed":
        return f"{who} closed by the server" + (f" ({key})" if key else "")
    total = sum(p[kind] for p in subs)
    in_all = f" ({total:,} {_IN_ALL[kind]} in all)" if total > len(subs) else ""
    if kind == "duplicates":
        copies, k = key
        return f"{who} received {copies} copies of {noun} {k}{in_all}"
    if kind == "missing":
        return f"{who} never received {noun} {key}{in_all}"
    if kind == "out_of_order":
        k, after = key
        return f"{who} received {noun} {k} after {noun} {after}{in_all}"
    if kind == "bad_frames":
        return f"{who} received malformed frames{in_all}"
    return f"{who} received {noun} {key}, which was not sent to them{in_all}"
