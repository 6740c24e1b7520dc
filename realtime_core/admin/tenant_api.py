"""Upstream's tenant API (`/api/tenants`, document "tenants") and the admin API's settings
endpoint (`PATCH /admin/v1/tenants/{id}/settings`), on one write path.

Each write validates the whole request with tenant_models.changes() against the stored row,
locked, then writes it in the same transaction: an invalid request changes nothing. Only
then is the change applied to the running server (App.add_tenant / update_tenant /
remove_tenant / reload_tenant / shutdown_tenant); when that fails, or the tenant's database
services do not start, the answer still says what was saved and carries a `warnings` list
saying what did not happen (never a 500). Bodies and statuses are upstream's
(tenant_controller.ex, tenant_view.ex): `{"tenant": {...}}` in, `{"data": ...}` out."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from ..net.http import Response, json_response
from ..tenant_services import CDC_RLS, TenantDatabase
from ..tenants import Tenant, TenantStore
from .endpoints import AdminApi, ApiError, Call, invalid, not_found
from .tenant_models import TenantHealth, TenantOut, TenantParams, TenantSettings, changes, studio_warnings, tenant_out

if TYPE_CHECKING:
    from ..app import App

__all__ = ["routes"]

log = logging.getLogger(__name__)

TENANTS = "tenants"  # the OpenAPI document served at /api/openapi
# How long a write waits for the change to apply (the tenant's services to start) before answering.
_APPLY_WAIT = 10.0
_NODE = f"{socket.gethostname()}:{os.getpid()}"


def _region(tenant: Tenant | None) -> str | None:
    region = (tenant.extension(CDC_RLS) or {}).get("region") if tenant is not None else None
    return region if isinstance(region, str) else None


class TenantData(BaseModel):
    data: TenantOut
    warnings: list[str] = Field(default_factory=list, description="what was saved but not applied, if anything")


class TenantList(BaseModel):
    data: list[TenantOut]


class HealthData(BaseModel):
    data: TenantHealth


class SettingsSaved(BaseModel):
    data: TenantOut
    warnings: list[str] = Field(description="values above Supabase Studio's form bounds; what was not applied")
    disconnected: int = Field(description="the tenant's sockets that saving disconnected")
    message: str


def routes(api: AdminApi, app: App) -> None:
    """Add the tenant API and the settings endpoint to `api`."""

    def pool() -> AsyncConnectionPool:
        if app.pool is None:
            raise ApiError(503, {"message": "the server's database is not open yet"})
        return app.pool

    async def stored(external_id: str) -> dict[str, Any]:
        if "\x00" in external_id:  # no tenant has it, and PostgreSQL text cannot hold it
            raise not_found()
        async with pool().connection() as conn:
            row = await TenantStore(conn, app.secret_box).row(external_id)
        if row is None:
            raise not_found()
        return row

    async def write(
        external_id: str, params: TenantSettings, *, merge_extensions: bool, create: bool = True
    ) -> tuple[dict[str, Any], bool]:
        """Validate `params` against the stored tenant and write it in one transaction; return
        the row written and whether it was created. A new tenant only when `create`."""
        if "\x00" in external_id:
            raise not_found() if not create else invalid("external_id", "must not contain NUL characters")
        async with pool().connection() as conn, conn.transaction():
            store = TenantStore(conn, app.secret_box)
            before = await store.row(external_id, lock=True)
            if before is None and not create:
                raise not_found()
            values = changes(before, params, external_id=external_id, merge_extensions=merge_extensions)
            if before is None:
                if not await store.insert(values):
                    raise invalid("external_id", "has already been taken")
            elif values:
                await store.update(external_id, values)
            row = await store.row(external_id)
        assert row is not None
        return row, before is None

    async def apply(external_id: str, *, created: bool, disconnect: bool = False) -> list[str]:
        """Apply the stored tenant to the running server; the warnings of what did not happen.

        Starting a tenant's database services may take up to their open timeout (30 s) when the
        database does not answer: the answer waits at most _APPLY_WAIT, the rest goes on in the
        background."""
        failure: list[str] = []
        done = asyncio.Event()

        async def run() -> None:
            try:
                if created:
                    await app.add_tenant(external_id)
                else:
                    await app.update_tenant(external_id, disconnect=disconnect)
            except Exception as exc:
                log.exception("tenant %s: saved, but applying it to the running server failed", external_id)
                failure.append(f"saved, but applying it to the running server failed: {exc}")
            finally:
                done.set()

        app.spawn(run(), name=f"apply tenant {external_id}")
        try:
            await asyncio.wait_for(done.wait(), _APPLY_WAIT)
        except TimeoutError:
            return [
                f"the tenant's database services have not started within {_APPLY_WAIT:g} s; they keep starting in"
                " the background (GET /api/tenants/:id/health tells when they run)"
            ]
        if failure:
            return failure
        error = app.service_errors.get(external_id)
        if error is not None:
            return [
                f"the tenant's database services have not started ({error}); the server keeps retrying in the"
                " background"
            ]
        return []

    async def upsert(call: Call, external_id: str, *, merge_extensions: bool) -> Response:
        row, created = await write(external_id, call.body, merge_extensions=merge_extensions)
        call.target = external_id
        call.detail = {"created": created, "fields": sorted(call.body.model_fields_set)}
        warnings = await apply(external_id, created=created)
        if warnings:
            call.detail["warnings"] = warnings
        body = TenantData(data=tenant_out(row), warnings=warnings)
        location = [("location", f"/api/tenants/{quote(external_id, safe='')}")]
        return json_response(201 if created else 200, body.model_dump(mode="json"), location)

    @api.route("GET", "/api/tenants", document=TENANTS, response=TenantList)
    async def index(call: Call) -> TenantList:
        """List tenants."""
        async with pool().connection() as conn:
            rows = await TenantStore(conn, app.secret_box).rows()
        return TenantList(data=[tenant_out(row) for row in rows])

    @api.route(
        "POST",
        "/api/tenants",
        document=TENANTS,
        body=TenantParams,
        envelope="tenant",
        response=TenantData,
        status=201,
        action="tenant.create",
    )
    async def create(call: Call) -> Response:
        """Create or update a tenant (201 and `location` when created, 200 when updated)."""
        external_id = call.body.external_id
        if external_id is None:
            raise invalid("external_id", "can't be blank")
        return await upsert(call, external_id, merge_extensions=False)

    @api.route("GET", "/api/tenants/:tenant_id", document=TENANTS, response=TenantData)
    async def show(call: Call) -> TenantData:
        """Fetch a tenant."""
        return TenantData(data=tenant_out(await stored(call.params["tenant_id"])))

    @api.route(
        "PUT",
        "/api/tenants/:tenant_id",
        document=TENANTS,
        body=TenantParams,
        envelope="tenant",
        response=TenantData,
        action="tenant.update",
    )
    async def put(call: Call) -> Response:
        """Create or update a tenant: the fields given replace the stored ones, `extensions` as a whole."""
        return await upsert(call, call.params["tenant_id"], merge_extensions=False)

    @api.route(
        "PATCH",
        "/api/tenants/:tenant_id",
        document=TENANTS,
        body=TenantParams,
        envelope="tenant",
        response=TenantData,
        action="tenant.update",
    )
    async def patch(call: Call) -> Response:
        """Create or update a tenant: as PUT, but each extension's settings merge into the stored ones."""
        return await upsert(call, call.params["tenant_id"], merge_extensions=True)

    @api.route("DELETE", "/api/tenants/:tenant_id", document=TENANTS, status=204, action="tenant.delete")
    async def delete(call: Call) -> Response | None:
        """Delete a tenant: drain its sockets, stop its services, drop its replication slots (204 also when missing)."""
        external_id = call.params["tenant_id"]
        if external_id == app.settings.tenant_name:
            raise invalid(
                "external_id",
                "is the server's own default tenant (SELF_HOST_TENANT_NAME): it cannot be deleted while the server"
                " serves it",
            )
        if "\x00" in external_id:
            return None  # no tenant has it: deleted already, as upstream answers
        async with pool().connection() as conn:
            deleted = await TenantStore(conn, app.secret_box).delete(external_id)
        call.detail = {"deleted": deleted}
        try:
            await app.remove_tenant(external_id)
        except Exception as exc:
            log.exception("tenant %s: deleted, but stopping it on the running server failed", external_id)
            return json_response(500, {"message": f"deleted, but stopping it on the running server failed: {exc}"})
        return None

    @api.route("POST", "/api/tenants/:tenant_id/reload", document=TENANTS, status=204, action="tenant.reload")
    async def reload(call: Call) -> None:
        """Reload a tenant: disconnect its sockets and restart its database services."""
        external_id = call.params["tenant_id"]
        await stored(external_id)
        await app.reload_tenant(external_id)
        return None

    @api.route("POST", "/api/tenants/:tenant_id/shutdown", document=TENANTS, status=204, action="tenant.shutdown")
    async def shutdown(call: Call) -> None:
        """Stop a tenant's database services (they start again on reload or update)."""
        external_id = call.params["tenant_id"]
        await stored(external_id)
        await app.shutdown_tenant(external_id)
        return None

    @api.route("GET", "/api/tenants/:tenant_id/health", document=TENANTS, response=HealthData)
    async def health(call: Call) -> HealthData:
        """Tenant health."""
        external_id = call.params["tenant_id"]
        await stored(external_id)
        tenant = app.tenants.get(external_id)
        services = app.services.get(external_id)
        db_connected = services is not None and services.pool is not None
        replication = tenant is not None and app.replication_connected(tenant)
        has_database = tenant is not None and (
            TenantDatabase.of(
                tenant,
                default_dsn=app.settings.database_url,
                is_default=external_id == app.settings.tenant_name,
            )
            is not None
        )
        return HealthData(
            data=TenantHealth(
                healthy=tenant is not None and (db_connected or not has_database),
                db_connected=db_connected,
                replication_connected=replication,
                connected_cluster=app.tenant_sockets(external_id),
                region=_region(tenant),
                node=_NODE,
            )
        )

    @api.route(
        "PATCH",
        "/admin/v1/tenants/:tenant_id/settings",
        body=TenantSettings,
        response=SettingsSaved,
        action="tenant.settings",
    )
    async def settings(call: Call) -> SettingsSaved:
        """Change a tenant's limits, switches and plan; saving disconnects its clients, as in Studio."""
        external_id = call.params["tenant_id"]
        row, _ = await write(external_id, call.body, merge_extensions=True, create=False)
        call.detail = {"fields": sorted(call.body.model_fields_set)}
        connected = app.tenant_sockets(external_id)
        warnings = studio_warnings(row) + await apply(external_id, created=False, disconnect=True)
        return SettingsSaved(
            data=tenant_out(row),
            warnings=warnings,
            disconnected=connected,
            message=f"Saved. As in Supabase Studio, saving disconnected all of the tenant's clients ({connected});"
            " they reconnect under the new settings.",
        )
