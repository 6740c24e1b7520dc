"""A tenant as the operator APIs take and give it, and the one validation of tenant settings.

The tenant API (tenant_api.py: upstream's `/api/tenants`) and the admin API's settings
endpoint (`PATCH /admin/v1/tenants/{id}/settings`) both validate with these models and
turn a request into the columns to write with changes(); nothing else decides what a
valid tenant is. The fields are upstream's (lib/realtime/api/tenant.ex changeset/2,
extensions.ex, extensions/postgres_cdc_rls/db_settings.ex) plus ours (plans.py).

Differences from upstream, on purpose:
- every field is checked for its type and range (upstream casts and takes any integer);
  an unknown field is an error, not silently dropped;
- `external_id` must be usable as a Host label (lower-case letters, digits, `-`, `_`),
  since a tenant is reached through its Host header's first label;
- extension settings get no defaults merged in: upstream's default `slot_name` would make
  every tenant on one cluster share one slot; our services pick per-tenant names;
- a new tenant keeps the `name` it is given (upstream's create sets it to the external_id);
- a tenant's JSON never carries `jwt_secret`, `jwt_jwks` (a JWKS may hold HS keys) or
  `db_password`, only whether the keys are set."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from ..config import PLAN_NAMES, Limits
from ..plans import CUSTOM_FIELDS, PLANS
from ..tenant_services import CDC_RLS
from ..tenants import LIMIT_FIELDS, SECRET_SETTING, Tenant
from .endpoints import ApiError, Model, invalid

__all__ = [
    "LIMIT_MAXIMA",
    "STUDIO_BOUNDS",
    "ExtensionIn",
    "TenantHealth",
    "TenantOut",
    "TenantParams",
    "TenantSettings",
    "changes",
    "is_external_id",
    "studio_warnings",
    "tenant_out",
]

# Upstream's extension settings that are required, and secret (db_settings.ex required/0).
REQUIRED_SETTINGS = ("region", "db_host", "db_port", "db_name", "db_user", "db_password")

# The largest value a limit may take here. Beyond these a limit stops meaning anything on one
# server process (a frame is at most 5 MB, so a larger payload limit could never be reached).
LIMIT_MAXIMA: dict[str, int] = {
    "max_concurrent_users": 1_000_000,
    "max_events_per_second": 1_000_000,
    "max_joins_per_second": 100_000,
    "max_channels_per_client": 100_000,
    "max_presence_events_per_second": 1_000_000,
    "max_payload_size_in_kb": 5_000,
    "max_client_presence_events_per_window": 100_000,
    "client_presence_window_ms": 3_600_000,
}
# The bounds of Supabase Studio's Realtime settings form (RealtimeSettings.tsx); the payload
# size is bounded by the plan's entitlement instead. Values above them are allowed with a warning.
STUDIO_BOUNDS: dict[str, int] = {
    "max_concurrent_users": 50_000,
    "max_events_per_second": 10_000,
    "max_presence_events_per_second": 10_000,
    "max_channels_per_client": 10_000,
    "max_joins_per_second": 5_000,
}
_EXTERNAL_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_SLOT_NAME = r"^[a-z0-9_]{1,63}$"


def _limit(name: str, description: str) -> Any:
    return Field(None, ge=1, le=LIMIT_MAXIMA[name], description=f"{description}; null: the plan's")


class TenantSettings(Model):
    """Limits, switches and billing of a tenant: what the admin API's settings endpoint
    changes, and part of every tenant body. A field left out is left as it is."""

    max_concurrent_users: int | None = _limit("max_concurrent_users", "sockets that joined a channel")
    max_events_per_second: int | None = _limit("max_events_per_second", "messages per second")
    max_joins_per_second: int | None = _limit("max_joins_per_second", "joins per second")
    max_channels_per_client: int | None = _limit("max_channels_per_client", "channels per socket")
    max_presence_events_per_second: int | None = _limit("max_presence_events_per_second", "presence events per second")
    max_payload_size_in_kb: int | None = _limit("max_payload_size_in_kb", "payload size")
    max_client_presence_events_per_window: int | None = _limit(
        "max_client_presence_events_per_window", "presence calls per channel per window"
    )
    client_presence_window_ms: int | None = Field(
        None, ge=1_000, le=LIMIT_MAXIMA["client_presence_window_ms"], description="null: the plan's"
    )
    private_only: bool | None = Field(None, description="refuse public channels")
    suspend: bool | None = Field(None, description="refuse every connection (Realtime disabled)")
    presence_enabled: bool | None = Field(None, description="send presence state to every channel")
    plan: Literal[PLAN_NAMES] | None = None  # type: ignore[valid-type]
    organization: str | None = Field(None, min_length=1, max_length=200, description="a free label")
    billing_cycle_day: int | None = Field(None, ge=1, le=28, description="the day (UTC) a billing cycle starts")
    enforce_quota: bool | None = Field(None, description="refuse connections once a hard quota is used")
    alert_webhook_url: str | None = Field(None, max_length=2_000, description="where quota alerts are POSTed")
    base_fee_usd: float | None = Field(None, ge=0, le=1e9, description="enterprise only")
    included_messages: int | None = Field(None, ge=0, le=10**15, description="enterprise only")
    included_peak_connections: int | None = Field(None, ge=0, le=10**12, description="enterprise only")
    message_package_usd: float | None = Field(None, ge=0, le=1e9, description="enterprise only")
    connection_package_usd: float | None = Field(None, ge=0, le=1e9, description="enterprise only")
    included_egress_bytes: int | None = Field(None, ge=0, le=10**18, description="enterprise only, bytes per cycle")
    egress_usd_per_gb: float | None = Field(None, ge=0, le=1e9, description="enterprise only, per 10^9 bytes")

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return _no_nul(value)

    # null means "the plan's" for limits, "none" for labels and prices; these have no such value.
    @field_validator("private_only", "suspend", "presence_enabled", "plan", "billing_cycle_day", "enforce_quota")
    @classmethod
    def _given_not_null(cls, value: Any) -> Any:
        return _not_null(value)

    @field_validator("alert_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("can't be null")
    return value


def _no_nul(value: Any) -> Any:
    """`value`, refused when a string in it holds NUL, which PostgreSQL text and jsonb cannot store."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _no_nul(item)
    elif isinstance(value, list):
        for item in value:
            _no_nul(item)
    return value


def is_external_id(text: str) -> bool:
    """Whether `text` may name a new tenant (a Host label: lower-case letters, digits, `-`, `_`)."""
    return re.fullmatch(_EXTERNAL_ID, text) is not None


class CdcSettingsIn(Model):
    """The settings of a `postgres_cdc_rls` extension: where the tenant's database is, and how
    it is streamed. db_port is a string, as upstream takes it."""

    region: str | None = Field(None, max_length=100)
    db_host: str | None = Field(None, min_length=1, max_length=255)
    db_port: str | None = Field(None, pattern=r"^[0-9]{1,5}$")
    db_name: str | None = Field(None, min_length=1, max_length=63)
    db_user: str | None = Field(None, min_length=1, max_length=63)
    db_password: str | None = Field(None, max_length=1_000)
    ssl_enforced: bool | None = None
    slot_name: str | None = Field(None, pattern=_SLOT_NAME, description="default: one of this tenant's own")
    publication: str | None = Field(None, min_length=1, max_length=63)
    poll_interval_ms: int | None = Field(None, ge=1, le=60_000)
    poll_max_changes: int | None = Field(None, ge=1, le=100_000)
    poll_max_record_bytes: int | None = Field(None, ge=1, le=100_000_000)
    db_pool: int | None = Field(None, ge=1, le=1_000)
    subs_pool_size: int | None = Field(None, ge=1, le=1_000)
    subcriber_pool_size: int | None = Field(None, ge=1, le=1_000)
    # Upstream's public name of subcriber_pool_size (tenant_controller.ex translate_postgres_changes_pool).
    postgres_changes_pool: int | None = Field(None, ge=1, le=1_000)

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return _no_nul(value)


class ExtensionIn(Model):
    """One extension; `postgres` is upstream's old name of `postgres_cdc_rls` (tenant.ex changeset/2)."""

    type: Literal["postgres_cdc_rls", "postgres"]
    settings: CdcSettingsIn


class TenantParams(TenantSettings):
    """A tenant as the tenant API takes it, under `{"tenant": {...}}`."""

    external_id: str | None = Field(None, pattern=_EXTERNAL_ID, description="required when creating")
    name: str | None = Field(None, min_length=1, max_length=200, description="default: external_id")
    jwt_secret: str | None = Field(None, min_length=1, max_length=4_096, description="HS secret (write-only)")
    jwt_jwks: dict[str, Any] | None = Field(None, description='{"keys": [JWK, ...]} (write-only)')
    extensions: list[ExtensionIn] | None = Field(None, max_length=10)

    @field_validator("external_id", "name", "extensions")
    @classmethod
    def _identity_not_null(cls, value: Any) -> Any:
        return _not_null(value)

    @field_validator("jwt_jwks")
    @classmethod
    def _jwks(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        keys = value.get("keys")
        if set(value) != {"keys"} or not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise ValueError('must be {"keys": [JWK, ...]}')
        return value


# Responses


class ExtensionOut(BaseModel):
    type: str
    settings: dict[str, Any] = Field(description="without db_password")


class TenantOut(BaseModel):
    """A tenant as the APIs answer it: upstream's fields (tenant_view.ex) with the limits in
    force, and ours. Never a secret."""

    id: str
    external_id: str
    name: str
    max_concurrent_users: int
    max_channels_per_client: int
    max_events_per_second: int
    max_joins_per_second: int
    max_presence_events_per_second: int
    max_payload_size_in_kb: int
    max_client_presence_events_per_window: int
    client_presence_window_ms: int
    inserted_at: datetime | None
    updated_at: datetime | None
    extensions: list[ExtensionOut]
    private_only: bool
    suspend: bool
    presence_enabled: bool
    plan: str
    explicit_limits: dict[str, int] = Field(description="the limits set on the tenant; the others are its plan's")
    organization: str | None
    billing_cycle_day: int
    enforce_quota: bool
    alert_webhook_url: str | None
    base_fee_usd: float | None
    included_messages: int | None
    included_peak_connections: int | None
    message_package_usd: float | None
    connection_package_usd: float | None
    included_egress_bytes: int | None
    egress_usd_per_gb: float | None
    has_jwt_secret: bool
    has_jwt_jwks: bool


class TenantHealth(BaseModel):
    """upstream's `GET /api/tenants/:id/health` data (tenants.ex health_check/1)."""

    healthy: bool
    db_connected: bool
    replication_connected: bool
    connected_cluster: int
    region: str | None
    node: str


def tenant_out(row: dict[str, Any]) -> TenantOut:
    """The JSON of a stored tenant (its row as TenantStore.row() reads it)."""
    tenant = Tenant.from_row(row, 0.0)
    limits: Limits = tenant.limits
    extensions = [
        ExtensionOut(
            type=str(ext.get("type")),
            settings={k: v for k, v in (ext.get("settings") or {}).items() if k != SECRET_SETTING},
        )
        for ext in tenant.extensions
        if isinstance(ext, dict)
    ]
    return TenantOut(
        id=tenant.id,
        external_id=tenant.external_id,
        name=tenant.name,
        **{name: getattr(limits, name) for name in LIMIT_FIELDS},
        inserted_at=row.get("inserted_at"),
        updated_at=row.get("updated_at"),
        extensions=extensions,
        private_only=tenant.private_only,
        suspend=tenant.suspend,
        presence_enabled=tenant.presence_enabled,
        plan=tenant.plan.name,
        explicit_limits=tenant.explicit_limits,
        organization=tenant.organization,
        billing_cycle_day=tenant.billing_cycle_day,
        enforce_quota=tenant.enforce_quota,
        alert_webhook_url=tenant.alert_webhook_url,
        **{name: _number(row.get(name)) for name in CUSTOM_FIELDS},
        has_jwt_secret=bool(row.get("jwt_secret")),
        has_jwt_jwks=row.get("jwt_jwks") is not None,
    )


def _number(value: Any) -> Any:
    # numeric columns come back as Decimal
    return float(value) if value is not None and not isinstance(value, int) else value


def changes(
    stored: dict[str, Any] | None,
    params: TenantSettings,
    *,
    external_id: str,
    merge_extensions: bool,
) -> dict[str, Any]:
    """The columns to write for `params` applied to the `stored` row (None: a new tenant
    `external_id`), secrets in plain text (TenantStore seals them). Raises ApiError (422)
    when the result is not a valid tenant: nothing is to be written then.

    As upstream's upsert (tenant_controller.ex update/2 with Tenant.changeset/2), the fields
    given replace the stored ones and the others stay. `extensions`, when given, replaces the
    list, unless `merge_extensions` (PATCH): then each extension's given settings are merged
    into the stored ones of its type, so that e.g. `db_port` changes without resending
    `db_password`. A setting given as null is removed."""
    given = params.model_fields_set
    body_id = getattr(params, "external_id", None)
    if body_id is not None and body_id != external_id:
        raise invalid("external_id", f"must be the tenant's id in the path, {external_id!r}")
    out: dict[str, Any] = {name: getattr(params, name) for name in given if name not in ("external_id", "extensions")}
    if stored is None:
        if not is_external_id(external_id):
            raise invalid("external_id", "must be 1 to 63 lower-case letters, digits, - or _ (a Host label)")
        out["external_id"] = external_id
        out.setdefault("name", external_id)
    if "extensions" in given:
        current = (stored or {}).get("extensions") or []
        out["extensions"] = _extensions(params.extensions, current if merge_extensions else [])  # type: ignore[attr-defined]
    result = {**(stored or {}), **out}
    if not result.get("jwt_secret") and result.get("jwt_jwks") is None:
        raise invalid("jwt_secret", "either jwt_secret or jwt_jwks must be provided")
    return out


def _extensions(given: list[ExtensionIn], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_type = {e.get("type"): dict(e.get("settings") or {}) for e in current if isinstance(e, dict)}
    seen: set[str] = set()
    errors: dict[str, list[str]] = {}
    for index, ext in enumerate(given):
        kind = CDC_RLS if ext.type == "postgres" else ext.type
        if kind in seen:
            errors.setdefault(f"extensions.{index}.type", []).append("has already been taken")
            continue
        seen.add(kind)
        settings = by_type.get(kind, {})
        raw = ext.settings.model_dump(exclude_unset=True)
        pool = raw.pop("postgres_changes_pool", None)
        if pool is not None:
            raw["subcriber_pool_size"] = pool
        for key, value in raw.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        for key in REQUIRED_SETTINGS:
            if not isinstance(settings.get(key), str) or (key != SECRET_SETTING and not settings[key]):
                errors.setdefault(f"extensions.{index}.settings.{key}", []).append("can't be blank")
        by_type[kind] = settings
    if errors:
        raise ApiError(422, {"errors": errors})
    return [{"type": kind, "settings": settings} for kind, settings in by_type.items()]


def studio_warnings(row: dict[str, Any]) -> list[str]:
    """A line for each limit in force above the bound of Supabase Studio's settings form
    (the payload size: above the plan's entitlement)."""
    tenant = Tenant.from_row(row, 0.0)
    warnings = []
    bounds = {**STUDIO_BOUNDS, "max_payload_size_in_kb": PLANS[tenant.plan.name].limits.max_payload_size_in_kb}
    for name, bound in bounds.items():
        value = getattr(tenant.limits, name)
        if value > bound:
            warnings.append(f"{name} is {value}, above Supabase Studio's bound of {bound}")
    return warnings
