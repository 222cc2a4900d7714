"""The README's examples run as pasted: its Python snippets and its buf curl session."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.callers import GRANTABLE_SCOPES
from tests.support import ADMIN_METADATA, WEBHOOK_SECRET, caller_key, new_user_id

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


async def run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a command from the repository root; return its exit status and all its output."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return int(process.returncode or 0), out.decode()


@pytest.fixture
async def example_env(server, credit) -> tuple[dict[str, str], str]:
    """The environment `make run` leaves a shell with, and a funded user to stand for user123."""
    user = new_user_id("readme")
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user, initial_credits=50), metadata=ADMIN_METADATA
    )
    key = await caller_key(server, scopes=tuple(sorted(GRANTABLE_SCOPES)), name="readme")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PLUCT_TARGET": f"127.0.0.1:{server.grpc_port}",
        "PLUCT_GRPC_LISTEN": f"127.0.0.1:{server.grpc_port}",
        "PLUCT_API_KEY": key,
        "PLUCT_DEV_API_KEY": key,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
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
