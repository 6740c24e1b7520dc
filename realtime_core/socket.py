"""One client connection's Phoenix socket: decoding, routing to channels, replies.

net/websocket.py calls on_text() / on_binary() with each complete message and
on_close() once. Messages are handled in arrival order: a join that has to
wait (an error reply's backoff is not a wait; an async pipeline step is) holds
the following messages in an inbox until it finishes, as Phoenix's socket
process does. The routing follows Phoenix's `handle_in` (docs/protocol.md §2.4).

What the inbox and the channels' write checks hold is bounded: past
max_queued_input_messages or max_queued_input_bytes the connection stops
reading until they are handled, so a client that floods behind a slow join
waits in TCP as it does behind upstream's blocking join, instead of in memory."""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

from websockets.frames import CloseCode

from .attribution import SOCKET_TOPIC
from .channel import TOPIC_PREFIX, Channel, join
from .errors import MalformedMessage, RealtimeError, UnknownErrorOnChannel
from .protocol import Codec, Message
from .usage import PROTOCOL_KIND

if TYPE_CHECKING:
    from .net.websocket import WebSocketConnection
    from .session_context import SessionContext
    from .tenants import Tenant

__all__ = ["RealtimeSocket"]

log = logging.getLogger(__name__)

UNMATCHED_TOPIC = {"reason": "unmatched topic"}


class RealtimeSocket:
    """The Phoenix socket of one WebSocket connection."""

    __slots__ = (
        "_busy",
        "_held_bytes",
        "_held_messages",
        "_inbox",
        "_paused",
        "accepted",
        "attributed",
        "channels",
        "claims",
        "client_info",
        "closed",
        "codec",
        "conn",
        "connected_at",
        "control_frames",
        "counted",
        "ctx",
        "id",
        "log_level",
        "remote",
        "tenant",
        "token",
        "user_agent",
        "vsn",
        "x_headers",
    )

    def __init__(
        self,
        ctx: SessionContext,
        tenant: Tenant,
        codec: Codec,
        token: str,
        claims: dict[str, Any],
        x_headers: dict[str, str],
        log_level: str,
        *,
        remote: str = "",
        vsn: str | None = None,
        client_info: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        # Identity, for operators: the id names this connection everywhere (admin API, traces).
        self.id = secrets.token_urlsafe(9)  # 12 URL-safe characters
        self.connected_at = time.time()
        self.remote = remote
        self.vsn = vsn
        # What the client says it is: x-client-info, else the `version` of its first join
        # (realtime-js sends "realtime-js/<version>" there), else its User-Agent.
        self.client_info = client_info
        self.user_agent = user_agent
        self.ctx = ctx
        self.tenant = tenant
        self.codec = codec
        self.token = token
        self.claims = claims
        self.x_headers = x_headers
        self.log_level = log_level
        self.conn: WebSocketConnection = None  # type: ignore[assignment]  # set by attach()
        self.channels: dict[str, Channel] = {}
        self.counted = False  # counted in tenant.users (joined at least once)
        self.closed = False
        self._busy = False
        self._inbox: deque[Message] = deque()
        # Messages held in the inbox and in the channels' write checks, and
        # whether that stopped reading.
        self._held_messages = 0
        self._held_bytes = 0
        self._paused = False
        # Attribution (attribution.py): messages accepted from this socket, the protocol frames
        # it queued (conn.messages_out counts them, usage does not), what is attributed already.
        self.accepted = 0
        self.control_frames = 0
        self.attributed: list[int] = [0, 0, 0]

    def attach(self, conn: WebSocketConnection) -> None:
        self.conn = conn
        self.ctx.sockets.add(self)
        self.ctx.usage.connected(self.tenant)
        self.ctx.usage.socket_opened(self)

    @property
    def tenant_id(self) -> str:
        return self.tenant.external_id

    def traffic(self) -> tuple[int, int]:
        """(bytes written, frames queued) since the connect: the connection's own counters."""
        conn = self.conn
        return (conn.bytes_out, conn.messages_out) if conn is not None else (0, 0)

    # Input (net/websocket.py)

    def on_text(self, data: bytes) -> None:
        try:
            msg = self.codec.decode_text(data)
        except MalformedMessage as exc:
            self._malformed(exc)
            return
        msg.size = len(data)
        self.receive(msg)

    def on_binary(self, data: bytes) -> None:
        try:
            msg = self.codec.decode_binary(data)
        except MalformedMessage as exc:
            self._malformed(exc)
            return
        msg.size = len(data)
        self.receive(msg)

    def _malformed(self, exc: MalformedMessage) -> None:
        # docs/protocol.md §1.5: logged and dropped; the connection stays open.
        self.ctx.metrics.malformed_messages += 1
        log.debug("MalformedWebSocketMessage from %s: %s", self.conn.peer, exc)

    def receive(self, msg: Message) -> None:
        """Handle one decoded message, or queue it behind a join still running."""
        if self._busy:
            self._inbox.append(msg)
            self.hold(msg)
            return
        self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        topic, event = msg.topic, msg.event
        channel = self.channels.get(topic)
        if event == "heartbeat" and topic == "phoenix":
            self.send_protocol(self.codec.reply(None, msg.ref, "phoenix", "ok", {}), SOCKET_TOPIC)
        elif event == "phx_join":
            if not topic.startswith(TOPIC_PREFIX):
                self._reply_unmatched(msg)
                return
            if self.client_info is None and isinstance(msg.payload, dict):
                version = msg.payload.get("version")
                if isinstance(version, str) and version:
                    self.client_info = version[:200]
            if channel is not None:
                channel.replaced()  # duplicate join: the old one closes first
            self._busy = True
            self.ctx.spawn(self._join(msg), name=f"join {topic}")
        elif channel is None:
            if event == "phx_leave":
                self._reply(msg, "ok", {})
            else:
                self._reply_unmatched(msg)
        elif msg.join_ref is not None and msg.join_ref != channel.join_ref:
            return  # a message for an older join of this topic (docs/protocol.md §2.4)
        elif event == "phx_leave":
            channel.leave(msg.ref)
        else:
            channel.handle_in(msg)

    async def _join(self, msg: Message) -> None:
        self.ctx.metrics.join_started(self.tenant.external_id)
        try:
            try:
                channel, response = await join(self, msg)
            except RealtimeError as exc:
                self._join_failed(msg, exc)
                return
            except Exception as exc:
                log.exception("join of %s failed", msg.topic)
                # Upstream's catch-all: logged as UnknownErrorOnChannel, answered without a code.
                self._join_failed(msg, UnknownErrorOnChannel(repr(exc)))
                return
            if self.closed:
                return
            # Cluster-wide from the reply on: the broker listens on the stream before the client
            # is told it joined (channel.start() subscribes with no await in between).
            await self.ctx.broker.ready(channel.key)
            if self.closed:
                return
            self.channels[msg.topic] = channel
            if not self.counted:
                self.counted = True
                self.tenant.users += 1
            self._reply(msg, "ok", response)
            try:
                channel.start()
            except Exception:
                log.exception("channel %s failed to start", msg.topic)
                channel.crashed()
        finally:
            self._busy = False
            self._drain_inbox()

    def _join_failed(self, msg: Message, exc: RealtimeError) -> None:
        reason = exc.reason
        log.info("join of %s refused: %s", msg.topic, reason)
        self.ctx.metrics.join_refused(exc.code, self.tenant.external_id)
        self.ctx.incidents.record(self.tenant.external_id, exc.code, reason, msg.topic, self.id)
        close = exc.closes_socket

        def send() -> None:
            if self.closed:
                return
            self._reply(msg, "error", {"reason": reason})
            if close:
                self.conn.close(CloseCode.GOING_AWAY, reason)

        # docs/protocol.md §3.3: error replies wait CHANNEL_ERROR_BACKOFF_MS.
        delay = self.ctx.settings.channel_error_backoff_ms / 1000
        if delay > 0:
            self.ctx.loop.call_later(delay, send)
        else:
            send()

    def _drain_inbox(self) -> None:
        inbox = self._inbox
        while inbox and not self._busy and not self.closed:
            msg = inbox.popleft()
            self.release(1, msg.size)
            self._dispatch(msg)

    # Input bounds

    def hold(self, msg: Message) -> None:
        """Count `msg` as held for later; stop reading once the held messages pass a bound."""
        self._held_messages += 1
        self._held_bytes += msg.size
        if not self._paused:
            settings = self.ctx.settings
            if (
                self._held_messages > settings.max_queued_input_messages
                or self._held_bytes > settings.max_queued_input_bytes
            ):
                self._paused = True
                self.conn.pause_reading()

    def release(self, messages: int, size: int) -> None:
        """`messages` held ones (`size` bytes) are handled now; read again once within the bounds."""
        if self.closed:
            return
        self._held_messages -= messages
        self._held_bytes -= size
        if self._paused:
            settings = self.ctx.settings
            if (
                self._held_messages <= settings.max_queued_input_messages
                and self._held_bytes <= settings.max_queued_input_bytes
            ):
                self._paused = False
                self.conn.resume_reading()

    # Output

    def send_protocol(self, frame: bytes, topic: str, private: bool = False) -> None:
        """Queue a frame of the protocol's own (a reply, a heartbeat's, a system message,
        phx_close): egress of kind `protocol`, under `topic` (a channel's, or SOCKET_TOPIC).
        Nothing once the connection is closing: the frame would not be sent."""
        if self.conn.closing:
            return
        self.conn.send(frame)
        self.control_frames += 1
        self.ctx.usage.egress(self.tenant.external_id, PROTOCOL_KIND, len(frame), topic, private)

    def on_sent(self, nbytes: int) -> None:
        """The connection wrote `nbytes` of its own: the HTTP 101 answer, pongs, close frames."""
        self.ctx.usage.egress(self.tenant.external_id, PROTOCOL_KIND, nbytes, SOCKET_TOPIC)

    def _reply(self, msg: Message, status: Literal["ok", "error"], response: Any) -> None:
        """Reply to `msg`, echoing its join_ref and ref (docs/protocol.md §2.4)."""
        channel = self.channels.get(msg.topic)
        if channel is not None:
            topic, private = channel.sub_topic, channel.private
        else:  # a refused join: the topic it asked for
            topic, private = (
                (msg.topic[len(TOPIC_PREFIX) :], False) if msg.topic.startswith(TOPIC_PREFIX) else (SOCKET_TOPIC, False)
            )
        self.send_protocol(self.codec.reply(msg.join_ref, msg.ref, msg.topic, status, response), topic, private)

    def _reply_unmatched(self, msg: Message) -> None:
        """ "unmatched topic": an error reply with the message's ref and a null join_ref."""
        self.send_protocol(self.codec.reply(None, msg.ref, msg.topic, "error", UNMATCHED_TOPIC), SOCKET_TOPIC)

    # Lifecycle

    def channel_closed(self, channel: Channel) -> None:
        """A channel ended: forget it if it is still the current one for its topic."""
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]

    def on_close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.conn is not None and self.conn.dropped_slow:
            text = "the client did not read: write buffer over the limit"
            self.ctx.incidents.record(self.tenant.external_id, "SlowConsumer", text, None, self.id)
        self._inbox.clear()
        self._held_messages = self._held_bytes = 0
        for channel in list(self.channels.values()):
            channel.close()
        if self.counted:
            self.tenant.users -= 1
        if self.conn is not None:  # attached: counted as a connection
            self.ctx.usage.disconnected(self.tenant)
            self.ctx.usage.socket_closed(self)
        self.ctx.sockets.discard(self)

    def disconnect(self, code: CloseCode, reason: str = "") -> None:
        """Close the WebSocket (admin drain, shutdown)."""
        self.conn.close(code, reason)
