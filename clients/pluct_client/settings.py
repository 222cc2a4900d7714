"""Where the command line finds the server and its credentials: the server's own settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TARGET = "127.0.0.1:50051"
# What `make run` writes on first start, in its data folder.
DEV_SECRETS_FILE = "dev-secrets.env"
_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")  # noqa: S104 - reached locally, not bound
# Where a bearer credential is read from, first found wins.
KEY_VARIABLES = ("PLUCT_API_KEY", "PLUCT_DEV_API_KEY", "ADMIN_SECRET")


@dataclass(frozen=True)
class CliSettings:
    """The server to call and the credentials to call it with."""

    target: str
    api_key: str | None
    admin_secret: str | None
    webhook_secret: str | None
    # The settings files read after the environment, in order (whether they exist or not).
    files: tuple[Path, ...] = ()

    def where_keys_are_looked_for(self) -> str:
        """Say which variables hold a key and where they were looked for, for a person."""
        places = ", ".join(["the environment", *(str(path) for path in self.files)])
        return f"{', '.join(KEY_VARIABLES[:-1])} or {KEY_VARIABLES[-1]} in {places}"


def read_settings(
    environ: Mapping[str, str] | None = None, workdir: Path | None = None
) -> CliSettings:
    """Read the environment, then `.env`, then the dev secrets of `make run` (first wins)."""
    environ = os.environ if environ is None else environ
    workdir = Path.cwd() if workdir is None else workdir
    dotenv = _read_env_file(workdir / ".env")
    data_dir = Path(environ.get("PLUCT_DATA_DIR") or dotenv.get("PLUCT_DATA_DIR") or ".data")
    dev_secrets = (workdir / data_dir) / DEV_SECRETS_FILE
    dev = _read_env_file(dev_secrets)
    merged = {**dev, **dotenv, **environ}
    return CliSettings(
        target=_target(merged),
        api_key=merged.get("PLUCT_API_KEY") or merged.get("PLUCT_DEV_API_KEY") or None,
        admin_secret=merged.get("ADMIN_SECRET") or None,
        webhook_secret=merged.get("WEBHOOK_SECRET") or None,
        files=(workdir / ".env", dev_secrets),
    )


def _target(settings: Mapping[str, str]) -> str:
    """Return PLUCT_TARGET, or where PLUCT_GRPC_LISTEN has the server listen."""
    if settings.get("PLUCT_TARGET"):
        return settings["PLUCT_TARGET"]
    listen = settings.get("PLUCT_GRPC_LISTEN")
    if not listen:
        return DEFAULT_TARGET
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host in _WILDCARD_HOSTS else listen


def _read_env_file(path: Path) -> dict[str, str]:
    """Read NAME=value lines (comments and blank lines skipped); nothing if there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            found[name.strip()] = value.strip().strip("'\"")
    return found
