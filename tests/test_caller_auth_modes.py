"""PLUCT_CALLER_AUTH: keys (the default), or open: keyless gRPC callers get what HTTP ones get."""

from __future__ import annotations

import logging

import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from tests.support import error_reason, running_server, settings_for_test

pytestmark = pytest.mark.usefixtures("database_dsn")


async def test_open_mode_admits_keyless_callers_to_public_rpcs_only_and_warns(
    database_dsn, tmp_path, caplog, user_id
):
    caplog.set_level(logging.WARNING, logger="pluct_server.app.server")
    settings = settings_for_test(tmp_path, caller_auth="open")
    async with (
        running_server(settings, database_dsn) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)

        balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
        with pytest.raises(grpc.aio.AioRpcError) as payment:
            await credit.AddCredits(credit_pb.AddCreditsRequest(user_id=user_id, amount=5))
        with pytest.raises(grpc.aio.AioRpcError) as listing:
            await admin.ListUsers(admin_pb.ListUsersRequest())

    assert balance.balance == 0
    assert payment.value.code() == listing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(payment.value)[0] == "MISSING_CREDENTIALS"
    assert any("PLUCT_CALLER_AUTH=open" in r.getMessage() for r in caplog.records)


async def test_keys_mode_refuses_keyless_callers_even_on_public_rpcs(bare_credit, user_id):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await bare_credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(raised.value)[0] == "MISSING_CREDENTIALS"
