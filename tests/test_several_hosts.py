"""DATABASE_URL may name several hosts: the service reaches the one that takes writes."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.store.grants import ensure_login_role
from tests.support import (
    SERVING_ROLE,
    DefaultKey,
    caller_key,
    ledger_of,
    running_server,
    settings_for_test,
)

# Nothing listens here: the first host of the list is down, as an old primary would be.
DEAD_SOCKET_DIR = "/nonexistent-pluct-primary"
DEAD_TCP = "127.0.0.1:1"


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
