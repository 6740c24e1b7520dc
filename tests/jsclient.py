"""A pytest helper that drives @supabase/realtime-js through tests/js/driver.mjs.

`async with JsDriver() as js:` starts `node tests/js/driver.mjs` and waits for its
`ready` event. Commands go out with send() (fire and forget) or request() (wait
for the command's result: its value, or JsError with the driver's message).
Every event the driver prints is kept, in order, in `js.events`; wait_for()
returns the first event after a mark that matches a predicate, and
expect_nothing_before() checks that none arrives before a marker event. The
driver's protocol is described at the top of driver.mjs. On exit the driver is
asked to quit, then killed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MS

__all__ = ["JS_DIR", "JsDriver", "JsError", "b64", "binary", "unb64"]

JS_DIR = Path(__file__).resolve().parent / "js"
DRIVER = JS_DIR / "driver.mjs"
REQUIRED_MODULES = ("@supabase/realtime-js", "ws")

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class JsError(Exception):
    """A driver command that failed: its message is the JavaScript error's."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def binary(data: bytes) -> dict[str, str]:
    """A value the driver turns into an ArrayBuffer."""
    return {"binary_b64": b64(data)}


def _check_environment() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node 20+ to run the realtime-js tests", pytrace=False)
    missing = [m for m in REQUIRED_MODULES if not (JS_DIR / "node_modules" / m / "package.json").exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing from {JS_DIR / 'node_modules'}: run `npm ci` in {JS_DIR}",
            pytrace=False,
        )
    return node


class JsDriver:
    """One Node process running driver.mjs."""

    def __init__(self, *, allow_errors: bool = False) -> None:
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self.allow_errors = allow_errors  # uncaught JS errors fail the test unless set
        self._ids = itertools.count(1)
        self._proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> JsDriver:
        node = _check_environment()
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(DRIVER),
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]
        await self.wait_for(lambda ev: ev["ev"] == "ready", timeout=10_000 * MS)
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        proc = self._proc
        assert proc is not None
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                self.send({"op": "exit"})
            try:
                await asyncio.wait_for(proc.wait(), 2_000 * MS)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 1_000 * MS)
        if exc_type is None and not self.allow_errors:
            errors = [ev for ev in self.events if ev["ev"] == "error"]
            assert not errors, f"uncaught errors in realtime-js: {errors}"

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            text = line.decode().strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except ValueError:
                event = {"ev": "error", "kind": "badOutput", "message": text}
            self.events.append(event)
            self._changed.set()
        self.events.append({"ev": "exited"})
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for line in self._proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    # Commands

    def send(self, cmd: dict[str, Any]) -> None:
        """Write one command; its result arrives later as an event."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(cmd).encode() + b"\n")

    async def request(self, cmd: dict[str, Any], timeout: float = 15_000 * MS) -> Any:
        """Run one command and return its result value; raise JsError if it failed."""
        cmd = {**cmd, "id": cmd.get("id", next(self._ids))}
        start = len(self.events)
        self.send(cmd)
        result = await self.wait_for(
            lambda ev: ev["ev"] == "result" and ev.get("id") == cmd["id"], timeout=timeout, since=start
        )
        if "error" in result:
            raise JsError(result["error"])
        return result["value"]

    # Events

    def mark(self) -> int:
        """The index of the next event: pass it as `since` to look only at later events."""
        return len(self.events)

    def matching(self, predicate: Predicate, since: int = 0) -> list[Event]:
        return [ev for ev in self.events[since:] if predicate(ev)]

    async def wait_for(self, predicate: Predicate, timeout: float = 5_000 * MS, since: int = 0) -> Event:
        """Return the first event from index `since` on that matches; fail after `timeout` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = since
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if predicate(event):
                    return event
            if self.events and self.events[-1]["ev"] == "exited":
                raise AssertionError(f"driver exited before the event arrived{self._context()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout:.2f}s{self._context()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def expect_nothing_before(
        self,
        marker: Predicate,
        unexpected: Predicate,
        since: int = 0,
        timeout: float = 5_000 * MS,
        marker_since: int | None = None,
    ) -> Event:
        """Wait for the first event from `marker_since` (default `since`) on that matches `marker`
        and return it; fail if an event between `since` and it matches `unexpected`.

        This is how a test shows that something does NOT arrive: after the action it sends a
        marker through the same ordered path (the same stream, or the same socket), which the
        server must deliver after anything the action caused, however late. No wait for silence."""
        start = since if marker_since is None else marker_since
        marked = await self.wait_for(marker, timeout=timeout, since=start)
        before = self.events[since : self.events.index(marked, start)]
        found = [ev for ev in before if unexpected(ev)]
        assert not found, f"unexpected events before the marker: {found}{self._context()}"
        return marked

    async def nothing_pending(self, client: str, unexpected: Predicate, since: int = 0) -> None:
        """expect_nothing_before() the reply to a heartbeat that client `client` sends now: the
        server answers a socket's frames in order, and realtime-js reports what it receives in
        order, so whatever the server wrote in answer to earlier pushes is reported before it.
        Only for clients with no heartbeat of their own pending (Phoenix treats a second one as a
        timeout)."""
        sent = self.mark()
        await self.request({"op": "raw", "client": client, "expr": "client.sendHeartbeat()"})
        await self.expect_nothing_before(
            lambda ev: ev["ev"] == "heartbeat" and ev["client"] == client and ev["status"] == "ok",
            unexpected,
            since,
            marker_since=sent,
        )

    def _context(self) -> str:
        tail = "\n".join(json.dumps(ev)[:500] for ev in self.events[-25:])
        err = "".join(self.stderr[-20:])
        return f"\nlast events:\n{tail}\nstderr:\n{err}"

    # Shorthands for the common commands

    async def client(self, name: str, url: str, token: str, vsn: str = "2.0.0", **options: Any) -> None:
        """A RealtimeClient on `url` (ServerProcess.ws_url) speaking `vsn`."""
        await self.request(
            {"op": "client", "name": name, "url": url, "params": {"apikey": token}, "options": {"vsn": vsn, **options}}
        )

    async def channel(self, name: str, client: str, topic: str, **config: Any) -> None:
        await self.request({"op": "channel", "client": client, "name": name, "topic": topic, "config": config})

    async def on(self, channel: str, type_: str, **filter_: Any) -> None:
        await self.request({"op": "on", "channel": channel, "type": type_, "filter": filter_})

    async def subscribe(self, channel: str, timeout: float = 5_000 * MS) -> Event:
        """Subscribe and return the first status event (SUBSCRIBED, CHANNEL_ERROR, ...)."""
        start = self.mark()
        await self.request({"op": "subscribe", "channel": channel})
        return await self.wait_for(
            lambda ev: ev["ev"] == "status" and ev["channel"] == channel, timeout=timeout, since=start
        )

    async def subscribed(self, channel: str, timeout: float = 5_000 * MS) -> None:
        """Subscribe and assert the channel reaches SUBSCRIBED."""
        status = await self.subscribe(channel, timeout)
        assert (status["status"], status["error"]) == ("SUBSCRIBED", None)

    async def join(
        self,
        name: str,
        url: str,
        token: str,
        topic: str,
        *,
        vsn: str = "2.0.0",
        listen: tuple[str, ...] = ("broadcast",),
        client_options: dict[str, Any] | None = None,
        **config: Any,
    ) -> None:
        """A client and a channel both called `name`, listening to every event of each
        type in `listen`, subscribed: asserts SUBSCRIBED."""
        await self.client(name, url, token, vsn, **(client_options or {}))
        await self.channel(name, name, topic, **config)
        for type_ in listen:
            await self.on(name, type_, **({} if type_ == "system" else {"event": "*"}))
        await self.subscribed(name)

    def received(self, channel: str, type_: str = "broadcast", since: int = 0) -> list[Any]:
        """The payloads of the `type_` events channel `channel` received so far."""
        return [ev["payload"] for ev in self.events[since:] if ev["ev"] == type_ and ev["channel"] == channel]
