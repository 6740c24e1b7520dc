"""Counters and gauges of one process, in the Prometheus text format.

Counters are plain attributes incremented where things happen (no locks: one
event loop). rest_api.py serves render() at GET /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App

__all__ = ["Metrics"]


class Metrics:
    """What operators watch; names follow upstream's `realtime_*` where one exists."""

    def __init__(self, app: App) -> None:
        self._app = app
        self.malformed_messages = 0
        self.join_errors = 0

    def render(self) -> str:
        app = self._app
        server = app.server
        stats = app.stats()
        rows: list[tuple[str, str, str, float]] = [
            ("realtime_connections_connected", "gauge", "Open WebSocket connections", stats["connections"]),
            ("realtime_channels_joined", "gauge", "Joined channels", stats["channels"]),
            ("realtime_streams", "gauge", "Topics with at least one subscriber", stats["streams"]),
            (
                "realtime_malformed_messages_total",
                "counter",
                "Dropped malformed frames",
                self.malformed_messages,
            ),
            ("realtime_channel_join_errors_total", "counter", "Refused joins", self.join_errors),
            (
                "realtime_slow_consumers_total",
                "counter",
                "Connections closed for not reading",
                server.writer.slow_consumers if server else 0,
            ),
            (
                "realtime_idle_closed_total",
                "counter",
                "Connections closed after the idle timeout",
                server.idle_closed if server else 0,
            ),
        ]
        lines: list[str] = []
        for name, kind, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        for tenant in app.tenants:
            lines.append(f'realtime_tenant_users{{tenant="{tenant.external_id}"}} {tenant.users}')
        return "\n".join(lines) + "\n"
