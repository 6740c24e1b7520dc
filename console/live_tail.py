"""The Inspector's live tail: one background thread per browser session reads the admin API's
server-sent events into a bounded buffer, which a Streamlit fragment polls.

The thread ends when stop() is called, when the tail fails (its error is kept for the page), or
when nobody has read the buffer for `idle_seconds` (the browser tab was closed; a watchdog
thread notices, since the reader blocks on its socket): a console left open holds at most
`size` messages and one stream per session."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from console.client import AdminApiError, AdminClient

__all__ = ["TailReader"]


class TailReader:
    """Tails one stream of a tenant on a thread; rows() gives what arrived, newest last."""

    def __init__(
        self,
        base_url: str,
        token: str,
        tenant: str,
        topic: str,
        *,
        private: bool = False,
        kinds: list[str] | None = None,
        size: int = 500,
        idle_seconds: float = 60.0,
    ) -> None:
        self.tenant, self.topic, self.private, self.kinds = tenant, topic, private, kinds
        self.events: deque[dict[str, Any]] = deque(maxlen=size)
        self.dropped = 0  # messages the server dropped for this viewer, and the ones our buffer let go
        self.error: str | None = None
        self._client = AdminClient(base_url, token)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._close: Callable[[], None] | None = None
        self._read_at = time.monotonic()
        self._idle = idle_seconds
        self._thread = threading.Thread(target=self._run, name=f"tail {topic}", daemon=True)
        self._thread.start()
        threading.Thread(target=self._watch, name=f"tail {topic} watchdog", daemon=True).start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_connected(self, timeout: float) -> bool:
        """True once the server has accepted the tail (its events now reach the buffer)."""
        return self._connected.wait(timeout)

    def rows(self) -> list[dict[str, Any]]:
        """The buffered messages, oldest first; reading keeps the thread alive."""
        self._read_at = time.monotonic()
        return list(self.events)

    def stop(self) -> None:
        """End the tail (from any thread): its stream is closed at once."""
        self._stop.set()
        if self._close is not None:
            self._close()

    def _opened(self, close: Callable[[], None]) -> None:
        self._close = close
        self._connected.set()
        if self._stop.is_set():
            close()

    def _watch(self) -> None:
        # The reading thread blocks on the socket: this one notices a session gone idle.
        while not self._stop.wait(1.0) and self._thread.is_alive():
            if time.monotonic() - self._read_at > self._idle:
                self.stop()

    def _run(self) -> None:
        try:
            tail = self._client.tail(
                self.tenant, self.topic, private=self.private, kinds=self.kinds, on_open=self._opened
            )
            for kind, data in tail:
                if kind == "dropped":
                    self.dropped += int(data.get("count", 0))
                    continue
                if len(self.events) == self.events.maxlen:
                    self.dropped += 1
                event, payload = data.get("event"), data.get("payload")
                if kind == "broadcast" and isinstance(payload, dict) and "event" in payload:
                    # A broadcast's frame wraps the user's event and payload: show those.
                    event, payload = payload["event"], payload.get("payload")
                self.events.append(
                    {"at": data.get("at"), "kind": kind, "event": event, "payload": json.dumps(payload, sort_keys=True)}
                )
            if not self._stop.is_set():
                self.error = "the server ended the tail"
        except AdminApiError as exc:
            if not self._stop.is_set():
                self.error = str(exc) if exc.status is None else f"{exc.status} {exc.message}"
        finally:
            self._client.close()
