"""What operators watch at GET /metrics, exposed through prometheus-client.

Each App has its own CollectorRegistry (never the process-global one: tests run several
Apps in one process). Events are counted where they happen as plain ints in dicts (one
event loop, no locks; deliveries come from the hub's tallies, nothing on the fan-out path);
`RealtimeCollector` turns them and the server's own counters into metric families at
scrape time. Series names follow upstream's (`OBSERVABILITY_METRICS.md`, the PromEx
plugins `tenant.ex`, `tenant_global.ex`, `channels.ex`); README "Metrics" lists them.

Upstream's counters carry no `_total` suffix, which prometheus-client's text format
always appends to a counter; those series are exposed as untyped families so that
their sample names stay exactly upstream's. parse_samples() reads the text back for the
console, the benchmarks and the tests."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .authorization import LATENCY_BUCKETS_MS, LatencyHistogram
from .hub import KINDS, POSTGRES_CHANGES_KIND, PRESENCE_KIND, Tallies

if TYPE_CHECKING:
    from .hub import Hub
    from .tenants import Tenant

__all__ = ["CONTENT_TYPE", "PAYLOAD_SIZE_BUCKETS", "ClusterCounters", "Metrics", "Sample", "parse_samples"]

# The text format generate_latest() writes (label values may hold any UTF-8, names are legacy).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Upstream's PayloadSize.Buckets (tenant.ex), in bytes.
PAYLOAD_SIZE_BUCKETS = (250, 500, 1000, 3000, 5000, 10_000, 25_000, 100_000, 500_000, 1_000_000, 3_000_000)

# Upstream's message_type tag (tenant_broadcaster.ex) and the event counter its deliveries add to
# (tenant.ex): the index of each in TenantCounts' lists.
MESSAGE_TYPES = ("broadcast", "presence", "postgres_changes")
_EVENT_SERIES = ("events", "presence_events", "db_events")
# A publication's kind → its message_type's index. REST messages and messages from the database
# are broadcasts upstream too.
_TYPE_INDEX = {kind: 0 for kind in KINDS} | {PRESENCE_KIND: 1, POSTGRES_CHANGES_KIND: 2}


def parse_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, in order, with label values unescaped.

    Raises ValueError on text that is not the Prometheus text format."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


class MetricsSource(Protocol):
    """What the collector reads of the server (app.App)."""

    server: Any  # net.server.Server once listening: writer.slow_consumers, idle_closed
    tenants: Iterable[Tenant]
    services: Mapping[str, Any]  # tenant_services.TenantServices: cdc, authorizer, db_broadcast
    hub: Hub
    usage: Any  # usage.UsageMeter: flushes, flush_failures, alerts, webhooks_sent, webhook_failures
    nodes: Any  # cluster.nodes.Cluster with REDIS_URL, else None: live, reaped, lag_series, presence

    def stats(self) -> dict[str, Any]: ...


class ClusterCounters(Protocol):
    """What the broker between the processes of a cluster counts (cluster/broker.py)."""

    node_id: str
    published: int  # messages sent to Redis
    received: int  # messages from other processes handed to the hub
    dropped: int  # messages that could not be sent (Redis unreachable)
    malformed: int  # messages received that could not be decoded
    reconnects: int  # connections to Redis lost (and retried)
    publishing: bool
    receiving: bool
    lag: LatencyHistogram  # publish to receive (ms)

    def channels(self) -> int: ...


class SizeHistogram:
    """Payload sizes counted per bucket of PAYLOAD_SIZE_BUCKETS (the last slot is +Inf) and summed;
    the collector makes the counts cumulative."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(PAYLOAD_SIZE_BUCKETS) + 1)
        self.total = 0

    def observe(self, size: int, count: int = 1) -> None:
        """`count` payloads of `size` bytes."""
        self.buckets[bisect.bisect_left(PAYLOAD_SIZE_BUCKETS, size)] += count
        self.total += size * count


class TenantCounts:
    """One tenant's messages delivered and payload sizes, indexed like MESSAGE_TYPES."""

    __slots__ = ("delivered", "sizes")

    def __init__(self) -> None:
        self.delivered = [0] * len(MESSAGE_TYPES)
        self.sizes = [SizeHistogram() for _ in MESSAGE_TYPES]


class Metrics:
    """The App's counters and its registry. As a hub TallyReader it counts every message
    delivered by tenant and upstream's message_type, and every payload's size, exactly: the
    hub's tallies count publications by payload size, binned here."""

    settle: Callable[[], None]  # Hub.attach() sets it

    def __init__(self, app: MetricsSource) -> None:
        self.malformed_messages = 0
        self.join_errors = 0
        self.join_errors_by_code: dict[str, int] = {}
        self.channel_errors: dict[tuple[str, str], int] = {}  # (tenant, code) → refused joins
        self.joins: dict[str, int] = {}  # tenant → join attempts
        self.messages: dict[str, TenantCounts] = {}  # by tenant: read after settle()
        self.cluster: ClusterCounters | None = None  # set by the App when it runs on Redis
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RealtimeCollector(app, self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        app.hub.attach(self)

    def join_started(self, tenant: str) -> None:
        """Count one join attempt of `tenant` (upstream's realtime_channel_joins)."""
        self.joins[tenant] = self.joins.get(tenant, 0) + 1

    def join_refused(self, code: str, tenant: str) -> None:
        """Count one refused join of `tenant` under its upstream error code."""
        self.join_errors += 1
        self.join_errors_by_code[code] = self.join_errors_by_code.get(code, 0) + 1
        key = (tenant, code)
        self.channel_errors[key] = self.channel_errors.get(key, 0) + 1

    # hub.TallyReader

    def absorb(self, tallies: Tallies, second: int, now: float) -> None:
        """Deliveries as upstream counts channel events: a join's presence_state and a replay
        (sent outside a fan-out) are not; neither are messages accepted from senders."""
        for (key, kind), tally in tallies.items():
            if not tally.publications:
                continue
            counts = self.messages.get(key.tenant)
            if counts is None:
                counts = self.messages[key.tenant] = TenantCounts()
            index = _TYPE_INDEX[kind]
            counts.delivered[index] += tally.deliveries
            histogram = counts.sizes[index]
            for size, n in tally.sizes.items():
                histogram.observe(size, n)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (CONTENT_TYPE)."""
        return generate_latest(self.registry)


class RealtimeCollector:
    """The server's series, built from its counters at scrape time."""

    def __init__(self, app: MetricsSource, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._upstream()
        yield from self._server()
        yield from self._tenant_services()
        if self._metrics.cluster is not None:
            yield from _cluster(self._metrics.cluster)

    def _upstream(self) -> Iterator[Metric]:
        """Upstream's channel, connection, payload and error series, per tenant and global."""
        metrics = self._metrics
        metrics.settle()
        messages = metrics.messages
        tenants = sorted(self._app.tenants, key=lambda t: t.external_id)
        connected = GaugeMetricFamily(
            "realtime_connections_connected",
            "Connections that joined at least one channel, per tenant",
            labels=["tenant"],
        )
        for tenant in tenants:
            connected.add_metric([tenant.external_id], tenant.users)
        yield connected
        yield GaugeMetricFamily(
            "realtime_connections_global_connected",
            "Connections that joined at least one channel, all tenants",
            value=sum(t.users for t in tenants),
        )
        yield GaugeMetricFamily(
            "realtime_tenants_connected",
            "Tenants with at least one connection that joined a channel",
            value=sum(1 for t in tenants if t.users),
        )
        ids = [t.external_id for t in tenants]
        texts = ("Broadcast messages delivered", "Presence messages delivered", "Postgres Changes messages delivered")
        for index, (kind, text) in enumerate(zip(_EVENT_SERIES, texts, strict=True)):
            values = {tenant: c.delivered[index] if (c := messages.get(tenant)) else 0 for tenant in ids}
            yield _per_tenant(f"realtime_channel_{kind}", f"{text}, per tenant", values)
            total = sum(c.delivered[index] for c in messages.values())
            yield UnknownMetricFamily(f"realtime_channel_global_{kind}", f"{text}, all tenants", value=total)
        joins = {tenant: metrics.joins.get(tenant, 0) for tenant in ids}
        yield _per_tenant("realtime_channel_joins", "Channel join attempts, per tenant", joins)
        yield UnknownMetricFamily(
            "realtime_channel_global_joins", "Channel join attempts, all tenants", value=sum(metrics.joins.values())
        )
        errors = UnknownMetricFamily(
            "realtime_channel_error", "Refused joins by error code, per tenant", labels=["code", "tenant"]
        )
        for (tenant, code), count in sorted(metrics.channel_errors.items()):
            errors.add_metric([code, tenant], count)
        yield errors
        global_errors = UnknownMetricFamily(
            "realtime_channel_global_error", "Refused joins by error code, all tenants", labels=["code"]
        )
        for code, count in sorted(metrics.join_errors_by_code.items()):
            global_errors.add_metric([code], count)
        yield global_errors
        yield from _payload_sizes(messages)

    def _server(self) -> Iterator[Metric]:
        """This server's own gauges and counters."""
        app = self._app
        metrics = self._metrics
        server = app.server
        stats = app.stats()
        yield GaugeMetricFamily("realtime_sockets_open", "Open WebSocket connections", value=stats["connections"])
        yield GaugeMetricFamily("realtime_channels_joined", "Joined channels", value=stats["channels"])
        yield GaugeMetricFamily("realtime_streams", "Topics with at least one subscriber", value=stats["streams"])
        yield CounterMetricFamily(
            "realtime_malformed_messages", "Dropped malformed frames", value=metrics.malformed_messages
        )
        yield CounterMetricFamily("realtime_channel_join_errors", "Refused joins", value=metrics.join_errors)
        yield CounterMetricFamily(
            "realtime_slow_consumers",
            "Connections closed for not reading",
            value=server.writer.slow_consumers if server else 0,
        )
        yield CounterMetricFamily(
            "realtime_idle_closed",
            "Connections closed after the idle timeout",
            value=server.idle_closed if server else 0,
        )
        users = GaugeMetricFamily(
            "realtime_tenant_users", "Connections that joined at least one channel", labels=["tenant"]
        )
        for tenant in sorted(app.tenants, key=lambda t: t.external_id):
            users.add_metric([tenant.external_id], tenant.users)
        yield users
        yield from self._usage()
        yield from self._cluster()

    def _cluster(self) -> Iterator[Metric]:
        """This node's view of the cluster (cluster/nodes.py), with REDIS_URL only."""
        cluster = self._app.nodes
        if cluster is None:
            return
        yield GaugeMetricFamily("realtime_cluster_nodes", "Live nodes at the last sweep", value=len(cluster.live))
        yield CounterMetricFamily(
            "realtime_cluster_nodes_reaped", "Dead nodes whose state this node cleared", value=cluster.reaped
        )
        yield CounterMetricFamily(
            "realtime_cluster_presence_resyncs",
            "Presence resynchronisations with Redis (a lost connection, or this node reaped)",
            value=cluster.presence.resyncs,
        )
        lag = cluster.lag_series[-1][1] if cluster.lag_series else None
        yield GaugeMetricFamily(
            "realtime_cluster_pubsub_lag_ms",
            "Highest Redis pub/sub lag of the presence channel over the last liveness beat, ms",
            value=lag if lag is not None else 0.0,
        )

    def _usage(self) -> Iterator[Metric]:
        """Usage metering: its flushes, and the quota alerts it raised (usage.py)."""
        usage = self._app.usage
        yield CounterMetricFamily("realtime_usage_flushes", "Usage flushes to the database", value=usage.flushes)
        yield CounterMetricFamily(
            "realtime_usage_flush_failures", "Usage flushes that failed (kept and retried)", value=usage.flush_failures
        )
        yield CounterMetricFamily(
            "realtime_usage_alert_webhooks_sent", "Quota alerts POSTed to a webhook", value=usage.webhooks_sent
        )
        yield CounterMetricFamily(
            "realtime_usage_alert_webhook_failures",
            "Quota alert webhooks that failed after their retries",
            value=usage.webhook_failures,
        )
        alerts = CounterMetricFamily(
            "realtime_usage_quota_alerts", "Quota thresholds crossed", labels=["metric", "threshold"]
        )
        for (metric, threshold), count in sorted(usage.alerts.items()):
            alerts.add_metric([metric, str(threshold)], count)
        yield alerts

    def _tenant_services(self) -> Iterator[Metric]:
        """Postgres Changes, replication slot, authorization and database broadcast series, per tenant."""
        services = sorted(self._app.services.items())
        cdcs = [(tenant, s.cdc) for tenant, s in services if s.cdc is not None]
        for name, family, text, read in _CDC_SERIES:
            built = family(name, text, labels=["tenant"])
            for tenant, cdc in cdcs:
                value = read(cdc)
                if value is not None:
                    built.add_metric([tenant], value)
            yield built

        authorizers = [(tenant, s.authorizer) for tenant, s in services if s.authorizer is not None]
        for direction in ("read", "write"):
            family = HistogramMetricFamily(
                f"realtime_tenants_{direction}_authorization_check",
                f"Latency of {direction} authorization checks, in milliseconds",
                labels=["tenant"],
            )
            for tenant, authorizer in authorizers:
                latency: LatencyHistogram = authorizer.read_latency if direction == "read" else authorizer.write_latency
                family.add_metric([tenant], _cumulative(LATENCY_BUCKETS_MS, latency.buckets), sum_value=latency.sum_ms)
            yield family
        errors = CounterMetricFamily(
            "realtime_authorization_errors", "Authorization checks that failed", labels=["tenant"]
        )
        for tenant, authorizer in authorizers:
            errors.add_metric([tenant], authorizer.errors)
        yield errors

        leader = GaugeMetricFamily(
            "realtime_replication_leader",
            "1 while this process streams the tenant's replication slots (always, alone; one process of a cluster)",
            labels=["tenant"],
        )
        for tenant, s in services:
            leader.add_metric([tenant], int(s.leading))
        yield leader

        streams = [(tenant, s.db_broadcast) for tenant, s in services if s.db_broadcast is not None]
        delivered = CounterMetricFamily(
            "realtime_db_broadcast_delivered", "Database broadcasts delivered", labels=["tenant"]
        )
        dropped = CounterMetricFamily("realtime_db_broadcast_dropped", "Database broadcasts dropped", labels=["tenant"])
        connected = GaugeMetricFamily(
            "realtime_db_broadcast_connected", "1 while the database broadcast stream runs", labels=["tenant"]
        )
        for tenant, stream in streams:
            delivered.add_metric([tenant], stream.delivered)
            dropped.add_metric([tenant], stream.dropped)
            connected.add_metric([tenant], int(stream.stream.connected))
        yield from (delivered, dropped, connected)


_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]

# The Postgres Changes and replication slot series: (name, family, help, read from the tenant's PostgresChanges).
_CDC_SERIES: tuple[tuple[str, _Family, str, Callable[[Any], float | None]], ...] = (
    ("realtime_postgres_changes_subscriptions", GaugeMetricFamily, "Postgres Changes subscriptions",
     lambda cdc: cdc.stats()["subscriptions"]),
    ("realtime_postgres_changes_seen", CounterMetricFamily, "Changes read from the replication slot",
     lambda cdc: cdc.stats()["changes_seen"]),
    ("realtime_postgres_changes_dispatched", CounterMetricFamily, "Changes dispatched to subscribers",
     lambda cdc: cdc.stats()["changes_dispatched"]),
    ("realtime_postgres_changes_rls_errors", CounterMetricFamily, "Row-level security check errors",
     lambda cdc: cdc.stats()["rls_errors"]),
    ("realtime_postgres_changes_duplicates_dropped", CounterMetricFamily,
     "Changes a cluster's new leader published again, dropped here", lambda cdc: cdc.stats()["duplicates_dropped"]),
    ("realtime_replication_connected", GaugeMetricFamily, "1 while the replication stream runs",
     lambda cdc: int(cdc.stats()["streaming"])),
    ("realtime_replication_reconnects", CounterMetricFamily, "Replication reconnects",
     lambda cdc: cdc.stats()["reconnects"]),
    ("realtime_replication_slot_lag_bytes", GaugeMetricFamily, "Replication lag: WAL the slot has not confirmed",
     lambda cdc: cdc.slot_health.get("lag_bytes")),
    ("realtime_replication_slot_retained_wal_bytes", GaugeMetricFamily, "WAL the slot retains",
     lambda cdc: cdc.slot_health.get("retained_wal_bytes")),
    ("realtime_replication_slot_safe_wal_size_bytes", GaugeMetricFamily, "WAL left before the slot is lost",
     lambda cdc: cdc.slot_health.get("safe_wal_size")),
    ("realtime_replication_slot_lag_alert", GaugeMetricFamily, "1 while the retained WAL is over the alert level",
     lambda cdc: int(cdc.lag_alert)),
)  # fmt: skip


def _cluster(cluster: ClusterCounters) -> Iterator[Metric]:
    """The Redis backbone of this process (README "Scale out on Redis")."""
    info = GaugeMetricFamily("realtime_cluster_node_info", "This process in its cluster", labels=["node", "pid"])
    info.add_metric([cluster.node_id, str(os.getpid())], 1)
    yield info
    counters = (
        ("published", "Messages this process published to Redis", cluster.published),
        ("received", "Messages from other processes delivered here", cluster.received),
        ("dropped", "Messages published while Redis was unreachable: not sent to other processes", cluster.dropped),
        ("malformed", "Messages from Redis that could not be decoded", cluster.malformed),
        ("reconnects", "Connections to Redis lost and reconnected", cluster.reconnects),
    )
    for name, text, value in counters:
        yield CounterMetricFamily(f"realtime_cluster_{name}", text, value=value)
    yield GaugeMetricFamily(
        "realtime_cluster_connected",
        "1 while both connections to Redis (publishing, receiving) are up",
        value=int(cluster.publishing and cluster.receiving),
    )
    yield GaugeMetricFamily(
        "realtime_cluster_channels", "Redis channels this process listens on", value=cluster.channels()
    )
    lag = HistogramMetricFamily("realtime_cluster_lag_milliseconds", "Redis pub/sub lag: publish to receive")
    lag.add_metric([], _cumulative(LATENCY_BUCKETS_MS, cluster.lag.buckets), sum_value=cluster.lag.sum_ms)
    yield lag


def _per_tenant(name: str, text: str, values: Mapping[str, int]) -> UnknownMetricFamily:
    family = UnknownMetricFamily(name, text, labels=["tenant"])
    for tenant, value in values.items():
        family.add_metric([tenant], value)
    return family


def _payload_sizes(messages: Mapping[str, TenantCounts]) -> Iterator[Metric]:
    """realtime_payload_size per message_type and realtime_tenants_payload_size per tenant too,
    for the message types seen."""
    overall = HistogramMetricFamily(
        "realtime_payload_size", "Payload size in bytes, all tenants", labels=["message_type"]
    )
    per_tenant = HistogramMetricFamily(
        "realtime_tenants_payload_size", "Payload size in bytes, per tenant", labels=["message_type", "tenant"]
    )
    for index, message_type in enumerate(MESSAGE_TYPES):
        merged = SizeHistogram()
        for tenant, counts in sorted(messages.items()):
            histogram = counts.sizes[index]
            if not any(histogram.buckets):
                continue
            buckets = _cumulative(PAYLOAD_SIZE_BUCKETS, histogram.buckets)
            per_tenant.add_metric([message_type, tenant], buckets, sum_value=histogram.total)
            merged.buckets = [a + b for a, b in zip(merged.buckets, histogram.buckets, strict=True)]
            merged.total += histogram.total
        if any(merged.buckets):
            buckets = _cumulative(PAYLOAD_SIZE_BUCKETS, merged.buckets)
            overall.add_metric([message_type], buckets, sum_value=merged.total)
    yield overall
    yield per_tenant


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one +Inf) as cumulative (le, count) pairs."""
    pairs: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*(floatToGoString(b) for b in bounds), "+Inf"), counts, strict=True):
        running += n
        pairs.append((bound, running))
    return pairs
