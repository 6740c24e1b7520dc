"""The join pipeline and one joined channel's state machine.

socket.py calls join() for a phx_join (docs/protocol.md §3.3) and, once the channel exists,
Channel.handle_in() for every message on its topic. A channel ends in one of
three ways, each sending phx_close with ref = join_ref (docs/protocol.md §2.4): leave()
(phx_leave), shutdown() (a system error first, docs/protocol.md §3.6), or replaced() (a
duplicate join); or, after an unexpected failure of its own work, crashed()
sends phx_error instead. close() is the common cleanup."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from . import trace
from .authorization import BROADCAST, PRESENCE, UNREACHABLE_TEXT, MissingPartition, Policies, QueryCanceled
from .errors import (
    ChannelRateLimitReached,
    ClientJoinRateLimitReached,
    ConnectionRateLimitReached,
    JwtError,
    PrivateOnly,
    RealtimeDisabledForTenant,
    RealtimeError,
    RealtimeRestarting,
    TenantNotFound,
    TopicNameRequired,
    UnableToConnectToProject,
    Unauthorized,
)
from .hub import (
    BROADCAST_KIND,
    DB_BROADCAST_KIND,
    PRESENCE_KIND,
    Audience,
    ChannelState,
    Publication,
    StreamKey,
    Tracer,
)
from .incidents import shutdown_code
from .jwt import expires_in
from .limits import WindowCounter
from .payloads import JoinPayload, postgres_change_id
from .protocol import BINARY, Message, UserBroadcast

if TYPE_CHECKING:
    from .messages import ReplayRow
    from .session_context import ChannelSocket, SessionContext
    from .tenants import Tenant

__all__ = ["Channel", "ChannelState", "UnableToReplayMessages", "join"]

log = logging.getLogger(__name__)

TOPIC_PREFIX = "realtime:"
# docs/protocol.md §8.4: the token is re-checked at least this often.
TOKEN_RECHECK_SECONDS = 300.0
# broadcast.replication_ready: the replication connection is checked this often
# (RT realtime_channel.ex @replication_ready_check_interval).
REPLICATION_CHECK_SECONDS = 0.5
PAYLOAD_SIZE_EXCEEDED = "payload_size_exceeded"
REPLICATION_READY = "Replication connection established"
REPLICATION_NOT_READY = "Replication connection was not established in time"


class UnableToReplayMessages(RealtimeError, code="UnableToReplayMessages"):
    """Replay asked for where it cannot be served (docs/protocol.md §4.6)."""


async def join(socket: ChannelSocket, msg: Message) -> tuple[Channel, dict[str, Any]]:
    """Run the join pipeline (docs/protocol.md §3.3) in order; return the channel and the reply's response.

    Raises RealtimeError with the upstream code and text on any refusal."""
    app = socket.ctx
    sub_topic = msg.topic[len(TOPIC_PREFIX) :]
    if not sub_topic:
        raise TopicNameRequired("You must provide a topic name")
    if app.shutting_down:
        raise RealtimeRestarting("Realtime is restarting, please standby")
    tenant = app.tenants.get(socket.tenant.external_id)
    if tenant is None:
        raise TenantNotFound("Tenant with the given ID does not exist")
    if tenant.suspend:
        raise RealtimeDisabledForTenant("Realtime disabled for this tenant")
    config = JoinPayload.parse(msg.payload)
    if config.problems:
        log.info("InvalidJoinPayload on %s: %s", msg.topic, "; ".join(config.problems))
    if tenant.private_only and not config.private:
        raise PrivateOnly("This project only allows private channels")
    limits = tenant.limits
    now = app.now()
    if not socket.counted and tenant.users + tenant.remote_users >= limits.max_concurrent_users:
        raise ConnectionRateLimitReached("Too many connected users")
    if tenant.joins.reached(limits.max_joins_per_second, now):
        raise ClientJoinRateLimitReached("Too many joins per second")
    tenant.joins.add(1, now)
    if len(socket.channels) >= limits.max_channels_per_client:
        raise ChannelRateLimitReached("Too many channels")
    token = _join_token(config, socket.token)
    claims = app.verify_token(tenant, token)
    policies: Policies | None = None
    if config.private:
        presence_counts = config.presence_enabled or tenant.presence_enabled
        policies = await _read_policies(socket, tenant, sub_topic, claims, presence_counts)
        if not (policies.broadcast_read or (presence_counts and policies.presence_read)):
            raise Unauthorized(f"You do not have permissions to read from this Channel topic: {sub_topic}")
    replay: list[ReplayRow] | None = None
    if config.replay_invalid:
        raise UnableToReplayMessages("Replay params are not valid")
    if config.replay is not None:
        if policies is None:
            raise UnableToReplayMessages("Replay is not allowed for public channels")
        if not policies.broadcast_read:
            raise Unauthorized(f"You do not have permissions to read from this Channel topic: {sub_topic}")
        replay = await _replay(app, tenant, sub_topic, config.replay.since, config.replay.limit)

    channel = Channel(socket, msg.topic, sub_topic, msg.join_ref, config, token, claims)
    if policies is not None:
        channel.set_policies(policies)
    channel.replay_rows = replay
    ids = [postgres_change_id(params) for params in config.postgres_changes]
    if config.new_api:
        channel.postgres_changes = list(zip(ids, config.postgres_changes, strict=True))
    else:
        # docs/protocol.md §6.7: a join without `config` subscribes to `schema[:table[:filter]]`.
        parts = sub_topic.split(":", 2)
        legacy = {"schema": parts[0], "table": parts[1] if len(parts) > 1 else "*"}
        if len(parts) > 2:
            legacy["filter"] = parts[2]
        channel.postgres_changes = [(postgres_change_id(legacy), legacy)]
        channel.legacy = True
    changes = [{**params, "id": cid} for cid, params in zip(ids, config.postgres_changes, strict=True)]
    return channel, {"postgres_changes": changes}


async def _read_policies(
    socket: ChannelSocket, tenant: Tenant, sub_topic: str, claims: dict[str, Any], presence: bool
) -> Policies:
    """Evaluate the read policies of a private topic (docs/protocol.md §7); both extensions, one transaction."""
    authorizer = socket.ctx.authorizer_for(tenant)
    if authorizer is None:
        if socket.ctx.services_failed(tenant):  # its policies cannot be read: not a denial
            raise UnableToConnectToProject(UNREACHABLE_TEXT)
        raise Unauthorized(f"You do not have permissions to read from this Channel topic: {sub_topic}")
    # docs/protocol.md §7: presence is probed only when the channel enabled it; otherwise
    # at its first track.
    extensions = (BROADCAST, PRESENCE) if presence else (BROADCAST,)
    read = await authorizer.read(sub_topic, claims, socket.x_headers, extensions)
    return Policies(broadcast_read=read[BROADCAST], presence_read=read.get(PRESENCE))


async def _replay(app: SessionContext, tenant: Tenant, sub_topic: str, since: int, limit: int) -> list[ReplayRow]:
    try:
        return await app.replay(tenant, sub_topic, since, limit)
    except Exception:
        log.exception("UnableToReplayMessages on %s", sub_topic)
        raise UnableToReplayMessages("Realtime was unable to replay messages") from None


def _join_token(config: JoinPayload, connect_token: str) -> str:
    """docs/protocol.md §3.2: user_token, then access_token, then the connect token; `sb_` keys defer to it."""
    candidate = config.access_token if config.access_token is not None else config.user_token
    if isinstance(candidate, str) and candidate.startswith("sb_"):
        return connect_token
    if isinstance(config.user_token, str):
        return config.user_token
    if isinstance(config.access_token, str):
        return config.access_token
    return connect_token


class Channel:
    """One topic joined on one socket."""

    __slots__ = (
        "_expiry",
        "_pending",
        "_presence_calls",
        "_presence_key",
        "_replication_deadline",
        "_replication_timer",
        "ack",
        "claims",
        "codec",
        "conn",
        "join_ref",
        "key",
        "legacy",
        "policies",
        "postgres_changes",
        "presence_enabled",
        "private",
        "reads_broadcast",
        "reads_presence",
        "replay_rows",
        "replayed",
        "self_broadcast",
        "socket",
        "state",
        "sub_topic",
        "token",
        "topic",
    )

    def __init__(
        self,
        socket: ChannelSocket,
        topic: str,
        sub_topic: str,
        join_ref: str | None,
        config: JoinPayload,
        token: str,
        claims: dict[str, Any],
    ) -> None:
        self.socket = socket
        self.conn = socket.conn
        self.codec = socket.codec
        self.topic = topic
        self.sub_topic = sub_topic
        self.join_ref = join_ref
        self.private = config.private
        self.key = StreamKey(socket.tenant.external_id, config.private, sub_topic)
        self.ack = config.ack
        self.self_broadcast = config.self_broadcast
        self.presence_enabled = config.presence_enabled or socket.tenant.presence_enabled
        self._presence_key = config.presence_key  # "" until needed: see presence_key
        self.token = token
        self.claims = claims
        self.state = ChannelState.JOINED
        self._expiry: asyncio.TimerHandle | None = None
        self._replication_timer: asyncio.TimerHandle | None = None
        # Set when the client asked for broadcast.replication_ready.
        self._replication_deadline: float | None = None
        if config.replication_ready:
            self._replication_deadline = socket.ctx.now() + socket.ctx.settings.replication_ready_timeout_ms / 1000
        self._presence_calls = WindowCounter()
        self.postgres_changes: list[tuple[int, dict[str, Any]]] = []  # (id, params) asked for
        self.legacy = False
        # Private channels: policies, and what they let the channel receive (Hub.deliver reads these).
        self.policies: Policies | None = None
        self.reads_broadcast = True
        self.reads_presence = True
        self.replay_rows: list[ReplayRow] | None = None
        self.replayed: set[str] | None = None  # ids sent as replay: their live copies are skipped
        self._pending: dict[str, list[Message]] = {}  # messages waiting for a write check

    @property
    def presence_key(self) -> str:
        """The client's key, or a UUID v1 made at first use (docs/protocol.md §5.1): most channels never track."""
        if not self._presence_key:
            self._presence_key = str(uuid.uuid1())
        return self._presence_key

    def __repr__(self) -> str:
        return f"<Channel {self.topic} join_ref={self.join_ref}>"

    # Lifecycle

    def set_policies(self, policies: Policies) -> None:
        self.policies = policies
        self.reads_broadcast = bool(policies.broadcast_read)
        self.reads_presence = bool(policies.presence_read)

    def start(self) -> None:
        """Subscribe and send what follows the join reply (docs/protocol.md §10.8: reply first)."""
        app = self.socket.ctx
        app.broker.subscribe(self.key, self)
        self._schedule_token_check()
        if self.replay_rows:
            self._send_replay(self.replay_rows)
        self.replay_rows = None
        if self._replication_deadline is not None:
            self._check_replication()
            if self.state is ChannelState.CLOSED:
                return
        if self.presence_enabled and self.reads_presence:
            self._push_presence_state()
        if self.postgres_changes:
            cdc = app.cdc_for(self.socket.tenant)
            if cdc is not None:
                cdc.subscribe(self, self.postgres_changes, self.legacy)

    def leave(self, ref: str | None) -> None:
        """phx_leave: reply ok, then phx_close (docs/protocol.md §3.7)."""
        self.reply(ref, "ok", {})
        self._close_with_phx_close()

    def shutdown(self, text: str) -> None:
        """Stop with a system error, then phx_close (docs/protocol.md §3.6, "Channel shutdown")."""
        if self.state is ChannelState.CLOSED:
            return
        log.info("ChannelShutdown %s: %s", self.topic, text)
        self._incident(shutdown_code(text), text)
        self.push("system", {"extension": "system", "status": "error", "message": text, "channel": self.sub_topic})
        self._close_with_phx_close()

    def _incident(self, code: str, reason: str) -> None:
        socket = self.socket
        socket.ctx.incidents.record(socket.tenant.external_id, code, reason, self.sub_topic, socket.id)

    def replaced(self) -> None:
        """A duplicate join on the socket: phx_close for this join_ref (docs/protocol.md §2.4)."""
        self._close_with_phx_close()

    def crashed(self, exc: BaseException | None = None) -> None:
        """An unexpected failure in the channel's own work (already logged): phx_error, then
        the channel is gone, as when upstream's channel process crashes; clients rejoin."""
        if self.state is ChannelState.CLOSED:
            return
        self.socket.send_protocol(
            self.codec.control(self.join_ref, self.topic, "phx_error"), self.sub_topic, self.private
        )
        self.close()

    def _close_with_phx_close(self) -> None:
        if self.state is ChannelState.CLOSED:
            return
        self.socket.send_protocol(
            self.codec.control(self.join_ref, self.topic, "phx_close"), self.sub_topic, self.private
        )
        self.close()

    def close(self) -> None:
        """Release everything the channel holds; send nothing (the socket may be gone)."""
        if self.state is ChannelState.CLOSED:
            return
        self.state = ChannelState.CLOSED
        app = self.socket.ctx
        app.broker.unsubscribe(self.key, self)
        if self.postgres_changes:
            cdc = app.cdc_for(self.socket.tenant)
            if cdc is not None:
                cdc.unsubscribe(self)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._replication_timer is not None:
            self._replication_timer.cancel()
            self._replication_timer = None
        self.socket.channel_closed(self)
        diff = app.broker.presence_leave(self.key, self)
        if diff is not None:
            self._fan_out_presence_diff(diff)

    def _check_replication(self) -> None:
        """broadcast.replication_ready (RT realtime_channel.ex handle_info(:notify_replication_ready)):
        a system message once the replication connection is up, checked now and every 500 ms;
        a shutdown once the deadline has passed without it."""
        self._replication_timer = None
        if self.state is ChannelState.CLOSED or self._replication_deadline is None:
            return
        app = self.socket.ctx
        if app.replication_connected(self.socket.tenant):
            self._replication_deadline = None
            self.push(
                "system",
                {"extension": "system", "status": "ok", "message": REPLICATION_READY, "channel": self.sub_topic},
            )
        elif app.now() >= self._replication_deadline:
            self.shutdown(REPLICATION_NOT_READY)
        else:
            self._replication_timer = app.loop.call_later(REPLICATION_CHECK_SECONDS, self._check_replication)

    def _send_replay(self, rows: list[ReplayRow]) -> None:
        """Replayed messages, oldest first, as channel pushes (docs/protocol.md §4.6)."""
        self.replayed = {row.id for row in rows}
        codec = self.codec
        hub = self.socket.ctx.hub
        tracer = hub.tracer
        sent = nbytes = 0
        for row in rows:
            meta = {"replayed": True, "id": row.id}
            if row.binary_payload is not None:
                frame = codec.user_broadcast(
                    self.topic, UserBroadcast(row.event or "", row.binary_payload, BINARY, meta)
                )
                reason: str | None = trace.CODEC
                if codec.vsn == "2.0.0" and frame is not None:
                    self.conn.send(frame)  # V1 receivers never get binary payloads
                    sent += 1
                    nbytes += len(frame)
                    reason = None
                if tracer is not None:
                    self._traced(tracer, DB_BROADCAST_KIND, row.event, reason is None, reason)
                continue
            payload = orjson.Fragment(row.payload_json) if row.payload_json is not None else None
            nbytes += self._send_data(
                "broadcast", {"payload": payload, "event": row.event, "type": "broadcast", "meta": meta}
            )
            sent += 1
            if tracer is not None:
                self._traced(tracer, DB_BROADCAST_KIND, row.event, True, None)
        hub.sent(self.socket.tenant, self.key, self, DB_BROADCAST_KIND, sent, nbytes)
        if tracer is not None:
            tracer.sent()

    def allowed_to_write(self, extension: str, msg: Message) -> bool | None:
        """The write policy for `extension` on a private channel; None while it is being
        evaluated, in which case `msg` is held and handled again once it is known."""
        policies = self.policies
        if policies is None:
            return True
        allowed = policies.broadcast_write if extension == BROADCAST else policies.presence_write
        if allowed is not None:
            return allowed
        queue = self._pending.setdefault(extension, [])
        queue.append(msg)
        self.socket.hold(msg)
        if len(queue) == 1:
            self.socket.ctx.spawn(self._check_write(extension), on_error=self.crashed)
        return None

    async def _check_write(self, extension: str) -> None:
        app = self.socket.ctx
        authorizer = app.authorizer_for(self.socket.tenant)
        allowed = False
        if authorizer is not None:
            try:
                result = await authorizer.write(self.sub_topic, self.claims, self.socket.x_headers, (extension,))
                allowed = result[extension]
                if extension == PRESENCE and self.policies is not None and self.policies.presence_read is None:
                    # docs/protocol.md §5.1: the first track also evaluates presence read.
                    read = await authorizer.read(self.sub_topic, self.claims, self.socket.x_headers, (PRESENCE,))
                    self.policies.presence_read = read[PRESENCE]
                    self.reads_presence = read[PRESENCE]
            except RealtimeError as exc:
                log.warning("UnableToSetPolicies on %s: %s", self.topic, exc.reason)
                self._incident("UnableToSetPolicies", exc.reason)
        if self.policies is not None:
            if extension == BROADCAST:
                self.policies.broadcast_write = allowed
            else:
                self.policies.presence_write = allowed
        held = self._pending.pop(extension, [])
        self.socket.release(len(held), sum(msg.size for msg in held))
        for msg in held:
            if self.state is ChannelState.JOINED:
                self.handle_in(msg)

    # Output

    def reply(self, ref: str | None, status: str, response: Any) -> None:
        frame = self.codec.reply(self.join_ref, ref, self.topic, status, response)  # type: ignore[arg-type]
        self.socket.send_protocol(frame, self.sub_topic, self.private)

    def push(self, event: str, payload: Any) -> None:
        """Push a message of the channel's own (a `system` message): protocol egress."""
        frame = self.codec.push(self.join_ref, self.topic, event, payload)
        self.socket.send_protocol(frame, self.sub_topic, self.private)

    def _send_data(self, event: str, payload: Any) -> int:
        """Push a message counted by the caller as a delivery (presence_state, replay); its bytes."""
        frame = self.codec.push(self.join_ref, self.topic, event, payload)
        self.conn.send(frame)
        return len(frame)

    # Input

    def handle_in(self, msg: Message) -> None:
        """One client message on this topic (not phx_join/phx_leave)."""
        event = msg.event
        if event == "broadcast":
            self._handle_broadcast(msg)
        elif event == "presence":
            self._handle_presence(msg)
        elif event == "access_token":
            self._refresh_token(msg.payload)
        else:
            # docs/protocol.md §9.2: unknown client events count against events/s.
            tenant = self.socket.tenant
            tenant.events.add(1, self.socket.ctx.now())

    # Broadcast (docs/protocol.md §4.1)

    def _handle_broadcast(self, msg: Message) -> None:
        """Fan out one client broadcast on the channel's stream; ack it when asked to."""
        if self.private:
            allowed = self.allowed_to_write(BROADCAST, msg)
            if not allowed:
                # None: held until the write policy is known. False: denied
                # broadcasts are dropped silently, without an ack (docs/protocol.md §4.1).
                if allowed is False:
                    self._refused(msg, trace.WRITE_DENIED)
                return
        ctx = self.socket.ctx
        tenant = self.socket.tenant
        now = ctx.now()
        tenant.events.add(1, now)
        payload = msg.payload
        if isinstance(payload, UserBroadcast):
            # Re-broadcast as a user broadcast: V2 receivers get the sender's bytes
            # in a kind-4 frame, V1 receivers JSON, binary dropped for V1 (docs/protocol.md §2.3).
            size = len(payload.data)
            publication = Publication(self.topic, "broadcast", user=payload)
        elif isinstance(payload, bytes):
            return  # a kind-0 push named "broadcast" carries no user event: nothing to deliver
        else:
            # JSON payloads are re-broadcast verbatim (docs/protocol.md §4.1).
            payload_json = orjson.dumps(payload)
            size = len(payload_json)
            publication = Publication(self.topic, "broadcast", payload_json)
        if tenant.payload_too_large(size):
            self._refused(msg, trace.PAYLOAD_TOO_LARGE)
            if self.ack:
                # The response is a bare string (docs/protocol.md §4.1).
                self.reply(msg.ref, "error", PAYLOAD_SIZE_EXCEEDED)
            return
        ctx.hub.accepted(tenant, BROADCAST_KIND, self.key, 1)
        self.socket.accepted += 1
        ctx.broker.publish(tenant, self.key, publication, now, None if self.self_broadcast else self)
        if self.ack:
            self.reply(msg.ref, "ok", {})

    def _refused(self, msg: Message, reason: str) -> None:
        """Tell a running delivery trace that this channel's broadcast `msg` was refused."""
        tracer = self.socket.ctx.hub.tracer
        if tracer is None:
            return
        payload = msg.payload
        if isinstance(payload, UserBroadcast):
            event = payload.event
        else:
            event = payload.get("event") if isinstance(payload, dict) else None
        self._traced(tracer, BROADCAST_KIND, event if isinstance(event, str) else None, False, reason)

    def _traced(self, tracer: Tracer, kind: str, event: str | None, delivered: bool, reason: str | None) -> None:
        """A decision for this channel taken outside the hub's fan-out, for a running trace."""
        tracer.decided(self.socket.tenant.external_id, self, kind, event, delivered, reason)

    # Presence (docs/protocol.md §5)

    def _handle_presence(self, msg: Message) -> None:
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        event = payload.get("event")
        if event is None:
            self.reply(msg.ref, "ok", {})
            return
        kind = str(event).lower()
        if kind in ("track", "untrack") and self.private:
            # Checked before the rate limits: a held message is handled (and counted) once.
            allowed = self.allowed_to_write(PRESENCE, msg)
            if allowed is None:
                return  # handled again once the write policy is known
            if not allowed:
                log.info("UnableToHandlePresence on %s: presence write denied", self.topic)
                self.reply(msg.ref, "error", {})
                return
        app = self.socket.ctx
        tenant = self.socket.tenant
        limits = tenant.limits
        now = app.now()
        window_s = limits.client_presence_window_ms / 1000
        if not self._presence_calls.allow(limits.max_client_presence_events_per_window, window_s, now):
            self.shutdown("Client presence rate limit exceeded")
            return
        if tenant.presence_events.reached(limits.max_presence_events_per_second, now):
            self.shutdown("Too many presence messages per second")
            return
        tenant.presence_events.add(1, now)
        if kind == "track":
            tracked = payload.get("payload", {})
            if not isinstance(tracked, dict):
                self.reply(msg.ref, "error", {"reason": "Presence track payload must be a map"})
                return
            if tenant.payload_too_large(len(orjson.dumps(tracked))):
                self.shutdown("Track message size exceeded")
                return
            diff = app.broker.presence_join(self.key, self, self.presence_key, tracked)
            app.hub.accepted(tenant, PRESENCE_KIND, self.key, 1)
            self.socket.accepted += 1
            self.presence_enabled = True
            self.reply(msg.ref, "ok", {})
            if diff is not None:
                self._fan_out_presence_diff(diff)
        elif kind == "untrack":
            diff = app.broker.presence_leave(self.key, self)
            app.hub.accepted(tenant, PRESENCE_KIND, self.key, 1)
            self.socket.accepted += 1
            self.reply(msg.ref, "ok", {})
            if diff is not None:
                self._fan_out_presence_diff(diff)
        else:
            self.reply(msg.ref, "error", {})

    def _push_presence_state(self) -> None:
        tenant = self.socket.tenant
        now = self.socket.ctx.now()
        # docs/protocol.md §5.3: the tenant presence rate is checked for the initial state
        # too (only track calls and diff deliveries count towards it).
        if tenant.presence_events.reached(tenant.limits.max_presence_events_per_second, now):
            self.shutdown("Too many presence messages per second")
            return
        ctx = self.socket.ctx
        nbytes = self._send_data("presence_state", ctx.broker.presence_state(self.key))
        ctx.hub.sent(tenant, self.key, self, PRESENCE_KIND, 1, nbytes)
        tracer = ctx.hub.tracer
        if tracer is not None:
            self._traced(tracer, PRESENCE_KIND, "presence_state", True, None)
            tracer.sent()

    def _fan_out_presence_diff(self, diff: dict[str, Any]) -> None:
        app = self.socket.ctx
        tenant = self.socket.tenant
        publication = Publication(
            self.topic, "presence_diff", orjson.dumps(diff), audience=Audience.PRESENCE, kind=PRESENCE_KIND
        )
        now = app.now()
        delivered = app.broker.publish(tenant, self.key, publication, now)
        tenant.presence_events.add(delivered, now)

    # Tokens (docs/protocol.md §8.3, §8.4)

    def _refresh_token(self, payload: Any) -> None:
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or token.startswith("sb_") or token == self.token:
            return
        app = self.socket.ctx
        claims = self._verify(token)
        if claims is None:
            return
        self.token, self.claims = token, claims
        self._schedule_token_check()
        if self.private:
            app.spawn(self._recheck_read(), on_error=self.crashed)
        if self.postgres_changes:
            cdc = app.cdc_for(self.socket.tenant)
            if cdc is not None:
                cdc.refresh(self)

    async def _recheck_read(self) -> None:
        """docs/protocol.md §7: read policies again after a new token; a revoked read closes the channel."""
        before = self.policies
        try:
            after = await _read_policies(
                self.socket,
                self.socket.tenant,
                self.sub_topic,
                self.claims,
                before is not None and before.presence_read is not None,
            )
        except (UnableToConnectToProject, MissingPartition, QueryCanceled) as exc:
            # Transient: RT realtime_channel.ex handle_in("access_token") shuts down with these texts.
            log.warning("UnableToSetPolicies on %s: %s", self.topic, exc.reason)
            self._incident("UnableToSetPolicies", exc.reason)
            cancelled = isinstance(exc, QueryCanceled)
            self.shutdown("Query was cancelled, please try again" if cancelled else UNREACHABLE_TEXT)
            return
        except RealtimeError as exc:
            log.warning("UnableToSetPolicies on %s: %s", self.topic, exc.reason)
            self._incident("UnableToSetPolicies", exc.reason)
            after = Policies(broadcast_read=False, presence_read=False)
        if self.state is not ChannelState.JOINED or before is None:
            return
        if (before.broadcast_read and not after.broadcast_read) or (before.presence_read and not after.presence_read):
            self.shutdown(f"You no longer have permission to read from this Channel topic: {self.sub_topic}")
            return
        self.set_policies(after)  # write permissions are unknown again

    def _verify(self, token: str) -> dict[str, Any] | None:
        """The claims of `token`, or None after shutting the channel with its error (docs/protocol.md §8.3)."""
        try:
            return self.socket.ctx.verify_token(self.socket.tenant, token)
        except JwtError as exc:
            self.shutdown(exc.message)
            return None

    def _schedule_token_check(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        remaining = expires_in(self.claims, time.time())
        delay = TOKEN_RECHECK_SECONDS if remaining is None else max(0.0, min(TOKEN_RECHECK_SECONDS, remaining))
        self._expiry = self.socket.ctx.loop.call_later(delay, self._confirm_token)

    def _confirm_token(self) -> None:
        self._expiry = None
        if self.state is ChannelState.CLOSED:
            return
        claims = self._verify(self.token)
        if claims is None:
            return
        self.claims = claims
        self._schedule_token_check()
