"""The console's client of a running server: plain HTTP in, pandas DataFrames out.

Pages call these methods and only render; the same calls work in a notebook:

    >>> from console.client import AdminClient
    >>> AdminClient("http://127.0.0.1:4000").metrics()
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import pandas as pd

from realtime_core.metrics import parse_samples

__all__ = ["AdminClient", "parse_prometheus"]


def parse_prometheus(text: str) -> pd.DataFrame:
    """Samples of a Prometheus text exposition as rows (metric, labels, value)."""
    rows = [{"metric": s.name, "labels": s.labels, "value": float(s.value)} for s in parse_samples(text)]
    return pd.DataFrame(rows, columns=["metric", "labels", "value"])


@dataclass
class AdminClient:
    """A running realtime-core server, reached at `base_url`."""

    base_url: str = "http://127.0.0.1:4000"
    token: str | None = None  # Bearer token for /metrics when METRICS_JWT_SECRET is set
    timeout: float = 5.0

    def _get(self, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base_url.rstrip("/") + path)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def healthy(self) -> bool:
        """True when GET /healthcheck answers `ok`."""
        try:
            status, body = self._get("/healthcheck")
        except OSError:
            return False
        return status == 200 and body.strip() == b"ok"

    def ping(self) -> dict[str, object]:
        status, body = self._get("/api/ping")
        return {"status": status, **json.loads(body or b"{}")}

    def metrics(self) -> pd.DataFrame:
        """Every metric sample the server exports."""
        status, body = self._get("/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        return parse_prometheus(body.decode())
