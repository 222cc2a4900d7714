"""The database going away and coming back: UNAVAILABLE and NOT_SERVING, then recovery."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from pluct_server.app.health import LIVENESS_SERVICE
from pluct_server.app.server import SERVICE_NAMES
from tests.support import (
    WEBHOOK_METADATA,
    DefaultKey,
    caller_key,
    error_reason,
    running_server,
    settings_for_test,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A hang guard, not a timing claim: a call that hangs fails with DEADLINE_EXCEEDED, not UNAVAILABLE.
CALL_DEADLINE_SECONDS = 15


async def health_of(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def wait_for_health(channel: grpc.aio.Channel, wanted: int) -> None:
    """Watch the whole-server health until it reports `wanted` (the test timeout bounds this)."""
    stub = health_pb2_grpc.HealthStub(channel)
    async for update in stub.Watch(health_pb2.HealthCheckRequest(service="")):
        if update.status == wanted:
            return


async def test_outage_gives_unavailable_and_not_serving_then_recovers(own_postgres, tmp_path):
    async with running_server(settings_for_test(tmp_path), own_postgres.dsn) as server:
        # A key made before the outage keeps working from the cache while the database is away.
        key = DefaultKey(await caller_key(server))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", interceptors=[key])
        async with channel:
            await _outage_and_recovery(own_postgres, channel)


async def _outage_and_recovery(own_postgres, channel: grpc.aio.Channel) -> None:
    credit = credit_service_pb2_grpc.CreditServiceStub(channel)
    user_id = "outage-user"
    await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=5), metadata=WEBHOOK_METADATA
    )
    for service in ("", *SERVICE_NAMES):
        assert await health_of(channel, service) == SERVING

    await asyncio.to_thread(own_postgres.stop)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.GetBalance(
            credit_pb.GetBalanceRequest(user_id=user_id), timeout=CALL_DEADLINE_SECONDS
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(raised.value)[0] == "DATABASE_UNAVAILABLE"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.AddCredits(
            credit_pb.AddCreditsRequest(user_id=user_id, amount=5),
            metadata=WEBHOOK_METADATA,
            timeout=CALL_DEADLINE_SECONDS,
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    await wait_for_health(channel, NOT_SERVING)
    for service in ("", *SERVICE_NAMES):
        assert await health_of(channel, service) == NOT_SERVING
    # Alive all the same: a liveness probe must not restart a server for its database's outage.
    assert await health_of(channel, LIVENESS_SERVICE) == SERVING

    await asyncio.to_thread(own_postgres.start)

    await wait_for_health(channel, SERVING)
    for service in ("", *SERVICE_NAMES):
        assert await health_of(channel, service) == SERVING
    balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == 5  # the failed credit during the outage left nothing behind
    added = await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=1), metadata=WEBHOOK_METADATA
    )
    assert added.new_balance == 6


async def test_start_gives_up_with_unavailable_when_database_stays_down(own_postgres, tmp_path):
    """Start-up waits for the database a while, then fails instead of serving without a schema."""
    from pluct_server.app.server import PluctServer, wait_and_migrate
    from pluct_server.store.errors import DatabaseUnavailable

    await asyncio.to_thread(own_postgres.stop)
    server = PluctServer(settings_for_test(tmp_path), own_postgres.dsn)
    await server.database.open()
    try:
        with pytest.raises(DatabaseUnavailable):
            await wait_and_migrate(server.database, wait_seconds=0.5)
    finally:
        await server.database.close()


async def test_a_call_that_finds_the_database_gone_makes_health_check_at_once(
    own_postgres, tmp_path
):
    # Health pings rarely here: only the failed call can tell it before a balancer would ask.
    settings = settings_for_test(tmp_path, health_interval_seconds=600.0)
    async with running_server(settings, own_postgres.dsn) as server:
        key = DefaultKey(await caller_key(server))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", interceptors=[key])
        async with channel:
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            assert await health_of(channel, "") == SERVING
            await asyncio.to_thread(own_postgres.stop)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await credit.GetBalance(
                    credit_pb.GetBalanceRequest(user_id="anyone"), timeout=CALL_DEADLINE_SECONDS
                )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            # A hang guard far below the 600 s interval, not a timing claim.
            await asyncio.wait_for(wait_for_health(channel, NOT_SERVING), CALL_DEADLINE_SECONDS)
            await asyncio.to_thread(own_postgres.start)


def test_an_outage_is_logged_with_the_server_it_concerns_never_the_password():
    from pluct_server.store.database import server_of

    dsn = "postgresql://app:s3cret-pw@db1:5432,db2:5433/pluct?target_session_attrs=read-write"
    assert server_of(dsn) == "db1:5432,db2:5433/pluct"
    assert server_of("postgresql://postgres@/pluct?host=/run/pg&port=5432") == "/run/pg:5432/pluct"
