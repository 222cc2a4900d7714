"""Fixtures: one real PostgreSQL and one real server for the session, fresh ids per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.app.server import PluctServer
from pluct_server.runtime.embedded_postgres import EmbeddedPostgres
from pluct_server.runtime.event_loop import loop_factory
from pluct_server.store.grants import ensure_login_role
from pluct_server.values.settings import Settings
from tests.support import (
    SERVING_ROLE,
    DefaultKey,
    caller_key,
    external_database_url,
    ledger_mismatches,
    new_user_id,
    running_server,
    scratch_database,
    settings_for_test,
)


def pytest_configure(config: pytest.Config) -> None:
    """Run every async test on the event loop the service's workers run on by default."""
    # A policy, not pytest-asyncio's loop-factory hook: the hook parametrizes async tests only,
    # and a sync test would then start a second session loop (and server) of its own.
    # (pytest-asyncio still makes its loops through the policy, deprecated from Python 3.14.)
    asyncio.set_event_loop_policy(_policy_making(loop_factory(Settings.event_loop)))


def _policy_making(
    make_loop: Callable[[], asyncio.AbstractEventLoop],
) -> asyncio.AbstractEventLoopPolicy:
    """Return an event loop policy whose new loops come from make_loop."""

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return make_loop()

    return Policy()


@pytest.fixture(scope="session")
def embedded_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL of the suite's own, in a temporary folder."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def database_dsn(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh, empty database: on DATABASE_URL's server if set, else on the embedded one."""
    server_url = external_database_url()
    if server_url is None:
        server_url = request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder for the server under test."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
async def serving_dsn(database_dsn: str) -> str:
    """The test database as the serving role, which may do only what serving needs."""
    return await ensure_login_role(database_dsn, SERVING_ROLE)


@pytest.fixture(scope="session")
async def server(database_dsn: str, serving_dsn: str, data_dir: Path) -> AsyncIterator[PluctServer]:
    """The service as production runs it (the owner migrates, a lesser role serves), shared."""
    settings = settings_for_test(data_dir, migrate_database_url=database_dsn)
    async with running_server(settings, serving_dsn) as running:
        yield running


@pytest.fixture(scope="session")
async def channel(server: PluctServer) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC channel to the server under test, as an internal caller with an API key.

    The key holds the scopes of the routes that are public over HTTP; calls that send their
    own credentials (admin or webhook secret) send only those.
    """
    secret = await caller_key(server)
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.grpc_port}", interceptors=[DefaultKey(secret)]
    ) as open_channel:
        yield open_channel


@pytest.fixture(scope="session")
async def bare_channel(server: PluctServer) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC channel that sends no credentials unless a call adds them."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as open_channel:
        yield open_channel


@pytest.fixture(scope="session")
def credit(channel: grpc.aio.Channel) -> credit_service_pb2_grpc.CreditServiceStub:
    """CreditService stub."""
    return credit_service_pb2_grpc.CreditServiceStub(channel)


@pytest.fixture(scope="session")
def token(channel: grpc.aio.Channel) -> token_service_pb2_grpc.TokenServiceStub:
    """TokenService stub."""
    return token_service_pb2_grpc.TokenServiceStub(channel)


@pytest.fixture(scope="session")
def admin(channel: grpc.aio.Channel) -> admin_service_pb2_grpc.AdminServiceStub:
    """AdminService stub."""
    return admin_service_pb2_grpc.AdminServiceStub(channel)


@pytest.fixture(scope="session")
def bare_admin(bare_channel: grpc.aio.Channel) -> admin_service_pb2_grpc.AdminServiceStub:
    """AdminService stub that sends no credentials of its own."""
    return admin_service_pb2_grpc.AdminServiceStub(bare_channel)


@pytest.fixture(scope="session")
def bare_credit(bare_channel: grpc.aio.Channel) -> credit_service_pb2_grpc.CreditServiceStub:
    """CreditService stub that sends no credentials of its own."""
    return credit_service_pb2_grpc.CreditServiceStub(bare_channel)


@pytest.fixture(scope="session")
def bare_token(bare_channel: grpc.aio.Channel) -> token_service_pb2_grpc.TokenServiceStub:
    """TokenService stub that sends no credentials of its own."""
    return token_service_pb2_grpc.TokenServiceStub(bare_channel)


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """An embedded PostgreSQL this test alone may stop and start."""
    postgres = EmbeddedPostgres(tmp_path / "pg")
    postgres.start()
    yield postgres
    postgres.stop()


@pytest.fixture
def user_id() -> str:
    """A user id no other test uses."""
    return new_user_id()


@pytest.fixture(scope="module")
async def db(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the shared test database, to read what really changed."""
    connection = await asyncpg.connect(database_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(autouse=True)
async def ledger_invariant(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After every test that used the shared database: balance = sum of ledger, per user."""
    yield
    if "database_dsn" not in request.fixturenames:
        return
    dsn = request.getfixturevalue("database_dsn")
    assert await ledger_mismatches(dsn) == []


@pytest.fixture(scope="session")
async def http(server: PluctServer) -> AsyncIterator[object]:
    """An HTTP client (aiohttp) for the JSON shim of the server under test."""
    from tests.http_support import http_client

    async with http_client(server.http_port) as session:
        yield session
