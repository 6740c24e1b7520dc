"""Settings of one server process, read once from the environment and flags.

cli.py builds a Settings with from_env(), overrides what flags give, and hands
it to app.App. Nothing else reads os.environ."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .net.http import HttpLimits
from .postgres_changes.settings import CdcSettings

__all__ = ["DEFAULT_LIMITS", "LIMIT_ENV", "Limits", "Settings"]


@dataclass(slots=True)
class Limits:
    """Per-tenant limits (spec §9.1), with our defaults.

    Upstream's self-host defaults (200 users, 100 events/s, 100 joins/s) are a
    known complaint: a single busy room hits them. Ours fit one server process
    on a small machine; operators lower them per tenant."""

    max_concurrent_users: int = 10_000
    max_events_per_second: int = 100_000
    max_joins_per_second: int = 1_000
    max_channels_per_client: int = 100
    max_presence_events_per_second: int = 10_000
    max_payload_size_in_kb: int = 3_000
    max_client_presence_events_per_window: int = 5
    client_presence_window_ms: int = 30_000


DEFAULT_LIMITS = Limits()

# Upstream's environment names for the default tenant's limits.
LIMIT_ENV: dict[str, str] = {
    "TENANT_MAX_CONCURRENT_USERS": "max_concurrent_users",
    "TENANT_MAX_EVENTS_PER_SECOND": "max_events_per_second",
    "TENANT_MAX_JOINS_PER_SECOND": "max_joins_per_second",
    "TENANT_MAX_CHANNELS_PER_CLIENT": "max_channels_per_client",
    "TENANT_MAX_PRESENCE_EVENTS_PER_SECOND": "max_presence_events_per_second",
    "TENANT_MAX_PAYLOAD_SIZE_IN_KB": "max_payload_size_in_kb",
    "CLIENT_PRESENCE_MAX_CALLS": "max_client_presence_events_per_window",
    "CLIENT_PRESENCE_WINDOW_MS": "client_presence_window_ms",
}


def _cdc_settings(env: Mapping[str, str]) -> CdcSettings:
    d = CdcSettings()
    suffix = env.get("SLOT_NAME_SUFFIX", "")
    mode = (env.get("REALTIME_REPLICATION_MODE") or d.mode).lower()
    if mode not in ("stream", "poll"):
        raise ValueError(f"REALTIME_REPLICATION_MODE must be 'stream' or 'poll', got {mode!r}")
    policy = (env.get("REALTIME_SLOT_LAG_POLICY") or d.slot_lag_policy).lower()
    if policy not in ("keep", "drop"):
        raise ValueError(f"REALTIME_SLOT_LAG_POLICY must be 'keep' or 'drop', got {policy!r}")
    return CdcSettings(
        slot=(env.get("REALTIME_SLOT_NAME") or d.slot) + (f"_{suffix}" if suffix else ""),
        messages_slot=d.messages_slot + (f"_{suffix}" if suffix else ""),
        publication=env.get("REALTIME_PUBLICATION") or d.publication,
        mode=mode,
        poll_interval=_int(env, "REALTIME_POLL_INTERVAL_MS", int(d.poll_interval * 1000)) / 1000,
        max_record_bytes=_int(env, "REALTIME_MAX_RECORD_BYTES", d.max_record_bytes),
        pool_size=max(1, _int(env, "REALTIME_RLS_POOL_SIZE", d.pool_size)),
        slot_lag_alert_bytes=_int(env, "REALTIME_SLOT_LAG_ALERT_BYTES", d.slot_lag_alert_bytes),
        slot_lag_policy=policy,
    )


def _http_limits(env: Mapping[str, str]) -> HttpLimits:
    d = HttpLimits()
    max_url = _int(env, "REALTIME_MAX_URL_BYTES", d.max_url_bytes)
    if max_url > 65_535:
        raise ValueError(f"REALTIME_MAX_URL_BYTES must be at most 65535 (the URL parser's limit), got {max_url}")
    return HttpLimits(
        max_url_bytes=max_url,
        max_header_bytes=_int(env, "MAX_HEADER_LENGTH", d.max_header_bytes),
        max_headers=_int(env, "REALTIME_MAX_HEADERS", d.max_headers),
        max_headers_bytes=_int(env, "REALTIME_MAX_HEADERS_BYTES", d.max_headers_bytes),
        head_timeout=_int(env, "REALTIME_REQUEST_HEAD_TIMEOUT_MS", int(d.head_timeout * 1000)) / 1000,
        max_body_bytes=_int(env, "REALTIME_MAX_HTTP_BODY_BYTES", d.max_body_bytes),
    )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


@dataclass(slots=True)
class Settings:
    """Everything a server process is configured with."""

    host: str = "127.0.0.1"
    port: int = 4000
    database_url: str | None = None
    data_dir: Path = Path(".realtime")
    jwt_secret: str | None = None
    jwt_jwks: dict[str, object] | None = None
    api_jwt_secret: str | None = None
    metrics_jwt_secret: str | None = None
    log_level: str = "info"
    tenant_name: str = "realtime-dev"
    limits: Limits = field(default_factory=Limits)
    # The limits named in the environment: applied to the default tenant at
    # every start; the others only when the tenant is first created.
    limits_set: frozenset[str] = frozenset()
    presence_enabled: bool = False
    private_only: bool = False
    jwt_claim_validators: dict[str, object] | None = None
    # spec §1.4 and §3.3: failures are answered after these delays.
    connect_error_backoff_ms: int = 2_000
    channel_error_backoff_ms: int = 5_000
    # spec §1.5: Cowboy's idle timeout.
    idle_timeout_ms: int = 60_000
    # spec §1.1: maximum WebSocket frame.
    max_frame_bytes: int = 5_000_000
    # A subscriber whose unsent backlog passes this is disconnected (design §2).
    max_write_buffer_bytes: int = 4 * 1024 * 1024
    # Bounds on each HTTP request: URL, headers, time to the end of the head, body.
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    # How many connections one flush writes before yielding to the loop.
    flush_chunk: int = 512
    postgres_changes: bool = True
    cdc: CdcSettings = field(default_factory=CdcSettings)
    # Private channels: the authorization pool (upstream's DB_POOL_SIZE).
    authorization_pool_size: int = 5
    # Broadcast from the database, and the realtime.messages partition janitor (spec §4.5).
    db_broadcast: bool = True
    janitor: bool = True
    janitor_interval_ms: int = 4 * 3600 * 1000
    message_retention_hours: int = 72

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the documented environment variables (README, Configuration)."""
        env = os.environ if env is None else env
        d = cls()  # defaults (class attributes are slot descriptors)
        limits = Limits()
        limits_set = set()
        for name, attr in LIMIT_ENV.items():
            if env.get(name, "").strip():
                setattr(limits, attr, _int(env, name, getattr(limits, attr)))
                limits_set.add(attr)
        jwks = env.get("REALTIME_JWT_JWKS") or None
        validators = env.get("JWT_CLAIM_VALIDATORS") or None
        return cls(
            host=env.get("REALTIME_HOST", d.host),
            port=_int(env, "PORT", d.port),
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env.get("REALTIME_DATA_DIR") or ".realtime"),
            jwt_secret=env.get("REALTIME_JWT_SECRET") or None,
            jwt_jwks=orjson.loads(jwks) if jwks else None,
            api_jwt_secret=env.get("API_JWT_SECRET") or None,
            metrics_jwt_secret=env.get("METRICS_JWT_SECRET") or None,
            log_level=(env.get("LOG_LEVEL") or "info").lower(),
            tenant_name=env.get("SELF_HOST_TENANT_NAME") or d.tenant_name,
            limits=limits,
            limits_set=frozenset(limits_set),
            presence_enabled=env.get("TENANT_PRESENCE_ENABLED", "").lower() == "true",
            private_only=env.get("TENANT_PRIVATE_ONLY", "").lower() == "true",
            jwt_claim_validators=orjson.loads(validators) if validators else None,
            connect_error_backoff_ms=_int(env, "CONNECT_ERROR_BACKOFF_MS", d.connect_error_backoff_ms),
            channel_error_backoff_ms=_int(env, "CHANNEL_ERROR_BACKOFF_MS", d.channel_error_backoff_ms),
            idle_timeout_ms=_int(env, "REALTIME_IDLE_TIMEOUT_MS", d.idle_timeout_ms),
            max_write_buffer_bytes=_int(env, "REALTIME_MAX_WRITE_BUFFER_BYTES", d.max_write_buffer_bytes),
            http_limits=_http_limits(env),
            postgres_changes=env.get("REALTIME_POSTGRES_CHANGES", "true").lower() != "false",
            cdc=_cdc_settings(env),
            authorization_pool_size=max(1, _int(env, "DB_POOL_SIZE", d.authorization_pool_size)),
            db_broadcast=env.get("REALTIME_DB_BROADCAST", "true").lower() != "false",
            janitor=env.get("RUN_JANITOR", "true").lower() != "false",
            janitor_interval_ms=max(1000, _int(env, "JANITOR_SCHEDULE_TIMER_IN_MS", d.janitor_interval_ms)),
            message_retention_hours=max(1, _int(env, "REALTIME_MESSAGE_RETENTION_HOURS", d.message_retention_hours)),
        )

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def resolve_jwt_secret(self) -> str:
        """The default tenant's HS secret: REALTIME_JWT_SECRET, or one generated
        on first start and kept in the data dir (so keys stay valid)."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / "jwt_secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        return secret
