"""Settings of one server process, read once from the environment and flags.

cli.py builds a Settings with from_env(), overrides what flags give, and hands
it to app.App. Nothing else reads os.environ. Each setting read from the
environment is declared once, as a field naming its variable (envvars.py); the
README's configuration tables are generated from these declarations
(`python3 scripts/config-readme`)."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import envvars
from .envvars import bool_var, int_var, json_object_var, optional_str_var, path_var, str_var
from .net.http import HttpLimits
from .postgres_changes.settings import CdcSettings

__all__ = ["DEFAULT_LIMITS", "LIMIT_ENV", "Limits", "Settings", "readme_tables"]


@dataclass(slots=True)
class Limits:
    """Per-tenant limits, under upstream's environment names, with our defaults.

    Upstream's self-host defaults (200 users, 100 events/s, 100 joins/s) are a
    known complaint: a single busy room hits them. Ours fit one server process
    on a small machine; operators lower them per tenant."""

    max_concurrent_users: int = int_var(
        "TENANT_MAX_CONCURRENT_USERS", 10_000, "at connect and join: sockets that joined a channel"
    )
    max_events_per_second: int = int_var(
        "TENANT_MAX_EVENTS_PER_SECOND",
        100_000,
        "every message sent or delivered; receivers are shut down with `Too many messages per second` while it is"
        " exceeded (average over 60 s)",
    )
    max_joins_per_second: int = int_var("TENANT_MAX_JOINS_PER_SECOND", 1_000, "joins (average over 60 s)")
    max_channels_per_client: int = int_var("TENANT_MAX_CHANNELS_PER_CLIENT", 100, "per socket")
    max_presence_events_per_second: int = int_var(
        "TENANT_MAX_PRESENCE_EVENTS_PER_SECOND", 10_000, "track calls and presence diffs"
    )
    max_payload_size_in_kb: int = int_var(
        "TENANT_MAX_PAYLOAD_SIZE_IN_KB", 3_000, "broadcast and presence payloads, REST messages"
    )
    max_client_presence_events_per_window: int = int_var(
        "CLIENT_PRESENCE_MAX_CALLS", 5, "presence calls per channel per `CLIENT_PRESENCE_WINDOW_MS`"
    )
    client_presence_window_ms: int = int_var(
        "CLIENT_PRESENCE_WINDOW_MS", 30_000, "the window of `CLIENT_PRESENCE_MAX_CALLS`"
    )


DEFAULT_LIMITS = Limits()

# Upstream's environment names for the default tenant's limits.
LIMIT_ENV: dict[str, str] = {var.name: f.name for f, var in envvars.declared(Limits)}


@dataclass(slots=True)
class Settings:
    """Everything a server process is configured with."""

    host: str = str_var("REALTIME_HOST", "127.0.0.1", "the address to listen on (`--host`)")
    port: int = int_var("PORT", 4000, "the port to listen on (`--port`)")
    database_url: str | None = optional_str_var(
        "DATABASE_URL",
        "a PostgreSQL with `wal_level=logical` (tested: 15 and 18; ≥ 14 expected to work, see Operations); unset →"
        " the embedded PostgreSQL 18 in `REALTIME_DATA_DIR`",
    )
    data_dir: Path = path_var(
        "REALTIME_DATA_DIR",
        Path(".realtime"),
        "embedded PostgreSQL data, generated JWT secret (`--data-dir`)",
        shown="`./.realtime`",
    )
    jwt_secret: str | None = optional_str_var(
        "REALTIME_JWT_SECRET",
        "HS secret of the default tenant (`realtime-core keys` signs with it)",
        shown="generated once, kept in the data dir",
    )
    jwt_jwks: dict[str, object] | None = json_object_var(
        "REALTIME_JWT_JWKS", 'JSON `{"keys": [...]}` for asymmetric tokens'
    )
    api_jwt_secret: str | None = optional_str_var("API_JWT_SECRET", "admin API authentication")
    metrics_jwt_secret: str | None = optional_str_var("METRICS_JWT_SECRET", "metrics authentication")
    log_level: str = str_var(
        "LOG_LEVEL",
        "info",
        "`debug`, `info`, `warning`, `error` or `critical`",
        choices=("debug", "info", "warning", "error", "critical"),
    )
    tenant_name: str = str_var(
        "SELF_HOST_TENANT_NAME",
        "realtime-dev",
        "the default tenant's id; with several tenants, a request's tenant is its Host's first label"
        " (`tenantb.example.com` → `tenantb`), while `localhost` and IP addresses reach the default tenant",
    )
    limits: Limits = field(default_factory=Limits)
    # The limits named in the environment: applied to the default tenant at
    # every start; the others only when the tenant is first created.
    limits_set: frozenset[str] = frozenset()
    presence_enabled: bool = bool_var(
        "TENANT_PRESENCE_ENABLED",
        False,
        "every channel of the default tenant sends presence state after its join, as if joined with presence enabled",
    )
    private_only: bool = bool_var("TENANT_PRIVATE_ONLY", False, "the default tenant refuses public channels")
    jwt_claim_validators: dict[str, object] | None = json_object_var(
        "JWT_CLAIM_VALIDATORS", 'JSON of claims that must match exactly, e.g. `{"iss": "my-app"}`'
    )
    # Failures are answered after these delays, as upstream's user_socket.ex and realtime_channel.ex do.
    connect_error_backoff_ms: int = int_var(
        "CONNECT_ERROR_BACKOFF_MS", 2_000, "delay before a refused WebSocket upgrade is answered"
    )
    channel_error_backoff_ms: int = int_var("CHANNEL_ERROR_BACKOFF_MS", 5_000, "delay before a join error reply")
    # Cowboy's idle timeout.
    idle_timeout_ms: int = int_var(
        "REALTIME_IDLE_TIMEOUT_MS",
        60_000,
        "a socket that sends nothing for this long is closed (clients heartbeat every 25 s); time the server itself"
        " stopped reading it does not count",
    )
    # broadcast.replication_ready: upstream's replication_ready_timeout.
    replication_ready_timeout_ms: int = int_var(
        "REALTIME_REPLICATION_READY_TIMEOUT_MS",
        60_000,
        "a channel joined with `broadcast.replication_ready` is shut down when the replication connection is not up"
        " by then",
    )
    # The largest WebSocket frame (upstream's Cowboy max_frame_size).
    max_frame_bytes: int = 5_000_000
    max_write_buffer_bytes: int = int_var(
        "REALTIME_MAX_WRITE_BUFFER_BYTES",
        4 * 1024 * 1024,
        "a client that does not read is disconnected once this much is waiting for it (replies, pushes, pongs,"
        " close frames alike)",
    )
    # Client messages held behind a join or a write-policy check (socket.py).
    max_queued_input_messages: int = int_var(
        "REALTIME_MAX_QUEUED_INPUT_MESSAGES",
        1_000,
        "messages a socket holds behind a running join or write-policy check; past it, the server stops reading that"
        " socket until they are handled",
    )
    max_queued_input_bytes: int = int_var(
        "REALTIME_MAX_QUEUED_INPUT_BYTES", 1024 * 1024, "the same bound, in bytes of those messages"
    )
    # Bounds on each HTTP request: URL, headers, time to the end of the head, body.
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    # Upstream has no such bounds.
    batch_max_messages: int = int_var(
        "REALTIME_BATCH_MAX_MESSAGES", 10_000, "messages per `POST /api/broadcast` request (422 beyond)", minimum=1
    )
    batch_max_private_topics: int = int_var(
        "REALTIME_BATCH_MAX_PRIVATE_TOPICS",
        5_000,
        "distinct private topics per `POST /api/broadcast` request (422 beyond); they are checked in one statement"
        " (2,000 topics ≈ 0.1 s)",
        minimum=1,
    )
    # How many connections one flush writes before yielding to the loop.
    flush_chunk: int = 512
    postgres_changes: bool = bool_var("REALTIME_POSTGRES_CHANGES", True, "stream Postgres Changes")
    cdc: CdcSettings = field(default_factory=CdcSettings)
    authorization_pool_size: int = int_var(
        "DB_POOL_SIZE", 5, "connections for private-channel authorization", minimum=1
    )
    db_broadcast: bool = bool_var(
        "REALTIME_DB_BROADCAST", True, "stream `realtime.messages` (broadcast from the database)"
    )
    janitor: bool = bool_var("RUN_JANITOR", True, "create and drop the daily partitions of `realtime.messages`")
    janitor_interval_ms: int = int_var(
        "JANITOR_SCHEDULE_TIMER_IN_MS", 4 * 3600 * 1000, "how often the janitor runs", minimum=1000
    )
    message_retention_hours: int = int_var(
        "REALTIME_MESSAGE_RETENTION_HOURS",
        72,
        "partitions of `realtime.messages` older than this are dropped",
        minimum=1,
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the declared environment variables (README, Configuration); ValueError naming
        the variable when one does not parse."""
        env = os.environ if env is None else env
        return envvars.read(cls, env, limits_set=envvars.named(Limits, env))

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


def readme_tables() -> dict[str, str]:
    """The README's configuration tables, by the name of the README block that holds each:
    the server's variables, and the default tenant's limits."""
    server = [(f, var) for f, var in envvars.declared(Settings) if var.name not in LIMIT_ENV]
    return {
        "server": envvars.markdown_table(server, "Meaning"),
        "limits": envvars.markdown_table(envvars.declared(Limits), "Enforced"),
    }
