"""Tests for realtime_core.config: settings from upstream's environment names, declared once."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from realtime_core import envvars
from realtime_core.config import DEFAULT_LIMITS, IGNORED_ENV, LIMIT_ENV, Limits, Settings, readme_tables
from realtime_core.net.http import HttpLimits
from realtime_core.postgres_changes.settings import CdcSettings

README = Path(__file__).resolve().parent.parent / "README.md"
DECLARED = [var.name for _, var in envvars.declared(Settings)]
INTEGERS = [var.name for _, var in envvars.declared(Settings) if getattr(var.parse, "func", None) is envvars.parse_int]
BOOLEANS = {
    "TENANT_PRESENCE_ENABLED": "presence_enabled",
    "TENANT_PRIVATE_ONLY": "private_only",
    "REALTIME_POSTGRES_CHANGES": "postgres_changes",
    "REALTIME_DB_BROADCAST": "db_broadcast",
    "RUN_JANITOR": "janitor",
}


class TestDefaults:
    def test_an_empty_environment_gives_the_defaults(self):
        settings, defaults = Settings.from_env({}), Settings()
        for name in (
            "host",
            "port",
            "database_url",
            "data_dir",
            "jwt_secret",
            "jwt_jwks",
            "log_level",
            "tenant_name",
            "presence_enabled",
            "private_only",
            "connect_error_backoff_ms",
            "channel_error_backoff_ms",
            "idle_timeout_ms",
            "max_write_buffer_bytes",
        ):
            assert getattr(settings, name) == getattr(defaults, name), name
        assert settings.limits == DEFAULT_LIMITS
        assert settings.limits_set == frozenset()

    def test_upstream_timing_defaults(self):
        """Upstream's CONNECT_ERROR_BACKOFF_MS 2000 and CHANNEL_ERROR_BACKOFF_MS 5000 (config/runtime.exs), and
        Phoenix's 60 s websocket timeout, Cowboy's idle timeout (phoenix/transports/websocket.ex)."""
        settings = Settings.from_env({})
        assert settings.connect_error_backoff_ms == 2_000
        assert settings.channel_error_backoff_ms == 5_000
        assert settings.idle_timeout_ms == 60_000

    def test_replication_ready_timeout_is_upstreams_minute_unless_set(self):
        assert Settings.from_env({}).replication_ready_timeout_ms == 60_000
        env = {"REALTIME_REPLICATION_READY_TIMEOUT_MS": "300"}
        assert Settings.from_env(env).replication_ready_timeout_ms == 300

    def test_from_env_reads_os_environ_by_default(self, monkeypatch):
        monkeypatch.setenv("PORT", "4321")
        assert Settings.from_env().port == 4321

    def test_every_limit_field_has_an_environment_name(self):
        assert sorted(LIMIT_ENV.values()) == sorted(f for f in Limits.__dataclass_fields__)


class TestFromEnv:
    def test_upstream_environment_names(self):
        settings = Settings.from_env(
            {
                "PORT": "4001",
                "REALTIME_HOST": "0.0.0.0",
                "DATABASE_URL": "postgresql://localhost/db",
                "REALTIME_DATA_DIR": "/var/lib/rt",
                "REALTIME_JWT_SECRET": "secret",
                "API_JWT_SECRET": "api",
                "METRICS_JWT_SECRET": "metrics",
                "LOG_LEVEL": "DEBUG",
                "SELF_HOST_TENANT_NAME": "my-tenant",
                "TENANT_PRESENCE_ENABLED": "TRUE",
                "TENANT_PRIVATE_ONLY": "true",
                "CONNECT_ERROR_BACKOFF_MS": "10",
                "CHANNEL_ERROR_BACKOFF_MS": "20",
                "REALTIME_IDLE_TIMEOUT_MS": "30",
                "REALTIME_MAX_WRITE_BUFFER_BYTES": "40",
                "REALTIME_JWT_JWKS": '{"keys": []}',
                "JWT_CLAIM_VALIDATORS": '{"iss": "supabase"}',
            }
        )
        assert settings.port == 4001
        assert settings.host == "0.0.0.0"
        assert settings.database_url == "postgresql://localhost/db"
        assert settings.data_dir == Path("/var/lib/rt")
        assert (settings.jwt_secret, settings.api_jwt_secret, settings.metrics_jwt_secret) == (
            "secret",
            "api",
            "metrics",
        )
        assert settings.log_level == "debug"
        assert settings.tenant_name == "my-tenant"
        assert settings.presence_enabled is True
        assert settings.private_only is True
        assert settings.connect_error_backoff_ms == 10
        assert settings.channel_error_backoff_ms == 20
        assert settings.idle_timeout_ms == 30
        assert settings.max_write_buffer_bytes == 40
        assert settings.jwt_jwks == {"keys": []}
        assert settings.jwt_claim_validators == {"iss": "supabase"}

    @pytest.mark.parametrize(("name", "attr"), sorted(LIMIT_ENV.items()))
    def test_each_limit_is_read_and_recorded_as_set(self, name, attr):
        settings = Settings.from_env({name: "7"})
        assert getattr(settings.limits, attr) == 7
        assert settings.limits_set == frozenset({attr})

    def test_unnamed_limits_keep_their_defaults_and_are_not_set(self):
        settings = Settings.from_env({"TENANT_MAX_EVENTS_PER_SECOND": "50"})
        assert settings.limits.max_joins_per_second == DEFAULT_LIMITS.max_joins_per_second
        assert "max_joins_per_second" not in settings.limits_set

    def test_a_blank_limit_is_not_set(self):
        settings = Settings.from_env({"TENANT_MAX_EVENTS_PER_SECOND": "  "})
        assert settings.limits.max_events_per_second == DEFAULT_LIMITS.max_events_per_second
        assert settings.limits_set == frozenset()

    def test_zero_is_a_valid_limit(self):
        settings = Settings.from_env({"TENANT_MAX_CONCURRENT_USERS": "0"})
        assert settings.limits.max_concurrent_users == 0
        assert settings.limits_set == frozenset({"max_concurrent_users"})

    def test_from_env_does_not_share_limits_with_the_defaults(self):
        Settings.from_env({"TENANT_MAX_EVENTS_PER_SECOND": "1"})
        assert DEFAULT_LIMITS.max_events_per_second == Limits().max_events_per_second

    @pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "Yes", "on", " ON "])
    @pytest.mark.parametrize("name", sorted(BOOLEANS))
    def test_booleans_true(self, name, value):
        assert getattr(Settings.from_env({name: value}), BOOLEANS[name]) is True

    @pytest.mark.parametrize("value", ["false", "False", "0", "no", "NO", "off", "Off"])
    @pytest.mark.parametrize("name", sorted(BOOLEANS))
    def test_booleans_false(self, name, value):
        assert getattr(Settings.from_env({name: value}), BOOLEANS[name]) is False

    @pytest.mark.parametrize("name", sorted(BOOLEANS))
    def test_a_blank_boolean_keeps_its_default(self, name):
        assert getattr(Settings.from_env({name: " "}), BOOLEANS[name]) == getattr(Settings(), BOOLEANS[name])

    def test_zero_turns_postgres_changes_off(self):
        """It used to mean on: only the word false turned it off."""
        assert Settings.from_env({"REALTIME_POSTGRES_CHANGES": "0"}).postgres_changes is False

    def test_postgres_changes_settings(self):
        cdc = Settings.from_env(
            {
                "REALTIME_SLOT_NAME": "my_slot",
                "SLOT_NAME_SUFFIX": "b",
                "REALTIME_PUBLICATION": "my_pub",
                "REALTIME_REPLICATION_MODE": "POLL",
                "REALTIME_POLL_INTERVAL_MS": "250",
                "REALTIME_MAX_RECORD_BYTES": "99",
                "REALTIME_RLS_POOL_SIZE": "3",
                "REALTIME_SLOT_LAG_ALERT_BYTES": "1000",
                "REALTIME_SLOT_LAG_POLICY": "Drop",
            }
        ).cdc
        assert (cdc.slot, cdc.messages_slot) == ("my_slot_b", "supabase_realtime_messages_replication_slot_b")
        assert (cdc.publication, cdc.mode, cdc.poll_interval_ms) == ("my_pub", "poll", 250)
        assert (cdc.max_record_bytes, cdc.pool_size) == (99, 3)
        assert (cdc.slot_lag_alert_bytes, cdc.slot_lag_policy) == (1000, "drop")

    def test_slot_names_without_a_suffix(self):
        cdc = Settings.from_env({}).cdc
        assert (cdc.slot, cdc.messages_slot) == (
            "supabase_realtime_replication_slot",
            "supabase_realtime_messages_replication_slot",
        )

    def test_janitor_and_pools(self):
        settings = Settings.from_env(
            {"DB_POOL_SIZE": "2", "JANITOR_SCHEDULE_TIMER_IN_MS": "1000", "REALTIME_MESSAGE_RETENTION_HOURS": "1"}
        )
        assert (settings.authorization_pool_size, settings.janitor_interval_ms) == (2, 1000)
        assert settings.message_retention_hours == 1

    def test_empty_strings_mean_unset(self):
        settings = Settings.from_env(
            {"DATABASE_URL": "", "REALTIME_JWT_SECRET": "", "SELF_HOST_TENANT_NAME": "", "PORT": ""}
        )
        assert settings.database_url is None
        assert settings.jwt_secret is None
        assert settings.tenant_name == Settings().tenant_name
        assert settings.port == Settings().port

    def test_every_declared_variable_blank_gives_the_defaults(self):
        assert Settings.from_env(dict.fromkeys(DECLARED, "  ")) == Settings()


class TestHttpLimits:
    def test_defaults_are_at_least_cowboys(self):
        """Upstream (Cowboy) answers a request line over 8000 bytes 414, a header value over
        MAX_HEADER_LENGTH (4096) or a 101st header 431, and 408 after 5 s: whatever it accepts, we do."""
        limits = Settings.from_env({}).http_limits
        assert limits == HttpLimits()
        assert limits.max_url_bytes >= 8000
        assert limits.max_header_bytes >= 4096
        assert limits.max_headers == 100
        assert limits.head_timeout >= 5.0

    def test_environment_names(self):
        limits = Settings.from_env(
            {
                "REALTIME_MAX_URL_BYTES": "1000",
                "MAX_HEADER_LENGTH": "2000",
                "REALTIME_MAX_HEADERS": "30",
                "REALTIME_MAX_HEADERS_BYTES": "4000",
                "REALTIME_REQUEST_HEAD_TIMEOUT_MS": "2500",
                "REALTIME_MAX_HTTP_BODY_BYTES": "5000",
            }
        ).http_limits
        assert limits == HttpLimits(
            max_url_bytes=1000,
            max_header_bytes=2000,
            max_headers=30,
            max_headers_bytes=4000,
            head_timeout_ms=2500,
            max_body_bytes=5000,
        )

    def test_a_url_limit_over_the_url_parsers_is_refused(self):
        with pytest.raises(ValueError, match=r"^REALTIME_MAX_URL_BYTES must be at most 65535"):
            Settings.from_env({"REALTIME_MAX_URL_BYTES": "65536"})


class TestDeclarations:
    def test_each_variable_is_declared_once(self):
        assert len(DECLARED) == len(set(DECLARED))

    def test_from_env_reads_exactly_the_declared_variables(self):
        class Recording(dict[str, str]):
            def __init__(self) -> None:
                super().__init__()
                self.read: set[str] = set()

            def get(self, key, default=None):  # type: ignore[override]
                self.read.add(key)
                return super().get(key, default)

            def __getitem__(self, key):
                self.read.add(key)
                return super().__getitem__(key)

        env = Recording()
        Settings.from_env(env)
        assert env.read == set(DECLARED)

    def test_readme_tables_are_generated_from_the_declarations(self):
        """Run scripts/config-readme after changing a declaration."""
        assert envvars.readme_blocks(README.read_text()) == readme_tables()

    def test_the_readme_tables_list_every_declared_variable(self):
        def listed(table: str) -> list[str]:
            return sorted(line.split("`")[1] for line in table.splitlines() if line.startswith("| `"))

        tables = readme_tables()
        ignored = tables.pop("ignored")
        assert listed("".join(tables.values())) == sorted(DECLARED)
        assert listed(ignored) == sorted(IGNORED_ENV)  # upstream's, accepted and ignored

    def test_an_undeclared_field_keeps_its_default_and_a_declared_one_is_read(self):
        fields = {f.name for f, _ in envvars.declared(Settings)}
        assert "max_frame_bytes" not in fields and "flush_chunk" not in fields
        assert {"port", "max_queued_input_bytes", "batch_max_messages", "slot_name", "pool_size"} <= fields

    def test_a_new_setting_is_one_declaration(self):
        @dataclasses.dataclass
        class Tiny:
            size: int = envvars.int_var("TINY_SIZE", 3, "a | b", minimum=1)

        assert envvars.read(Tiny, {"TINY_SIZE": "4"}).size == 4
        assert envvars.read(Tiny, {"TINY_SIZE": ""}).size == 3
        with pytest.raises(ValueError, match=r"^TINY_SIZE must be at least 1, got 0$"):
            envvars.read(Tiny, {"TINY_SIZE": "0"})
        table = envvars.markdown_table(envvars.declared(Tiny), "Meaning").splitlines()
        assert table[2] == "| `TINY_SIZE` | `3` | a \\| b |"

    def test_replace_blocks_rewrites_only_the_named_blocks(self):
        text = "a\n<!-- config:x -->\nold\n<!-- /config:x -->\nb\n<!-- config:y -->\nkeep\n<!-- /config:y -->\n"
        assert envvars.replace_blocks(text, {"x": "new\n"}) == (
            "a\n<!-- config:x -->\nnew\n<!-- /config:x -->\nb\n<!-- config:y -->\nkeep\n<!-- /config:y -->\n"
        )
        with pytest.raises(ValueError, match="z"):
            envvars.replace_blocks(text, {"z": ""})

    def test_cdc_settings_are_a_dataclass_of_declared_fields(self):
        assert {f.name for f in dataclasses.fields(CdcSettings)} - {
            f.name for f, _ in envvars.declared(CdcSettings)
        } == {"health_interval"}


class TestBadValues:
    """A bad value stops the server at start with a message naming the variable."""

    @pytest.mark.parametrize("value", ["maybe", "2", "t", "enabled", "tru e"])
    @pytest.mark.parametrize("name", sorted(BOOLEANS))
    def test_not_a_boolean(self, name, value):
        with pytest.raises(
            ValueError, match=rf"^{name} must be one of true/false, 1/0, yes/no, on/off, got '{value}'$"
        ):
            Settings.from_env({name: value})

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("REALTIME_REPLICATION_MODE", "must be 'stream' or 'poll', got 'streaming'"),
            ("REALTIME_SLOT_LAG_POLICY", "must be 'keep' or 'drop', got 'streaming'"),
            ("LOG_LEVEL", "must be 'debug', 'info', 'warning', 'error', 'critical', got 'streaming'"),
        ],
    )
    def test_not_one_of_the_choices(self, name, message):
        with pytest.raises(ValueError, match=rf"^{name} {message}$"):
            Settings.from_env({name: "Streaming"})

    @pytest.mark.parametrize(
        ("name", "minimum"),
        [
            ("DB_POOL_SIZE", 1),
            ("REALTIME_RLS_POOL_SIZE", 1),
            ("REALTIME_BATCH_MAX_MESSAGES", 1),
            ("JANITOR_SCHEDULE_TIMER_IN_MS", 1000),
        ],
    )
    def test_below_the_minimum(self, name, minimum):
        with pytest.raises(ValueError, match=rf"^{name} must be at least {minimum}, got {minimum - 1}$"):
            Settings.from_env({name: str(minimum - 1)})

    @pytest.mark.parametrize("name", ["REALTIME_JWT_JWKS", "JWT_CLAIM_VALIDATORS"])
    def test_not_json(self, name):
        with pytest.raises(ValueError, match=rf"^{name} must be a JSON object: "):
            Settings.from_env({name: "{keys"})

    @pytest.mark.parametrize("name", ["REALTIME_JWT_JWKS", "JWT_CLAIM_VALIDATORS"])
    def test_json_but_not_an_object(self, name):
        with pytest.raises(ValueError, match=rf"^{name} must be a JSON object, got a JSON list$"):
            Settings.from_env({name: "[1]"})

    @pytest.mark.parametrize("name", INTEGERS)
    def test_not_an_integer(self, name):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer, got 'ten'$"):
            Settings.from_env({name: "ten"})

    def test_a_decimal_is_not_an_integer(self):
        with pytest.raises(ValueError, match=r"^PORT must be an integer, got '4000.5'$"):
            Settings.from_env({"PORT": "4000.5"})

    @pytest.mark.parametrize("name", ["PORT", "CLIENT_PRESENCE_MAX_CALLS"])
    def test_negative(self, name):
        with pytest.raises(ValueError, match=rf"^{name} must not be negative, got -1$"):
            Settings.from_env({name: "-1"})

    def test_the_error_has_no_chained_cause(self):
        with pytest.raises(ValueError) as info:
            Settings.from_env({"PORT": "x"})
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__


class TestJwtSecret:
    def test_the_configured_secret_wins_and_nothing_is_written(self, tmp_path):
        settings = Settings(jwt_secret="configured", data_dir=tmp_path / "data")
        assert settings.resolve_jwt_secret() == "configured"
        assert not (tmp_path / "data").exists()

    def test_a_secret_is_generated_once_and_persisted(self, tmp_path):
        data_dir = tmp_path / "nested" / "data"
        secret = Settings(data_dir=data_dir).resolve_jwt_secret()
        assert len(secret) >= 32
        assert (data_dir / "jwt_secret").read_text() == secret + "\n"
        # A later start (a new Settings) reads the same secret back.
        assert Settings(data_dir=data_dir).resolve_jwt_secret() == secret

    def test_the_secret_file_is_private(self, tmp_path):
        Settings(data_dir=tmp_path).resolve_jwt_secret()
        mode = stat.S_IMODE((tmp_path / "jwt_secret").stat().st_mode)
        assert mode == 0o600

    def test_two_data_dirs_get_different_secrets(self, tmp_path):
        a = Settings(data_dir=tmp_path / "a").resolve_jwt_secret()
        b = Settings(data_dir=tmp_path / "b").resolve_jwt_secret()
        assert a != b

    def test_an_existing_secret_file_is_read_and_stripped(self, tmp_path):
        (tmp_path / "jwt_secret").write_text("  from-file \n")
        assert Settings(data_dir=tmp_path).resolve_jwt_secret() == "from-file"


class TestReplace:
    def test_replace_returns_a_changed_copy(self):
        settings = Settings()
        changed = settings.replace(port=1)
        assert (changed.port, settings.port) == (1, Settings().port)
