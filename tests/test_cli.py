"""The `realtime-core` command: keys and migrate, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

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


def test_an_unknown_benchmark_is_refused():
    result = run("bench", "nosuch")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_the_attacks_benchmark_is_registered():
    result = run("bench", "attacks", "--help")
    assert result.returncode == 0, result.stderr
    assert "--tricklers" in result.stdout and "--ping-mb" in result.stdout
