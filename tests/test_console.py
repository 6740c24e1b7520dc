"""The Streamlit console against a running server (streamlit's AppTest), and its admin client."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from console.client import AdminClient, parse_prometheus

APP = str(Path(__file__).resolve().parent.parent / "console" / "app.py")


def test_prometheus_text_becomes_rows_with_labels():
    text = '# HELP x help\n# TYPE x gauge\nx 3\ny{tenant="a\\"b",le="+Inf"} 1.5\n'
    frame = parse_prometheus(text)
    assert list(frame["metric"]) == ["x", "y"]
    assert list(frame["value"]) == [3.0, 1.5]
    assert frame["labels"][1] == {"tenant": 'a"b', "le": "+Inf"}  # escapes undone


def test_an_unreachable_server_is_reported_unhealthy():
    assert AdminClient("http://127.0.0.1:9", timeout=0.5).healthy() is False


@pytest.mark.pg
def test_the_client_reads_health_and_metrics(server):
    client = AdminClient(server.http_url)
    assert client.healthy()
    assert client.ping() == {"status": 200, "message": "Success"}
    metrics = client.metrics()
    assert "realtime_connections_connected" in set(metrics["metric"])


@pytest.mark.pg
def test_the_overview_page_renders_live_figures(server, monkeypatch):
    monkeypatch.setenv("REALTIME_SERVER_URL", server.http_url)
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["realtime-core"]
    labels = [m.label for m in at.metric]
    assert labels == ["Connections", "Joined channels", "Active topics", "Slow consumers dropped"]
    assert not at.error


def test_the_overview_page_says_when_the_server_is_down(monkeypatch):
    monkeypatch.setenv("REALTIME_SERVER_URL", "http://127.0.0.1:9")
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert "does not answer /healthcheck" in at.error[0].value
