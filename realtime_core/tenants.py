"""Tenants (projects): their settings from the control table, and their live counters.

app.App loads every tenant at start through TenantStore and keeps them in a
TenantRegistry. The WebSocket upgrade and the REST API resolve a tenant from the
Host header with TenantRegistry.resolve(), the one place that rule lives; each
turns its failures into its own upstream answer."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .config import Limits, Settings
from .errors import RealtimeError, TenantNotFound
from .jwt import KeySet
from .limits import RateCounter
from .plans import CUSTOM_FIELDS, Plan, effective_plan
from .secret_box import SecretBox, SecretBoxError, is_sealed

__all__ = [
    "LIMIT_FIELDS",
    "SECRET_SETTING",
    "MissingHost",
    "Tenant",
    "TenantRegistry",
    "TenantStore",
    "external_id_from_host",
    "is_local_host",
]

LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))


def external_id_from_host(host: str | None) -> str:
    """The tenant id upstream derives from a Host header: its text up to the first dot.

    `foo.supabase.co` → `foo`, `localhost:4000` → `localhost`, `127.0.0.1` → `127`."""
    if not host:
        return ""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:4000
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0].split(".", 1)[0]


def is_local_host(host: str) -> bool:
    """True for `localhost` and for an IP literal (v4, or v6 bracketed or bare), with or without a port.

    Such a Host names no tenant: it is how the self-host quickstart is reached."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:4000
        name = host[1:].split("]", 1)[0]
    elif host.count(":") > 1:  # a bare IPv6 literal has no port
        name = host
    else:
        name = host.split(":", 1)[0]
    name = name.removesuffix(".")
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class MissingHost(RealtimeError, code="MissingHost"):
    """The request has no Host header, so it names no tenant."""


@dataclass(slots=True, eq=False)
class Tenant:
    """One tenant's settings, and the counters its limits are checked against."""

    id: str
    external_id: str
    name: str
    limits: Limits
    keys: KeySet
    private_only: bool = False
    suspend: bool = False
    presence_enabled: bool = False
    # Upstream's extension list: [{"type": "postgres_cdc_rls", "settings": {...}}, ...].
    extensions: list[dict[str, Any]] = field(default_factory=list)
    # Billing (plans.py): `limits` are the plan's, overridden by `explicit_limits` (the limit
    # fields the tenant sets; the others follow its plan).
    plan: Plan = field(default_factory=lambda: effective_plan("pro"))
    explicit_limits: dict[str, int] = field(default_factory=dict)
    organization: str | None = None
    billing_cycle_day: int = 1  # 1..28, UTC
    enforce_quota: bool = False
    alert_webhook_url: str | None = None
    # Live state, per process.
    events: RateCounter = field(default_factory=lambda: RateCounter(0.0))
    joins: RateCounter = field(default_factory=lambda: RateCounter(0.0))
    presence_events: RateCounter = field(default_factory=lambda: RateCounter(0.0))
    http_requests: RateCounter = field(default_factory=lambda: RateCounter(0.0))
    users: int = 0  # sockets that joined at least one channel (docs/protocol.md §9.1)
    remote_users: int = 0  # the same on the cluster's other nodes, as last read (cluster/counters.py)

    def extension(self, kind: str) -> dict[str, Any] | None:
        """The settings of the tenant's extension of type `kind` (e.g. `postgres_cdc_rls`), if any."""
        for entry in self.extensions:
            if isinstance(entry, dict) and entry.get("type") == kind and isinstance(entry.get("settings"), dict):
                return entry["settings"]
        return None

    def update_from(self, other: Tenant) -> None:
        """Take `other`'s stored settings (a fresh read of this tenant's row), keeping the live
        counters, which sockets and channels of this tenant are counting on."""
        for name in _STORED:
            setattr(self, name, getattr(other, name))

    def payload_too_large(self, size: int) -> bool:
        """True when `size` bytes exceed the tenant's payload limit (docs/protocol.md §4.1)."""
        return size > self.limits.max_payload_size_in_kb * 1000 + 500

    @classmethod
    def from_row(cls, row: dict[str, Any], now: float) -> Tenant:
        plan = effective_plan(row.get("plan") or "pro", {k: row.get(k) for k in CUSTOM_FIELDS})
        explicit = {name: row[name] for name in LIMIT_FIELDS if row.get(name) is not None}
        limits = dataclasses.replace(plan.limits, **explicit)
        jwks = row.get("jwt_jwks")
        if isinstance(jwks, str):
            jwks = orjson.loads(jwks)
        extensions = row.get("extensions") or []
        if isinstance(extensions, str):
            extensions = orjson.loads(extensions)
        return cls(
            id=str(row["id"]),
            external_id=row["external_id"],
            name=row.get("name") or row["external_id"],
            limits=limits,
            keys=KeySet(secret=row.get("jwt_secret"), jwks=jwks),
            private_only=bool(row.get("private_only")),
            suspend=bool(row.get("suspend")),
            presence_enabled=bool(row.get("presence_enabled")),
            extensions=list(extensions),
            plan=plan,
            explicit_limits=explicit,
            organization=row.get("organization"),
            billing_cycle_day=row.get("billing_cycle_day") or 1,
            enforce_quota=bool(row.get("enforce_quota")),
            alert_webhook_url=row.get("alert_webhook_url"),
            events=RateCounter(now),
            joins=RateCounter(now),
            presence_events=RateCounter(now),
            http_requests=RateCounter(now),
        )


# The fields of a Tenant read from its row (update_from copies them; the rest is live state).
_STORED = (
    "id",
    "name",
    "limits",
    "keys",
    "private_only",
    "suspend",
    "presence_enabled",
    "extensions",
    "plan",
    "explicit_limits",
    "organization",
    "billing_cycle_day",
    "enforce_quota",
    "alert_webhook_url",
)


class TenantRegistry:
    """The tenants this process serves, by external_id; `default` is the self-host tenant's."""

    __slots__ = ("_by_id", "default")

    def __init__(self, tenants: list[Tenant] | None = None, default: str | None = None) -> None:
        self._by_id: dict[str, Tenant] = {t.external_id: t for t in tenants or ()}
        self.default = default

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_id.values()))

    def get(self, external_id: str) -> Tenant | None:
        return self._by_id.get(external_id)

    def put(self, tenant: Tenant) -> None:
        self._by_id[tenant.external_id] = tenant

    def remove(self, external_id: str) -> Tenant | None:
        return self._by_id.pop(external_id, None)

    def resolve(self, host: str | None) -> Tenant:
        """The tenant a Host header names: its first label (upstream database.ex get_external_id/1).

        `localhost` and IP literals name the default tenant, and while only one tenant
        exists every Host reaches it. Raises MissingHost without a Host header and
        TenantNotFound when the label names no tenant."""
        if not host or not host.strip():
            raise MissingHost("Host header is missing")
        if len(self._by_id) == 1:
            return next(iter(self._by_id.values()))
        external_id = self.default if is_local_host(host) else external_id_from_host(host)
        tenant = self._by_id.get(external_id or "")
        if tenant is None:
            raise TenantNotFound("Tenant not found")
        return tenant


# The columns of a tenant's row, in the order TenantStore reads them.
_COLUMN_NAMES = (
    "id",
    "external_id",
    "name",
    "jwt_secret",
    "jwt_jwks",
    *LIMIT_FIELDS,
    "private_only",
    "suspend",
    "presence_enabled",
    "extensions",
    "plan",
    "organization",
    "billing_cycle_day",
    "enforce_quota",
    "alert_webhook_url",
    *CUSTOM_FIELDS,
    "inserted_at",
    "updated_at",
)
# The columns a writer sets (the others are the database's).
_WRITABLE = frozenset(_COLUMN_NAMES) - {"id", "inserted_at", "updated_at"}
_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, _COLUMN_NAMES))
_TENANTS = sql.Identifier("_realtime", "tenants")
# The setting of a tenant's extension that is a secret (upstream db_settings.ex encrypts the db_*
# settings; the password is the one that matters).
SECRET_SETTING = "db_password"


def _password(entry: Any) -> str | None:
    settings = entry.get("settings") if isinstance(entry, dict) else None
    value = settings.get(SECRET_SETTING) if isinstance(settings, dict) else None
    return value if isinstance(value, str) and value else None


class TenantStore:
    """Reads and writes the `_realtime.tenants` control table.

    Secrets at rest: `jwt_secret` and each extension's `db_password` are sealed with `box`
    (secret_box.py, under DB_ENC_KEY) when written, and opened when read, so the table never
    holds them in plain text; seal_plaintext() seals rows written before (or without a box).
    Without a box (tests and tools that write rows for a server to load) they are written as
    given and the server seals them at its next start; a sealed value then cannot be read
    (SecretBoxError)."""

    __slots__ = ("_box", "_conn")

    def __init__(self, conn: AsyncConnection[Any], box: SecretBox | None = None) -> None:
        self._conn = conn
        self._box = box

    # Reading

    async def rows(self, external_id: str | None = None, *, lock: bool = False) -> list[dict[str, Any]]:
        """The stored rows (all, or tenant `external_id`'s), secrets opened, oldest first;
        `lock`: FOR UPDATE, inside the caller's transaction."""
        query = sql.SQL("select {} from {}").format(_COLUMNS, _TENANTS)
        if external_id is not None:
            query += sql.SQL(" where external_id = %s")
        query += sql.SQL(" order by inserted_at")
        if lock:
            query += sql.SQL(" for update")
        async with self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, () if external_id is None else (external_id,))
            return [self._opened(row) for row in await cur.fetchall()]

    async def row(self, external_id: str, *, lock: bool = False) -> dict[str, Any] | None:
        """The stored row of tenant `external_id`, secrets opened, or None."""
        rows = await self.rows(external_id, lock=lock)
        return rows[0] if rows else None

    async def load_all(self, now: float) -> list[Tenant]:
        return [Tenant.from_row(row, now) for row in await self.rows()]

    async def get(self, external_id: str, now: float) -> Tenant | None:
        """The stored tenant `external_id`, read now."""
        row = await self.row(external_id)
        return None if row is None else Tenant.from_row(row, now)

    def _opened(self, row: dict[str, Any]) -> dict[str, Any]:
        if isinstance(row.get("jwt_jwks"), str):
            row["jwt_jwks"] = orjson.loads(row["jwt_jwks"])
        if isinstance(row.get("extensions"), str):
            row["extensions"] = orjson.loads(row["extensions"])
        if row.get("jwt_secret"):
            row["jwt_secret"] = self._open(row["jwt_secret"])
        row["extensions"] = [self._extension(e, self._open) for e in row.get("extensions") or []]
        return row

    def _open(self, value: str) -> str:
        if self._box is None:
            if is_sealed(value):
                raise SecretBoxError("a sealed secret cannot be read without DB_ENC_KEY")
            return value
        return self._box.open(value)

    def _seal(self, value: str) -> str:
        if self._box is None or is_sealed(value):
            return value
        return self._box.seal(value)

    @staticmethod
    def _extension(entry: Any, convert: Callable[[str], str]) -> Any:
        password = _password(entry)
        if password is None:
            return entry
        return {**entry, "settings": {**entry["settings"], SECRET_SETTING: convert(password)}}

    # Writing

    def _values(self, values: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """The columns and parameters of `values` (column → value, secrets in plain text)."""
        unknown = set(values) - _WRITABLE
        if unknown:
            raise ValueError(f"not tenant columns: {sorted(unknown)}")
        columns, params = [], []
        for name, value in values.items():
            if name == "jwt_secret" and value:
                value = self._seal(value)
            elif name == "jwt_jwks" and value is not None:
                value = Jsonb(value)
            elif name == "extensions":
                value = Jsonb([self._extension(e, self._seal) for e in value or []])
            columns.append(name)
            params.append(value)
        return columns, params

    async def insert(self, values: dict[str, Any]) -> bool:
        """Add a tenant with `values` (column → value; `external_id` among them, the rest take
        their column defaults). False when its external_id is taken."""
        columns, params = self._values(values)
        query = sql.SQL(
            "insert into {table} ({columns}) values ({values}) on conflict (external_id) do nothing"
        ).format(
            table=_TENANTS,
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        )
        cur = await self._conn.execute(query, params)
        return cur.rowcount > 0

    async def update(self, external_id: str, values: dict[str, Any]) -> bool:
        """Set the columns of `values` on tenant `external_id`; False when it is not stored."""
        columns, params = self._values(values)
        sets = [sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns]
        query = sql.SQL("update {} set {}, updated_at = now() where external_id = %s").format(
            _TENANTS, sql.SQL(", ").join(sets)
        )
        cur = await self._conn.execute(query, (*params, external_id))
        return cur.rowcount > 0

    async def create(
        self,
        external_id: str,
        jwt_secret: str,
        limits: Limits | None = None,
        extensions: list[dict[str, Any]] | None = None,
    ) -> None:
        """Add a tenant (HS secret, `limits` or the defaults, upstream-shaped `extensions`);
        a process loads it at start, or at App.add_tenant()."""
        limits = limits or Limits()
        values = {"external_id": external_id, "name": external_id, "jwt_secret": jwt_secret}
        values |= {name: getattr(limits, name) for name in LIMIT_FIELDS}
        await self.insert({**values, "extensions": extensions or []})

    async def set_extensions(self, external_id: str, extensions: list[dict[str, Any]]) -> None:
        """Replace the tenant's extensions (its database settings among them)."""
        await self.update(external_id, {"extensions": extensions})

    async def seal_plaintext(self) -> list[str]:
        """Seal the secrets stored in plain text (rows written before encryption, or without a
        box); return the external_ids of the rows changed. Idempotent. Raises SecretBoxError
        when a sealed secret does not open with this box's key (the wrong DB_ENC_KEY)."""
        assert self._box is not None, "sealing needs a SecretBox"
        changed = []
        async with self._conn.transaction():
            async with self._conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    sql.SQL("select external_id, jwt_secret, extensions from {} for update").format(_TENANTS)
                )
                rows = await cur.fetchall()
            for row in rows:
                values: dict[str, Any] = {}
                secret = row["jwt_secret"]
                if secret:
                    self._box.open(secret)  # a wrong key fails here, before anything is written
                    if not is_sealed(secret):
                        values["jwt_secret"] = secret
                extensions = row["extensions"] or []
                if isinstance(extensions, str):
                    extensions = orjson.loads(extensions)
                opened = [self._extension(e, self._box.open) for e in extensions]
                if any(_password(e) and not is_sealed(_password(e) or "") for e in extensions):
                    values["extensions"] = opened
                if values:
                    await self.update(row["external_id"], values)
                    changed.append(row["external_id"])
        return changed

    async def delete(self, external_id: str) -> bool:
        """Delete the tenant's row; True when there was one."""
        cur = await self._conn.execute(
            sql.SQL("delete from {} where external_id = %s").format(_TENANTS), (external_id,)
        )
        return cur.rowcount > 0

    async def ensure_default(self, settings: Settings, secret: str) -> None:
        """Create the self-host tenant, or bring its secret and env-given settings up to date."""
        limits = settings.limits
        values: dict[str, Any] = {name: getattr(limits, name) for name in LIMIT_FIELDS}
        # Limits named in the environment win at every start; the others are
        # only defaults for a new tenant, so an operator's later change stays.
        update = [name for name in LIMIT_FIELDS if name in settings.limits_set]
        jwks = settings.resolve_jwt_jwks()
        # SEED_SELF_HOST: the extensions upstream's seeds.exs writes, again at every start as there.
        seeded = settings.self_host_extensions()
        extensions = () if seeded is None else ("extensions",)
        inserted = (
            "external_id",
            "name",
            "jwt_secret",
            "jwt_jwks",
            *LIMIT_FIELDS,
            "presence_enabled",
            "private_only",
            "plan",
            *extensions,
        )
        # TENANT_PLAN, like the limits, wins at every start only when it is set.
        updated = ("jwt_secret", "jwt_jwks", *update, *(("plan",) if settings.plan_set else ()), *extensions)
        query = sql.SQL(
            "insert into {table} ({columns}) values ({values})"
            " on conflict (external_id) do update set {sets}, updated_at = now()"
        ).format(
            table=_TENANTS,
            columns=sql.SQL(", ").join(map(sql.Identifier, inserted)),
            values=sql.SQL(", ").join(sql.Placeholder() * len(inserted)),
            sets=sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in updated),
        )
        async with self._conn.transaction():
            await self._conn.execute(
                query,
                (
                    settings.tenant_name,
                    settings.tenant_name,
                    self._seal(secret),
                    Jsonb(jwks) if jwks else None,
                    *values.values(),
                    settings.presence_enabled,
                    settings.private_only,
                    settings.plan,
                    *(() if seeded is None else (Jsonb([self._extension(e, self._seal) for e in seeded]),)),
                ),
            )
