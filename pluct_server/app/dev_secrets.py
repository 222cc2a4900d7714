"""Development secrets: made once by `make run` under the data folder, and printed that once."""

from __future__ import annotations

import os
import secrets
from dataclasses import replace

from dotenv import dotenv_values

from pluct_server.security.key_secrets import new_secret
from pluct_server.security.tokens import generate_ed25519_key
from pluct_server.values.settings import DEV_SECRETS_FILE, SECRET_NAMES, ConfigError, Settings

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
