"""HTTP endpoints: health, ping, metrics and the REST broadcast API (spec §4.2–4.3, §9.4).

app.App registers these on its Router. Every broadcast route exists both at
/api/... and at /realtime/v1/api/..., the path supabase-js uses without a
gateway (spec §1.1). Each handler runs the upstream plug order: tenant →
auth → rate limiter → controller."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from . import broadcast
from .errors import JwtError
from .jwt import KeySet, clean_token, verify
from .net.http import Handler, Request, Response, Router, json_response
from .protocol import BINARY, JSON, UserBroadcast
from .tenants import Tenant

if TYPE_CHECKING:
    from .app import App

__all__ = ["register"]

_CORS = [("access-control-allow-origin", "*")]
_PREFLIGHT = [
    *_CORS,
    ("access-control-allow-methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    ("access-control-allow-headers", "authorization, apikey, content-type, x-client-info, x-api-key"),
    ("access-control-max-age", "86400"),
]
_MEDIA_ERROR = "Unsupported Media Type. Use application/json or application/octet-stream"


def register(app: App, router: Router) -> None:
    """Add every route to `router`."""

    async def healthcheck(request: Request) -> Response:
        return Response(200, b"ok", content_type="text/plain; charset=utf-8")

    async def ping(request: Request) -> Response:
        return json_response(200, {"message": "Success"})

    async def metrics(request: Request) -> Response:
        secret = app.settings.metrics_jwt_secret
        if secret is not None:
            token = _bearer(request)
            try:
                verify(token or "", KeySet(secret=secret), now=time.time(), require_role_exp=False)
            except JwtError:
                return Response(403)
        return Response(200, app.metrics.render().encode(), content_type="text/plain; version=0.0.4")

    async def preflight(request: Request) -> Response:
        return Response(204, headers=list(_PREFLIGHT))

    router.add("GET", "/healthcheck", healthcheck)
    router.add("GET", "/metrics", metrics)
    for prefix in ("", "/realtime/v1"):
        router.add("GET", f"{prefix}/api/ping", ping)
        batch = _tenant_route(app, _batch_broadcast)
        single = _tenant_route(app, _single_broadcast)
        router.add("POST", f"{prefix}/api/broadcast", batch)
        router.add("OPTIONS", f"{prefix}/api/broadcast", preflight)
        router.add("POST", f"{prefix}/api/broadcast/:topic/events/:event", single)
        router.add("OPTIONS", f"{prefix}/api/broadcast/:topic/events/:event", preflight)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _tenant_route(app: App, controller: Any) -> Handler:
    """Wrap a broadcast controller in the tenant, auth and rate-limiter plugs (spec §4.2)."""

    async def handler(request: Request) -> Response:
        tenant = app.tenants.resolve(request.headers.get("host"))
        if tenant is None:
            return json_response(401, {"message": "Tenant not found in database"}, list(_CORS))
        token = _bearer(request) or request.headers.get("apikey")
        try:
            if not token:
                raise JwtError("API key is missing")
            claims = verify(
                clean_token(token),
                tenant.keys,
                now=time.time(),
                claim_validators=app.settings.jwt_claim_validators,
            )
        except JwtError:
            return json_response(401, {"message": "Unauthorized"}, list(_CORS))
        now = app.now()
        limit = tenant.limits.max_events_per_second
        tenant.http_requests.add(1, now)
        rolling = tenant.http_requests.average(now)
        headers = [
            *_CORS,
            ("x-rate-rolling", f"{rolling:g}"),
            ("x-rate-limit", str(limit)),
            ("x-rate-limit-remaining", f"{max(0.0, limit - rolling):g}"),
        ]
        if rolling >= limit:
            return json_response(429, {"message": "Too many requests"}, headers)
        if tenant.suspend:
            return json_response(403, {"message": "Tenant is suspended"}, headers)
        response: Response = await controller(app, tenant, claims, request)
        response.headers.extend(headers)
        return response

    return handler


def _validate_message(item: Any, tenant: Tenant) -> tuple[dict[str, list[str]], int]:
    """Ecto-style errors for one batch message, and its payload size."""
    if not isinstance(item, dict):
        return {"message": ["is invalid"]}, 0
    errors: dict[str, list[str]] = {}
    for name in ("topic", "event"):
        value = item.get(name)
        if value is None or value == "":
            errors[name] = ["can't be blank"]
        elif not isinstance(value, str):
            errors[name] = ["is invalid"]
    payload = item.get("payload")
    size = 0
    if payload is None:
        errors["payload"] = ["can't be blank"]
    elif not isinstance(payload, dict):
        errors["payload"] = ["is invalid"]
    else:
        size = len(orjson.dumps(payload))
        if tenant.payload_too_large(size):
            errors["payload"] = ["Payload size exceeds tenant limit"]
    if "private" in item and not isinstance(item["private"], bool):
        errors["private"] = ["is invalid"]
    if item.get("id") is not None and not isinstance(item["id"], str):
        errors["id"] = ["is invalid"]
    return errors, size


async def _batch_broadcast(app: App, tenant: Tenant, claims: dict[str, Any], request: Request) -> Response:
    """POST /api/broadcast: validate every message first, deliver all or none (spec §4.2)."""
    try:
        body = orjson.loads(request.body) if request.body else None
    except orjson.JSONDecodeError:
        return json_response(400, {"error": "Malformed JSON body"})
    messages = body.get("messages") if isinstance(body, dict) else None
    if messages is None:
        return json_response(422, {"errors": {"messages": ["can't be blank"]}})
    if not isinstance(messages, list):
        return json_response(422, {"errors": {"messages": ["is invalid"]}})
    results = [_validate_message(item, tenant) for item in messages]
    if any(errors for errors, _ in results):
        return json_response(422, {"errors": {"messages": [errors for errors, _ in results]}})
    now = app.now()
    limit = tenant.limits.max_events_per_second
    current = tenant.events.average(now)
    if current >= limit:
        return json_response(429, {"message": "You have exceeded your rate limit"})
    if current + len(messages) > limit:
        return json_response(429, {"message": "Too many messages to broadcast, please reduce the batch size"})
    for item in messages:
        tenant.events.add(1, now)
        if item.get("private", False):
            # Private messages need the caller's write policy on the topic
            # (RLS on realtime.messages); without a granted policy they are
            # dropped silently, still answered 202 (spec §4.2).
            continue
        broadcast.publish_json(app, tenant, item["topic"], False, item["event"], item["payload"], item.get("id"))
    return Response(202)


async def _single_broadcast(app: App, tenant: Tenant, claims: dict[str, Any], request: Request) -> Response:
    """POST /api/broadcast/:topic/events/:event: the raw body as a user broadcast (spec §4.3)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in ("", "application/json", "application/octet-stream"):
        return json_response(415, {"error": _MEDIA_ERROR})
    sub_topic = unquote(request.params["topic"])
    event = unquote(request.params["event"])
    body = request.body
    if content_type == "application/octet-stream":
        message = UserBroadcast(event=event, data=body, encoding=BINARY)
    else:
        try:
            payload = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            return json_response(400, {"error": "Malformed JSON body"})
        if not isinstance(payload, dict):
            return json_response(422, {"errors": {"payload": ["is invalid"]}})
        message = UserBroadcast(event=event, data=orjson.dumps(payload), encoding=JSON)
    if request.query.get("private", "").lower() == "true":
        # Write permission comes from RLS policies on realtime.messages; none is granted.
        return json_response(403, {"message": "Unauthorized"})
    if tenant.payload_too_large(len(message.data)):
        return json_response(422, {"errors": {"payload": ["Payload size exceeds tenant limit"]}})
    now = app.now()
    if tenant.events.reached(tenant.limits.max_events_per_second, now):
        return json_response(429, {"message": "You have exceeded your rate limit"})
    tenant.events.add(1, now)
    broadcast.publish_user(app, tenant, sub_topic, False, message)
    return Response(202)
