"""Settings from the environment (and a .env file), validated once at start."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from dotenv import dotenv_values

SECRET_NAMES = ("ADMIN_SECRET", "JWT_SECRET", "WEBHOOK_SECRET")
SECRET_MIN_CHARS = 32
SECRET_MIN_DISTINCT_CHARS = 10
DEV_SECRETS_FILE = "dev-secrets.env"


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line naming the variable."""


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know, already checked."""

    database_url: str | None
    admin_secret: str
    jwt_secret: str
    webhook_secret: str
    grpc_listen: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:8787"
    signup_allowance: int = 10
    token_ttl: timedelta = timedelta(seconds=60)
    data_dir: Path = Path(".data")
    db_pool_size: int = 20
    health_interval_seconds: float = 2.0
    shutdown_grace_seconds: float = 10.0
    http_max_body_bytes: int = 64 * 1024
    log_level: str = "INFO"

    @property
    def production(self) -> bool:
        """Tell whether the server runs against an external database (and so needs real secrets)."""
        return self.database_url is not None


def read_environment(env_file: Path = Path(".env")) -> dict[str, str]:
    """Merge the .env file (if any) under the process environment; the real environment wins."""
    merged = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    merged.update(os.environ)
    return merged


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from variables, raising ConfigError for the first bad one."""
    database_url = environ.get("DATABASE_URL", "").strip() or None
    if database_url is not None and not database_url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("DATABASE_URL must start with postgresql:// or postgres://")
    settings = Settings(
        database_url=database_url,
        admin_secret=environ.get("ADMIN_SECRET", ""),
        jwt_secret=environ.get("JWT_SECRET", ""),
        webhook_secret=environ.get("WEBHOOK_SECRET", ""),
        grpc_listen=_listen(environ, "PLUCT_GRPC_LISTEN", Settings.grpc_listen),
        http_listen=_listen(environ, "PLUCT_HTTP_LISTEN", Settings.http_listen),
        signup_allowance=_integer(
            environ, "PLUCT_SIGNUP_ALLOWANCE", Settings.signup_allowance, 0, 10_000
        ),
        token_ttl=timedelta(
            seconds=_integer(
                environ, "PLUCT_TOKEN_TTL_SECONDS", Settings.token_ttl.seconds, 1, 86_400
            )
        ),
        data_dir=Path(environ.get("PLUCT_DATA_DIR", "").strip() or Settings.data_dir),
        db_pool_size=_integer(environ, "PLUCT_DB_POOL_SIZE", Settings.db_pool_size, 1, 500),
        health_interval_seconds=float(
            _integer(
                environ,
                "PLUCT_HEALTH_INTERVAL_SECONDS",
                int(Settings.health_interval_seconds),
                1,
                3600,
            )
        ),
        shutdown_grace_seconds=float(
            _integer(
                environ,
                "PLUCT_SHUTDOWN_GRACE_SECONDS",
                int(Settings.shutdown_grace_seconds),
                0,
                3600,
            )
        ),
        http_max_body_bytes=_integer(
            environ, "PLUCT_HTTP_MAX_BODY_BYTES", Settings.http_max_body_bytes, 256, 10**7
        ),
        log_level=_log_level(environ),
    )
    if settings.production:
        for name in SECRET_NAMES:
            check_strong_secret(name, environ.get(name, ""))
    return settings


def check_strong_secret(name: str, value: str) -> None:
    """Refuse a missing or guessable secret; the message never contains the value."""
    if not value:
        raise ConfigError(f"{name} is required when DATABASE_URL is set")
    if len(value) < SECRET_MIN_CHARS or len(set(value)) < SECRET_MIN_DISTINCT_CHARS:
        raise ConfigError(
            f"{name} is too weak: use at least {SECRET_MIN_CHARS} characters with at least "
            f"{SECRET_MIN_DISTINCT_CHARS} different ones (e.g. `openssl rand -hex 32`)"
        )


def with_dev_secrets(settings: Settings) -> tuple[Settings, str | None]:
    """Fill unset secrets from the data folder's dev-secrets file, creating it on first use.

    Returns the settings and, only when the file was just created, a note to print once.
    """
    path = settings.data_dir / DEV_SECRETS_FILE
    stored = {k: v for k, v in dotenv_values(path).items() if v} if path.exists() else {}
    created = False
    if not all(stored.get(name) for name in SECRET_NAMES):
        stored = {name: stored.get(name) or secrets.token_urlsafe(32) for name in SECRET_NAMES}
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Written with 0600 from the start, so the secrets are never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("# Development secrets, generated once by `make run`. Not for production.\n")
            out.writelines(f"{name}={stored[name]}\n" for name in SECRET_NAMES)
        created = True
    filled = replace(
        settings,
        admin_secret=settings.admin_secret or stored["ADMIN_SECRET"],
        jwt_secret=settings.jwt_secret or stored["JWT_SECRET"],
        webhook_secret=settings.webhook_secret or stored["WEBHOOK_SECRET"],
    )
    if not created:
        return filled, None
    lines = [f"Generated development secrets in {path} (shown this once):"]
    lines += [f"  {name}={stored[name]}" for name in SECRET_NAMES]
    return filled, "\n".join(lines)


def _integer(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _listen(environ: Mapping[str, str], name: str, default: str) -> str:
    raw = environ.get(name, "").strip() or default
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must look like host:port (e.g. 127.0.0.1:8787), got {raw!r}")
    return raw


def _log_level(environ: Mapping[str, str]) -> str:
    level = environ.get("PLUCT_LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"PLUCT_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    return level
