"""`realtime-core serve --workers N`: N server processes on one port, supervised.

cli.py starts the database (the embedded one, once) and calls run(). Each worker is a
`realtime-core serve` of its own on the same host and port with REALTIME_REUSE_PORT set
(SO_REUSEPORT: the kernel spreads new connections over the workers) and the parent's
DATABASE_URL and REDIS_URL, through which the workers are one cluster (cluster/broker.py).
Their output is forwarded line by line, prefixed with the worker's number.

The parent is the supervisor: SIGTERM or SIGINT stops every worker (SIGTERM, then SIGKILL
after _STOP_TIMEOUT); a worker that dies is logged with its exit status and started again
(its clients reconnect to the port, landing on the others meanwhile), unless it died within
_STARTUP_GRACE of starting _MAX_QUICK_DEATHS times in a row: then it would only crash again
(a configuration error), and everything stops with its exit status.

Replication (database broadcast, Postgres Changes) runs in worker 0 only, which publishes
what it streams to the cluster: a replication slot has one reader."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time

from ..config import Settings

__all__ = ["WORKERS_NEED_REDIS", "run"]

log = logging.getLogger(__name__)

WORKERS_NEED_REDIS = (
    "--workers above 1 needs REDIS_URL (or --redis URL): the workers share channels, presence and counts through Redis"
)
_STOP_TIMEOUT = 10.0
_STARTUP_GRACE = 10.0
_MAX_QUICK_DEATHS = 3
_RESTART_PAUSE = 1.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _Worker:
    __slots__ = ("index", "process", "quick_deaths", "ready", "started_at")

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.quick_deaths = 0
        self.ready = asyncio.Event()


async def run(settings: Settings, workers: int, announce: str) -> int:
    """Run `workers` server processes for `settings` (with database_url and redis_url set) until
    SIGTERM or SIGINT; print `announce` (formatted with the port) once all listen. Returns the
    exit status."""
    assert settings.database_url and settings.redis_url
    # Secrets generated into the data dir on a first start: made here, once, which the workers then
    # read (started together, each would make its own and all but one would fail or disagree).
    settings.resolve_jwt_secret()
    settings.resolve_db_enc_key()
    # Port 0: choose one now, held (bound with SO_REUSEPORT, not listening, so it takes no
    # connections) until the workers listen on it.
    holder = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((settings.host, settings.port))
    port = holder.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REALTIME_CLUSTER": settings.cluster_name,
        "REALTIME_REUSE_PORT": "true",
        "REALTIME_HOST": settings.host,
        "PORT": str(port),
        "REALTIME_DATA_DIR": str(settings.data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = [_Worker(i) for i in range(workers)]
    supervisors = [asyncio.create_task(_supervise(w, env, stop)) for w in pool]

    async def all_ready() -> None:
        for worker in pool:
            await worker.ready.wait()

    ready = asyncio.create_task(all_ready())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)
        holder.close()
        if ready.done():
            pids = " ".join(str(w.process.pid) for w in pool if w.process is not None)
            print(announce.format(port=port) + f" with {workers} workers (pids {pids})", flush=True)
        # The supervisors return once `stop` is set: by a signal, or by a worker that keeps dying.
        statuses = await asyncio.gather(*supervisors)
    finally:
        holder.close()
        ready.cancel()
        stopping.cancel()
    return max(statuses, default=0)


async def _supervise(worker: _Worker, env: dict[str, str], stop: asyncio.Event) -> int:
    """Keep `worker` running until `stop`; its exit status when it stops for good."""
    # Every worker runs the tenants' services; one of the cluster's processes at a time streams
    # each tenant's replication slots (cluster/leader.py elects it).
    worker_env = dict(env)
    while True:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "realtime_core",
            "serve",
            env=worker_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the parent, which stops the workers
            preexec_fn=_die_with_parent,
        )
        worker.process = process
        worker.started_at = time.monotonic()
        forwarding = asyncio.create_task(_forward(worker, process))
        waiting = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiting, stopping], return_when="FIRST_COMPLETED")
        if not waiting.done():
            status = await _terminate(process)
            await forwarding
            return status
        stopping.cancel()
        await forwarding
        status = process.returncode or 0
        if stop.is_set():
            return status
        quick = time.monotonic() - worker.started_at < _STARTUP_GRACE
        worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
        log.error("worker %d (pid %d) exited with status %d", worker.index, process.pid, status)
        if worker.quick_deaths >= _MAX_QUICK_DEATHS:
            log.error(
                "worker %d died %d times right after starting: stopping them all", worker.index, _MAX_QUICK_DEATHS
            )
            stop.set()
            return status if status > 0 else 1  # the parent's exit status: a failure, even after a signal
        await asyncio.sleep(_RESTART_PAUSE)
        if stop.is_set():
            return status
        log.info("restarting worker %d", worker.index)


def _die_with_parent() -> None:
    """In the forked worker: SIGTERM when the parent dies, even by SIGKILL (prctl(2))."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def _forward(worker: _Worker, process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    prefix = f"[worker {worker.index}] "
    async for line in process.stdout:
        text = line.decode(errors="replace")
        if "listening on" in text:
            worker.ready.set()
        sys.stdout.write(prefix + text)
        sys.stdout.flush()


async def _terminate(process: asyncio.subprocess.Process) -> int:
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        return await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()
