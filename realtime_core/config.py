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

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import envvars
from .envvars import bool_var, int_var, json_object_var, list_var, optional_str_var, path_var, str_var
from .net.http import HttpLimits
from .postgres_changes.settings import CdcSettings

__all__ = [
    "DEFAULT_LIMITS",
    "IGNORED_ENV",
    "LIMIT_ENV",
    "PLAN_NAMES",
    "Limits",
    "Settings",
    "ignored_env",
    "readme_tables",
]


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

# plans.PLANS's keys (plans.py imports this module, so it cannot be asked; a test keeps them equal).
PLAN_NAMES = ("free", "pro", "pro_capped", "team", "enterprise")

# Upstream's environment names for the default tenant's limits.
LIMIT_ENV: dict[str, str] = {var.name: f.name for f, var in envvars.declared(Limits)}


@dataclass(slots=True)
class Settings:
    """Everything a server process is configured with."""

    host: str = str_var("REALTIME_HOST", "127.0.0.1", "the address to listen on (`--host`)")
    port: int = int_var("PORT", 4000, "the port to listen on (`--port`)")
    reuse_port: bool = bool_var(
        "REALTIME_REUSE_PORT",
        False,
        "listen with SO_REUSEPORT, so that several processes share the port (`serve --workers` sets it for its"
        " workers)",
    )
    database_url: str | None = optional_str_var(
        "DATABASE_URL",
        "a PostgreSQL with `wal_level=logical` (tested: 15 and 18; ≥ 14 expected to work, see Operations); unset →"
        " the database `DB_HOST`, `DB_PORT`, `DB_USER`, `DB_PASSWORD` and `DB_NAME` name, else the embedded"
        " PostgreSQL 18 in `REALTIME_DATA_DIR`",
        secret=True,
    )
    # Upstream's names for the database (config/runtime.exs): all five, or none.
    db_host: str | None = optional_str_var(
        "DB_HOST", "with `DB_PORT`, `DB_USER`, `DB_PASSWORD` and `DB_NAME`: the database when `DATABASE_URL` is unset"
    )
    db_port: str | None = optional_str_var("DB_PORT", "see `DB_HOST`")
    db_user: str | None = optional_str_var("DB_USER", "see `DB_HOST`")
    db_password: str | None = optional_str_var("DB_PASSWORD", "see `DB_HOST`", secret=True)
    db_name: str | None = optional_str_var("DB_NAME", "see `DB_HOST`")
    db_ssl: bool = bool_var("DB_SSL", False, "the `DB_HOST` database only over TLS (`sslmode=require`)")
    db_ssl_ca_cert: str | None = optional_str_var(
        "DB_SSL_CA_CERT", "with `DB_SSL`: a CA file the `DB_HOST` server's certificate and name are verified against"
    )
    redis_url: str | None = optional_str_var(
        "REDIS_URL",
        "join this process to a cluster of realtime-core processes sharing channels, presence, limits and usage"
        " through Redis (`--redis`; needs the `cluster` extra); unset: one process, no Redis",
        secret=True,  # redis://:password@host
    )
    cluster_name: str = str_var(
        "REALTIME_CLUSTER",
        "realtime",
        "the cluster's name: processes with the same `REDIS_URL` and name are one system; its Redis keys start"
        " with `rt:<name>:`",
    )
    cluster_node_ttl_ms: int = int_var(
        "REALTIME_CLUSTER_NODE_TTL_MS",
        6_000,
        "in a cluster: the TTL of each node's liveness key, refreshed every third of it; a node that dies is"
        " reaped (its presences leave, its connections are no longer counted) within 4/3 of it",
        minimum=300,
    )
    cluster_sync_interval_ms: int = int_var(
        "REALTIME_CLUSTER_SYNC_INTERVAL_MS",
        1_000,
        "in a cluster: how often each node publishes its users and rates and reads the others' (the limits"
        " are enforced on cluster totals at most two of these late)",
        minimum=50,
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
    api_jwt_secret: str | None = optional_str_var(
        "API_JWT_SECRET",
        "HS secret of admin tokens (the tenant API and `/admin/v1`); unset → the one `realtime-core up` generated into"
        " the data dir, else those APIs stay closed (403)",
        shown="generated by `up`, kept in the data dir",
    )
    api_jwt_secret_next: str | None = optional_str_var(
        "API_JWT_SECRET_NEXT", "a second admin secret, accepted too while tokens are rotated to it"
    )
    api_token_blocklist: tuple[str, ...] = list_var(
        "API_TOKEN_BLOCKLIST", "comma-separated admin tokens that are refused although they verify"
    )
    db_enc_key: str | None = optional_str_var(
        "DB_ENC_KEY",
        "the key tenants' JWT secrets and database passwords are encrypted with in the server's database",
        shown="generated once, kept in the data dir",
    )
    api_jwt_jwks: dict[str, object] | None = json_object_var(
        "API_JWT_JWKS", "with `SEED_SELF_HOST`: the default tenant's JWKS (unless `REALTIME_JWT_JWKS` is set)"
    )
    seed_self_host: bool = bool_var(
        "SEED_SELF_HOST",
        False,
        "seed the default tenant as Supabase's self-hosted stack does, at every start: its JWT secret is"
        " `API_JWT_SECRET` (unless `REALTIME_JWT_SECRET` is set), its JWKS `API_JWT_JWKS`, its `postgres_cdc_rls`"
        " extension names the server's database",
    )
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
    plan: str = str_var(
        "TENANT_PLAN",
        "pro",
        "the default tenant's plan (quotas and bills; its limits stay the ones above): `free`, `pro`, `pro_capped`,"
        " `team` or `enterprise`",
        choices=PLAN_NAMES,
    )
    # Whether TENANT_PLAN is set: then it is applied to the default tenant at every start.
    plan_set: bool = False
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
    # The admin API's live tail (admin/tail.py).
    tail_max_viewers: int = int_var(
        "REALTIME_TAIL_MAX_VIEWERS",
        5,
        "live tails (`GET /admin/v1/tenants/{id}/tail`) open at once per tenant; 429 beyond",
        minimum=1,
    )
    tail_buffer: int = int_var(
        "REALTIME_TAIL_BUFFER",
        1_000,
        "messages a live tail holds for a viewer that reads slowly; the oldest are dropped beyond (a `dropped` event"
        " says how many)",
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

    usage_metering: bool = bool_var(
        "REALTIME_USAGE_METERING",
        True,
        "count messages per tenant (README, Usage and quotas); off only to measure what counting costs"
        " (connections are still counted)",
    )
    usage_flush_interval_ms: int = int_var(
        "REALTIME_USAGE_FLUSH_INTERVAL_MS",
        10_000,
        "how often usage counts are added to the database (and quotas checked); a SIGKILL loses at most this much",
        minimum=100,
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the declared environment variables (README, Configuration); ValueError naming
        the variable when one does not parse."""
        env = os.environ if env is None else env
        settings: Settings = envvars.read(
            cls, env, limits_set=envvars.named(Limits, env), plan_set="plan" in envvars.named(cls, env)
        )
        if settings.database_url is None:
            settings.database_url = settings._url_from_parts()
        return settings

    def _url_from_parts(self) -> str | None:
        """The conninfo DB_HOST, DB_PORT, DB_USER, DB_PASSWORD and DB_NAME name; None when none is
        set; ValueError naming the missing ones when only some are."""
        parts = {
            "DB_HOST": self.db_host,
            "DB_PORT": self.db_port,
            "DB_USER": self.db_user,
            "DB_PASSWORD": self.db_password,
            "DB_NAME": self.db_name,
        }
        missing = [name for name, value in parts.items() if value is None]
        if len(missing) == len(parts):
            return None
        if missing:
            raise ValueError(
                f"{_enumerate(missing)} unset: DB_HOST, DB_PORT, DB_USER, DB_PASSWORD and DB_NAME name the"
                " database together (or set DATABASE_URL)"
            )
        port = envvars.parse_int("DB_PORT", self.db_port or "", minimum=1, maximum=65535)
        tls: dict[str, str] = {}
        if self.db_ssl:
            # As upstream's DB_SSL: TLS required; with a CA file, the certificate is verified too.
            tls = {"sslmode": "verify-full", "sslrootcert": self.db_ssl_ca_cert} if self.db_ssl_ca_cert else {}
            tls.setdefault("sslmode", "require")
        return make_conninfo(
            host=self.db_host, port=port, user=self.db_user, password=self.db_password, dbname=self.db_name, **tls
        )

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def resolve_jwt_secret(self) -> str:
        """The default tenant's HS secret: REALTIME_JWT_SECRET; with SEED_SELF_HOST, API_JWT_SECRET
        (upstream's priv/repo/seeds.exs); else one generated on first start and kept in the data dir
        (so keys stay valid)."""
        if self.jwt_secret:
            return self.jwt_secret
        if self.seed_self_host and self.api_jwt_secret:
            return self.api_jwt_secret
        return _kept_secret(self.data_dir / "jwt_secret", create=True)  # type: ignore[return-value]

    def resolve_jwt_jwks(self) -> dict[str, object] | None:
        """The default tenant's JWKS: REALTIME_JWT_JWKS; with SEED_SELF_HOST, API_JWT_JWKS."""
        if self.jwt_jwks:
            return self.jwt_jwks
        return self.api_jwt_jwks if self.seed_self_host else None

    def self_host_extensions(self) -> list[dict[str, object]] | None:
        """With SEED_SELF_HOST, the default tenant's extensions as upstream's priv/repo/seeds.exs
        writes them: a `postgres_cdc_rls` entry naming the server's database (`database_url`);
        None without SEED_SELF_HOST (the stored extensions stay as they are)."""
        if not self.seed_self_host:
            return None
        params = conninfo_to_dict(self.database_url or "")
        return [
            {
                "type": "postgres_cdc_rls",
                "settings": {
                    "db_name": params.get("dbname", "postgres"),
                    "db_host": params.get("host", "localhost"),
                    "db_user": params.get("user", ""),
                    "db_password": params.get("password", ""),
                    "db_port": str(params.get("port", "5432")),
                    "region": "us-east-1",
                    # seeds.exs writes 100 and 1 MiB: our defaults of these settings too.
                    "poll_interval_ms": self.cdc.poll_interval_ms,
                    "poll_max_record_bytes": self.cdc.max_record_bytes,
                    "ssl_enforced": params.get("sslmode") in ("require", "verify-ca", "verify-full"),
                },
            }
        ]

    def resolve_api_jwt_secret(self, *, create: bool = False) -> str | None:
        """The admin tokens' HS secret: API_JWT_SECRET, else the one kept in the data dir
        (`create`: generated there when missing, as `realtime-core up` does), else None."""
        if self.api_jwt_secret:
            return self.api_jwt_secret
        return _kept_secret(self.data_dir / "api_jwt_secret", create=create)

    def resolve_db_enc_key(self) -> str:
        """The key of secrets at rest: DB_ENC_KEY, or one generated on first start and kept in the
        data dir (losing it makes the stored secrets unreadable: back it up with the database)."""
        if self.db_enc_key:
            return self.db_enc_key
        return _kept_secret(self.data_dir / "db_enc_key", create=True)  # type: ignore[return-value]


# Upstream's variables (its ENVS.md) that Supabase's compose files set and that mean nothing to
# this server: accepted and ignored (cli.py logs one debug line for each one set), with why.
IGNORED_ENV: dict[str, str] = {
    "SECRET_KEY_BASE": "Phoenix's cookie signing key: this server sets no cookies",
    "ERL_AFLAGS": "Erlang VM flags",
    "ELIXIR_ERL_OPTIONS": "Erlang VM flags",
    "DNS_NODES": "Erlang cluster discovery: one process serves every tenant",
    "CLUSTER_STRATEGIES": "Erlang cluster discovery",
    "NAME": "the Erlang node's name",
    "APP_NAME": "the Erlang node's name",
    "RLIMIT_NOFILE": "read by upstream's start script; give the container `ulimits: nofile` instead",
    "REGION": "region-aware routing between nodes",
    "GEN_RPC_TCP_SERVER_PORT": "Erlang node-to-node RPC",
    "GEN_RPC_TCP_CLIENT_PORT": "Erlang node-to-node RPC",
    "DB_AFTER_CONNECT_QUERY": "upstream sets its search_path with it; every query here names its schema",
    "DB_IP_VERSION": "the address family follows `DB_HOST`'s resolution",
    "REALTIME_IP_VERSION": "the listener's address is `REALTIME_HOST`",
    "DB_ENC_KEY_GCM": "secrets are always sealed with AES-256-GCM under a key derived from `DB_ENC_KEY`",
    "DB_ENC_WRITE_GCM": "as `DB_ENC_KEY_GCM`",
    "DISABLE_HEALTHCHECK_LOGGING": "requests are not logged",
    "DASHBOARD_USER": "upstream's Phoenix dashboard; the console is `realtime-core console`",
    "DASHBOARD_PASSWORD": "as `DASHBOARD_USER`",
}


def ignored_env(env: Mapping[str, str]) -> list[str]:
    """The IGNORED_ENV variables `env` sets (not blank), in IGNORED_ENV's order."""
    return [name for name in IGNORED_ENV if (env.get(name) or "").strip()]


def _enumerate(names: list[str]) -> str:
    """`A`, `A and B`, `A, B and C`."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _kept_secret(path: Path, *, create: bool) -> str | None:
    """The secret in `path`; when missing, a new one written there (mode 0600) if `create`, else None."""
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def readme_tables() -> dict[str, str]:
    """The README's configuration tables, by the name of the README block that holds each:
    the server's variables, the default tenant's limits, and upstream's variables ignored here."""
    server = [(f, var) for f, var in envvars.declared(Settings) if var.name not in LIMIT_ENV]
    ignored = ["| Variable | Why it is ignored |", "|---|---|"]
    ignored += [f"| `{name}` | {why} |" for name, why in IGNORED_ENV.items()]
    return {
        "server": envvars.markdown_table(server, "Meaning"),
        "limits": envvars.markdown_table(envvars.declared(Limits), "Enforced"),
        "ignored": "\n".join(ignored) + "\n",
    }
