"""Settings: defaults, one clear line per bad variable, strong secrets in production."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pluct_server.config import ConfigError, load_settings, read_environment, with_dev_secrets

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
        ("PLUCT_LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "mysql://db"),
    ],
)
def test_invalid_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as raised:
        load_settings({name: value, **STRONG})

    assert str(raised.value).startswith(name)


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
