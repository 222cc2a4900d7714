"""The calls existing callers already make, verbatim from the contract, through real curl."""

from __future__ import annotations

import shutil

import jwt
import pytest

from pluct_server.values.settings import Settings
from tests.http_support import curl_argv, parse_curl, run_curl, run_without_curl
from tests.support import (
    ADMIN_SECRET,
    JWT_SECRET,
    WEBHOOK_SECRET,
    running_server,
    settings_for_test,
)

# Copied verbatim from the contract; only the port is changed, to the test server's.
LEGACY_CALLS = r"""
curl -X POST http://localhost:8787/user/create -H "Content-Type: application/json" \
  -d '{"userId": "user123", "initialCredits": 10}'
curl http://localhost:8787/user/user123/balance
curl -X POST http://localhost:8787/add-credits -H "Content-Type: application/json" \
  -H "x-webhook-secret: $WEBHOOK_SECRET" -d '{"userId": "user123", "amount": 5}'
curl -X POST http://localhost:8787/vend-token -H "Content-Type: application/json" \
  -d '{"userId": "user123"}'
curl -X POST http://localhost:8787/validate-token -H "Content-Type: application/json" \
  -d '{"token": "<the JWT from vend-token>"}'
curl -H "Authorization: Bearer $ADMIN_SECRET" http://localhost:8787/admin/users
curl -H "Authorization: Bearer $ADMIN_SECRET" http://localhost:8787/admin/transactions
curl -X POST http://localhost:8787/admin/credits/add -H "Content-Type: application/json" \
  -H "Authorization: Bearer $ADMIN_SECRET" -d '{"userId": "user123", "amount": 3, "reason": "goodwill"}'
curl http://localhost:8787/health
"""  # noqa: E501 - verbatim
ENV = {"ADMIN_SECRET": ADMIN_SECRET, "WEBHOOK_SECRET": WEBHOOK_SECRET}


def commands() -> list[str]:
    return [line for line in LEGACY_CALLS.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(params=["curl", "aiohttp"])
def runner(request):
    if request.param == "curl" and shutil.which("curl") is None:
        pytest.skip("curl is not installed; the aiohttp run sends the same requests")
    return request.param


async def test_the_legacy_readme_calls_work_unchanged(server, runner):
    await check_legacy_calls(server.http_port, runner)


async def test_the_legacy_calls_work_under_the_default_limits(database_dsn, tmp_path):
    # Production's limits, as a fresh deployment has them: the contract's callers never see one.
    defaults = Settings(database_url=None, admin_secret="", jwt_secret="", webhook_secret="")
    limited = settings_for_test(
        tmp_path,
        vend_rate=defaults.vend_rate,
        http_ip_rate=defaults.http_ip_rate,
        signup_rate=defaults.signup_rate,
        auth_failure_rate=defaults.auth_failure_rate,
    )
    assert not limited.vend_rate.off and not limited.http_ip_rate.off
    async with running_server(limited, database_dsn) as server:
        await check_legacy_calls(server.http_port, "aiohttp")


async def check_legacy_calls(port: int, runner: str) -> None:
    """Run the contract's nine calls in order against the shim on `port`, and check each answer."""
    results = []
    token = ""
    for command in commands():
        argv = curl_argv(command.replace("<the JWT from vend-token>", token), port, ENV)
        if runner == "aiohttp":
            status, body = await run_without_curl(parse_curl(argv))
        else:
            status, body = await run_curl(argv)
        results.append((status, body))
        if "/vend-token" in command:
            token = body["token"]

    created, balance, added, vended, validated, users, transactions, granted, health = results
    # The runs share one database, and the README always uses user123.
    if created[0] == 200:
        assert created == (
            200,
            {
                "success": True,
                "userId": "user123",
                "initialBalance": 10,
                "message": "User created successfully",
            },
        )
    else:
        assert created == (
            409,
            {"error": "User already exists", "code": 409, "reason": "ALREADY_EXISTS"},
        )
    start = balance[1]["balance"]
    assert balance[0] == 200 and balance[1]["userId"] == "user123"
    assert added == (200, {"success": True, "newBalance": start + 5})
    assert vended[0] == 200
    assert jwt.decode(vended[1]["token"], JWT_SECRET, algorithms=["HS256"])["sub"] == "user123"
    assert validated[0] == 200
    assert validated[1]["valid"] is True and validated[1]["userId"] == "user123"
    assert users[0] == 200
    assert any(row["user_id"] == "user123" for row in users[1])
    assert transactions[0] == 200 and isinstance(transactions[1], list)
    assert granted == (
        200,
        {
            "success": True,
            "newBalance": start + 5 - 1 + 3,
            "message": "Manually added 3 credits to user123",
        },
    )
    assert health[0] == 200 and health[1]["status"] == "healthy"
