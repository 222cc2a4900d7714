"""DATABASE_URL may name several hosts: the service reaches the one that takes writes."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.store.grants import ensure_login_role
from tests.support import (
    SERVING_ROLE,
    DefaultKey,
    caller_key,
    external_database_url,
    ledger_of,
    running_server,
    scratch_database,
    settings_for_test,
)

# Nothing listens here: the first host of the list is down, as an old primary would be.
DEAD_SOCKET_DIR = "/nonexistent-pluct-primary"
DEAD_TCP = "127.0.0.1:1"


def writable_only(dsn: str) -> str:
    """Return `dsn` asking for a session that takes writes, as a multi-host URL would."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query["target_session_attrs"] = "read-write"
    return urlunsplit(parts._replace(query=urlencode(query, safe="/,")))


def with_a_dead_host_first(dsn: str) -> str:
    """Return `dsn` naming a host that is down before its own, for writable sessions only."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    if "host" in query:  # a Unix socket folder, as the embedded server uses
        port = query.get("port", "5432")
        query.update(host=f"{DEAD_SOCKET_DIR},{query['host']}", port=f"{port},{port}")
        netloc = parts.netloc
    else:
        user, _, host = parts.netloc.rpartition("@")
        netloc = f"{user}@{DEAD_TCP},{host}" if user else f"{DEAD_TCP},{host}"
    query["target_session_attrs"] = "read-write"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/,")))


async def test_a_url_with_a_dead_host_first_serves_from_the_live_one(
    server, database_dsn, tmp_path, user_id
):
    owner = with_a_dead_host_first(database_dsn)
    serving = await ensure_login_role(owner, SERVING_ROLE)
    settings = settings_for_test(tmp_path, migrate_database_url=owner)
    async with running_server(settings, serving) as started:
        key = DefaultKey(await caller_key(started))
        target = f"127.0.0.1:{started.grpc_port}"
        async with grpc.aio.insecure_channel(target, interceptors=[key]) as channel:
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            await credit.CreateUser(
                credit_pb.CreateUserRequest(user_id=user_id, initial_credits=2), timeout=10
            )
            tokens = token_service_pb2_grpc.TokenServiceStub(channel)
            vended = await tokens.VendToken(token_pb.VendTokenRequest(user_id=user_id), timeout=10)

    assert vended.balance_after == 1
    balance, entries = await ledger_of(database_dsn, user_id)
    assert (balance, entries["spend"]) == (1, 1)


async def test_when_no_host_takes_writes_calls_answer_unavailable_then_recover(
    request, tmp_path, caplog
):
    # As during a switchover, when the old primary is back as a standby before the new one is
    # promoted: every host answers, none takes writes.
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as scratch:
        # One host, and no dead one whose error asyncpg would report instead.
        owner = writable_only(scratch)
        serving = await ensure_login_role(owner, SERVING_ROLE)
        settings = settings_for_test(tmp_path, migrate_database_url=owner)
        admin = await asyncpg.connect(scratch)
        database = urlsplit(scratch).path.lstrip("/")
        try:
            async with running_server(settings, serving) as started:
                key = DefaultKey(await caller_key(started))
                target = f"127.0.0.1:{started.grpc_port}"
                async with grpc.aio.insecure_channel(target, interceptors=[key]) as channel:
                    credit = credit_service_pb2_grpc.CreditServiceStub(channel)
                    ask = credit_pb.GetBalanceRequest(user_id="anyone")
                    await credit.GetBalance(ask, timeout=10)

                    await _serving_role_read_only(admin, database, True)
                    codes = []
                    for _ in range(3):
                        with pytest.raises(grpc.aio.AioRpcError) as raised:
                            await credit.GetBalance(ask, timeout=10)
                        codes.append(raised.value.code())
                    await _serving_role_read_only(admin, database, False)
                    recovered = await credit.GetBalance(ask, timeout=10)
        finally:
            await admin.close()

    assert codes == [grpc.StatusCode.UNAVAILABLE] * 3
    assert "TargetServerAttributeNotMatched" in caplog.text  # the switchover case, not a drop
    assert recovered.balance == 0


async def _serving_role_read_only(admin: asyncpg.Connection, database: str, on: bool) -> None:
    """Make the serving role's new sessions read-only (or not), and end its current ones."""
    role = await admin.fetchval("SELECT quote_ident($1)", SERVING_ROLE)
    name = await admin.fetchval("SELECT quote_ident($1)", database)
    setting = (
        "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    )
    await admin.execute(f"ALTER ROLE {role} IN DATABASE {name} {setting}")
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE usename = $1 AND datname = $2",
        SERVING_ROLE,
        database,
    )
