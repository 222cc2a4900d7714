"""Settings from the environment (and a .env file), validated once at start."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from dotenv import dotenv_values

from pluct_server.key_secrets import new_secret
from pluct_server.logs import LOG_FORMATS
from pluct_server.runtime.event_loop import EVENT_LOOPS, loop_available

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
    # Spends that arrive together go in one statement of at most this many; the first of a batch
    # may wait this long for company (0: none; batches still form while the database is busy).
    spend_batch_max: int = 32
    spend_batch_wait: timedelta = timedelta(0)
    # Batches one worker runs at once: spends arriving meanwhile wait for the next batch.
    spend_batches_in_flight: int = 1
    # How long a statement may run before the call answers "outcome unknown" (or unavailable).
    db_command_timeout_seconds: float = 10.0
    # Prepared statements cached per connection; 0 (for PgBouncer in transaction mode) uses none.
    db_statement_cache_size: int = 100
    health_interval_seconds: float = 2.0
    shutdown_grace_seconds: float = 10.0
    http_max_body_bytes: int = 64 * 1024
    log_level: str = "INFO"
    log_format: str = "text"
    event_loop: str = "uvloop"
    # One line per gRPC call and HTTP request (logger pluct_server.access).
    access_log: bool = True
    # A listener of its own for /metrics (host:port), besides the HTTP port's /metrics.
    metrics_listen: str | None = None
    # Who may call: "keys" needs an API key (or a bootstrap secret) on every gRPC call.
    caller_auth: str = "keys"
    reflection: bool = True
    # Limits, each `Rate(0)` when switched off. Defaults and their reasons: README, "Abuse limits".
    vend_rate: Rate = Rate(30, 60)
    http_ip_rate: Rate = Rate(100, 1)
    signup_rate: Rate = Rate(30, 3600)
    auth_failure_rate: Rate = Rate(10, 60)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    request_id_retention: timedelta = timedelta(hours=24)
    webhook_legacy_secret: bool = True
    token_algorithm: str = "HS256"
    token_keys_dir: Path | None = None
    token_active_kid: str | None = None
    token_issuer: str | None = None
    token_audience: str | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # How stale the caches of API keys, revocations and blocked addresses may get.
    cache_refresh_seconds: float = 2.0
    grpc_max_streams_per_connection: int = 1000
    grpc_max_concurrent_rpcs: int = 2000
    http_max_concurrent_requests: int = 1000
    # The edge: what one client address may hold at once, and how long anyone may take.
    # A request must arrive whole this soon after its headers (an HTTP body, a gRPC message).
    request_read_timeout_seconds: float = 10.0
    # Calls and requests without a credential that one address may have in flight, per worker.
    grpc_max_concurrent_rpcs_per_address: int = 100
    http_max_concurrent_requests_per_address: int = 64
    # Open HTTP connections one address may hold, per worker.
    http_max_connections_per_address: int = 256
    # gRPC connections per worker, and how long one without calls is kept.
    grpc_max_connections: int = 4000
    grpc_max_connection_idle_seconds: int = 30
    dev_api_key: str | None = field(default=None, repr=False)
    # The schema owner's DSN: migrations run as it and grant the serving role what it needs.
    migrate_database_url: str | None = field(default=None, repr=False)
    # Server processes sharing the ports; the default, one per core, keeps every core busy.
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def production(self) -> bool:
        """Tell whether the server runs against an external database (and so needs real secrets)."""
        return self.database_url is not None

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


def read_environment(env_file: Path = Path(".env")) -> dict[str, str]:
    """Merge the .env file (if any) under the process environment; the real environment wins."""
    merged = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    merged.update(os.environ)
    return merged


def load_settings(environ: Mapping[str, str], *, serving: bool = True) -> Settings:
    """Build Settings from variables, raising ConfigError for the first bad one.

    Only a server needs its secrets: the operator commands (migrate, audit) check none.
    """
    database_url = environ.get("DATABASE_URL", "").strip() or None
    if database_url is not None and not database_url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("DATABASE_URL must start with postgresql:// or postgres://")
    migrate_database_url = environ.get("PLUCT_MIGRATE_DATABASE_URL", "").strip() or None
    if migrate_database_url is not None:
        if database_url is None:
            raise ConfigError("PLUCT_MIGRATE_DATABASE_URL needs DATABASE_URL (the serving role)")
        if not migrate_database_url.startswith(("postgres://", "postgresql://")):
            raise ConfigError(
                "PLUCT_MIGRATE_DATABASE_URL must start with postgresql:// or postgres://"
            )
    settings = Settings(
        database_url=database_url,
        migrate_database_url=migrate_database_url,
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
        spend_batch_max=_integer(environ, "PLUCT_SPEND_BATCH_MAX", Settings.spend_batch_max, 1, 64),
        spend_batch_wait=timedelta(
            microseconds=_integer(environ, "PLUCT_SPEND_BATCH_WAIT_US", 0, 0, 100_000)
        ),
        spend_batches_in_flight=_integer(
            environ, "PLUCT_SPEND_BATCHES_IN_FLIGHT", Settings.spend_batches_in_flight, 1, 16
        ),
        db_command_timeout_seconds=float(
            _integer(environ, "PLUCT_DB_COMMAND_TIMEOUT_SECONDS", 10, 1, 600)
        ),
        db_statement_cache_size=_integer(
            environ, "PLUCT_DB_STATEMENT_CACHE_SIZE", Settings.db_statement_cache_size, 0, 10_000
        ),
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
        log_format=_choice(environ, "PLUCT_LOG_FORMAT", LOG_FORMATS, "text"),
        event_loop=_choice(environ, "PLUCT_EVENT_LOOP", EVENT_LOOPS, Settings.event_loop),
        access_log=_switch(environ, "PLUCT_ACCESS_LOG", default=True),
        metrics_listen=(
            _listen(environ, "PLUCT_METRICS_LISTEN", "")
            if environ.get("PLUCT_METRICS_LISTEN", "").strip()
            else None
        ),
        caller_auth=_choice(environ, "PLUCT_CALLER_AUTH", CALLER_AUTH_MODES, "keys"),
        reflection=_switch(environ, "PLUCT_REFLECTION", default=True),
        vend_rate=_rate(environ, "PLUCT_VEND_RATE", Settings.vend_rate),
        http_ip_rate=_rate(environ, "PLUCT_HTTP_IP_RATE", Settings.http_ip_rate),
        signup_rate=_rate(environ, "PLUCT_SIGNUP_RATE", Settings.signup_rate),
        auth_failure_rate=_rate(environ, "PLUCT_AUTH_FAILURE_RATE", Settings.auth_failure_rate),
        trusted_proxies=_networks(environ, "PLUCT_TRUSTED_PROXIES"),
        request_id_retention=_duration(
            environ, "PLUCT_REQUEST_ID_RETENTION", Settings.request_id_retention
        ),
        webhook_legacy_secret=_switch(environ, "PLUCT_WEBHOOK_LEGACY_SECRET", default=True),
        token_algorithm=_choice(environ, "PLUCT_TOKEN_ALG", TOKEN_ALGORITHMS, "HS256"),
        token_keys_dir=_path(environ, "PLUCT_TOKEN_KEYS_DIR"),
        token_active_kid=environ.get("PLUCT_TOKEN_ACTIVE_KID", "").strip() or None,
        token_issuer=environ.get("PLUCT_TOKEN_ISSUER", "").strip() or None,
        token_audience=environ.get("PLUCT_TOKEN_AUDIENCE", "").strip() or None,
        tls_cert_file=_path(environ, "PLUCT_TLS_CERT_FILE"),
        tls_key_file=_path(environ, "PLUCT_TLS_KEY_FILE"),
        tls_client_ca_file=_path(environ, "PLUCT_TLS_CLIENT_CA_FILE"),
        cache_refresh_seconds=float(
            _integer(
                environ, "PLUCT_CACHE_REFRESH_SECONDS", int(Settings.cache_refresh_seconds), 1, 60
            )
        ),
        grpc_max_streams_per_connection=_integer(
            environ,
            "PLUCT_GRPC_MAX_STREAMS_PER_CONNECTION",
            Settings.grpc_max_streams_per_connection,
            1,
            10_000,
        ),
        grpc_max_concurrent_rpcs=_integer(
            environ, "PLUCT_GRPC_MAX_CONCURRENT_RPCS", Settings.grpc_max_concurrent_rpcs, 1, 100_000
        ),
        workers=_integer(environ, "PLUCT_WORKERS", os.cpu_count() or 1, 1, 64),
        http_max_concurrent_requests=_integer(
            environ,
            "PLUCT_HTTP_MAX_CONCURRENT_REQUESTS",
            Settings.http_max_concurrent_requests,
            1,
            100_000,
        ),
        request_read_timeout_seconds=float(
            _integer(
                environ,
                "PLUCT_REQUEST_READ_TIMEOUT_SECONDS",
                int(Settings.request_read_timeout_seconds),
                1,
                300,
            )
        ),
        grpc_max_concurrent_rpcs_per_address=_integer(
            environ,
            "PLUCT_GRPC_MAX_CONCURRENT_RPCS_PER_ADDRESS",
            Settings.grpc_max_concurrent_rpcs_per_address,
            1,
            100_000,
        ),
        http_max_concurrent_requests_per_address=_integer(
            environ,
            "PLUCT_HTTP_MAX_CONCURRENT_REQUESTS_PER_ADDRESS",
            Settings.http_max_concurrent_requests_per_address,
            1,
            100_000,
        ),
        http_max_connections_per_address=_integer(
            environ,
            "PLUCT_HTTP_MAX_CONNECTIONS_PER_ADDRESS",
            Settings.http_max_connections_per_address,
            1,
            100_000,
        ),
        grpc_max_connections=_integer(
            environ, "PLUCT_GRPC_MAX_CONNECTIONS", Settings.grpc_max_connections, 1, 1_000_000
        ),
        grpc_max_connection_idle_seconds=_integer(
            environ,
            "PLUCT_GRPC_MAX_CONNECTION_IDLE_SECONDS",
            Settings.grpc_max_connection_idle_seconds,
            1,
            86_400,
        ),
    )
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


DEV_API_KEY = "PLUCT_DEV_API_KEY"
DEV_TOKEN_KEYS_DIR = "token-keys"
DEV_TOKEN_KID = "dev-1"


def with_dev_secrets(settings: Settings) -> tuple[Settings, str | None]:
    """Fill unset secrets (and the dev API key) from the data folder, creating them on first use.

    Returns the settings and, only when something was just created, a note to print once.
    """
    path = settings.data_dir / DEV_SECRETS_FILE
    stored = {k: v for k, v in dotenv_values(path).items() if v} if path.exists() else {}
    names = (*SECRET_NAMES, DEV_API_KEY)
    created = False
    if not all(stored.get(name) for name in names):
        made = {name: secrets.token_urlsafe(32) for name in SECRET_NAMES}
        made[DEV_API_KEY] = new_secret()[1]
        stored = {name: stored.get(name) or made[name] for name in names}
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Written with 0600 from the start, so the secrets are never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("# Development secrets, generated once by `make run`. Not for production.\n")
            out.writelines(f"{name}={stored[name]}\n" for name in names)
        created = True
    filled = replace(
        settings,
        admin_secret=settings.admin_secret or stored["ADMIN_SECRET"],
        jwt_secret=settings.jwt_secret or stored["JWT_SECRET"],
        webhook_secret=settings.webhook_secret or stored["WEBHOOK_SECRET"],
        dev_api_key=stored[DEV_API_KEY],
    )
    filled = _with_dev_token_keys(filled)
    if not created:
        return filled, None
    lines = [f"Generated development secrets in {path} (shown this once):"]
    lines += [f"  {name}={stored[name]}" for name in SECRET_NAMES]
    lines.append(f"  {DEV_API_KEY}={stored[DEV_API_KEY]}   (an API key with every scope)")
    return filled, "\n".join(lines)


def _with_dev_token_keys(settings: Settings) -> Settings:
    """In dev mode with EdDSA and no key folder, make (once) and use a key under the data folder."""
    if settings.token_algorithm != "EdDSA":
        return settings
    from pluct_server.tokens import generate_ed25519_key

    folder = settings.token_keys_dir or settings.data_dir / DEV_TOKEN_KEYS_DIR
    kids = sorted(pem.stem for pem in folder.glob("*.pem")) if folder.is_dir() else []
    if not kids:
        folder.mkdir(parents=True, exist_ok=True)
        generate_ed25519_key(folder, DEV_TOKEN_KID)
        kids = [DEV_TOKEN_KID]
    active = settings.token_active_kid or (kids[0] if len(kids) == 1 else None)
    if active is None:
        raise ConfigError(f"PLUCT_TOKEN_ACTIVE_KID must pick one of the keys in {folder}")
    return replace(settings, token_keys_dir=folder, token_active_kid=active)


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


def _choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = environ.get(name, "").strip() or default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")


def _switch(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


def _rate(environ: Mapping[str, str], name: str, default: Rate) -> Rate:
    raw = environ.get(name, "").strip()
    return parse_rate(name, raw) if raw else default


def _duration(environ: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    match = _DURATION.match(raw)
    if match is None or int(match[1]) == 0:
        raise ConfigError(
            f"{name} must be a positive duration such as 24h, 90m or 3600s, got {raw!r}"
        )
    return timedelta(seconds=int(match[1]) * _DURATION_SECONDS[match[2]])


def _networks(
    environ: Mapping[str, str], name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in environ.get(name, "").split(","):
        if not part.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must list addresses or CIDR networks, got {part.strip()!r}"
            ) from None
    return tuple(networks)


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    raw = environ.get(name, "").strip()
    return Path(raw) if raw else None
