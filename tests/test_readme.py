"""The README's examples run as pasted: its Python snippets and its buf curl session."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.app.dev_secrets import with_dev_secrets
from pluct_server.app.server import DEV_KEY_NAME
from pluct_server.security.callers import GRANTABLE_SCOPES
from pluct_server.values.settings import DEV_SECRETS_FILE
from tests.support import (
    ADMIN_METADATA,
    ADMIN_SECRET,
    JWT_SECRET,
    WEBHOOK_SECRET,
    new_user_id,
    settings_for_test,
)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLE_USER = "user123"


def blocks(language: str) -> list[str]:
    """Every fenced block of `language` in the README, in order."""
    return [body for lang, body in BLOCK.findall(README) if lang == language]


def buf_curl_session() -> str:
    """The README's buf curl session (the bash block that defines bcurl)."""
    (session,) = [body for body in blocks("bash") if "bcurl()" in body]
    return session


async def run(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[int, str]:
    """Run a command (from the repository root); return its exit status and all its output."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return int(process.returncode or 0), out.decode()


def dev_setup() -> str:
    """The README's lines that load what `make run` wrote into a shell (a bash block)."""
    (setup,) = [body for body in blocks("bash") if ".data/dev-secrets.env" in body]
    return setup


async def readme_environment(workdir: Path) -> dict[str, str]:
    """Run the README's setup lines in `workdir`; return exactly the environment they leave."""
    code, output = await run(
        ["bash", "-c", f"set -euo pipefail\n{dev_setup()}\nenv -0"],
        {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
        cwd=workdir,
    )
    assert code == 0, output
    return dict(entry.split("=", 1) for entry in output.split("\0") if "=" in entry)


@pytest.fixture
async def example_env(server, credit, tmp_path) -> tuple[dict[str, str], str]:
    """The environment the README has a user set up next to `make run`, and a funded user."""
    user = new_user_id("readme")
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user, initial_credits=50), metadata=ADMIN_METADATA
    )
    # What `make run` leaves: its dev secrets file, written as it writes it, and its dev key
    # known to the server. The secrets are the test server's own.
    data_dir = tmp_path / ".data"
    data_dir.mkdir()
    (data_dir / DEV_SECRETS_FILE).write_text(
        f"ADMIN_SECRET={ADMIN_SECRET}\nJWT_SECRET={JWT_SECRET}\nWEBHOOK_SECRET={WEBHOOK_SECRET}\n"
    )
    dev, _ = with_dev_secrets(settings_for_test(data_dir))
    assert dev.dev_api_key
    await server.api_keys.ensure(dev.dev_api_key, DEV_KEY_NAME, GRANTABLE_SCOPES)
    env = await readme_environment(tmp_path)
    # Where this test's server listens; `make run`'s defaults need no setting.
    env["PLUCT_TARGET"] = env["PLUCT_GRPC_LISTEN"] = f"127.0.0.1:{server.grpc_port}"
    return env, user


@pytest.mark.parametrize("index", range(len(blocks("python"))))
async def test_each_python_snippet_runs_as_pasted(example_env, index):
    env, user = example_env
    snippet = blocks("python")[index].replace(EXAMPLE_USER, user)
    code, output = await run([sys.executable, "-c", snippet], env)
    assert code == 0, output
    assert output.strip(), "the snippet printed nothing"


async def test_the_buf_curl_session_runs_command_by_command(example_env):
    env, _ = example_env
    # Every command must succeed, the session's own CreateUser first, so its user is new here.
    fresh = new_user_id("readme-session")
    session = "set -euo pipefail\n" + buf_curl_session().replace(EXAMPLE_USER, fresh)
    code, output = await run(["bash", "-c", session], env)
    assert code == 0, output
    assert '"status": "SERVING"' in output  # the last command, so every one before it ran
    assert "pluct.token.v1.TokenService/VendToken" in output  # --list-methods


# How the README's snippets read a variable they cannot do without (not one with a default).
REQUIRED_VARIABLE = {
    "python": re.compile(r"os\.environ\[[\"'](\w+)[\"']\]"),
    "typescript": re.compile(r"process\.env\.(\w+)\b(?!\s*\?\?)"),
}


async def test_every_variable_a_snippet_needs_is_set_by_the_readmes_own_setup(tmp_path):
    with_dev_secrets(settings_for_test(tmp_path / ".data"))  # as `make run` first writes them
    env = await readme_environment(tmp_path)
    needed = {
        (language, name)
        for language, pattern in REQUIRED_VARIABLE.items()
        for body in blocks(language)
        for name in pattern.findall(body)
    }
    assert ("python", "PLUCT_API_KEY") in needed and ("typescript", "PLUCT_API_KEY") in needed
    assert {(language, name) for language, name in needed if name not in env} == set()
