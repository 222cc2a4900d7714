"""Settings from the environment (and a .env file), validated once at start: a leaf module."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

LOG_FORMATS = ("text", "json")
# The names PLUCT_EVENT_LOOP accepts. The default is uvloop: measured with
# `python -m bench.event_loops`, it serves more calls per core (README, "Scaling").
EVENT_LOOPS = ("uvloop", "asyncio")
SECRET_NAMES = ("ADMIN_SECRET", "JWT_SECRET", "WEBHOOK_SECRET")
SECRET_MIN_CHARS = 32
SECRET_MIN_DISTINCT_CHARS = 10
DEV_SECRETS_FILE = "dev-secrets.env"
TOKEN_ALGORITHMS = ("HS256", "EdDSA")
CALLER_AUTH_MODES = ("keys", "open")
_RATE = re.compile(r"(\d{1,9})/(second|minute|hour)\Z")
_PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 3600}
_DURATION = re.compile(r"(\d{1,9})([smhd]?)\Z")
_DURATION_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line naming the variable."""


@dataclass(frozen=True)
class Rate:
    """A rate limit: at most `count` events per `period_seconds`; a count of 0 turns it off."""

    count: int
    period_seconds: int = 1

    @property
    def off(self) -> bool:
        """Tell whether this limit is switched off."""
        return self.count == 0

    def __str__(self) -> str:
        if self.off:
            return "0"
        unit = {1: "second", 60: "minute", 3600: "hour"}[self.period_seconds]
        return f"{self.count}/{unit}"


RATE_OFF = Rate(0)


def parse_rate(name: str, raw: str) -> Rate:
    """Read `N/second`, `N/minute`, `N/hour` or `0` (off), naming `name` when it is neither."""
    text = raw.strip()
    if text == "0":
        return RATE_OFF
    match = _RATE.match(text)
    if match is None:
        raise ConfigError(
            f"{name} must look like N/second, N/minute or N/hour (0 = off), got {raw!r}"
        )
    count = int(match[1])
    return Rate(count, _PERIOD_SECONDS[match[2]]) if count else RATE_OFF


Parse = Callable[[str, str], Any]
_VARIABLE = "variable"
_PARSE = "parse"


def _declared(name: str, default: Any, parse: Parse, *, secret: bool = False) -> Any:
    """Declare one setting: its variable, its default and how its text is read, in one place."""
    return field(default=default, repr=not secret, metadata={_VARIABLE: name, _PARSE: parse})


def _text(name: str, raw: str) -> str:
    return raw


def _stripped_or_none(name: str, raw: str) -> str | None:
    return raw.strip() or None


def _dsn(name: str, raw: str) -> str | None:
    dsn = raw.strip() or None
    if dsn is not None and not dsn.startswith(("postgres://", "postgresql://")):
        raise ConfigError(f"{name} must start with postgresql:// or postgres://")
    return dsn


def _whole(low: int, high: int) -> Parse:
    """Read a whole number from `low` to `high`."""

    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return parse


def _whole_seconds(low: int, high: int) -> Parse:
    """Read whole seconds from `low` to `high`, as a float."""
    whole = _whole(low, high)
    return lambda name, raw: float(whole(name, raw))


def _timedelta_of(unit: str, low: int, high: int) -> Parse:
    """Read a whole number of `unit` (seconds, microseconds) as a timedelta."""
    whole = _whole(low, high)
    return lambda name, raw: timedelta(**{unit: whole(name, raw)})


def _listen(name: str, raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must look like host:port (e.g. 127.0.0.1:8787), got {raw!r}")
    return raw


def _log_level(name: str, raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{name} must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    return level


def _one_of(*choices: str) -> Parse:
    """Read one of `choices`, in any case."""

    def parse(name: str, raw: str) -> str:
        for choice in choices:
            if raw.lower() == choice.lower():
                return choice
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")

    return parse


def _switch(name: str, raw: str) -> bool:
    text = raw.lower()
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be on or off, got {text!r}")


def _duration(name: str, raw: str) -> timedelta:
    match = _DURATION.match(raw)
    if match is None or int(match[1]) == 0:
        raise ConfigError(
            f"{name} must be a positive duration such as 24h, 90m or 3600s, got {raw!r}"
        )
    return timedelta(seconds=int(match[1]) * _DURATION_SECONDS[match[2]])


def _networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must list addresses or CIDR networks, got {part.strip()!r}"
            ) from None
    return tuple(networks)


def _path(name: str, raw: str) -> Path | None:
    return Path(raw) if raw else None


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know, already checked: each setting declared once, here.

    Secrets (and the database URLs, which may hold passwords) are left out of the repr, so a
    settings object that reaches a log line or a traceback shows none of them.
    """

    database_url: str | None = _declared("DATABASE_URL", None, _dsn, secret=True)
    admin_secret: str = _declared("ADMIN_SECRET", "", _text, secret=True)
    jwt_secret: str = _declared("JWT_SECRET", "", _text, secret=True)
    webhook_secret: str = _declared("WEBHOOK_SECRET", "", _text, secret=True)
    grpc_listen: str = _declared("PLUCT_GRPC_LISTEN", "127.0.0.1:50051", _listen)
    http_listen: str = _declared("PLUCT_HTTP_LISTEN", "127.0.0.1:8787", _listen)
    signup_allowance: int = _declared("PLUCT_SIGNUP_ALLOWANCE", 10, _whole(0, 10_000))
    token_ttl: timedelta = _declared(
        "PLUCT_TOKEN_TTL_SECONDS", timedelta(seconds=60), _timedelta_of("seconds", 1, 86_400)
    )
    data_dir: Path = _declared("PLUCT_DATA_DIR", Path(".data"), lambda name, raw: Path(raw))
    db_pool_size: int = _declared("PLUCT_DB_POOL_SIZE", 20, _whole(1, 500))
    # Spends that arrive together go in one statement of at most this many; the first of a batch
    # may wait this long for company (0: none; batches still form while the database is busy).
    spend_batch_max: int = _declared("PLUCT_SPEND_BATCH_MAX", 32, _whole(1, 64))
    spend_batch_wait: timedelta = _declared(
        "PLUCT_SPEND_BATCH_WAIT_US", timedelta(0), _timedelta_of("microseconds", 0, 100_000)
    )
    # Batches one worker runs at once: spends arriving meanwhile wait for the next batch.
    spend_batches_in_flight: int = _declared("PLUCT_SPEND_BATCHES_IN_FLIGHT", 1, _whole(1, 16))
    # How long a statement may run before the call answers "outcome unknown" (or unavailable).
    db_command_timeout_seconds: float = _declared(
        "PLUCT_DB_COMMAND_TIMEOUT_SECONDS", 10.0, _whole_seconds(1, 600)
    )
    # Prepared statements cached per connection; 0 (for PgBouncer in transaction mode) uses none.
    db_statement_cache_size: int = _declared(
        "PLUCT_DB_STATEMENT_CACHE_SIZE", 100, _whole(0, 10_000)
    )
    health_interval_seconds: float = _declared(
        "PLUCT_HEALTH_INTERVAL_SECONDS", 2.0, _whole_seconds(1, 3600)
    )
    shutdown_grace_seconds: float = _declared(
        "PLUCT_SHUTDOWN_GRACE_SECONDS", 10.0, _whole_seconds(0, 3600)
    )
    http_max_body_bytes: int = _declared("PLUCT_HTTP_MAX_BODY_BYTES", 64 * 1024, _whole(256, 10**7))
    log_level: str = _declared("PLUCT_LOG_LEVEL", "INFO", _log_level)
    log_format: str = _declared("PLUCT_LOG_FORMAT", "text", _one_of(*LOG_FORMATS))
    event_loop: str = _declared("PLUCT_EVENT_LOOP", "uvloop", _one_of(*EVENT_LOOPS))
    # One line per gRPC call and HTTP request (logger pluct_server.observability.access).
    access_log: bool = _declared("PLUCT_ACCESS_LOG", True, _switch)
    # A listener of its own for /metrics (host:port), besides the HTTP port's /metrics.
    metrics_listen: str | None = _declared("PLUCT_METRICS_LISTEN", None, _listen)
    # Who may call: "keys" needs an API key (or a bootstrap secret) on every gRPC call.
    caller_auth: str = _declared("PLUCT_CALLER_AUTH", "keys", _one_of(*CALLER_AUTH_MODES))
    reflection: bool = _declared("PLUCT_REFLECTION", True, _switch)
    # Limits, each `Rate(0)` when switched off. Defaults and their reasons: README, "Abuse limits".
    vend_rate: Rate = _declared("PLUCT_VEND_RATE", Rate(30, 60), parse_rate)
    http_ip_rate: Rate = _declared("PLUCT_HTTP_IP_RATE", Rate(100, 1), parse_rate)
    signup_rate: Rate = _declared("PLUCT_SIGNUP_RATE", Rate(30, 3600), parse_rate)
    auth_failure_rate: Rate = _declared("PLUCT_AUTH_FAILURE_RATE", Rate(10, 60), parse_rate)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _declared(
        "PLUCT_TRUSTED_PROXIES", (), _networks
    )
    request_id_retention: timedelta = _declared(
        "PLUCT_REQUEST_ID_RETENTION", timedelta(hours=24), _duration
    )
    # How long events are kept; the ledger entries they tell of are kept for ever.
    events_retention: timedelta = _declared("PLUCT_EVENTS_RETENTION", timedelta(days=30), _duration)
    # Whether webhook endpoints may be http:// or private addresses; None (unset): only in
    # dev mode (the embedded database), never in production.
    events_allow_private_urls: bool | None = _declared(
        "PLUCT_EVENTS_ALLOW_PRIVATE_URLS", None, _switch
    )
    # How long a user's initial credits last; None (unset): for ever.
    signup_credits_ttl: timedelta | None = _declared("PLUCT_SIGNUP_CREDITS_TTL", None, _duration)
    webhook_legacy_secret: bool = _declared("PLUCT_WEBHOOK_LEGACY_SECRET", True, _switch)
    token_algorithm: str = _declared("PLUCT_TOKEN_ALG", "HS256", _one_of(*TOKEN_ALGORITHMS))
    token_keys_dir: Path | None = _declared("PLUCT_TOKEN_KEYS_DIR", None, _path)
    token_active_kid: str | None = _declared("PLUCT_TOKEN_ACTIVE_KID", None, _stripped_or_none)
    token_issuer: str | None = _declared("PLUCT_TOKEN_ISSUER", None, _stripped_or_none)
    token_audience: str | None = _declared("PLUCT_TOKEN_AUDIENCE", None, _stripped_or_none)
    tls_cert_file: Path | None = _declared("PLUCT_TLS_CERT_FILE", None, _path)
    tls_key_file: Path | None = _declared("PLUCT_TLS_KEY_FILE", None, _path)
    tls_client_ca_file: Path | None = _declared("PLUCT_TLS_CLIENT_CA_FILE", None, _path)
    # How stale the caches of API keys, revocations and held-back addresses may get.
    cache_refresh_seconds: float = _declared(
        "PLUCT_CACHE_REFRESH_SECONDS", 2.0, _whole_seconds(1, 60)
    )
    grpc_max_streams_per_connection: int = _declared(
        "PLUCT_GRPC_MAX_STREAMS_PER_CONNECTION", 1000, _whole(1, 10_000)
    )
    grpc_max_concurrent_rpcs: int = _declared(
        "PLUCT_GRPC_MAX_CONCURRENT_RPCS", 2000, _whole(1, 100_000)
    )
    http_max_concurrent_requests: int = _declared(
        "PLUCT_HTTP_MAX_CONCURRENT_REQUESTS", 1000, _whole(1, 100_000)
    )
    # The edge: what one client address may hold at once, and how long anyone may take.
    # A request must arrive whole this soon after its headers (an HTTP body, a gRPC message).
    request_read_timeout_seconds: float = _declared(
        "PLUCT_REQUEST_READ_TIMEOUT_SECONDS", 10.0, _whole_seconds(1, 300)
    )
    # Calls and requests without a credential that one address may have in flight, per worker.
    grpc_max_concurrent_rpcs_per_address: int = _declared(
        "PLUCT_GRPC_MAX_CONCURRENT_RPCS_PER_ADDRESS", 100, _whole(1, 100_000)
    )
    http_max_concurrent_requests_per_address: int = _declared(
        "PLUCT_HTTP_MAX_CONCURRENT_REQUESTS_PER_ADDRESS", 64, _whole(1, 100_000)
    )
    # Open HTTP connections one address may hold, per worker.
    http_max_connections_per_address: int = _declared(
        "PLUCT_HTTP_MAX_CONNECTIONS_PER_ADDRESS", 256, _whole(1, 100_000)
    )
    # gRPC connections per worker, and how long one without calls is kept.
    grpc_max_connections: int = _declared("PLUCT_GRPC_MAX_CONNECTIONS", 4000, _whole(1, 1_000_000))
    grpc_max_connection_idle_seconds: int = _declared(
        "PLUCT_GRPC_MAX_CONNECTION_IDLE_SECONDS", 30, _whole(1, 86_400)
    )
    # The schema owner's DSN: migrations run as it and grant the serving role what it needs.
    migrate_database_url: str | None = _declared(
        "PLUCT_MIGRATE_DATABASE_URL", None, _dsn, secret=True
    )
    # Server processes sharing the ports; the default, one per core, keeps every core busy.
    workers: int = _declared("PLUCT_WORKERS", os.cpu_count() or 1, _whole(1, 64))
    # Made by `make run` (dev mode), never read from a variable of its own.
    dev_api_key: str | None = field(default=None, repr=False)

    @property
    def production(self) -> bool:
        """Tell whether the server runs against an external database (and so needs real secrets)."""
        return self.database_url is not None

    @property
    def private_webhook_urls(self) -> bool:
        """Tell whether webhook endpoints may be http:// or private addresses."""
        if self.events_allow_private_urls is not None:
            return self.events_allow_private_urls
        return not self.production

    @property
    def jwt_secrets(self) -> tuple[str, ...]:
        """Return JWT_SECRET's comma-separated secrets; the first signs, all verify."""
        return _split_secrets(self.jwt_secret)

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """Return WEBHOOK_SECRET's comma-separated secrets, all valid at once during a rotation."""
        return _split_secrets(self.webhook_secret)

    @property
    def open_callers(self) -> bool:
        """Tell whether gRPC callers without a key are let in (PLUCT_CALLER_AUTH=open)."""
        return self.caller_auth == "open"

    @property
    def tls(self) -> bool:
        """Tell whether both listeners serve TLS."""
        return self.tls_cert_file is not None


# Read as they are, not stripped: a secret is whatever the operator set.
_UNSTRIPPED = frozenset({"ADMIN_SECRET", "JWT_SECRET", "WEBHOOK_SECRET"})


def read_environment(env_file: Path = Path(".env")) -> dict[str, str]:
    """Merge the .env file (if any) under the process environment; the real environment wins."""
    merged = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    merged.update(os.environ)
    return merged


def load_settings(environ: Mapping[str, str], *, serving: bool = True) -> Settings:
    """Build Settings from variables, raising ConfigError for the first bad one.

    Only a server needs its secrets: the operator commands (migrate, audit) check none.
    """
    given: dict[str, Any] = {}
    for declared in fields(Settings):
        name = declared.metadata.get(_VARIABLE)
        if name is None:
            continue
        raw = environ.get(name, "")
        raw = raw if name in _UNSTRIPPED else raw.strip()
        if raw:
            given[declared.name] = declared.metadata[_PARSE](name, raw)
    settings = Settings(**given)
    if settings.migrate_database_url is not None and settings.database_url is None:
        raise ConfigError("PLUCT_MIGRATE_DATABASE_URL needs DATABASE_URL (the serving role)")
    if serving:
        _check_tls(settings)
        _check_token_keys(settings)
        _check_event_loop(settings)
    if settings.production and serving:
        check_strong_secret("ADMIN_SECRET", settings.admin_secret)
        for name, values in (
            ("JWT_SECRET", settings.jwt_secrets),
            ("WEBHOOK_SECRET", settings.webhook_secrets),
        ):
            if name == "JWT_SECRET" and settings.token_algorithm != "HS256" and not values:
                continue  # EdDSA signs with key files; no shared secret is needed
            for value in values or ("",):
                check_strong_secret(name, value)
    return settings


def _split_secrets(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def loop_available(name: str) -> bool:
    """Whether a loop PLUCT_EVENT_LOOP accepts can run here (uvloop is a package of its own)."""
    if name != "uvloop":
        return True  # asyncio's loop comes with Python
    try:
        return importlib.util.find_spec("uvloop") is not None
    except (ImportError, ValueError):  # ValueError: a module already loaded without a spec
        return False


def _check_event_loop(settings: Settings) -> None:
    # Checked here, before migrations and workers, so a missing uvloop is one line, not a
    # traceback from every worker.
    if not loop_available(settings.event_loop):
        raise ConfigError(
            f"PLUCT_EVENT_LOOP is {settings.event_loop}, which is not installed here: "
            "install it, or set PLUCT_EVENT_LOOP=asyncio"
        )


def _check_tls(settings: Settings) -> None:
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError("PLUCT_TLS_CERT_FILE and PLUCT_TLS_KEY_FILE must be set together")
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        raise ConfigError(
            "PLUCT_TLS_CLIENT_CA_FILE needs PLUCT_TLS_CERT_FILE and PLUCT_TLS_KEY_FILE"
        )
    for name, path in (
        ("PLUCT_TLS_CERT_FILE", settings.tls_cert_file),
        ("PLUCT_TLS_KEY_FILE", settings.tls_key_file),
        ("PLUCT_TLS_CLIENT_CA_FILE", settings.tls_client_ca_file),
    ):
        if path is not None and not path.is_file():
            raise ConfigError(f"{name} names {str(path)!r}, which is not a readable file")


def _check_token_keys(settings: Settings) -> None:
    if settings.token_algorithm != "EdDSA" or not settings.production:
        return  # dev mode generates a key when none is configured
    if settings.token_keys_dir is None or not settings.token_keys_dir.is_dir():
        raise ConfigError("PLUCT_TOKEN_KEYS_DIR must name a folder of <kid>.pem files for EdDSA")
    if settings.token_active_kid is None:
        raise ConfigError("PLUCT_TOKEN_ACTIVE_KID must name the key that signs (EdDSA)")
    if not (settings.token_keys_dir / f"{settings.token_active_kid}.pem").is_file():
        raise ConfigError(
            f"PLUCT_TOKEN_ACTIVE_KID names {settings.token_active_kid!r}, which has no .pem file"
        )


def check_strong_secret(name: str, value: str) -> None:
    """Refuse a missing or guessable secret; the message never contains the value."""
    if not value:
        raise ConfigError(f"{name} is required when DATABASE_URL is set")
    if len(value) < SECRET_MIN_CHARS or len(set(value)) < SECRET_MIN_DISTINCT_CHARS:
        raise ConfigError(
            f"{name} is too weak: use at least {SECRET_MIN_CHARS} characters with at least "
            f"{SECRET_MIN_DISTINCT_CHARS} different ones (e.g. `openssl rand -hex 32`)"
        )
