"""Background tasks whose failures are logged, never lost.

Every fire-and-forget coroutine of the server runs through spawn(). The task is
referenced until it ends (the event loop keeps only weak references), and an
exception escaping it is logged once, with its traceback, then handed to
`on_error`, so that the code that started it can answer the client. Without
this, asyncio reports such an exception only as "Task exception was never
retrieved", whenever the task happens to be garbage collected, and the client
waits for an answer that never comes.

A Supervisor holds the tasks of one owner (the App, the network server) so that
its stop() can cancel them and wait for them, within a bound."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Supervisor", "spawn"]

log = logging.getLogger(__name__)

_running: set[asyncio.Task[Any]] = set()


def spawn(
    coro: Coroutine[Any, Any, Any],
    *,
    name: str | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    group: set[asyncio.Task[Any]] | None = None,
) -> asyncio.Task[Any]:
    """Run `coro` as a task; log an exception escaping it and call `on_error` with it.

    `group`, when given, holds the task while it runs (for its owner to cancel at stop).
    A cancelled task is not a failure."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    if group is not None:
        group.add(task)
    task.add_done_callback(functools.partial(_done, on_error, group))
    return task


def _done(
    on_error: Callable[[BaseException], None] | None,
    group: set[asyncio.Task[Any]] | None,
    task: asyncio.Task[Any],
) -> None:
    _running.discard(task)
    if group is not None:
        group.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    log.error("task %s failed", task.get_name(), exc_info=exc)
    if on_error is not None:
        try:
            on_error(exc)
        except Exception:
            log.exception("the error handler of task %s failed", task.get_name())


class Supervisor:
    """The background tasks of one owner, started with spawn(); stop() ends them."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Task[Any]:
        return spawn(coro, name=name, on_error=on_error, group=self._tasks)

    def names(self) -> list[str]:
        """The names of the tasks still running (for operators)."""
        return [task.get_name() for task in self._tasks if not task.done()]

    async def stop(self, timeout: float) -> list[str]:
        """Cancel every task still running and wait up to `timeout` seconds for them to end;
        return the names of those that did not (each is logged)."""
        running = [task for task in self._tasks if not task.done()]
        for task in running:
            task.cancel()
        if not running:
            return []
        _, pending = await asyncio.wait(running, timeout=timeout)
        names = sorted(task.get_name() for task in pending)
        if names:
            log.warning("%d background task(s) still running %.1f s after stop: %s", len(names), timeout, names)
        return names
