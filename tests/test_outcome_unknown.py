"""A write that may have committed says so, and a retry with its request id settles it once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import grpc
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc
from pluct_client import PluctClient

from tests.http_support import call
from tests.support import (
    ADMIN_METADATA,
    WEBHOOK_METADATA,
    DefaultKey,
    caller_key,
    error_reason,
    ledger_of,
    new_request_id,
    running_server,
    settings_for_test,
)

# Waiting for a backend to block is bounded by this many polls of pg_stat_activity.
POLLS = 400


@asynccontextmanager
async def user_row_held(dsn: str, user_id: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold the user's row lock (as a long transaction would) until the block ends."""
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            yield holder
    finally:
        await holder.close()


async def blocked_by(db: asyncpg.Connection, holder: asyncpg.Connection) -> list[int]:
    """Wait until some backend waits on `holder`'s locks; return those backends."""
    for _ in range(POLLS):
        pids: list[int] = await db.fetchval(
            "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity "
            "WHERE $1 = ANY (pg_blocking_pids(pid))",
            holder.get_server_pid(),
        )
        if pids:
            return pids
        await asyncio.sleep(0.025)
    raise AssertionError("no call ever waited on the held row")


async def kill_the_waiting_backend(db: asyncpg.Connection, holder: asyncpg.Connection) -> None:
    """Terminate the backend that runs the waiting statement, as a failover or OOM would."""
    for pid in await blocked_by(db, holder):
        await db.execute("SELECT pg_terminate_backend($1)", pid)


async def fund(credit, user_id: str, credits: int) -> None:
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=credits),
        metadata=ADMIN_METADATA,
    )


async def test_a_vend_whose_connection_dies_mid_statement_answers_outcome_unknown(
    server, credit, token, db, database_dsn, user_id
):
    await fund(credit, user_id, 3)
    request_id = new_request_id()
    vend = token_pb.VendTokenRequest(user_id=user_id, request_id=request_id)

    async with user_row_held(database_dsn, user_id) as holder:
        call = asyncio.ensure_future(token.VendToken(vend, timeout=30))
        await kill_the_waiting_backend(db, holder)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call

    # The statement was sent: it might have committed, so the answer is not UNAVAILABLE.
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert error_reason(raised.value)[0] == "OUTCOME_UNKNOWN"
    assert "same request_id" in (raised.value.details() or "")
    # Here it did not commit; the retry with the same id spends exactly once.
    first = await token.VendToken(vend, timeout=30)
    again = await token.VendToken(vend, timeout=30)
    assert first.token == again.token
    assert first.balance_after == 2
    balance, entries = await ledger_of(database_dsn, user_id)
    assert (balance, entries["spend"]) == (2, 1)


async def test_a_credit_whose_connection_dies_mid_statement_is_applied_once_on_retry(
    server, credit, db, database_dsn, user_id
):
    await fund(credit, user_id, 1)
    grant = credit_pb.AddCreditsRequest(user_id=user_id, amount=7, request_id=new_request_id())

    async with user_row_held(database_dsn, user_id) as holder:
        call = asyncio.ensure_future(
            credit.AddCredits(grant, metadata=WEBHOOK_METADATA, timeout=30)
        )
        await kill_the_waiting_backend(db, holder)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call

    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert error_reason(raised.value)[0] == "OUTCOME_UNKNOWN"
    for _ in range(2):
        reply = await credit.AddCredits(grant, metadata=WEBHOOK_METADATA, timeout=30)
        assert reply.new_balance == 8
    balance, entries = await ledger_of(database_dsn, user_id)
    assert balance == 8
    assert sum(entries.values()) == 2  # the opening grant and this one


async def test_a_statement_past_the_command_timeout_answers_deadline_exceeded(
    server, credit, database_dsn, tmp_path, user_id
):
    await fund(credit, user_id, 2)
    settings = settings_for_test(tmp_path, db_command_timeout_seconds=1.0)
    async with running_server(settings, database_dsn) as slow:
        key = DefaultKey(await caller_key(slow))
        target = f"127.0.0.1:{slow.grpc_port}"
        async with grpc.aio.insecure_channel(target, interceptors=[key]) as channel:
            token = token_service_pb2_grpc.TokenServiceStub(channel)
            vend = token_pb.VendTokenRequest(user_id=user_id, request_id=new_request_id())
            async with user_row_held(database_dsn, user_id):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await token.VendToken(vend, timeout=30)
            settled = await token.VendToken(vend, timeout=30)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_reason(raised.value)[0] == "OUTCOME_UNKNOWN"
    assert settled.balance_after == 1
    balance, entries = await ledger_of(database_dsn, user_id)
    assert (balance, entries["spend"]) == (1, 1)


async def test_a_read_that_fails_says_unavailable_not_unknown(
    server, credit, db, database_dsn, user_id
):
    await fund(credit, user_id, 1)
    async with user_row_held(database_dsn, user_id) as holder:
        # A read never waits on a row lock, so make one wait on an exclusive table lock.
        await holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        call = asyncio.ensure_future(
            credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id), timeout=30)
        )
        await kill_the_waiting_backend(db, holder)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(raised.value)[0] == "DATABASE_UNAVAILABLE"


async def test_the_typed_client_retries_an_unknown_outcome_and_spends_once(
    server, credit, db, database_dsn, user_id
):
    await fund(credit, user_id, 5)
    key = await caller_key(server)
    async with PluctClient(f"127.0.0.1:{server.grpc_port}", api_key=key) as client:
        async with user_row_held(database_dsn, user_id) as holder:
            # No request id given: the client makes one, so that its own retry is safe.
            call = asyncio.ensure_future(client.vend_token(user_id))
            await kill_the_waiting_backend(db, holder)
        vended = await call
        verdict = await client.validate_token(vended.token)

    assert vended.balance_after == 4
    assert (verdict.valid, verdict.user_id) == (True, user_id)
    balance, entries = await ledger_of(database_dsn, user_id)
    assert (balance, entries["spend"]) == (4, 1)


async def test_an_http_vend_with_an_unknown_outcome_is_a_503_that_legacy_callers_retry(
    server, credit, http, db, database_dsn, user_id
):
    await fund(credit, user_id, 2)
    async with user_row_held(database_dsn, user_id) as holder:
        vend = asyncio.ensure_future(
            call(http, "POST", "/vend-token", json_body={"userId": user_id})
        )
        await kill_the_waiting_backend(db, holder)
        reply = await vend

    # Not 409: a mobile client reads 409 as "the user exists" and would not retry.
    assert reply.status == 503
    assert "same request_id" in reply.error
    balance, entries = await ledger_of(database_dsn, user_id)
    assert (balance, entries["spend"]) == (2, 0)
