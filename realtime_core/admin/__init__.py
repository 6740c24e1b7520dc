"""The HTTP APIs of operators: upstream's tenant API (`/api/tenants`) and our JSON admin API
(`/admin/v1`), behind admin authentication (auth.py).

cli.py calls register() with the App; each module of this package adds its routes to one
AdminApi (endpoints.py), which serves the OpenAPI documents of both APIs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import (
    audit,
    channels,
    egress_api,
    introspect,
    nodes,
    pg_check,
    pricing_api,
    replication,
    rls_tester,
    tail,
    tail_relay,
    tenant_api,
    trace_api,
    usage_api,
)
from .auth import AdminAuth
from .endpoints import AdminApi

if TYPE_CHECKING:
    from ..app import App
    from ..net.http import Router

__all__ = ["register"]


def register(app: App, router: Router) -> AdminApi:
    """Add the tenant API and the admin API to `router`; return the AdminApi holding their routes."""
    api = AdminApi(AdminAuth.from_settings(app.settings), audit.AuditLog(lambda: app.pool))
    audit.routes(api)
    tenant_api.routes(api, app)
    introspect.routes(api, app)
    channels.routes(api, app)
    replication.routes(api, app)
    pricing_api.routes(api)
    usage_api.routes(api, app)
    egress_api.routes(api, app)
    rls_tester.routes(api, app)
    pg_check.routes(api, app)
    tail_relay.TailRelay(tail.routes(api, app), app)
    trace_api.routes(api, app)
    nodes.routes(api, app)
    api.register(router)
    return api
