"""grpc.health.v1.Health as load balancers and tools call it: Check and List agree."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pluct_server.app.health import LIVENESS_SERVICE
from pluct_server.app.server import SERVICE_NAMES
from tests.support import running_server, settings_for_test

pytestmark = pytest.mark.usefixtures("database_dsn")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# What the server reports on: the whole server (""), each service, and liveness.
REPORTED = {"", *SERVICE_NAMES, LIVENESS_SERVICE}


async def listed(channel: grpc.aio.Channel) -> dict[str, int]:
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.List(health_pb2.HealthListRequest(), timeout=5)
    return {name: reply.status for name, reply in answer.statuses.items()}


async def test_list_reports_every_service_as_check_does(bare_channel):
    health = health_pb2_grpc.HealthStub(bare_channel)

    statuses = await listed(bare_channel)

    assert statuses == dict.fromkeys(REPORTED, SERVING)
    for name, status in statuses.items():
        checked = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert checked.status == status, name


async def test_list_reports_not_serving_once_shutdown_begins(serving_dsn, tmp_path):
    async with (
        running_server(settings_for_test(tmp_path), serving_dsn) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        await server.health.stop()

        assert await listed(channel) == dict.fromkeys(REPORTED, NOT_SERVING)
