"""HTTP endpoints: health, ping, metrics and the REST broadcast API (docs/protocol.md §4.2–4.3, §9.4).

cli.py registers these on the App's HTTP router. Every broadcast route exists both at
/api/... and at /realtime/v1/api/..., the path supabase-js uses without a
gateway (docs/protocol.md §1.1). Each handler runs the upstream plug order: tenant →
auth → rate limiter → controller."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from . import broadcast
from .attribution import REST_TOPIC
from .authorization import BROADCAST, IncreaseConnectionPool, MissingPartition, QueryCanceled
from .errors import JwtError, RealtimeError, TenantNotFound, UnableToConnectToProject, Unauthorized
from .hub import REST_KIND, StreamKey
from .jwt import KeySet, verify
from .metrics import CONTENT_TYPE
from .net.http import Handler, Request, Response, Router, json_response
from .protocol import BINARY, JSON, UserBroadcast
from .tenants import MissingHost, Tenant
from .usage import hour_of

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
        return Response(200, app.metrics.render(), content_type=CONTENT_TYPE)

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
    """Wrap a broadcast controller in the tenant, auth and rate-limiter plugs (docs/protocol.md §4.2).

    Every answer to a known tenant is its egress (kind `rest`: status line, headers and body, as
    written), attributed to the caller's client and role with the messages it accepted."""

    async def handler(request: Request) -> Response:
        try:
            tenant = app.tenants.resolve(request.headers.get("host"))
        except MissingHost as exc:
            return json_response(400, {"message": str(exc)}, list(_CORS))
        except TenantNotFound:  # upstream assign_tenant.ex: 401, not 404
            return json_response(401, {"message": "Tenant not found in database"}, list(_CORS))
        claims: dict[str, Any] = {}
        response, accepted = await authorized(request, tenant, claims)

        def written(nbytes: int) -> None:
            usage = app.usage
            usage.egress(tenant.external_id, REST_KIND, nbytes, REST_TOPIC)
            role = claims.get("role")
            usage.attribution.rest(
                tenant.external_id,
                hour_of(usage.clock()),
                request.headers.get("x-client-info"),
                request.headers.get("user-agent"),
                role if isinstance(role, str) else None,
                accepted,
                nbytes,
            )

        response.on_written = written
        return response

    async def authorized(request: Request, tenant: Tenant, claims: dict[str, Any]) -> tuple[Response, int]:
        """The controller's answer and the messages it accepted, once the caller is allowed;
        `claims` gets the caller's."""
        token = _bearer(request) or request.headers.get("apikey")
        try:
            if not token:
                raise JwtError("API key is missing")
            claims.update(app.verify_token(tenant, token))
        except JwtError:
            return json_response(401, {"message": "Unauthorized"}, list(_CORS)), 0
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
            return json_response(429, {"message": "Too many requests"}, headers), 0
        if tenant.suspend:
            return json_response(403, {"message": "Tenant is suspended"}, headers), 0
        response, accepted = await controller(app, tenant, claims, request)
        response.headers.extend(headers)
        return response, accepted

    return handler


def _validate_message(item: Any, tenant: Tenant) -> tuple[dict[str, list[str]], bytes]:
    """Ecto-style errors for one batch message, and its payload as JSON (measured, then delivered)."""
    if not isinstance(item, dict):
        return {"message": ["is invalid"]}, b""
    errors: dict[str, list[str]] = {}
    for name in ("topic", "event"):
        value = item.get(name)
        if value is None or value == "":
            errors[name] = ["can't be blank"]
        elif not isinstance(value, str):
            errors[name] = ["is invalid"]
    payload = item.get("payload")
    encoded = b""
    if payload is None:
        errors["payload"] = ["can't be blank"]
    elif not isinstance(payload, dict):
        errors["payload"] = ["is invalid"]
    else:
        encoded = orjson.dumps(payload)
        if tenant.payload_too_large(len(encoded)):
            errors["payload"] = ["Payload size exceeds tenant limit"]
    if "private" in item and not isinstance(item["private"], bool):
        errors["private"] = ["is invalid"]
    if item.get("id") is not None and not isinstance(item["id"], str):
        errors["id"] = ["is invalid"]
    return errors, encoded


async def _batch_broadcast(app: App, tenant: Tenant, claims: dict[str, Any], request: Request) -> tuple[Response, int]:
    """POST /api/broadcast: validate every message first, deliver all or none (docs/protocol.md §4.2)."""
    try:
        body = orjson.loads(request.body) if request.body else None
    except orjson.JSONDecodeError:
        return json_response(400, {"error": "Malformed JSON body"}), 0
    messages = body.get("messages") if isinstance(body, dict) else None
    if messages is None:
        return json_response(422, {"errors": {"messages": ["can't be blank"]}}), 0
    if not isinstance(messages, list):
        return json_response(422, {"errors": {"messages": ["is invalid"]}}), 0
    # Bounded before any work: Ecto's validate_length text for a list.
    max_messages = app.settings.batch_max_messages
    if len(messages) > max_messages:
        return json_response(422, {"errors": {"messages": [f"should have at most {max_messages} item(s)"]}}), 0
    results = [_validate_message(item, tenant) for item in messages]
    if any(errors for errors, _ in results):
        return json_response(422, {"errors": {"messages": [errors for errors, _ in results]}}), 0
    private_topics = list(dict.fromkeys(item["topic"] for item in messages if item.get("private", False)))
    max_topics = app.settings.batch_max_private_topics
    if len(private_topics) > max_topics:
        text = f"should have at most {max_topics} distinct private topics"
        return json_response(422, {"errors": {"messages": [text]}}), 0
    now = app.now()
    limit = tenant.limits.max_events_per_second
    current = tenant.events.average(now)
    if current >= limit:
        return json_response(429, {"message": "You have exceeded your rate limit"}), 0
    if current + len(messages) > limit:
        return json_response(429, {"message": "Too many messages to broadcast, please reduce the batch size"}), 0
    # Private messages need the caller's write policy on their topic; denied
    # ones are dropped silently, still answered 202 (upstream batch_broadcast.ex).
    # All topics are checked in one statement; if it fails, none is writable.
    writable: dict[str, bool] = {}
    authorizer = app.authorizer_for(tenant)
    if private_topics and authorizer is not None:
        try:
            writable = await authorizer.write_topics(private_topics, claims, request.headers, BROADCAST)
        except RealtimeError:
            writable = {}
    accepted = 0
    for item, (_, encoded) in zip(messages, results, strict=True):
        tenant.events.add(1, now)
        private = bool(item.get("private", False))
        if private and not writable.get(item["topic"], False):
            continue
        payload = orjson.Fragment(encoded)  # encoded once, by the size check
        app.hub.accepted(tenant, REST_KIND, StreamKey(tenant.external_id, private, item["topic"]), 1)
        accepted += 1
        broadcast.publish_json(
            app.broker, tenant, item["topic"], private, item["event"], payload, item.get("id"), app.now()
        )
    return Response(202), accepted


async def _may_write(app: App, tenant: Tenant, topic: str, claims: dict[str, Any], request: Request) -> bool:
    """The broadcast write policy of `topic` for the caller (all request headers reach the policy)."""
    authorizer = app.authorizer_for(tenant)
    if authorizer is None:
        return False
    result = await authorizer.write(topic, claims, request.headers, (BROADCAST,))
    return result[BROADCAST]


# docs/protocol.md §4.3: authorization failures of a private single-event request.
_AUTH_ERRORS: dict[type[RealtimeError], tuple[int, str]] = {
    Unauthorized: (422, "RLS policy error"),
    QueryCanceled: (422, "Query canceled"),
    MissingPartition: (422, "Missing messages partition"),
    IncreaseConnectionPool: (429, "Connection pool exhausted"),
    UnableToConnectToProject: (422, "Tenant database unavailable"),
}


async def _single_broadcast(app: App, tenant: Tenant, claims: dict[str, Any], request: Request) -> tuple[Response, int]:
    """POST /api/broadcast/:topic/events/:event: the raw body as a user broadcast (docs/protocol.md §4.3)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in ("", "application/json", "application/octet-stream"):
        return json_response(415, {"error": _MEDIA_ERROR}), 0
    sub_topic = unquote(request.params["topic"])
    event = unquote(request.params["event"])
    body = request.body
    if content_type == "application/octet-stream":
        message = UserBroadcast(event=event, data=body, encoding=BINARY)
    else:
        try:
            payload = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            return json_response(400, {"error": "Malformed JSON body"}), 0
        if not isinstance(payload, dict):
            return json_response(422, {"errors": {"payload": ["is invalid"]}}), 0
        message = UserBroadcast(event=event, data=orjson.dumps(payload), encoding=JSON)
    private = request.query.get("private", "").lower() == "true"
    if private:
        try:
            allowed = await _may_write(app, tenant, sub_topic, claims, request)
        except RealtimeError as exc:
            status, text = _AUTH_ERRORS.get(type(exc), (500, "Unable to authorize broadcast"))
            return json_response(status, {"message": text}), 0
        if not allowed:
            return json_response(403, {"message": "Unauthorized"}), 0
    if tenant.payload_too_large(len(message.data)):
        return json_response(422, {"errors": {"payload": ["Payload size exceeds tenant limit"]}}), 0
    now = app.now()
    if tenant.events.reached(tenant.limits.max_events_per_second, now):
        return json_response(429, {"message": "You have exceeded your rate limit"}), 0
    tenant.events.add(1, now)
    app.hub.accepted(tenant, REST_KIND, StreamKey(tenant.external_id, private, sub_topic), 1)
    broadcast.publish_user(app.broker, tenant, sub_topic, private, message, app.now())
    return Response(202), 1
