"""Operators' view: one access line per call, Prometheus metrics summed over every worker."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import urllib.request

import grpc
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_server.observability.logs import JsonFormatter
from pluct_server.observability.metrics import FLUSH_SECONDS, exposition
from tests.http_support import call
from tests.support import (
    ADMIN_METADATA,
    ADMIN_SECRET,
    WEBHOOK_METADATA,
    MetricSamples,
    caller_key,
    free_port,
    metric_samples,
    new_request_id,
)
from tests.test_process import ServiceProcess, production_dsn, service_env  # noqa: F401

ACCESS = "pluct_server.access"


def samples() -> MetricSamples:
    """Every sample of this process's metrics, by name and labels."""
    text, _ = exposition()
    return metric_samples(text.decode())


Key = tuple[str, tuple[tuple[str, str], ...]]


def handled(method: str, code: str, service: str = "pluct.token.v1.TokenService") -> Key:
    labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method}
    return ("grpc_server_handled_total", tuple(sorted({**labels, "grpc_code": code}.items())))


async def access_lines(
    caplog: pytest.LogCaptureFixture, request_id: str
) -> list[dict[str, object]]:
    """Return a call's access lines, once there are any (a hang guard, not a timing claim).

    The server writes the line as its handler finishes, which can be just after the client has
    its answer.
    """
    for _ in range(500):
        lines = [
            record.fields  # type: ignore[attr-defined]
            for record in caplog.records
            if record.name == ACCESS and record.fields["request_id"] == request_id  # type: ignore[attr-defined]
        ]
        if lines:
            return lines
        await asyncio.sleep(0.01)
    return []


def header(reply, name: str) -> str:
    """Return a response header, whatever case the server spelled it in."""
    return str({key.lower(): value for key, value in reply.headers.items()}[name.lower()])


async def fund(credit, user_id: str, credits: int) -> None:
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=credits),
        metadata=ADMIN_METADATA,
    )


async def test_a_grpc_call_writes_one_access_line_and_echoes_its_request_id(
    server, credit, token, user_id, caplog
):
    await fund(credit, user_id, 1)
    request_id = new_request_id()
    caplog.set_level(logging.INFO, logger=ACCESS)
    call = token.VendToken(
        token_pb.VendTokenRequest(user_id=user_id), metadata=(("x-request-id", request_id),)
    )
    vended = await call
    trailers = dict(await call.trailing_metadata())

    (line,) = await access_lines(caplog, request_id)
    assert trailers["x-request-id"] == request_id
    assert line["method"] == "/pluct.token.v1.TokenService/VendToken"
    assert (line["code"], line["user_id"], line["protocol"]) == ("OK", user_id, "grpc")
    assert str(line["key_id"]) not in ("-", "")
    assert float(str(line["duration_ms"])) > 0
    # Never the token it sold, nor any credential.
    text = caplog.text
    assert vended.token not in text
    assert ADMIN_SECRET not in text


async def test_a_refused_call_logs_its_code_and_still_returns_the_request_id(
    server, credit, token, user_id, caplog
):
    await fund(credit, user_id, 0)
    request_id = new_request_id()
    caplog.set_level(logging.INFO, logger=ACCESS)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await token.VendToken(
            token_pb.VendTokenRequest(user_id=user_id), metadata=(("x-request-id", request_id),)
        )

    (line,) = await access_lines(caplog, request_id)
    assert line["code"] == "FAILED_PRECONDITION"
    assert dict(raised.value.trailing_metadata() or ())["x-request-id"] == request_id


async def test_a_request_id_that_could_forge_a_log_line_is_replaced(server, credit, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    call = credit.GetBalance(
        credit_pb.GetBalanceRequest(user_id="nobody-here"),
        metadata=(("x-request-id", "a code=OK forged"),),
    )
    await call
    echoed = dict(await call.trailing_metadata())["x-request-id"]
    assert echoed != "a code=OK forged" and echoed.isalnum()


async def test_calls_without_a_request_id_get_unrelated_ones(server, credit):
    made = []
    for _ in range(20):
        call = credit.GetBalance(credit_pb.GetBalanceRequest(user_id="nobody-here"))
        await call
        made.append(dict(await call.trailing_metadata())["x-request-id"])
    assert all(len(i) == 16 and set(i) <= set("0123456789abcdef") for i in made)
    assert len(set(made)) == len(made)
    # Random, not counted: ids next to each other say nothing of the calls between them.
    steps = {int(b, 16) - int(a, 16) for a, b in itertools.pairwise(made)}
    assert len(steps) == len(made) - 1


async def test_metrics_count_calls_by_code_and_what_was_sold(server, credit, token, user_id):
    payment = credit_pb.AddCreditsRequest(user_id=user_id, amount=5, request_id=new_request_id())
    vend = token_pb.VendTokenRequest(user_id=user_id, request_id=new_request_id())
    start = samples()
    await fund(credit, user_id, 2)
    for _ in range(2):  # the retry of a payment credits nothing more
        await credit.AddCredits(payment, metadata=WEBHOOK_METADATA)
    for _ in range(2):  # nor does the retry of a vend sell another token
        await token.VendToken(vend)
    refused = 0
    for _ in range(7):  # 6 credits left: the seventh is refused
        try:
            await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            refused += 1
    end = samples()

    def grew(key: Key) -> float:
        return end.get(key, 0.0) - start.get(key, 0.0)

    assert refused == 1
    assert grew(("pluct_credits_granted_total", (("source", "signup"),))) == 2
    assert grew(("pluct_credits_granted_total", (("source", "payment"),))) == 5
    assert grew(handled("VendToken", "OK")) == 8
    assert grew(handled("VendToken", "FAILED_PRECONDITION")) == 1
    assert grew(("pluct_tokens_vended_total", ())) == 7
    assert grew(("pluct_credits_spent_total", ())) == 7
    insufficient = (
        ("method", "/pluct.token.v1.TokenService/VendToken"),
        ("reason", "INSUFFICIENT_CREDITS"),
    )
    assert grew(("pluct_refusals_total", insufficient)) == 1


async def test_spend_batch_metrics_say_how_vends_rode_together(server, credit, token, user_id):
    await fund(credit, user_id, 40)
    start = samples()
    vends = [token.VendToken(token_pb.VendTokenRequest(user_id=user_id)) for _ in range(40)]
    replies = await asyncio.gather(*vends)
    end = samples()

    def grew(name: str) -> float:
        return end.get((name, ()), 0.0) - start.get((name, ()), 0.0)

    assert sorted(reply.balance_after for reply in replies) == list(range(40))
    batches = grew("pluct_spend_batch_size_count")
    # Every vend rode exactly one batch, and those that came while one ran shared the next.
    assert grew("pluct_spend_batch_size_sum") == 40
    assert 1 <= batches < 40
    assert grew("pluct_spend_batch_seconds_count") == batches
    assert grew("pluct_spend_batch_seconds_sum") > 0
    assert grew("pluct_spend_wait_seconds_count") == 40


def test_json_logs_are_one_object_per_line_with_the_access_fields():
    record = logging.LogRecord(ACCESS, logging.INFO, __file__, 1, "line", None, None)
    record.fields = {"method": "/x", "code": "OK"}
    entry = json.loads(JsonFormatter(worker=3).format(record))
    assert (entry["logger"], entry["method"], entry["code"], entry["worker"]) == (
        ACCESS,
        "/x",
        "OK",
        3,
    )


async def test_metrics_add_up_every_worker(production_dsn, tmp_path):  # noqa: F811
    metrics_port = free_port()
    env = service_env(
        DATABASE_URL=production_dsn,
        ADMIN_SECRET=ADMIN_SECRET,
        JWT_SECRET="j" * 16 + "k" * 16 + "0123456789",
        WEBHOOK_SECRET="w" * 16 + "v" * 16 + "0123456789",
        PLUCT_WORKERS="2",
        PLUCT_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    service = ServiceProcess(env, tmp_path)
    calls = 40
    try:
        await service.wait_serving()
        # A channel per call: the kernel spreads new connections over both workers.
        for index in range(calls):
            async with grpc.aio.insecure_channel(service.grpc_target) as channel:
                stub = credit_service_pb2_grpc.CreditServiceStub(channel)
                await stub.GetBalance(
                    credit_pb.GetBalanceRequest(user_id=f"absent-{index}"),
                    metadata=ADMIN_METADATA,
                )
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        key = handled("GetBalance", "OK", "pluct.credit.v1.CreditService")
        # A worker hands its counts over every FLUSH_SECONDS: scrape until the last arrive
        # (a hang guard, not a timing claim), and never more than were made.
        for _ in range(100):
            with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: ASYNC210
                scraped = metric_samples(reply.read().decode())
            if scraped.get(key) == calls:
                break
            await asyncio.sleep(FLUSH_SECONDS)
    finally:
        service.kill()

    assert scraped.get(key) == calls, service.output[-2000:]
    assert "worker 1" in service.output  # two workers served


async def test_an_http_request_is_logged_named_by_its_route_and_echoes_its_id(
    server, credit, http, user_id, caplog
):
    await fund(credit, user_id, 1)
    request_id = new_request_id()
    caplog.set_level(logging.INFO, logger=ACCESS)
    reply = await call(
        http,
        "POST",
        "/vend-token",
        json_body={"userId": user_id},
        headers={"X-Request-Id": request_id},
    )
    anonymous = await call(http, "GET", f"/user/{user_id}/balance")

    assert reply.status == 200
    assert header(reply, "X-Request-Id") == request_id
    (line,) = await access_lines(caplog, request_id)
    assert (line["protocol"], line["method"], line["code"]) == ("http", "POST /vend-token", "200")
    assert line["user_id"] == user_id
    assert reply.body["token"] not in caplog.text
    # A request without an id gets one, so its log lines can still be found.
    made = header(anonymous, "X-Request-Id")
    assert made and len(await access_lines(caplog, made)) == 1


async def test_http_metrics_name_routes_not_raw_paths(server, http):
    before = samples()
    for n in range(3):
        await call(http, "GET", f"/no-such-thing-{n}")
    after = samples()
    unmatched = (
        "http_server_requests_total",
        (("code", "404"), ("method", "GET"), ("route", "unmatched")),
    )
    assert after.get(unmatched, 0) - before.get(unmatched, 0) == 3
    assert not any("no-such-thing" in str(labels) for _, labels in after)


async def test_metrics_on_the_http_port_need_the_metrics_scope(server, http):
    reader = await caller_key(server, scopes=("metrics:read",), name="prometheus")
    other = await caller_key(server)

    anonymous = await call(http, "GET", "/metrics")
    wrong_key = await call(http, "GET", "/metrics", headers={"Authorization": f"Bearer {other}"})
    scraped = await call(http, "GET", "/metrics", headers={"Authorization": f"Bearer {reader}"})
    admin = await call(http, "GET", "/metrics", headers={"Authorization": f"Bearer {ADMIN_SECRET}"})

    assert (anonymous.status, wrong_key.status) == (401, 403)
    assert scraped.status == admin.status == 200
    assert "grpc_server_handled_total" in scraped.body
    assert "pluct_tokens_vended_total" in scraped.body
