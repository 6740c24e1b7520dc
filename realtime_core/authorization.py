"""Private channels: RLS policies on realtime.messages decide who reads and writes (docs/protocol.md §7).

channel.join() asks read() for a private topic; broadcast.py and the presence
handler ask write() lazily, at a channel's first broadcast or track; the REST
API asks write() per request. Each check runs in one transaction, as the
client's role with its claims and headers set transaction-locally, on a small
pool of its own, and is rolled back: nothing it inserts is ever visible. The
REST batch asks write_topics() once for all its private topics: one statement."""

from __future__ import annotations

import bisect
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .errors import RealtimeError, UnableToConnectToProject, Unauthorized

__all__ = [
    "BROADCAST",
    "PRESENCE",
    "Authorizer",
    "IncreaseConnectionPool",
    "LatencyHistogram",
    "MissingPartition",
    "Policies",
    "QueryCanceled",
]

BROADCAST = "broadcast"
PRESENCE = "presence"

# Bucket upper bounds (ms) of the authorization latency histogram.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
# RT realtime_channel.ex join/3, for {:error, :tenant_database_unavailable}.
UNREACHABLE_TEXT = "Realtime was unable to connect to the project database"
# SQLSTATEs of a server that is going away or not letting us in yet (class 08
# is every connection exception).
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


class MissingPartition(RealtimeError, code="MissingPartition"):
    """Today's realtime.messages partition does not exist."""


class QueryCanceled(RealtimeError, code="QueryCanceled"):
    """The policy query was cancelled (statement timeout)."""


class IncreaseConnectionPool(RealtimeError, code="IncreaseConnectionPool"):
    """No authorization connection became free in time."""


@dataclass(slots=True)
class Policies:
    """What one channel may do; None means not evaluated yet."""

    broadcast_read: bool | None = None
    broadcast_write: bool | None = None
    presence_read: bool | None = None
    presence_write: bool | None = None


class LatencyHistogram:
    """Cumulative-bucket latency histogram in milliseconds (Prometheus style)."""

    __slots__ = ("buckets", "count", "sum_ms")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # last one is +Inf
        self.count = 0
        self.sum_ms = 0.0

    def observe(self, ms: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        self.count += 1
        self.sum_ms += ms


_SET_CONFIG = (
    "select set_config('role', %s, true), set_config('realtime.topic', %s, true),"
    " set_config('request.jwt.claims', %s, true), set_config('request.jwt.claim.sub', %s, true),"
    " set_config('request.jwt.claim.role', %s, true), set_config('request.headers', %s, true)"
)


class Authorizer:
    """Evaluates realtime.messages policies for one tenant database."""

    def __init__(self, dsn: str, *, pool_size: int = 5, timeout: float = 5.0) -> None:
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True, "application_name": "realtime_authorization"},
            name="realtime_authorization",
            timeout=timeout,
            configure=self._connected,
        )
        self.read_latency = LatencyHistogram()
        self.write_latency = LatencyHistogram()
        self.errors = 0
        # The pool's count of failed connection attempts when it last connected:
        # a higher count now means its latest attempts failed.
        self._failed_attempts_seen = 0

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def _connected(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._failed_attempts_seen = self.pool.get_stats().get("connections_errors", 0)

    @property
    def unreachable(self) -> bool:
        """Whether the pool's latest attempt to connect to the database failed."""
        return self.pool.get_stats().get("connections_errors", 0) > self._failed_attempts_seen

    async def close(self) -> None:
        await self.pool.close()

    async def read(
        self,
        topic: str,
        claims: dict[str, Any],
        headers: dict[str, str],
        extensions: Iterable[str],
        *,
        measure: bool = True,
    ) -> dict[str, bool]:
        """Which of `extensions` the client may read on `topic` (docs/protocol.md §7, read check).

        The one read probe: joins, first tracks and the admin policy tester (admin/rls_tester.py,
        with `measure=False`: its checks stay out of the latency histogram) all call this."""
        probes = {ext: uuid.uuid4() for ext in extensions}
        async with self._connection(topic, self.read_latency if measure else None) as conn:
            # Pipelined: BEGIN, the probes, the settings, the select and
            # ROLLBACK cost one round trip (psycopg's per-statement wait
            # was two thirds of a private join's server time).
            async with conn.pipeline(), conn.transaction(force_rollback=True):
                # Probe rows are inserted before switching role, so any
                # policy can only decide whether they are visible.
                await conn.execute(
                    "insert into realtime.messages (id, topic, extension, inserted_at, updated_at)"
                    " select unnest(%s::uuid[]), %s, unnest(%s::text[]),"
                    " timezone('utc', now()), timezone('utc', now())",
                    (list(probes.values()), topic, list(probes)),
                )
                await self._set_config(conn, topic, claims, headers)
                cur = await conn.execute(
                    "select id from realtime.messages where id = any(%s)", (list(probes.values()),)
                )
            visible = {row[0] for row in await cur.fetchall()}
        return {ext: probe in visible for ext, probe in probes.items()}

    async def write(
        self,
        topic: str,
        claims: dict[str, Any],
        headers: dict[str, str],
        extensions: Iterable[str],
        *,
        measure: bool = True,
    ) -> dict[str, bool]:
        """Which of `extensions` the client may write on `topic` (docs/protocol.md §7, write check).

        The one write probe of a channel's broadcast or track, the REST API's single-topic check
        and the admin policy tester (`measure=False`, as for read())."""
        result: dict[str, bool] = {}
        latency = self.write_latency if measure else None
        async with self._connection(topic, latency) as conn, conn.transaction(force_rollback=True):
            await self._set_config(conn, topic, claims, headers)
            for ext in extensions:
                try:
                    async with conn.transaction():  # a savepoint per extension
                        await conn.execute(
                            "insert into realtime.messages (topic, extension, inserted_at, updated_at)"
                            " values (%s, %s, timezone('utc', now()), timezone('utc', now()))",
                            (topic, ext),
                        )
                    result[ext] = True
                except psycopg.errors.InsufficientPrivilege:
                    result[ext] = False  # 42501: the policy's WITH CHECK said no
        return result

    async def write_topics(
        self, topics: Sequence[str], claims: dict[str, Any], headers: dict[str, str], extension: str
    ) -> dict[str, bool]:
        """Whether the client may write `extension` on each of `topics`: for each topic the
        answer write() gives, in one statement (one round trip, one transaction). A topic
        whose check fails (a policy that raises, a missing partition) is False and counted
        in `errors`, the others are unaffected; a failure of the whole statement raises."""
        if not topics:
            return {}
        role = claims.get("role")
        role = role if isinstance(role, str) else ""
        label = topics[0] if len(topics) == 1 else f"{len(topics)} topics"
        async with self._connection(label, self.write_latency) as conn:
            cur = await conn.execute(
                "select topic, allowed, error from realtime.writable_topics(%s, %s, %s, %s, %s, %s)",
                (
                    list(topics),
                    extension,
                    role,
                    orjson.dumps(claims).decode(),
                    str(claims.get("sub") or ""),
                    orjson.dumps(headers).decode(),
                ),
            )
            rows = await cur.fetchall()
        self.errors += sum(1 for _, _, error in rows if error is not None)
        return {topic: allowed for topic, allowed, _ in rows}

    @contextlib.asynccontextmanager
    async def _connection(
        self, topic: str, latency: LatencyHistogram | None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for one check: its time goes to `latency`, its failures become
        the upstream errors (RT authorization.ex handle_policies_result). No connection because
        the database cannot be reached is UnableToConnectToProject (transient, upstream's
        tenant_database_unavailable); all connections busy is IncreaseConnectionPool."""
        started = time.perf_counter()
        try:
            async with self.pool.connection() as conn:
                try:
                    yield conn
                except psycopg.Error as exc:
                    raise self._error(exc, topic, conn) from None
        except PoolTimeout:
            self.errors += 1
            if self.unreachable:
                raise UnableToConnectToProject(UNREACHABLE_TEXT) from None
            raise IncreaseConnectionPool("Please increase your connection pool size") from None
        finally:
            if latency is not None:
                latency.observe((time.perf_counter() - started) * 1000)

    async def _set_config(
        self, conn: psycopg.AsyncConnection[Any], topic: str, claims: dict[str, Any], headers: dict[str, str]
    ) -> None:
        role = claims.get("role")
        await conn.execute(
            _SET_CONFIG,
            (
                role if isinstance(role, str) else "",
                topic,
                orjson.dumps(claims).decode(),
                str(claims.get("sub") or ""),
                role if isinstance(role, str) else "",
                orjson.dumps(headers).decode(),
            ),
        )

    def _error(self, exc: psycopg.Error, topic: str, conn: psycopg.AsyncConnection[Any]) -> RealtimeError:
        self.errors += 1
        sqlstate = exc.sqlstate or ""
        if conn.broken or sqlstate.startswith("08") or sqlstate in _SERVER_GONE:
            return UnableToConnectToProject(UNREACHABLE_TEXT)
        if isinstance(exc, psycopg.errors.CheckViolation):
            return MissingPartition("Realtime was unable to find the expected messages partition")
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return QueryCanceled(str(exc.diag.message_primary or exc))
        # Any other failure (a bad role, a raising policy) is an RLS policy error. The client is
        # told only upstream's text; the database's own message stays on the error for operators.
        error = Unauthorized(f"You do not have permissions to read from this Channel topic: {topic}")
        error.policy_error = str(exc.diag.message_primary or exc)
        return error
