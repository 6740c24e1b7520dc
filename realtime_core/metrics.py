"""Counters and gauges of one process, in the Prometheus text format.

Counters are plain attributes incremented where things happen (no locks: one
event loop). rest_api.py serves render() at GET /metrics; parse_samples() reads
such text back for the console, the benchmarks and the tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["Metrics", "Sample", "parse_samples"]


def parse_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, in order, with label values unescaped.

    prometheus_client names counter samples the OpenMetrics way: a counter declared without the
    `_total` suffix (upstream's `realtime_channel_global_error`) is read as `<name>_total`.
    Raises ValueError on text that is not the Prometheus text format."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


class MetricsSource(Protocol):
    """What render() reads of the server (app.App)."""

    server: Any  # net.server.Server once listening: writer.slow_consumers, idle_closed
    tenants: Iterable[Any]
    cdc: Mapping[str, Any]
    authorizers: Mapping[str, Any]
    db_broadcasts: Mapping[str, Any]
    usage: Any  # usage.UsageMeter: flushes, flush_failures, alerts, webhooks_sent, webhook_failures

    def stats(self) -> dict[str, Any]: ...


class Metrics:
    """What operators watch; names follow upstream's `realtime_*` where one exists."""

    def __init__(self, app: MetricsSource) -> None:
        self._app = app
        self.malformed_messages = 0
        self.join_errors = 0
        self.join_errors_by_code: dict[str, int] = {}

    def join_refused(self, code: str) -> None:
        """Count one refused join under its upstream error code."""
        self.join_errors += 1
        self.join_errors_by_code[code] = self.join_errors_by_code.get(code, 0) + 1

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
        # Upstream's name: realtime_channel_global_error, a counter tagged by code.
        lines += [
            "# HELP realtime_channel_global_error Refused joins by error code",
            "# TYPE realtime_channel_global_error counter",
        ]
        for code, count in sorted(self.join_errors_by_code.items()):
            lines.append(f'realtime_channel_global_error{{code="{_label(code)}"}} {count}')
        for tenant in app.tenants:
            lines.append(f'realtime_tenant_users{{tenant="{_label(tenant.external_id)}"}} {tenant.users}')
        usage = app.usage
        lines += [
            f"realtime_usage_flushes_total {usage.flushes}",
            f"realtime_usage_flush_failures_total {usage.flush_failures}",
            f"realtime_usage_alert_webhooks_sent_total {usage.webhooks_sent}",
            f"realtime_usage_alert_webhook_failures_total {usage.webhook_failures}",
        ]
        for (metric, threshold), count in sorted(usage.alerts.items()):
            lines.append(f'realtime_usage_quota_alerts_total{{metric="{metric}",threshold="{threshold}"}} {count}')
        services = sorted(app.services.items())
        for tenant_id, cdc in ((t, s.cdc) for t, s in services if s.cdc is not None):
            label = f'tenant="{_label(tenant_id)}"'
            stats = cdc.stats()
            health = cdc.slot_health
            for name, value in (
                ("realtime_postgres_changes_subscriptions", stats["subscriptions"]),
                ("realtime_postgres_changes_seen_total", stats["changes_seen"]),
                ("realtime_postgres_changes_dispatched_total", stats["changes_dispatched"]),
                ("realtime_channel_db_events_total", stats["messages_sent"]),
                ("realtime_postgres_changes_rls_errors_total", stats["rls_errors"]),
                ("realtime_replication_connected", int(stats["streaming"])),
                ("realtime_replication_reconnects_total", stats["reconnects"]),
                ("realtime_replication_slot_lag_bytes", health.get("lag_bytes")),
                ("realtime_replication_slot_retained_wal_bytes", health.get("retained_wal_bytes")),
                ("realtime_replication_slot_safe_wal_size_bytes", health.get("safe_wal_size")),
                ("realtime_replication_slot_lag_alert", int(cdc.lag_alert)),
            ):
                if value is not None:
                    lines.append(f"{name}{{{label}}} {value}")
        for tenant_id, authorizer in ((t, s.authorizer) for t, s in services if s.authorizer is not None):
            label = f'tenant="{_label(tenant_id)}"'
            lines += authorizer.read_latency.render("realtime_tenants_read_authorization_check", label)
            lines += authorizer.write_latency.render("realtime_tenants_write_authorization_check", label)
            lines.append(f"realtime_authorization_errors_total{{{label}}} {authorizer.errors}")
        for tenant_id, stream in ((t, s.db_broadcast) for t, s in services if s.db_broadcast is not None):
            label = f'tenant="{_label(tenant_id)}"'
            lines.append(f"realtime_db_broadcast_delivered_total{{{label}}} {stream.delivered}")
            lines.append(f"realtime_db_broadcast_dropped_total{{{label}}} {stream.dropped}")
            lines.append(f"realtime_db_broadcast_connected{{{label}}} {int(stream.stream.connected)}")
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
