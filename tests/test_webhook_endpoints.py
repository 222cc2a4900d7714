"""Webhook endpoints: where events go, each URL checked, each secret shown once."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc

from tests.http_support import ADMIN_HEADERS, call
from tests.support import (
    ADMIN_METADATA,
    error_reason,
    running_server,
    settings_for_test,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

PUBLIC_URL = "https://hooks.example.com/pluct"


async def create(admin: Any, url: str = PUBLIC_URL, **fields: Any) -> Any:
    return await admin.CreateWebhookEndpoint(
        admin_pb.CreateWebhookEndpointRequest(url=url, **fields), metadata=ADMIN_METADATA
    )


async def listed(admin: Any) -> Any:
    return await admin.ListWebhookEndpoints(
        admin_pb.ListWebhookEndpointsRequest(), metadata=ADMIN_METADATA
    )


async def refused(attempt: Any, code: grpc.StatusCode, reason: str | None = None) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await attempt
    assert raised.value.code() == code, raised.value.details()
    if reason is not None:
        assert error_reason(raised.value)[0] == reason
    return str(raised.value.details())


def key_of(secret: str) -> bytes:
    assert secret.startswith("whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


async def stored_secrets(dsn: str, endpoint_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT secret, previous_secrets,"
            " array(SELECT t - now() FROM unnest(previous_secret_expire_times) t) AS overlaps"
            " FROM webhook_endpoints WHERE endpoint_id = $1",
            int(endpoint_id),
        )
    finally:
        await conn.close()
    assert row is not None
    return row


async def test_an_endpoint_is_made_with_a_secret_shown_once(admin):
    made = await create(
        admin,
        event_types=["credits.spent", "credits.granted"],
        balance_thresholds=[10, 1],
    )
    other = await create(admin)
    everything = await listed(admin)

    endpoint = made.endpoint
    assert endpoint.url == PUBLIC_URL and not endpoint.disabled
    assert list(endpoint.event_types) == ["credits.spent", "credits.granted"]
    assert list(endpoint.balance_thresholds) == [1, 10]
    assert endpoint.create_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    assert len(key_of(made.secret)) == len(key_of(other.secret)) == 32
    assert made.secret != other.secret
    assert endpoint in everything.endpoints and other.endpoint in everything.endpoints
    assert made.secret.encode() not in everything.SerializeToString()


async def test_a_rotated_secret_signs_beside_the_old_ones_for_a_day(admin, database_dsn):
    made = await create(admin)
    rotate = admin_pb.RotateWebhookSecretRequest(endpoint_id=made.endpoint.endpoint_id)

    rotated = await admin.RotateWebhookSecret(rotate, metadata=ADMIN_METADATA)
    again = await admin.RotateWebhookSecret(rotate, metadata=ADMIN_METADATA)

    row = await stored_secrets(database_dsn, made.endpoint.endpoint_id)
    assert rotated.endpoint == again.endpoint == made.endpoint
    assert len(key_of(rotated.secret)) == 32
    assert len({made.secret, rotated.secret, again.secret}) == 3
    # A second rotation within the day drops neither secret it replaced.
    assert row["secret"] == again.secret
    assert row["previous_secrets"] == [made.secret, rotated.secret]
    assert all(timedelta(hours=23, minutes=59) < o <= timedelta(hours=24) for o in row["overlaps"])


async def test_a_deleted_endpoint_is_gone_and_an_unknown_one_is_not_found(admin):
    made = await create(admin)
    endpoint_id = made.endpoint.endpoint_id

    removed = await admin.DeleteWebhookEndpoint(
        admin_pb.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id), metadata=ADMIN_METADATA
    )

    assert removed.endpoint == made.endpoint
    assert endpoint_id not in {e.endpoint_id for e in (await listed(admin)).endpoints}
    not_found = grpc.StatusCode.NOT_FOUND, "WEBHOOK_ENDPOINT_NOT_FOUND"
    for unknown in (endpoint_id, "abc", "0", "99999999999999999999", "٣"):
        await refused(
            admin.DeleteWebhookEndpoint(
                admin_pb.DeleteWebhookEndpointRequest(endpoint_id=unknown),
                metadata=ADMIN_METADATA,
            ),
            *not_found,
        )
        await refused(
            admin.RotateWebhookSecret(
                admin_pb.RotateWebhookSecretRequest(endpoint_id=unknown),
                metadata=ADMIN_METADATA,
            ),
            *not_found,
        )


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"event_types": ["credits.spent", "credits.stolen"]}, "event_types[1]"),
        ({"balance_thresholds": [0]}, "balance_thresholds"),
        ({"balance_thresholds": [5, 5]}, "balance_thresholds"),
        ({"url": ""}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "ftp://hooks.example.com/"}, "url"),
        ({"url": "https://user:password@hooks.example.com/"}, "credentials"),
        ({"url": "https://hooks.example.com:0/"}, "port"),
        ({"url": "https://hooks.example.com:99999/"}, "url"),
    ],
)
async def test_a_bad_endpoint_is_invalid_argument_and_nothing_is_made(
    admin, database_dsn, fields, says
):
    before = len((await listed(admin)).endpoints)
    request = {"url": PUBLIC_URL, **fields}

    details = await refused(create(admin, **request), grpc.StatusCode.INVALID_ARGUMENT)

    assert says in details
    assert len((await listed(admin)).endpoints) == before


PRIVATE_URLS = [
    "http://hooks.example.com/pluct",  # not https
    "https://127.0.0.1/pluct",
    "https://127.1.2.3:8443/pluct",
    "https://localhost/pluct",
    "https://receiver.localhost./pluct",
    "https://10.1.2.3/pluct",
    "https://172.16.0.9/pluct",
    "https://192.168.1.20/pluct",
    "https://169.254.169.254/latest/meta-data/",  # the cloud metadata address
    "https://100.100.100.200/",  # another cloud's metadata, in shared address space
    "https://0.0.0.0/pluct",
    "https://[::1]/pluct",
    "https://[fe80::1]/pluct",
    "https://[fd00:ec2::254]/pluct",
    "https://[::ffff:127.0.0.1]/pluct",
    # 127.0.0.1 and 10.0.0.1 as resolvers still read them.
    "https://2130706433/pluct",
    "https://0x7f000001/pluct",
    "https://0177.0.0.1/pluct",
    "https://127.1/pluct",
    "https://10.1/pluct",
    # Look-alike digits and dots that resolvers fold into 127.0.0.1 and 169.254.169.254.
    "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/pluct",
    "https://127\u30020\u30020\u30021/pluct",
    "https://\uff11\uff16\uff19.\uff12\uff15\uff14.\uff11\uff16\uff19.\uff12\uff15\uff14/",
    # IPv6 addresses that carry a private IPv4 one, and ranges never a receiver.
    "https://[::127.0.0.1]/pluct",
    "https://[::ffff:0:7f00:1]/pluct",
    "https://[64:ff9b::a9fe:a9fe]/",
    "https://[2002:a9fe:a9fe::]/",
    "https://[fec0::1]/pluct",
    "https://[ff02::1]/pluct",
]


async def test_in_production_events_go_to_public_https_urls_only(database_dsn, tmp_path):
    settings = settings_for_test(tmp_path, events_allow_private_urls=False)
    async with (
        running_server(settings, database_dsn) as own,
        grpc.aio.insecure_channel(f"127.0.0.1:{own.grpc_port}") as channel,
    ):
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        before = len((await listed(admin)).endpoints)
        refusals = {}
        for url in PRIVATE_URLS:
            refusals[url] = await refused(create(admin, url), grpc.StatusCode.INVALID_ARGUMENT)
        after = len((await listed(admin)).endpoints)
        public = await create(admin, "https://hooks.example.com:8443/pluct?team=billing")

    assert after == before
    assert all("https" in said or "private" in said for said in refusals.values()), refusals
    assert public.endpoint.url == "https://hooks.example.com:8443/pluct?team=billing"


def test_private_urls_are_allowed_by_default_only_with_the_embedded_database(tmp_path):
    dev = settings_for_test(tmp_path)
    production = settings_for_test(tmp_path, database_url="postgresql://db.example/pluct")

    assert dev.private_webhook_urls is True
    assert production.private_webhook_urls is False
    assert settings_for_test(
        tmp_path, database_url="postgresql://db.example/pluct", events_allow_private_urls=True
    ).private_webhook_urls


async def test_in_dev_mode_a_local_receiver_may_be_named(admin):
    made = await create(admin, "http://127.0.0.1:8080/hooks")

    assert made.endpoint.url == "http://127.0.0.1:8080/hooks"


async def test_endpoints_over_http_need_the_admin_secret(http):
    body = {"url": PUBLIC_URL, "eventTypes": ["credits.expired"], "balanceThresholds": [3]}

    stranger = await call(http, "POST", "/admin/webhook-endpoints", json_body=body)
    made = await call(
        http, "POST", "/admin/webhook-endpoints", json_body=body, headers=ADMIN_HEADERS
    )
    endpoint_id = made.body["endpoint"]["endpointId"]
    rotated = await call(
        http,
        "POST",
        f"/admin/webhook-endpoints/{endpoint_id}/rotate-secret",
        headers=ADMIN_HEADERS,
    )
    everything = await call(http, "GET", "/admin/webhook-endpoints", headers=ADMIN_HEADERS)
    removed = await call(
        http, "DELETE", f"/admin/webhook-endpoints/{endpoint_id}", headers=ADMIN_HEADERS
    )
    again = await call(
        http, "DELETE", f"/admin/webhook-endpoints/{endpoint_id}", headers=ADMIN_HEADERS
    )

    assert stranger.status == 401
    assert made.status == 200, made.body
    assert made.body["endpoint"]["eventTypes"] == ["credits.expired"]
    assert len(key_of(made.body["secret"])) == 32
    assert rotated.status == 200 and rotated.body["secret"] != made.body["secret"]
    assert endpoint_id in {e["endpointId"] for e in everything.body["endpoints"]}
    assert made.body["secret"] not in everything.raw.decode()
    assert removed.status == 200 and removed.body["endpoint"]["endpointId"] == endpoint_id
    assert again.status == 404
