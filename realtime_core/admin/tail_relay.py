"""The live tail across the nodes of a cluster (REDIS_URL): what every node delivers on a stream
reaches the viewers open on any node (admin/tail.py).

- A node with viewers open announces their streams to every node (`tail.want`: this node and
  its (tenant, topic) streams): at once when a viewer opens, waiting for the live nodes to
  take it (Cluster.ask()), then every REFRESH_S while any is open, and at once when the last
  viewer of a stream closes. A node keeps a stream in its forwarding until the announcing node
  says otherwise or EXPIRES_S after its last announcement (a node that died with viewers open).
- A node forwarding a stream keeps an Outbox for it, and Tail stays in Hub.observers: what it
  delivers there is queued (bounded: the oldest make room and are counted) and sent every
  FLUSH_S to each watching node (`tail.delivered`), one Redis publish per node and stream.
  While no node has a viewer open, no node observes deliveries: they cost nothing.
- The watching node offers what it receives to its viewers of the stream, which show each
  message once with the nodes it was delivered on (tail.Viewer); messages dropped on the way
  are added to the viewers' `dropped` counts.

A node that joins the cluster forwards a stream from the next announcement (within REFRESH_S)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .tail import Outbox, Tail, identity, to_data

if TYPE_CHECKING:
    from ..app import App

__all__ = ["EXPIRES_S", "FLUSH_S", "REFRESH_S", "TailRelay"]

log = logging.getLogger(__name__)

REFRESH_S = 2.0  # a watching node announces its streams this often
EXPIRES_S = 3 * REFRESH_S  # a stream announced no longer is forwarded until this long after
FLUSH_S = 0.05  # a forwarding node sends what it queued this often


class TailRelay:
    """This node's part in the cluster's live tail: announcing its viewers' streams, forwarding
    the streams other nodes watch, and receiving what they forward."""

    def __init__(self, tail: Tail, app: App) -> None:
        self.tail = tail
        self.app = app
        # Other nodes' announcements: node → (its watched streams, when that stops unless repeated)
        self._wanted: dict[str, tuple[set[tuple[str, str]], float]] = {}
        self._announcing: asyncio.Task[None] | None = None
        self._forwarding: asyncio.Task[None] | None = None
        tail.announce = self.announce
        tail.on_streams_changed = self._streams_changed
        app.node_queries["tail.want"] = self.wanted_by
        app.node_queries["tail.delivered"] = self.received

    # The watching side

    async def announce(self) -> list[str]:
        """Tell every live node the streams watched here, and keep telling them while any is;
        return the nodes that took it (this one alone while Redis does not answer: the viewers
        see this node's deliveries, and the others' from the first announcement that gets through)."""
        nodes = self.app.nodes
        if nodes is None:
            return [self.app.node_id]
        if self._announcing is None or self._announcing.done():
            self._announcing = self.app.tasks.spawn(self._announce_forever(), name="tail announcements")
        try:
            answers = await nodes.ask("tail.want", self._announcement())
        except Exception as exc:
            log.warning("tail: viewers' streams not announced (%s)", exc)
            return [self.app.node_id]
        return sorted(answers)

    def _announcement(self) -> dict[str, Any]:
        return {"node": self.app.node_id, "streams": self.tail.streams()}

    async def _announce_forever(self) -> None:
        while self.tail.streams():
            await asyncio.sleep(REFRESH_S)
            await self._tell_streams()

    def _streams_changed(self) -> None:
        if self.app.nodes is not None:
            self.app.tasks.spawn(self._tell_streams(), name="tail announcement")

    async def _tell_streams(self) -> None:
        nodes = self.app.nodes
        if nodes is None:
            return
        try:
            await nodes.tell("tail.want", self._announcement())
        except Exception as exc:  # Redis unreachable: the forwarding nodes stop by expiry
            log.warning("tail: viewers' streams not announced (%s)", exc)

    def received(self, args: dict[str, Any]) -> None:
        """`tail.delivered`: what another node delivered on a stream watched here."""
        node = str(args["node"])
        dropped = args.get("dropped") or {}
        for viewer in self.tail.of_stream(str(args["tenant"]), str(args["topic"])):
            viewer.dropped += int(dropped.get("true" if viewer.private else "false", 0))
            for item in args["items"]:
                viewer.offer_remote(node, item)

    # The forwarding side

    def wanted_by(self, args: dict[str, Any]) -> bool:
        """`tail.want`: the streams a node watches now (none: it stopped)."""
        node = str(args["node"])
        if node == self.app.node_id:
            return True  # its own deliveries reach its viewers directly
        streams = {(str(tenant), str(topic)) for tenant, topic in args["streams"]}
        if streams:
            self._wanted[node] = (streams, time.monotonic() + EXPIRES_S)
        else:
            self._wanted.pop(node, None)
        self._update()
        return True

    def _update(self) -> None:
        """Keep an outbox for exactly the streams some node watches; observe while any is kept."""
        now = time.monotonic()
        for node, (_, until) in list(self._wanted.items()):
            if until <= now:
                del self._wanted[node]
        watched = {stream for streams, _ in self._wanted.values() for stream in streams}
        outboxes = self.tail.outboxes
        for stream in [s for s in outboxes if s not in watched]:
            del outboxes[stream]
        for stream in watched:
            if stream not in outboxes:
                outboxes[stream] = Outbox(self.tail.buffer)
        self.tail.observe()
        if outboxes and (self._forwarding is None or self._forwarding.done()):
            self._forwarding = self.app.tasks.spawn(self._forward_forever(), name="tail forwarding")

    async def _forward_forever(self) -> None:
        while self.tail.outboxes:
            await asyncio.sleep(FLUSH_S)
            await self._forward()
            self._update()

    async def _forward(self) -> None:
        """Send each outbox's messages to the nodes that watch its stream."""
        nodes = self.app.nodes
        if nodes is None:
            return
        for (tenant, topic), outbox in list(self.tail.outboxes.items()):
            if not outbox.items and not any(outbox.dropped.values()):
                continue
            items = [
                {"id": identity(p), "kind": p.audience.value, "private": private, "data": to_data(at, p)}
                for at, p, private in outbox.items
            ]
            dropped = {"false": outbox.dropped[False], "true": outbox.dropped[True]}
            outbox.items.clear()
            outbox.dropped = {False: 0, True: 0}
            message = {"node": self.app.node_id, "tenant": tenant, "topic": topic, "items": items, "dropped": dropped}
            for node, (streams, _) in list(self._wanted.items()):
                if (tenant, topic) in streams:
                    try:
                        await nodes.tell("tail.delivered", message, node=node)
                    except Exception as exc:  # Redis unreachable: these are lost to that node's viewers
                        log.warning("tail: %d message(s) not forwarded to node %s (%s)", len(items), node, exc)
