"""The typed client and its command line, against the running server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from pluct_client import PluctClient
from pluct_client.client import new_request_id

from tests.support import ADMIN_SECRET, WEBHOOK_SECRET, caller_key

pytestmark = pytest.mark.usefixtures("database_dsn")

# What the command line reads; a test passes what it means to, and nothing leaks in.
CLI_SETTINGS = (
    "ADMIN_SECRET",
    "PLUCT_API_KEY",
    "PLUCT_DEV_API_KEY",
    "WEBHOOK_SECRET",
    "PLUCT_GRPC_LISTEN",
    "PLUCT_DATA_DIR",
    "PLUCT_TARGET",
)


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


async def cli(server, *args: str, **env_vars: str) -> tuple[int, str, str]:
    """Run `python -m pluct_client --json` against the server under test."""
    env_vars = {"PLUCT_TARGET": f"127.0.0.1:{server.grpc_port}", **env_vars}
    return await run_cli("--json", *args, workdir=None, **env_vars)


async def run_cli(*args: str, workdir: Path | None = None, **env_vars: str) -> tuple[int, str, str]:
    """Run `python -m pluct_client` in `workdir` (by default, one with no settings files)."""
    env = {name: value for name, value in os.environ.items() if name not in CLI_SETTINGS}
    env.update(env_vars)
    # A subprocess, so the server sharing this event loop keeps answering.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pluct_client",
        *args,
        env=env,
        cwd=workdir or tempfile.gettempdir(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return int(process.returncode or 0), out.decode(), err.decode()


async def test_command_line_prints_json(server, user_id):
    key = await caller_key(server)
    _, created, _ = await cli(server, "create-user", user_id, "--credits", "3", PLUCT_API_KEY=key)
    _, vended, _ = await cli(server, "vend", user_id, PLUCT_API_KEY=key)
    _, balance, _ = await cli(server, "balance", user_id, PLUCT_API_KEY=key)
    refused_code, _, refused = await cli(server, "users", PLUCT_API_KEY=key)
    stranger_code, _, stranger = await cli(server, "balance", user_id)

    assert json.loads(created) == {"user_id": user_id, "initial_balance": "3"}
    assert json.loads(vended)["balance_after"] == "2"
    assert balance.strip() == "2"
    assert (refused_code, refused.split(":")[0]) == (1, "PERMISSION_DENIED")
    assert (stranger_code, stranger.split(":")[0]) == (1, "UNAUTHENTICATED")


async def test_command_line_manages_keys_with_the_admin_secret(server):
    _, made, _ = await cli(
        server, "keys", "create", "cli-made", "--scope", "credits:read", ADMIN_SECRET=ADMIN_SECRET
    )
    made = json.loads(made)
    secret, key_id = made["secret"], made["api_key"]["key_id"]
    reads, _, _ = await cli(server, "balance", "anyone", PLUCT_API_KEY=secret)
    _, listed, _ = await cli(server, "keys", "list", ADMIN_SECRET=ADMIN_SECRET)
    _, revoked, _ = await cli(server, "keys", "revoke", key_id, ADMIN_SECRET=ADMIN_SECRET)
    after, _, refused = await cli(server, "balance", "anyone", PLUCT_API_KEY=secret)

    assert made["api_key"]["scopes"] == ["credits:read"]
    assert reads == 0
    assert key_id in listed and secret not in listed
    assert json.loads(revoked)["api_key"]["revoke_time"]
    assert (after, refused.split(":")[0]) == (1, "UNAUTHENTICATED")


async def test_command_line_prices_features_and_vends_them(server, user_id):
    feature = f"cli-{new_request_id()[:8]}"
    key = await caller_key(server)
    _, priced, _ = await cli(server, "price", "set", feature, "3", ADMIN_SECRET=ADMIN_SECRET)
    _, listed, _ = await cli(server, "prices", PLUCT_API_KEY=key)
    await cli(server, "create-user", user_id, "--credits", "5", PLUCT_API_KEY=key)
    _, vended, _ = await cli(server, "vend", user_id, "--feature", feature, PLUCT_API_KEY=key)
    token = json.loads(vended)["token"]
    ok, good, _ = await cli(server, "validate", token, "--feature", feature, PLUCT_API_KEY=key)
    wrong, other, _ = await cli(
        server, "validate", token, "--feature", "default", PLUCT_API_KEY=key
    )
    refused, _, why = await cli(server, "price", "set", feature, "4", PLUCT_API_KEY=key)

    assert json.loads(priced)["price"]["credits"] == "3"
    assert feature in {price["feature"] for price in json.loads(listed)["prices"]}
    assert (json.loads(vended)["credits_charged"], json.loads(vended)["balance_after"]) == (
        "3",
        "2",
    )
    assert (ok, json.loads(good)["feature"]) == (0, feature)
    assert (wrong, json.loads(other)["reason"]) == (1, "Token is for another feature")
    assert (refused, why.split(":")[0]) == (1, "PERMISSION_DENIED")


async def test_command_line_grants_on_terms_and_lists_grants(server, user_id):
    key = await caller_key(server)
    await cli(server, "create-user", user_id, "--credits", "2", PLUCT_API_KEY=key)
    _, given, _ = await cli(
        server, "credit", user_id, "4", "--paid", "--priority", "7", ADMIN_SECRET=ADMIN_SECRET
    )
    _, listed, _ = await cli(server, "grants", user_id, PLUCT_API_KEY=key)

    grants = json.loads(listed)["grants"]
    assert [(g["category"], g["priority"], g["amount"]) for g in grants] == [
        ("GRANT_CATEGORY_PAID", 7, "4"),
        ("GRANT_CATEGORY_PROMOTIONAL", 50, "2"),
    ]
    assert grants[0]["grant_id"] == json.loads(given)["grant_id"]


async def test_command_line_grants_that_expire_and_refunds(server, user_id):
    key = await caller_key(server)
    await cli(server, "create-user", user_id, PLUCT_API_KEY=key)
    _, given, _ = await cli(
        server, "credit", user_id, "3", "--expires", "30d", ADMIN_SECRET=ADMIN_SECRET
    )
    _, vended, _ = await cli(server, "vend", user_id, PLUCT_API_KEY=key)
    _, history, _ = await cli(server, "transactions", user_id, PLUCT_API_KEY=key)
    spend = json.loads(history)["transactions"][0]
    _, refunded, _ = await cli(server, "refund", spend["id"], ADMIN_SECRET=ADMIN_SECRET)
    bad, _, why = await cli(server, "credit", user_id, "3", "--expires", "soon")

    (grant,) = json.loads((await cli(server, "grants", user_id, PLUCT_API_KEY=key))[1])["grants"]
    assert grant["grant_id"] == json.loads(given)["grant_id"] and grant["expire_time"]
    assert json.loads(vended)["balance_after"] == "2"
    assert json.loads(refunded)["refund"]["refunded_transaction_id"] == spend["id"]
    assert json.loads(refunded)["balance_after"] == "3"
    assert bad == 2 and "not a duration" in why
    _, events, _ = await cli(server, "events", user_id, ADMIN_SECRET=ADMIN_SECRET)
    assert [e["type"] for e in json.loads(events)["events"]] == [
        "credits.refunded",
        "credits.spent",
        "credits.granted",
    ]


async def test_command_line_manages_webhook_endpoints(server):
    url = "https://hooks.example.com/cli"
    _, made, _ = await cli(
        server, "webhooks", "create", url, "--event", "credits.spent", "--threshold", "10",
        ADMIN_SECRET=ADMIN_SECRET,
    )  # fmt: skip
    endpoint = json.loads(made)["endpoint"]
    _, rotated, _ = await cli(
        server, "webhooks", "rotate-secret", endpoint["endpoint_id"], ADMIN_SECRET=ADMIN_SECRET
    )
    _, listed, _ = await cli(server, "webhooks", "list", ADMIN_SECRET=ADMIN_SECRET)
    _, removed, _ = await cli(
        server, "webhooks", "delete", endpoint["endpoint_id"], ADMIN_SECRET=ADMIN_SECRET
    )
    gone, _, why = await cli(
        server, "webhooks", "delete", endpoint["endpoint_id"], ADMIN_SECRET=ADMIN_SECRET
    )

    assert (endpoint["url"], endpoint["event_types"]) == (url, ["credits.spent"])
    assert json.loads(made)["secret"].startswith("whsec_")
    assert json.loads(rotated)["secret"] != json.loads(made)["secret"]
    assert endpoint["endpoint_id"] in {e["endpoint_id"] for e in json.loads(listed)["endpoints"]}
    assert json.loads(made)["secret"] not in listed
    assert json.loads(removed)["endpoint"]["endpoint_id"] == endpoint["endpoint_id"]
    assert (gone, why.split(":")[0]) == (1, "NOT_FOUND")


def test_the_command_line_offers_exactly_the_scopes_a_key_may_hold():
    from pluct_client.__main__ import SCOPES

    from pluct_server.security.callers import GRANTABLE_SCOPES

    assert set(SCOPES) == GRANTABLE_SCOPES


async def test_the_command_line_reads_the_servers_own_settings_and_prints_tables(
    server, user_id, tmp_path
):
    # As `make run` leaves them: where gRPC listens in .env, the dev key in the data folder.
    key = await caller_key(server, scopes=("users:create", "credits:read", "admin"), name="dev")
    (tmp_path / ".env").write_text(f"PLUCT_GRPC_LISTEN=0.0.0.0:{server.grpc_port}\n")
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "dev-secrets.env").write_text(f"PLUCT_DEV_API_KEY={key}\n")

    created, _, _ = await run_cli("create-user", user_id, "--credits", "4", workdir=tmp_path)
    code, shown, errors = await run_cli("users", workdir=tmp_path)

    assert (created, code) == (0, 0), errors
    header, *rows = shown.splitlines()
    assert header.split()[0] == "user_id"
    assert any(row.split()[0] == user_id for row in rows)


async def test_without_a_key_the_command_line_says_none_was_found_and_where_it_looked(
    server, tmp_path
):
    code, out, errors = await run_cli(
        "balance", "anyone", workdir=tmp_path, PLUCT_TARGET=f"127.0.0.1:{server.grpc_port}"
    )

    assert (code, out) == (1, "")
    assert errors.splitlines() == [
        "UNAUTHENTICATED: no API key found (looked for PLUCT_API_KEY, PLUCT_DEV_API_KEY or "
        f"ADMIN_SECRET in the environment, {tmp_path / '.env'}, "
        f"{tmp_path / '.data' / 'dev-secrets.env'})"
    ]


async def test_validate_exits_one_for_a_token_that_is_not_valid(server, user_id):
    key = await caller_key(server)
    await cli(server, "create-user", user_id, "--credits", "1", PLUCT_API_KEY=key)
    _, vended, _ = await cli(server, "vend", user_id, PLUCT_API_KEY=key)
    token = json.loads(vended)["token"]
    target = f"127.0.0.1:{server.grpc_port}"

    good, accepted, _ = await cli(server, "validate", token, PLUCT_API_KEY=key)
    bad, refused, _ = await cli(server, "validate", token + "x", PLUCT_API_KEY=key)
    bad_table, table, _ = await run_cli("validate", "BAD", PLUCT_API_KEY=key, PLUCT_TARGET=target)

    assert (good, json.loads(accepted)["valid"]) == (0, True)
    assert bad == bad_table == 1
    assert json.loads(refused) == {"valid": False, "reason": "Invalid token signature"}
    assert table.split()[:2] == ["valid", "False"]


async def test_zero_and_false_fields_are_printed(server, user_id):
    target = f"127.0.0.1:{server.grpc_port}"
    await cli(server, "create-user", user_id, ADMIN_SECRET=ADMIN_SECRET)

    _, listed, _ = await cli(server, "users", ADMIN_SECRET=ADMIN_SECRET)
    _, table, _ = await run_cli("users", ADMIN_SECRET=ADMIN_SECRET, PLUCT_TARGET=target)

    (mine,) = [user for user in json.loads(listed)["users"] if user["user_id"] == user_id]
    assert (mine["balance"], mine["total_spent"]) == ("0", "0")
    header, *rows = table.splitlines()
    (row,) = [row.split() for row in rows if row.split()[:1] == [user_id]]
    named = dict(zip(header.split(), row, strict=False))
    assert (named["balance"], named["total_spent"]) == ("0", "0")
