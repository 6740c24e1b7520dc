"""Tests for realtime_core.config: settings from upstream's environment names (spec §9.1)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from realtime_core.config import DEFAULT_LIMITS, LIMIT_ENV, Limits, Settings
from realtime_core.net.http import HttpLimits


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
        """spec §1.4, §3.3 and §1.5: CONNECT 2000 ms, CHANNEL 5000 ms backoffs; 60 s idle timeout."""
        settings = Settings.from_env({})
        assert settings.connect_error_backoff_ms == 2_000
        assert settings.channel_error_backoff_ms == 5_000
        assert settings.idle_timeout_ms == 60_000

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

    @pytest.mark.parametrize("value", ["", "false", "yes", "1"])
    def test_flags_are_true_only_for_the_word_true(self, value):
        settings = Settings.from_env({"TENANT_PRESENCE_ENABLED": value, "TENANT_PRIVATE_ONLY": value})
        assert (settings.presence_enabled, settings.private_only) == (False, False)

    def test_empty_strings_mean_unset(self):
        settings = Settings.from_env(
            {"DATABASE_URL": "", "REALTIME_JWT_SECRET": "", "SELF_HOST_TENANT_NAME": "", "PORT": ""}
        )
        assert settings.database_url is None
        assert settings.jwt_secret is None
        assert settings.tenant_name == Settings().tenant_name
        assert settings.port == Settings().port


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
            head_timeout=2.5,
            max_body_bytes=5000,
        )

    def test_a_url_limit_over_the_url_parsers_is_refused(self):
        with pytest.raises(ValueError, match=r"^REALTIME_MAX_URL_BYTES must be at most 65535"):
            Settings.from_env({"REALTIME_MAX_URL_BYTES": "65536"})


class TestBadIntegers:
    """A bad number stops the server at start with a message naming the variable."""

    @pytest.mark.parametrize("name", ["PORT", "TENANT_MAX_EVENTS_PER_SECOND", "CHANNEL_ERROR_BACKOFF_MS"])
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
