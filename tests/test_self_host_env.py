"""Upstream's self-hosting environment: DB_* naming the database, SEED_SELF_HOST seeding the
default tenant as Supabase's compose stack expects, upstream variables accepted and ignored, and
the admin secret of `serve` (environment, else the file `up` generates, else closed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import psycopg
import pytest
from conftest import JWT_SECRET, start_server
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm
from psycopg.conninfo import conninfo_to_dict
from test_cli import run
from wire import V2, RawClient, connect_refused

from realtime_core.config import IGNORED_ENV, Settings
from realtime_core.secret_box import SecretBox

PARTS = {
    "DB_HOST": "db.internal",
    "DB_PORT": "6543",
    "DB_USER": "supabase_admin",
    "DB_PASSWORD": "pw",
    "DB_NAME": "app",
}

# The realtime service's environment in Supabase's docker/docker-compose.yml, its ${...} filled in.
COMPOSE_ENV = {
    "PORT": "4000",
    "DB_AFTER_CONNECT_QUERY": "SET search_path TO _realtime",
    "DB_ENC_KEY": "supabaserealtime",
    "SECRET_KEY_BASE": "UpNVntn3cDxHJpq99YMc1T1AQgQpc8kfYTuRgBiYa15BLrx8etQoXz3gZv1/u2oq",
    "ERL_AFLAGS": "-proto_dist inet_tcp",
    "DNS_NODES": "''",
    "RLIMIT_NOFILE": "10000",
    "APP_NAME": "realtime",
    "SEED_SELF_HOST": "true",
    "RUN_JANITOR": "true",
    "DISABLE_HEALTHCHECK_LOGGING": "true",
}
COMPOSE_IGNORED = [
    "SECRET_KEY_BASE",
    "ERL_AFLAGS",
    "DNS_NODES",
    "APP_NAME",
    "RLIMIT_NOFILE",
    "DB_AFTER_CONNECT_QUERY",
    "DISABLE_HEALTHCHECK_LOGGING",
]
PROJECT_SECRET = "project-jwt-secret-" + "p" * 32  # the compose stack's JWT_SECRET
AWKWARD_PASSWORD = "p@ss w'o\\rd=x /?#%&"


# DB_* → the database ---------------------------------------------------------------------------


# Any text an environment variable can hold, but blank (a blank variable counts as unset).
PASSWORDS = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1).filter(
    str.strip
)


@given(PASSWORDS)
def test_the_db_parts_make_a_conninfo_whatever_the_password(password: str) -> None:
    url = Settings.from_env({**PARTS, "DB_PASSWORD": password}).database_url
    assert conninfo_to_dict(url or "") == {
        "host": "db.internal",
        "port": "6543",
        "user": "supabase_admin",
        "password": password,
        "dbname": "app",
    }


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        (["DB_PORT"], "DB_PORT unset"),
        (["DB_PASSWORD", "DB_NAME"], "DB_PASSWORD and DB_NAME unset"),
        (["DB_HOST", "DB_USER", "DB_NAME"], "DB_HOST, DB_USER and DB_NAME unset"),
    ],
)
def test_a_partial_set_of_db_parts_is_refused_naming_what_is_missing(unset: list[str], named: str) -> None:
    env = {k: v for k, v in PARTS.items() if k not in unset}
    with pytest.raises(ValueError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(named + ": DB_HOST, DB_PORT, DB_USER, DB_PASSWORD and DB_NAME")


def test_the_cli_stops_on_a_partial_set_without_showing_the_password(tmp_path: Path) -> None:
    result = run("keys", "--data-dir", str(tmp_path), env={"DB_HOST": "db", "DB_PASSWORD": AWKWARD_PASSWORD})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("realtime-core: DB_PORT, DB_USER and DB_NAME unset")
    assert AWKWARD_PASSWORD not in result.stderr


def test_database_url_wins_and_no_db_parts_means_no_url() -> None:
    assert Settings.from_env({**PARTS, "DATABASE_URL": "postgresql:///other"}).database_url == "postgresql:///other"
    assert Settings.from_env({}).database_url is None  # the embedded PostgreSQL
    assert Settings.from_env({"DB_POOL_SIZE": "3"}).database_url is None  # not one of the five


@pytest.mark.parametrize("port", ["x", "0", "70000"])
def test_db_port_must_be_a_port(port: str) -> None:
    with pytest.raises(ValueError, match=r"^DB_PORT must be"):
        Settings.from_env({**PARTS, "DB_PORT": port})


def test_db_ssl_requires_tls_and_a_ca_file_verifies_the_server() -> None:
    plain = conninfo_to_dict(Settings.from_env(PARTS).database_url or "")
    assert "sslmode" not in plain
    required = conninfo_to_dict(Settings.from_env({**PARTS, "DB_SSL": "true"}).database_url or "")
    assert required["sslmode"] == "require"
    verified = Settings.from_env({**PARTS, "DB_SSL": "true", "DB_SSL_CA_CERT": "/etc/ca.pem"}).database_url
    assert {k: conninfo_to_dict(verified or "")[k] for k in ("sslmode", "sslrootcert")} == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem",
    }


def test_the_password_is_not_in_the_settings_repr() -> None:
    settings = Settings.from_env({**PARTS, "DB_PASSWORD": AWKWARD_PASSWORD})
    assert AWKWARD_PASSWORD not in repr(settings)


# The default tenant's secret, JWKS and extensions --------------------------------------------


def test_without_seed_self_host_the_api_variables_do_not_reach_the_default_tenant(tmp_path: Path) -> None:
    env = {"API_JWT_SECRET": PROJECT_SECRET, "API_JWT_JWKS": '{"keys": []}', "REALTIME_DATA_DIR": str(tmp_path)}
    settings = Settings.from_env(env)
    assert settings.resolve_jwt_secret() == (tmp_path / "jwt_secret").read_text().strip()
    assert settings.resolve_jwt_jwks() is None
    assert settings.self_host_extensions() is None


def test_seed_self_host_takes_the_api_variables_unless_the_realtime_ones_are_set(tmp_path: Path) -> None:
    seeded = Settings.from_env({"SEED_SELF_HOST": "true", "API_JWT_SECRET": PROJECT_SECRET, "API_JWT_JWKS": '{"a": 1}'})
    assert (seeded.resolve_jwt_secret(), seeded.resolve_jwt_jwks()) == (PROJECT_SECRET, {"a": 1})
    own = seeded.replace(jwt_secret="own-secret", jwt_jwks={"b": 2})
    assert (own.resolve_jwt_secret(), own.resolve_jwt_jwks()) == ("own-secret", {"b": 2})
    # Neither secret: the generated one, never upstream's fixed fallback.
    bare = Settings.from_env({"SEED_SELF_HOST": "true", "REALTIME_DATA_DIR": str(tmp_path)})
    assert bare.resolve_jwt_secret() == (tmp_path / "jwt_secret").read_text().strip()


def test_api_jwt_jwks_must_be_a_json_object() -> None:
    with pytest.raises(ValueError, match=r"^API_JWT_JWKS must be a JSON object"):
        Settings.from_env({"API_JWT_JWKS": "[1]"})


def test_the_ignored_variables_are_upstreams_and_never_declared_here() -> None:
    from realtime_core import envvars

    declared = {var.name for _, var in envvars.declared(Settings)}
    assert not declared & set(IGNORED_ENV)
    assert set(COMPOSE_IGNORED) <= set(IGNORED_ENV)


# Against a running server ---------------------------------------------------------------------


def _db_parts(dsn: str, password: str) -> dict[str, str]:
    params = conninfo_to_dict(dsn)
    return {
        "DATABASE_URL": "",
        "DB_HOST": str(params.get("host", "localhost")),
        "DB_PORT": str(params.get("port", "5432")),
        "DB_USER": str(params.get("user", "postgres")),
        # The embedded PostgreSQL trusts local connections: any password is taken (and must be escaped).
        "DB_PASSWORD": password,
        "DB_NAME": str(params["dbname"]),
    }


async def _joins(server: Any, token: str) -> None:
    """A socket with `token` connects and joins a channel of the default tenant."""
    async with await RawClient.open(server.socket_url(token, V2)) as client:
        await client.join("realtime:seeded")


async def _refused(server: Any, token: str) -> None:
    """The default tenant refuses a socket with `token`: it is not signed with the tenant's secret."""
    refused = await connect_refused(server.socket_url(token, V2))
    assert (refused.status, refused.json()) == (401, {"error": "Failed to validate JWT signature"})


def _token(secret: Any, algorithm: str = "HS256", **headers: Any) -> str:
    claims = {"role": "anon", "exp": int(time.time()) + 3600}
    return pyjwt.encode(claims, secret, algorithm=algorithm, headers=headers or None)


def _default_tenant(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("select jwt_secret, jwt_jwks, extensions from _realtime.tenants where external_id = 'realtime-dev'")
        row = cur.fetchone()
    assert row is not None
    return row


@pytest.mark.pg
async def test_the_compose_environment_seeds_the_default_tenant(fresh_database: str, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "project-rsa", "alg": "RS256"}
    env = {
        **COMPOSE_ENV,
        **_db_parts(fresh_database, AWKWARD_PASSWORD),
        "API_JWT_SECRET": PROJECT_SECRET,
        "METRICS_JWT_SECRET": PROJECT_SECRET,
        "API_JWT_JWKS": json.dumps({"keys": [jwk]}),
        "REALTIME_JWT_SECRET": "",  # the test servers' own; unset, as in the compose file
        "REALTIME_DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "debug",
    }
    server = start_server(fresh_database, env)
    try:
        await _joins(server, _token(PROJECT_SECRET))
        await _joins(server, _token(key, "RS256", kid="project-rsa"))
        await _refused(server, _token(JWT_SECRET))
        # the compose healthcheck's replacement answers
        assert httpx.get(f"{server.http_url}/api/ping").status_code == 200
    finally:
        server.stop()
    log = server.log()
    for name in COMPOSE_IGNORED:
        assert sum(f"{name} is set and ignored: " in line for line in server.output) == 1, log
    assert AWKWARD_PASSWORD not in log
    row = _default_tenant(fresh_database)
    assert row["jwt_jwks"] == {"keys": [jwk]}
    [extension] = row["extensions"]
    settings = extension["settings"]
    assert extension["type"] == "postgres_cdc_rls"
    assert {k: settings[k] for k in ("db_host", "db_port", "db_user", "db_name")} == {
        k.lower(): env[k] for k in ("DB_HOST", "DB_PORT", "DB_USER", "DB_NAME")
    }
    assert (settings["region"], settings["poll_interval_ms"], settings["poll_max_record_bytes"]) == (
        "us-east-1",
        100,
        1_048_576,
    )
    assert settings["ssl_enforced"] is False
    assert settings["db_password"].startswith("enc:v1:") and AWKWARD_PASSWORD not in str(row)
    assert SecretBox(COMPOSE_ENV["DB_ENC_KEY"]).open(settings["db_password"]) == AWKWARD_PASSWORD

    # Seeded again at every start: REALTIME_JWT_SECRET, when set, wins over API_JWT_SECRET.
    server = start_server(fresh_database, {**env, "REALTIME_JWT_SECRET": "realtime-own-" + "r" * 32})
    try:
        await _joins(server, _token("realtime-own-" + "r" * 32))
        await _refused(server, _token(PROJECT_SECRET))
    finally:
        server.stop()
        server.drop_slots()


@pytest.mark.pg
async def test_without_seed_self_host_the_default_tenant_is_created_as_always(
    fresh_database: str, tmp_path: Path
) -> None:
    env = {"API_JWT_SECRET": PROJECT_SECRET, "REALTIME_DATA_DIR": str(tmp_path)}
    server = start_server(fresh_database, env)
    try:
        await _joins(server, _token(JWT_SECRET))
        await _refused(server, _token(PROJECT_SECRET))
    finally:
        server.stop()
        server.drop_slots()
    assert _default_tenant(fresh_database)["extensions"] == []


# The admin secret of `serve` ------------------------------------------------------------------


def _audit(server: Any, secret: str) -> int:
    token = pyjwt.encode({"sub": "t", "iat": int(time.time())}, secret, algorithm="HS256")
    return httpx.get(f"{server.http_url}/admin/v1/audit", headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.pg
def test_serve_takes_the_admin_secret_from_the_environment_then_the_data_dir_else_stays_closed(
    fresh_database: str, tmp_path: Path
) -> None:
    env = {"API_JWT_SECRET": "", "REALTIME_DATA_DIR": str(tmp_path)}
    closed = start_server(fresh_database, env)
    try:
        assert _audit(closed, "any-secret-" + "a" * 32) == 403
    finally:
        closed.stop()
    [line] = [line for line in closed.output if "/admin/v1 are closed" in line]
    assert "WARNING" in line and "API_JWT_SECRET is unset" in line
    assert not (tmp_path / "api_jwt_secret").exists()  # serve never creates it

    generated = Settings(data_dir=tmp_path).resolve_api_jwt_secret(create=True)  # as `up` does
    assert generated
    from_file = start_server(fresh_database, env)
    try:
        assert _audit(from_file, generated) == 200
    finally:
        from_file.stop()
    assert not any("are closed" in line for line in from_file.output)

    explicit = "explicit-admin-" + "e" * 32
    from_env = start_server(fresh_database, {**env, "API_JWT_SECRET": explicit})
    try:
        assert _audit(from_env, explicit) == 200
        assert _audit(from_env, generated) == 403  # the environment wins over the file
    finally:
        from_env.stop()
        from_env.drop_slots()
