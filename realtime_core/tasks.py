"""Background tasks whose failures are logged, never lost.

Every fire-and-forget coroutine of the server runs through spawn(). The task is
referenced until it ends (the event loop keeps only weak references), and an
exception escaping it is logged once, with its traceback, then handed to
`on_error`, so that the code that started it can answer the client. Without
this, asyncio reports such an exception only as "Task exception was never
retrieved", whenever the task happens to be garbage collected, and the client
waits for an answer that never comes."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["spawn"]

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
