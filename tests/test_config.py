"""Settings: defaults, one clear line per bad variable, strong secrets in production."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pluct_server.app.dev_secrets import with_dev_secrets
from pluct_server.values.settings import ConfigError, load_settings, read_environment

STRONG = {
    "ADMIN_SECRET": "0123456789abcdefghijklmnopqrstuvwxyz-admin",
    "JWT_SECRET": "0123456789abcdefghijklmnopqrstuvwxyz-jwt",
    "WEBHOOK_SECRET": "0123456789abcdefghijklmnopqrstuvwxyz-hook",
}


def test_defaults_without_any_variable():
    settings = load_settings({})

    assert settings.database_url is None
    assert not settings.production
    assert settings.grpc_listen == "127.0.0.1:50051"
    assert settings.http_listen == "127.0.0.1:8787"
    assert settings.signup_allowance == 10
    assert settings.token_ttl == timedelta(seconds=60)


def test_production_with_strong_secrets_starts():
    settings = load_settings({"DATABASE_URL": "postgresql://db/pluct", **STRONG})

    assert settings.production
    assert settings.jwt_secret == STRONG["JWT_SECRET"]


@pytest.mark.parametrize("name", sorted(STRONG))
@pytest.mark.parametrize("value", ["", "too-short", "ab" * 20])
def test_production_refuses_missing_or_weak_secrets(name, value):
    environ = {"DATABASE_URL": "postgresql://db/pluct", **STRONG, name: value}

    with pytest.raises(ConfigError) as raised:
        load_settings(environ)

    message = str(raised.value)
    assert name in message
    assert "\n" not in message
    if value:
        assert value not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PLUCT_GRPC_LISTEN", "8787"),
        ("PLUCT_HTTP_LISTEN", "host:port"),
        ("PLUCT_HTTP_LISTEN", "127.0.0.1:70000"),
        ("PLUCT_SIGNUP_ALLOWANCE", "ten"),
        ("PLUCT_SIGNUP_ALLOWANCE", "-1"),
        ("PLUCT_TOKEN_TTL_SECONDS", "0"),
        ("PLUCT_DB_POOL_SIZE", "0"),
        ("PLUCT_SPEND_BATCHES_IN_FLIGHT", "0"),
        ("PLUCT_SPEND_BATCHES_IN_FLIGHT", "17"),
        ("PLUCT_LOG_LEVEL", "LOUD"),
        ("PLUCT_EVENT_LOOP", "trio"),
        ("DATABASE_URL", "mysql://db"),
    ],
)
def test_invalid_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as raised:
        load_settings({name: value, **STRONG})

    assert str(raised.value).startswith(name)


def test_spend_batches_run_one_at_a_time_unless_told_otherwise():
    assert load_settings(STRONG).spend_batches_in_flight == 1
    told = load_settings({"PLUCT_SPEND_BATCHES_IN_FLIGHT": "3", **STRONG})
    assert told.spend_batches_in_flight == 3


def test_workers_run_on_uvloop_unless_told_asyncio():
    assert load_settings(STRONG).event_loop == "uvloop"
    assert load_settings({"PLUCT_EVENT_LOOP": "asyncio", **STRONG}).event_loop == "asyncio"


def test_real_environment_wins_over_dotenv(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("PLUCT_SIGNUP_ALLOWANCE=3\nPLUCT_TOKEN_TTL_SECONDS=30\n")
    monkeypatch.setenv("PLUCT_TOKEN_TTL_SECONDS", "90")

    settings = load_settings(read_environment(env_file))

    assert settings.signup_allowance == 3
    assert settings.token_ttl == timedelta(seconds=90)


def test_dev_secrets_are_generated_once_and_then_reused(tmp_path):
    settings = load_settings({"PLUCT_DATA_DIR": str(tmp_path)})

    first, note = with_dev_secrets(settings)
    again, second_note = with_dev_secrets(settings)

    assert note is not None and first.jwt_secret in note
    assert second_note is None
    assert (first.admin_secret, first.jwt_secret, first.webhook_secret) == (
        again.admin_secret,
        again.jwt_secret,
        again.webhook_secret,
    )
    assert len({first.admin_secret, first.jwt_secret, first.webhook_secret}) == 3
    assert ((tmp_path / "dev-secrets.env").stat().st_mode & 0o777) == 0o600


def test_dev_secrets_never_override_configured_ones(tmp_path):
    settings = load_settings({"PLUCT_DATA_DIR": str(tmp_path), "JWT_SECRET": "mine"})

    filled, _ = with_dev_secrets(settings)

    assert filled.jwt_secret == "mine"
    assert filled.admin_secret


@pytest.mark.parametrize(
    ("raw", "count", "period"),
    [("0", 0, 1), ("5/second", 5, 1), ("30/minute", 30, 60), ("20/hour", 20, 3600)],
)
def test_rates_read_n_per_period_and_zero_is_off(raw, count, period):
    settings = load_settings({"PLUCT_VEND_RATE": raw})

    assert (settings.vend_rate.count, settings.vend_rate.period_seconds) == (count, period)
    assert settings.vend_rate.off == (count == 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PLUCT_VEND_RATE", "5/day"),
        ("PLUCT_HTTP_IP_RATE", "fast"),
        ("PLUCT_SIGNUP_RATE", "-1/hour"),
        ("PLUCT_AUTH_FAILURE_RATE", "10 per minute"),
        ("PLUCT_TRUSTED_PROXIES", "10.0.0.0/8,not-a-network"),
        ("PLUCT_REQUEST_ID_RETENTION", "forever"),
        ("PLUCT_CALLER_AUTH", "nobody"),
        ("PLUCT_REFLECTION", "maybe"),
        ("PLUCT_TOKEN_ALG", "RS256"),
        ("PLUCT_TLS_CERT_FILE", "/nonexistent/cert.pem"),
    ],
)
def test_invalid_abuse_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError) as raised:
        load_settings({name: value})

    assert str(raised.value).startswith(name)


def test_defaults_are_keys_and_every_limit_on():
    settings = load_settings({})

    assert settings.caller_auth == "keys" and settings.reflection
    assert not any(
        rate.off
        for rate in (
            settings.vend_rate,
            settings.http_ip_rate,
            settings.signup_rate,
            settings.auth_failure_rate,
        )
    )
    assert settings.request_id_retention == timedelta(hours=24)
    assert settings.token_algorithm == "HS256"


@pytest.mark.parametrize("name", ["JWT_SECRET", "WEBHOOK_SECRET"])
def test_every_secret_of_a_rotation_list_must_be_strong(name):
    environ = {"DATABASE_URL": "postgresql://db/pluct", **STRONG}
    environ[name] = f"{STRONG[name]},weak-one"

    with pytest.raises(ConfigError) as raised:
        load_settings(environ)

    assert name in str(raised.value) and "weak-one" not in str(raised.value)


def test_a_rotation_list_of_strong_secrets_is_split_first_one_first():
    second = "abcdefghijklmnopqrstuvwxyz0123456789-older"
    environ = {"DATABASE_URL": "postgresql://db/pluct", **STRONG}
    environ["JWT_SECRET"] = f"{STRONG['JWT_SECRET']}, {second}"

    settings = load_settings(environ)

    assert settings.jwt_secrets == (STRONG["JWT_SECRET"], second)


def test_production_eddsa_needs_a_key_folder_and_an_active_kid(tmp_path):
    environ = {"DATABASE_URL": "postgresql://db/pluct", **STRONG, "PLUCT_TOKEN_ALG": "EdDSA"}

    with pytest.raises(ConfigError) as raised:
        load_settings(environ)
    assert str(raised.value).startswith("PLUCT_TOKEN_KEYS_DIR")

    with pytest.raises(ConfigError) as raised:
        load_settings({**environ, "PLUCT_TOKEN_KEYS_DIR": str(tmp_path)})
    assert str(raised.value).startswith("PLUCT_TOKEN_ACTIVE_KID")


def test_dev_mode_eddsa_makes_its_own_key_once(tmp_path):
    settings = load_settings({"PLUCT_DATA_DIR": str(tmp_path), "PLUCT_TOKEN_ALG": "EdDSA"})

    first, _ = with_dev_secrets(settings)
    again, _ = with_dev_secrets(settings)

    assert first.token_keys_dir == again.token_keys_dir == tmp_path / "token-keys"
    assert first.token_active_kid == again.token_active_kid == "dev-1"
    [key] = (tmp_path / "token-keys").glob("*.pem")
    assert key.stat().st_mode & 0o077 == 0


def test_dev_mode_makes_an_api_key_once_and_prints_it_with_the_secrets(tmp_path):
    settings = load_settings({"PLUCT_DATA_DIR": str(tmp_path)})

    first, note = with_dev_secrets(settings)
    again, second_note = with_dev_secrets(settings)

    assert first.dev_api_key and first.dev_api_key == again.dev_api_key
    assert note is not None and first.dev_api_key in note and second_note is None


def test_tls_needs_both_files_and_client_ca_needs_tls(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")

    with pytest.raises(ConfigError):
        load_settings({"PLUCT_TLS_CERT_FILE": str(cert)})
    with pytest.raises(ConfigError):
        load_settings({"PLUCT_TLS_CLIENT_CA_FILE": str(cert)})


def test_no_secret_shows_in_the_settings_repr():
    environ = {
        "DATABASE_URL": "postgresql://app:db-password-1@db/pluct",
        "PLUCT_MIGRATE_DATABASE_URL": "postgresql://owner:db-password-2@db/pluct",
        **STRONG,
    }
    settings = load_settings(environ)

    shown = repr(settings)
    for secret in (*STRONG.values(), "db-password-1", "db-password-2"):
        assert secret not in shown
    assert "grpc_listen='127.0.0.1:50051'" in shown  # what is no secret still shows


def test_every_variable_is_in_the_readmes_table_and_the_table_names_no_other():
    from dataclasses import fields
    from pathlib import Path

    from pluct_server.values.settings import Settings

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented: set[str] = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            documented.update(part.strip("` ") for part in line.split("|")[1].split(","))
    declared = {f.metadata["variable"] for f in fields(Settings) if "variable" in f.metadata}

    assert declared == documented
