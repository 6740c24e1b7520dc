"""The `realtime-core` command: serve, up, keys, admin-token, migrate, console, bench.

`serve` starts the embedded PostgreSQL (when DATABASE_URL is unset) from the
main thread, so that it dies with this process (embedded_pg.py), then runs the
App on uvloop when it is installed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .cluster import RedisUnavailable
from .cluster.workers import WORKERS_NEED_REDIS
from .config import IGNORED_ENV, Settings, ignored_env
from .jwt import sign
from .secret_box import SecretBoxError

__all__ = ["main"]

log = logging.getLogger("realtime_core")

# The keys printed by `keys` last as long as Supabase's self-hosting demo keys.
KEY_LIFETIME_SECONDS = 10 * 365 * 24 * 3600


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs every opened connection at INFO: too much at 10k sockets.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))


def _keys(settings: Settings) -> dict[str, str]:
    secret = settings.resolve_jwt_secret()
    now = int(time.time())
    return {
        role: sign({"role": role, "iss": "realtime-core", "iat": now, "exp": now + KEY_LIFETIME_SECONDS}, secret)
        for role in ("anon", "service_role")
    }


def _admin_token(secret: str, *, sub: str, read_only: bool = False, ttl: int = KEY_LIFETIME_SECONDS) -> str:
    """An admin token (tenant API, /admin/v1) signed with `secret`: no role (client roles are refused)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "iss": "realtime-core", "iat": now, "exp": now + ttl}
    if read_only:
        claims["admin"] = "read"
    return sign(claims, secret)


def _announce(settings: Settings) -> None:
    """Log, once at start, the upstream variables ignored here and whether the admin APIs are open."""
    for name in ignored_env(os.environ):
        log.debug("%s is set and ignored: %s", name, IGNORED_ENV[name])
    if settings.resolve_api_jwt_secret() is None and not settings.api_jwt_secret_next:
        log.warning(
            "the tenant API and /admin/v1 are closed (every request 403): API_JWT_SECRET is unset and %s holds no"
            " generated one (`realtime-core up` generates it)",
            settings.data_dir / "api_jwt_secret",
        )


def _settings(args: argparse.Namespace) -> Settings:
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # bad configuration: its message names the variable; no traceback
        raise SystemExit(f"realtime-core: {exc}") from None
    changes: dict[str, object] = {}
    if getattr(args, "host", None):
        changes["host"] = args.host
    if getattr(args, "port", None) is not None:
        changes["port"] = args.port
    if getattr(args, "data_dir", None):
        changes["data_dir"] = Path(args.data_dir)
    if getattr(args, "redis", None):
        changes["redis_url"] = args.redis
    return settings.replace(**changes) if changes else settings


@contextlib.contextmanager
def _database(settings: Settings):  # type: ignore[no-untyped-def]
    """Yield settings with a database_url, starting the embedded PostgreSQL if needed."""
    if settings.database_url:
        yield settings
        return
    from .embedded_pg import EmbeddedPostgres

    pg = EmbeddedPostgres(settings.data_dir.resolve())
    dsn = pg.start()
    log.info("embedded PostgreSQL ready: %s", dsn)
    try:
        yield settings.replace(database_url=dsn)
    finally:
        pg.stop()


def _run(coro):  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _tune_gc() -> None:
    """Keep the cyclic GC off the fan-out path.

    A fan-out to S sockets allocates S small lists per tick; with CPython's
    default thresholds (700, 10, 10) that ran a full collection every few
    dozen messages, 33–36 ms each with 1000 connections: the p99 latency of
    the fan-out benchmark. Objects alive after start-up are frozen (never
    scanned again) and collections run far less often; the server creates
    few reference cycles, so memory is not held longer in practice."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def _serve(settings: Settings, on_ready=None) -> None:  # type: ignore[no-untyped-def]
    from . import admin, rest_api
    from .app import App

    app = App(settings)
    rest_api.register(app, app.http)
    admin.register(app, app.http)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await app.start()
    except (SecretBoxError, RedisUnavailable) as exc:  # a configuration error (DB_ENC_KEY, REDIS_URL): no traceback
        await app.stop()
        raise SystemExit(f"realtime-core: {exc}") from None
    except Exception:
        await app.stop()
        raise
    _tune_gc()
    url = f"http://{settings.host}:{port}"
    print(_listening(settings.host, port), flush=True)
    print(f"  websocket: ws://{settings.host}:{port}/socket  (supabase-js: {url}/realtime/v1)", flush=True)
    if on_ready is not None:
        on_ready(port)
    await stop.wait()
    log.info("shutting down")
    await app.stop()


def _listening(host: str, port: int | str) -> str:
    return f"realtime-core {__version__} listening on http://{host}:{port}"


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings.log_level)
    if args.workers > 1 and not settings.redis_url:
        print(f"realtime-core: {WORKERS_NEED_REDIS}", file=sys.stderr)
        return 2
    _announce(settings)
    embedded = settings.database_url is None
    with _database(settings) as settings:
        if embedded:
            print(f"  database:  {settings.database_url}", flush=True)
        if args.workers > 1:
            from .cluster import workers

            return _run(workers.run(settings, args.workers, _listening(settings.host, "{port}")))
        _run(_serve(settings))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    keys = _keys(_settings(args))
    if args.json:
        import orjson

        print(orjson.dumps(keys).decode())
    else:
        print(f"anon key:         {keys['anon']}")
        print(f"service_role key: {keys['service_role']}")
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    secret = settings.resolve_api_jwt_secret()
    if secret is None:
        print(
            "realtime-core: no admin secret: set API_JWT_SECRET, or run `realtime-core up` once to generate one into"
            f" {settings.data_dir}",
            file=sys.stderr,
        )
        return 1
    print(_admin_token(secret, sub=args.sub, read_only=args.read_only, ttl=args.ttl))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings.log_level)

    async def run(dsn: str) -> list[str]:
        from . import db

        pool = await db.open_pool(dsn)
        try:
            async with pool.connection() as conn:
                return await db.migrate(conn)
        finally:
            await pool.close()

    with _database(settings) as settings:
        applied = _run(run(settings.database_url or ""))
    print("applied: " + (", ".join(applied) if applied else "nothing, up to date"))
    return 0


def _console_command(host: str, port: int) -> list[str] | None:
    if shutil.which("streamlit") is None:
        with contextlib.suppress(ImportError):
            import streamlit  # noqa: F401

            return [sys.executable, "-m", "streamlit", "run", *_console_args(host, port)]
        return None
    return ["streamlit", "run", *_console_args(host, port)]


def _console_args(host: str, port: int) -> list[str]:
    app_path = Path(__file__).resolve().parent.parent / "console" / "app.py"
    return [
        str(app_path),
        "--server.address",
        host,  # the server's host: a local console is not published on every interface
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",  # an operator's console: no "Deploy" button or developer menu
    ]


def cmd_console(args: argparse.Namespace) -> int:
    command = _console_command(args.console_host, args.console_port)
    if command is None:
        print("The console needs the console extra: pip install '.[console]' in the source tree", file=sys.stderr)
        return 1
    env = {**os.environ, "REALTIME_SERVER_URL": args.server}
    # Become Streamlit: a signal that stops `realtime-core console` stops the console itself
    # (a child would outlive a SIGTERM to this process).
    os.execvpe(command[0], command, env)


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings.log_level)
    keys = _keys(settings)
    # API_JWT_SECRET, else the one generated into the data dir (now, on the first `up`).
    admin_secret = settings.resolve_api_jwt_secret(create=True)
    assert admin_secret is not None  # create=True
    admin_token = _admin_token(admin_secret, sub="realtime-core-up")
    _announce(settings)
    console: subprocess.Popen[bytes] | None = None

    def on_ready(port: int) -> None:
        nonlocal console
        server_url = f"http://{settings.host}:{port}"
        command = _console_command(settings.host, args.console_port)
        if command is None:
            print("  console:   not started (it needs the console extra: pip install '.[console]')", flush=True)
        else:
            env = {**os.environ, "REALTIME_SERVER_URL": server_url, "REALTIME_ADMIN_TOKEN": admin_token}
            console = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
            print(f"  console:   http://{settings.host}:{args.console_port}", flush=True)
        print(f"  anon key:         {keys['anon']}", flush=True)
        print(f"  service_role key: {keys['service_role']}", flush=True)
        print(f"  admin token:      {admin_token}", flush=True)

    try:
        with _database(settings) as settings:
            _run(_serve(settings, on_ready))
    finally:
        if console is not None:
            console.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                console.wait(5)
    return 0


BENCHMARKS = {
    "attacks": "bench.attacks",
    "cluster": "bench.cluster",
    "fanout": "bench.fanout",
    "postgres-changes": "bench.postgres_changes",
    "private": "bench.private",
}


def _checkout() -> Path | None:
    """The source checkout this package runs from, or None when it is installed: the wheel holds
    no bench/ (a top-level `bench` package would squat a generic name in site-packages)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "bench" / "__init__.py").is_file() else None


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    root = _checkout()
    if root is None:
        print(
            "realtime-core bench runs from a source checkout (bench/ beside realtime_core/);"
            " this realtime-core is installed without it.",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:  # the console script's sys.path holds its bin/ folder, not the checkout
        sys.path.insert(0, str(root))
    module = importlib.import_module(BENCHMARKS[args.name])
    return int(module.main(args.rest))


def _at_least_one(unit: str) -> Callable[[str], int]:
    """An argparse type: a whole number of `unit` ("" for a plain count), 1 or more."""
    what = f"a whole number of {unit}" if unit else "a whole number"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"at least 1{' ' + unit.rstrip('s') if unit else ''}, got {value}")
        return value

    return parse


_seconds = _at_least_one("seconds")
_positive = _at_least_one("")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realtime-core", description="Supabase Realtime compatible server")
    parser.add_argument("--version", action="version", version=f"realtime-core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def server_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="port (default 4000; 0 picks one)")
        p.add_argument("--data-dir", default=None, help="REALTIME_DATA_DIR (default ./.realtime)")

    p = sub.add_parser("serve", help="run the server")
    server_args(p)
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT); above 1 needs REDIS_URL (default 1)",
    )
    p.add_argument("--redis", default=None, metavar="URL", help="REDIS_URL: join a cluster of processes on Redis")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="run the server and the console together")
    server_args(p)
    p.add_argument("--console-port", type=int, default=8501)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("keys", help="print anon and service_role JWTs for the default tenant")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("admin-token", help="print an admin token (tenant API, /admin/v1) signed with API_JWT_SECRET")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--read-only", action="store_true", help='the token may only GET (claim "admin": "read")')
    p.add_argument("--sub", default="realtime-core-admin-token", help="its `sub` claim, shown in the audit log")
    p.add_argument("--ttl", type=_seconds, default=KEY_LIFETIME_SECONDS, help="seconds it is valid (default 10 years)")
    p.set_defaults(func=cmd_admin_token)

    p = sub.add_parser("migrate", help="apply the SQL migrations and exit")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("console", help="run the Streamlit console against a running server")
    p.add_argument("--server", default="http://127.0.0.1:4000")
    p.add_argument("--console-host", default="127.0.0.1")
    p.add_argument("--console-port", type=int, default=8501)
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("bench", help="run a benchmark (see bench/)")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args) or 0)
