"""Traffic from the official Python client (PyPI `realtime`) for the console's tests, which are
synchronous (Streamlit's AppTest, nbclient, Playwright): the clients live on an event loop of
their own thread, so heartbeats go on while a test waits on a page.

    with Traffic(server) as traffic:
        traffic.join("room:1", key="alice", meta={"status": "online"})
        traffic.broadcast("room:1", "hello", {"n": 1})

`received` holds every broadcast a joined client got, as (topic, event, payload)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from conftest import MS, make_token
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

__all__ = ["Traffic", "until"]

WAIT = 10_000 * MS


def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll `check` (every 20 MS) until it returns something true, and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.1f}s")
        time.sleep(20 * MS)
    return value


class Traffic:
    """Python realtime clients of one server, driven from synchronous code."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.received: list[tuple[str, str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="traffic", daemon=True)
        self._clients: list[AsyncRealtimeClient] = []
        self._channels: dict[str, Any] = {}

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._clients:
            self._run(client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(WAIT)

    def join(
        self,
        topic: str,
        *,
        key: str = "",
        meta: dict[str, Any] | None = None,
        private: bool = False,
        token: str | None = None,
    ) -> Any:
        """A new client joins `topic` (and tracks `meta` under presence `key` when given);
        returns its channel once SUBSCRIBED."""

        async def go() -> Any:
            client = AsyncRealtimeClient(self.server.ws_url, token or make_token(), auto_reconnect=False)
            self._clients.append(client)
            config = {
                "broadcast": {"ack": True, "self": False},
                "presence": {"key": key, "enabled": meta is not None},
                "private": private,
            }
            channel = client.channel(topic, {"config": config})
            channel.on_broadcast(
                "*", lambda message: self.received.append((topic, message["event"], message["payload"]))
            )
            subscribed = asyncio.get_running_loop().create_future()

            def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
                if not subscribed.done():
                    subscribed.set_result((state, error))

            await channel.subscribe(on_state)
            state, error = await asyncio.wait_for(subscribed, WAIT)
            assert state == RealtimeSubscribeStates.SUBSCRIBED, (state, error)
            if meta is not None:
                await channel.track(meta)
            return channel

        channel = self._run(go())
        self._channels.setdefault(topic, channel)
        return channel

    def broadcast(self, topic: str, event: str, payload: dict[str, Any]) -> None:
        """The first client that joined `topic` sends a broadcast (acknowledged by the server)."""
        self._run(self._channels[topic].send_broadcast(event, payload))
