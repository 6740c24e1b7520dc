"""The `realtime-core` command: keys and migrate, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import MS, ROOT
from psycopg.conninfo import conninfo_to_dict

from realtime_core.jwt import KeySet, verify


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "realtime_core", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keys_are_signed_with_a_secret_generated_once_in_the_data_dir(tmp_path: Path):
    env = {"REALTIME_JWT_SECRET": ""}
    first = run("keys", "--json", "--data-dir", str(tmp_path), env=env)
    assert first.returncode == 0, first.stderr
    secret = (tmp_path / "jwt_secret").read_text().strip()
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o777 == 0o600
    keys = json.loads(first.stdout)
    for role in ("anon", "service_role"):
        claims = verify(keys[role], KeySet(secret=secret), now=time.time())
        assert claims["role"] == role
        assert claims["exp"] > time.time() + 365 * 24 * 3600  # long-lived, like Supabase's demo keys
    again = json.loads(run("keys", "--json", "--data-dir", str(tmp_path), env=env).stdout)
    verify(again["anon"], KeySet(secret=secret), now=time.time())  # the same secret, kept


def test_keys_use_realtime_jwt_secret_when_it_is_set(tmp_path: Path):
    result = run("keys", "--json", "--data-dir", str(tmp_path), env={"REALTIME_JWT_SECRET": "s" * 40})
    keys = json.loads(result.stdout)
    assert verify(keys["anon"], KeySet(secret="s" * 40), now=time.time())["role"] == "anon"
    assert not (tmp_path / "jwt_secret").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "x"}, "PORT must be an integer, got 'x'"),
        (
            {"REALTIME_POSTGRES_CHANGES": "maybe"},
            "REALTIME_POSTGRES_CHANGES must be one of true/false, 1/0, yes/no, on/off, got 'maybe'",
        ),
    ],
)
def test_bad_configuration_stops_with_a_message_naming_the_variable(tmp_path: Path, env, message):
    result = run("keys", "--data-dir", str(tmp_path), env=env)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"realtime-core: {message}\n")


@pytest.mark.pg
def test_migrate_applies_every_migration_once(pg_dsn: str, fresh_database):
    env = {"DATABASE_URL": fresh_database}
    first = run("migrate", env=env)
    assert first.returncode == 0, first.stderr
    applied = first.stdout.strip().removeprefix("applied: ").split(", ")
    assert applied == sorted(p.stem for p in (ROOT / "realtime_core" / "sql").glob("*.sql"))
    second = run("migrate", env=env)
    assert second.stdout.strip() == "applied: nothing, up to date"


ADMIN_ENV = {"API_JWT_SECRET": "", "API_JWT_SECRET_NEXT": ""}


def test_admin_token_needs_an_admin_secret(tmp_path: Path):
    result = run("admin-token", "--data-dir", str(tmp_path), env=ADMIN_ENV)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("realtime-core: no admin secret: set API_JWT_SECRET")
    assert not (tmp_path / "api_jwt_secret").exists()


def test_admin_token_signs_with_the_environment_before_the_generated_secret(tmp_path: Path):
    (tmp_path / "api_jwt_secret").write_text("generated-" + "g" * 40 + "\n")
    from_file = run("admin-token", "--data-dir", str(tmp_path), env=ADMIN_ENV)
    claims = verify(
        from_file.stdout.strip(), KeySet(secret="generated-" + "g" * 40), now=time.time(), require_role_exp=False
    )
    assert claims["sub"] == "realtime-core-admin-token" and "admin" not in claims and "role" not in claims
    assert claims["exp"] > time.time() + 365 * 24 * 3600  # long-lived, like the keys
    explicit = run(
        "admin-token", "--read-only", "--sub", "ci", "--ttl", "60", "--data-dir", str(tmp_path),
        env={**ADMIN_ENV, "API_JWT_SECRET": "explicit-" + "e" * 40},
    )  # fmt: skip
    claims = verify(
        explicit.stdout.strip(), KeySet(secret="explicit-" + "e" * 40), now=time.time(), require_role_exp=False
    )
    assert (claims["sub"], claims["admin"]) == ("ci", "read")
    assert 0 < claims["exp"] - time.time() <= 60


@pytest.mark.parametrize("ttl", ["0", "soon"])
def test_admin_token_refuses_a_bad_ttl(tmp_path: Path, ttl: str):
    result = run("admin-token", "--ttl", ttl, "--data-dir", str(tmp_path), env={"API_JWT_SECRET": "s" * 40})
    assert result.returncode == 2 and "--ttl" in result.stderr and result.stdout == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.pg
def test_up_generates_the_admin_secret_prints_a_token_and_hands_it_to_the_console(fresh_database, tmp_path: Path):
    data = tmp_path / "data"
    env = {
        **os.environ,
        **ADMIN_ENV,
        "DATABASE_URL": fresh_database,
        "REALTIME_DATA_DIR": str(data),
        # Slot names are cluster-wide: this database's own.
        "SLOT_NAME_SUFFIX": conninfo_to_dict(fresh_database)["dbname"],
    }
    env.pop("REALTIME_ADMIN_TOKEN", None)
    up = subprocess.Popen(
        [sys.executable, "-m", "realtime_core", "up", "--port", "0", "--console-port", str(_free_port())],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines: list[str] = []
        assert up.stdout is not None
        deadline = time.monotonic() + 60_000 * MS
        while not any("admin token:" in line for line in lines) and time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line, "".join(lines)  # up ended before printing its admin token
            lines.append(line)
        text = "".join(lines)
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)[1])  # type: ignore[index]
        token = re.search(r"admin token: +(\S+)", text)[1]  # type: ignore[index]
        secret = (data / "api_jwt_secret").read_text().strip()
        assert (data / "api_jwt_secret").stat().st_mode & 0o777 == 0o600
        claims = verify(token, KeySet(secret=secret), now=time.time(), require_role_exp=False)
        assert claims["sub"] == "realtime-core-up" and claims["exp"] > time.time() + 365 * 24 * 3600
        audit = httpx.get(f"http://127.0.0.1:{port}/admin/v1/audit", headers={"Authorization": f"Bearer {token}"})
        assert audit.status_code == 200, audit.text
        [console] = Path(f"/proc/{up.pid}/task/{up.pid}/children").read_text().split()
        console_env = _environ(int(console))
        assert console_env["REALTIME_ADMIN_TOKEN"] == token
        assert console_env["REALTIME_SERVER_URL"] == f"http://127.0.0.1:{port}"
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(30)
        if up.stdout is not None:
            up.stdout.close()


def test_an_unknown_benchmark_is_refused():
    result = run("bench", "nosuch")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_the_attacks_benchmark_is_registered():
    result = run("bench", "attacks", "--help")
    assert result.returncode == 0, result.stderr
    assert "--tricklers" in result.stdout and "--ping-mb" in result.stdout
