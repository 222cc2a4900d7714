"""Money under real concurrency: no overdraft, no lost credit, no double count."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import asyncpg
import grpc
import jwt
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.values.settings import Settings
from tests.support import (
    ADMIN_METADATA,
    JWT_SECRET,
    WEBHOOK_METADATA,
    new_request_id,
    running_server,
    settings_for_test,
)


async def outcome(call) -> object:
    """Await a call and return its response, or the status code name it failed with."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)


async def ledger_rows(dsn: str, user_id: str) -> Counter[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT type FROM ledger WHERE user_id = $1", user_id)
    finally:
        await conn.close()
    return Counter(row["type"] for row in rows)


async def test_500_concurrent_vends_on_50_credits_issue_exactly_50_tokens(
    credit, token, database_dsn, user_id, server
):
    batches_before = server.spends.sent
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=50), metadata=ADMIN_METADATA
    )

    results = await asyncio.gather(
        *(outcome(token.VendToken(token_pb.VendTokenRequest(user_id=user_id))) for _ in range(500))
    )

    tokens = [r.token for r in results if isinstance(r, token_pb.VendTokenResponse)]
    refusals = Counter(r for r in results if isinstance(r, str))
    assert len(tokens) == 50
    assert len(set(tokens)) == 50
    assert refusals == {"FAILED_PRECONDITION": 450}
    assert all(jwt.decode(t, JWT_SECRET, algorithms=["HS256"])["sub"] == user_id for t in tokens)
    balances_after = sorted(
        r.balance_after for r in results if isinstance(r, token_pb.VendTokenResponse)
    )
    assert balances_after == list(range(50))
    balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == 0
    assert await ledger_rows(database_dsn, user_id) == {"user_creation": 1, "spend": 50}
    # They really went in batches, each spend with its own answer.
    assert server.spends.largest > 1
    assert server.spends.sent - batches_before < 500


async def test_concurrent_credits_never_lose_an_update(credit, admin, database_dsn, user_id):
    webhook = [
        credit.AddCredits(
            credit_pb.AddCreditsRequest(user_id=user_id, amount=amount), metadata=WEBHOOK_METADATA
        )
        for amount in range(1, 151)
    ]
    grants = [
        admin.AddCredits(
            admin_pb.AddCreditsRequest(user_id=user_id, amount=2), metadata=ADMIN_METADATA
        )
        for _ in range(50)
    ]

    # The user does not exist yet: the first credits race to create it too.
    results = await asyncio.gather(*webhook, *grants)

    expected = sum(range(1, 151)) + 2 * 50
    assert max(r.new_balance for r in results) == expected
    assert len({r.new_balance for r in results}) == 200  # every credit saw a distinct balance
    balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == expected
    assert await ledger_rows(database_dsn, user_id) == {"add_webhook": 150, "admin_add": 50}


async def test_credits_and_spends_racing_keep_the_books_straight(
    credit, token, database_dsn, user_id
):
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=10))
    credits = [
        credit.AddCredits(
            credit_pb.AddCreditsRequest(user_id=user_id, amount=1), metadata=WEBHOOK_METADATA
        )
        for _ in range(100)
    ]
    vends = [token.VendToken(token_pb.VendTokenRequest(user_id=user_id)) for _ in range(200)]

    results = await asyncio.gather(*(outcome(call) for call in [*credits, *vends]))

    sold = sum(isinstance(r, token_pb.VendTokenResponse) for r in results)
    assert all(not isinstance(r, str) or r == "FAILED_PRECONDITION" for r in results)
    assert 10 <= sold <= 110
    balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == 110 - sold
    rows = await ledger_rows(database_dsn, user_id)
    assert rows == {"user_creation": 1, "add_webhook": 100, "spend": sold}


async def test_concurrent_retries_of_one_webhook_credit_count_once(credit, database_dsn, user_id):
    request = credit_pb.AddCreditsRequest(user_id=user_id, amount=30, request_id=new_request_id())

    results = await asyncio.gather(
        *(credit.AddCredits(request, metadata=WEBHOOK_METADATA) for _ in range(50))
    )

    assert {r.new_balance for r in results} == {30}
    assert await ledger_rows(database_dsn, user_id) == {"add_webhook": 1}


async def test_concurrent_creates_of_one_user_make_exactly_one(credit, database_dsn, user_id):
    results = await asyncio.gather(
        *(
            outcome(
                credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=5))
            )
            for _ in range(30)
        )
    )

    assert Counter(r if isinstance(r, str) else "OK" for r in results) == {
        "OK": 1,
        "ALREADY_EXISTS": 29,
    }
    assert await ledger_rows(database_dsn, user_id) == {"user_creation": 1}


@pytest.mark.parametrize("attempts", [40])
async def test_vends_across_two_servers_on_one_database_never_overdraw(
    credit, database_dsn, data_dir, user_id, attempts
):
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=10))
    async with (
        running_server(settings_for_test(data_dir), database_dsn) as first,
        running_server(settings_for_test(data_dir), database_dsn) as second,
        grpc.aio.insecure_channel(f"127.0.0.1:{first.grpc_port}") as channel_a,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.grpc_port}") as channel_b,
    ):
        stubs = [
            token_service_pb2_grpc.TokenServiceStub(channel_a),
            token_service_pb2_grpc.TokenServiceStub(channel_b),
        ]
        results = await asyncio.gather(
            *(
                outcome(
                    stubs[i % 2].VendToken(
                        token_pb.VendTokenRequest(user_id=user_id), metadata=ADMIN_METADATA
                    )
                )
                for i in range(attempts)
            )
        )

    assert sum(isinstance(r, token_pb.VendTokenResponse) for r in results) == 10
    balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == 0


async def vends_on_a_server_of_its_own(
    settings: Settings, dsn: str, user_id: str, request_ids: Sequence[str]
) -> tuple[list[object], int, int]:
    """Start a server with `settings`, give `user_id` 50 credits, then vend once per request id,
    all at once; return the outcomes, the balance left and how many batches the server sent."""
    async with (
        running_server(settings, dsn) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        token = token_service_pb2_grpc.TokenServiceStub(channel)
        await credit.CreateUser(
            credit_pb.CreateUserRequest(user_id=user_id, initial_credits=50),
            metadata=ADMIN_METADATA,
        )
        results = await asyncio.gather(
            *(
                outcome(
                    token.VendToken(
                        token_pb.VendTokenRequest(user_id=user_id, request_id=request_id),
                        metadata=ADMIN_METADATA,
                    )
                )
                for request_id in request_ids
            )
        )
        balance = await credit.GetBalance(
            credit_pb.GetBalanceRequest(user_id=user_id), metadata=ADMIN_METADATA
        )
        return results, balance.balance, server.spends.sent


async def test_without_prepared_statements_vends_still_never_overdraw(
    database_dsn, data_dir, user_id
):
    # PLUCT_DB_STATEMENT_CACHE_SIZE=0, as PgBouncer's transaction mode needs: unnamed statements.
    settings = settings_for_test(data_dir, db_statement_cache_size=0)
    results, _, _ = await vends_on_a_server_of_its_own(
        settings, database_dsn, user_id, [f"no-cache-{i}" for i in range(100)]
    )

    assert sum(isinstance(r, token_pb.VendTokenResponse) for r in results) == 50
    assert Counter(r for r in results if isinstance(r, str)) == {"FAILED_PRECONDITION": 50}


async def test_with_several_batches_in_flight_and_a_wait_vends_still_never_overdraw(
    database_dsn, data_dir, user_id
):
    # PLUCT_SPEND_BATCHES_IN_FLIGHT=4 and PLUCT_SPEND_BATCH_WAIT_US=2000: concurrent batches of
    # one worker race on the same row, and each first vend waits for company.
    settings = settings_for_test(
        data_dir, spend_batches_in_flight=4, spend_batch_wait=timedelta(microseconds=2000)
    )
    # Each request id twice: the retry answers as the first.
    request_ids = [f"many-{i % 150}" for i in range(300)]
    results, balance, batches = await vends_on_a_server_of_its_own(
        settings, database_dsn, user_id, request_ids
    )

    sold = [r for r in results if isinstance(r, token_pb.VendTokenResponse)]
    assert len({r.token_id for r in sold}) == 50
    assert Counter(r for r in results if isinstance(r, str)) == {"FAILED_PRECONDITION": 200}
    assert balance == 0
    assert await ledger_rows(database_dsn, user_id) == {"user_creation": 1, "spend": 50}
    assert batches < 300
