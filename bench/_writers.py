"""The benchmarks' database writers: threads of the bench process, one connection each.

bench/postgres_changes.py (INSERT) and bench/private.py (realtime.send)
subclass PacedWriter for latency phases, one statement at a time on a fixed
schedule, and ThrottledWriter for throughput phases, statements as fast as
the database takes them while the writers are not too far ahead of the
subscribers. A phase starts the threads and join_all()s them: an exception
ends a writer's thread and waits in its `error` for the phase to report."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

__all__ = ["PacedWriter", "ThrottledWriter", "Writer", "join_all"]

LATE_S = 0.005  # PacedWriter: a statement that starts this far behind schedule counts as late
THROTTLE_SLEEP_S = 0.002  # ThrottledWriter: how long it waits before asking allowed() again


class Writer(threading.Thread):
    """A daemon thread that writes through a database connection of its own. Subclasses implement write()."""

    def __init__(self, dsn: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.dsn = dsn
        self.error: BaseException | None = None

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def run(self) -> None:
        try:
            with self.connect() as conn:
                self.write(conn)
        except BaseException as exc:  # reported by the phase
            self.error = exc

    def write(self, conn: psycopg.Connection[Any]) -> None:
        raise NotImplementedError


class PacedWriter(Writer):
    """rate x seconds calls of send_one(), one every 1/rate s; `late` counts those that started late."""

    def __init__(self, dsn: str, name: str, rate: float, seconds: float) -> None:
        super().__init__(dsn, name)
        self.rate, self.seconds = rate, seconds
        self.late = 0  # statements that started more than LATE_S behind schedule

    def write(self, conn: psycopg.Connection[Any]) -> None:
        total = int(self.rate * self.seconds)
        start = time.monotonic()
        for k in range(total):
            wait = start + k / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -LATE_S:
                self.late += 1
            self.send_one(conn)

    def send_one(self, conn: psycopg.Connection[Any]) -> None:
        raise NotImplementedError


class ThrottledWriter(Writer):
    """send_batch() until `stop` is set, waiting while allowed() says the writers are far enough ahead.

    `throttled_s` adds up the time spent waiting: the share of a window it
    takes says whether the database or the server was the limit.
    """

    def __init__(self, dsn: str, name: str, allowed: Callable[[], bool], stop: threading.Event) -> None:
        super().__init__(dsn, name)
        self.allowed = allowed  # () -> bool: may the writers run further ahead?
        self.stop_event = stop
        self.throttled_s = 0.0

    def write(self, conn: psycopg.Connection[Any]) -> None:
        while not self.stop_event.is_set():
            if not self.allowed():
                t = time.monotonic()
                time.sleep(THROTTLE_SLEEP_S)
                self.throttled_s += time.monotonic() - t
                continue
            self.send_batch(conn)

    def send_batch(self, conn: psycopg.Connection[Any]) -> None:
        raise NotImplementedError


def join_all(writers: Iterable[Writer], timeout: float) -> BaseException | None:
    """Wait for every writer (up to `timeout` s each); return the first one's error, or None."""
    writers = list(writers)
    for w in writers:
        w.join(timeout)
    return next((w.error for w in writers if w.error is not None), None)
