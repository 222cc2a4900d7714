"""The typed client and its command line, against the running server."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from pluct_client import PluctClient
from pluct_client.client import new_request_id

from tests.support import ADMIN_SECRET, WEBHOOK_SECRET

pytestmark = pytest.mark.usefixtures("database_dsn")


async def test_client_covers_a_users_life(server, user_id):
    async with PluctClient(
        f"127.0.0.1:{server.grpc_port}", admin_secret=ADMIN_SECRET, webhook_secret=WEBHOOK_SECRET
    ) as client:
        await client.create_user(user_id, 50)  # above the allowance: the admin secret goes along
        await client.add_payment(user_id, 5, request_id=new_request_id())
        await client.grant(user_id, 2, reason="goodwill")
        vended = await client.vend_token(user_id)
        verdict = await client.validate_token(vended.token)
        balance = await client.balance(user_id)
        history = await client.transactions(user_id)
        everyone = await client.all_transactions(user_id=user_id)
        users = await client.list_users(page_size=1)

    assert (verdict.valid, verdict.user_id) == (True, user_id)
    assert balance == 56
    assert len(history.transactions) == len(everyone.transactions) == 4
    assert users.users[0].user_id == user_id


async def cli(server, *args: str) -> tuple[int, str, str]:
    """Run `python -m pluct_client` without blocking the server that shares this event loop."""
    env = {**os.environ, "PLUCT_TARGET": f"127.0.0.1:{server.grpc_port}"}
    env.pop("ADMIN_SECRET", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pluct_client",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return int(process.returncode or 0), out.decode(), err.decode()


async def test_command_line_prints_json(server, user_id):
    _, created, _ = await cli(server, "create-user", user_id, "--credits", "3")
    _, vended, _ = await cli(server, "vend", user_id)
    _, balance, _ = await cli(server, "balance", user_id)
    refused_code, _, refused = await cli(server, "users")

    assert json.loads(created) == {"user_id": user_id, "initial_balance": "3"}
    assert json.loads(vended)["balance_after"] == "2"
    assert balance.strip() == "2"
    assert refused_code == 1
    assert refused.startswith("UNAUTHENTICATED")
