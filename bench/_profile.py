"""py-spy recordings of the server during a measured window, and where its time went.

With --profile, bench/_harness.py starts a Profile as a window opens and
calls finish() after it; that summarises py-spy's collapsed stacks with
summarize_profile() into self and inclusive shares per function, which go
to the JSON report and, through print_profiles(), after the summary table.
Samples are taken with --gil: only those where the server holds the GIL,
so shares are of its Python CPU time, not of wall time spent waiting on
sockets."""

from __future__ import annotations

import collections
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["Profile", "print_profiles", "summarize_profile"]


@dataclasses.dataclass
class Profile:
    """A py-spy recording in progress."""

    proc: subprocess.Popen[bytes]
    out: Path

    @classmethod
    def start(cls, pid: int, seconds: float, out: Path, *, rate: int, nonblocking: bool) -> Profile | None:
        """Record `pid` for `seconds` at `rate` samples/s into `out`; None when py-spy is missing.

        `nonblocking` samples without pausing the process: cheaper for it,
        but stacks read while it runs may come out truncated.
        """
        exe = shutil.which("py-spy")
        if exe is None:
            print("  (no py-spy on PATH: pip install py-spy; profile skipped)", flush=True)
            return None
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate)]
        cmd += ["--format", "raw", *(["--nonblocking"] if nonblocking else []), "--gil", "-o", str(out)]
        return cls(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out)

    def finish(self) -> dict[str, Any]:
        """Wait for py-spy (at most 60 s) and return summarize_profile() of the recording, or {"error"}."""
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            return {"error": err.decode("utf-8", "replace")[-500:]}
        return summarize_profile(self.out.read_text())


def _func(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [
            _func(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self": [(f, round(100.0 * c / total, 1)) for f, c in self_counts.most_common(top)],
        "inclusive": [(f, round(100.0 * c / total, 1)) for f, c in incl.most_common(top * 2)],
    }


def print_profiles(profiles: dict[str, Any], heading: str, hide: tuple[str, ...] = ()) -> None:
    """Print each profile: the top 15 functions by self time, the top 30 inclusive.

    `heading` is formatted with the profile's `name` and `samples`. Inclusive
    functions whose name ends with one of `hide` (the frames every sample
    starts with) are left out.
    """
    for name, prof in profiles.items():
        print()
        if not prof.get("samples"):
            print(f"profile {name}: no samples {prof.get('error', '')}")
            continue
        print(heading.format(name=name, samples=prof["samples"]))
        print("  self time:")
        for f, p in prof["self"][:15]:
            print(f"    {p:5.1f}%  {f}")
        print("  inclusive:")
        shown = [(f, p) for f, p in prof["inclusive"] if not f.endswith(hide)]
        for f, p in shown[:30]:
            print(f"    {p:5.1f}%  {f}")
