"""Access lines as an operator reads them on stdout: their shape, their quoting, their switches."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import aiohttp
import grpc
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from pluct_server.observability import logs
from pluct_server.observability.access import CallRecord, log_access
from pluct_server.observability.logs import setup_logging
from tests.support import (
    ADMIN_METADATA,
    ADMIN_SECRET,
    JWT_SECRET,
    WEBHOOK_SECRET,
    new_request_id,
    new_user_id,
)
from tests.test_process import REPO, ServiceProcess, production_dsn, service_env  # noqa: F401

ACCESS = logging.getLogger("pluct_server.access")
NAMES = ("protocol", "method", "code", "duration_ms", "peer", "request_id", "user_id", "key_id")
# A value is bare (printable, no space or quote, at most 128 characters) or a JSON string.
VALUE = r'"(?:[^"\\]|\\.)*"|[^\s"]{0,128}'
MESSAGE = re.compile(" ".join(f"{name}=({VALUE})" for name in NAMES) + r"\Z")
TEXT_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO (\[worker \d+\] )?pluct_server\.access: (.*)\Z"
)
JSON_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00\Z")
JSON_KEYS = ["time", "level", "logger", "message", "worker", *NAMES]
# A stretch of text that would pass for the start of another line, were it not quoted.
FORGED = "2026-01-01 00:00:00,000 INFO pluct_server.access: protocol=grpc code=OK"
# Ample for a flush due 20 ms after a line; the tests wait for lines, they do not time them.
PATIENCE_SECONDS = 10

HOSTILE = [
    CallRecord(
        "grpc",
        "/pluct.token.v1.TokenService/ValidateToken",
        "ipv4:127.0.0.1:40000",
        'id-with-"quotes"',
        user_id="user\n" + FORGED,
        caller_id="key with spaces",
    ),
    CallRecord(
        "http",
        "POST /vend-token",
        "127.0.0.1",
        "z" * 300,
        code="200",
        user_id="tab\there\u2028and\x1b[31mcolour",
        caller_id="back\\slash",
    ),
    CallRecord("grpc", "/x.Y/Z", "-", "r" * 100 + " " + "s" * 100, user_id="é", caller_id=""),
]


def message_values(message: str) -> dict[str, str]:
    """Read an access message as an operator's parser would: name=value, in the fixed order."""
    found = MESSAGE.match(message)
    assert found, message
    return {
        name: json.loads(value) if value.startswith('"') else value
        for name, value in zip(NAMES, found.groups(), strict=True)
    }


def shown(value: str) -> str:
    """What the text line shows of a value: its first 128 characters."""
    return value[:128]


@pytest.fixture
def worker_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., io.StringIO]]:
    """setup_logging as a worker runs it, stdout a buffer; the test's logging put back after."""
    root = logging.getLogger()
    levels = (root.level, ACCESS.level)
    monkeypatch.setattr(root, "handlers", [])
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    monkeypatch.setattr(
        logging, "logAsyncioTasks", getattr(logging, "logAsyncioTasks", True), raising=False
    )
    monkeypatch.setattr(logs, "_installed", None)
    stdout = io.StringIO()

    def configure(log_format: str = "text", worker: int | None = 2, **options) -> io.StringIO:
        # The handler keeps the stream that is stdout when it is made (pytest swaps its own).
        real, sys.stdout = sys.stdout, stdout
        try:
            setup_logging(options.pop("level", "INFO"), log_format, worker, **options)
        finally:
            sys.stdout = real
        return stdout

    yield configure
    for handler in root.handlers:
        handler.flush()
    root.setLevel(levels[0])
    ACCESS.setLevel(levels[1])


class Collector(logging.Handler):
    """Another handler on the root, as a log shipper or pytest's caplog adds one."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def flushed(stdout: io.StringIO) -> list[str]:
    """Flush the handlers, as logging.shutdown does at exit; return the lines written."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    return stdout.getvalue().split("\n")[:-1]


async def test_a_hostile_value_is_quoted_or_cut_never_a_line_of_its_own(worker_logging):
    stdout = worker_logging("text")
    for record in HOSTILE:
        log_access(record, 0.001234)
    lines = flushed(stdout)

    assert len(lines) == len(HOSTILE)
    for line, record in zip(lines, HOSTILE, strict=True):
        parsed = TEXT_LINE.match(line)
        assert parsed and parsed.group(2) == "[worker 2] ", line
        values = message_values(parsed.group(3))
        assert values == {
            "protocol": record.protocol,
            "method": record.method,
            "code": record.code,
            "duration_ms": "1.23",
            "peer": record.peer,
            "request_id": shown(record.request_id),
            "user_id": shown(record.user_id),
            "key_id": shown(record.caller_id),
        }
    assert 'request_id="id-with-\\"quotes\\""' in lines[0]
    assert f"request_id={'z' * 128} " in lines[1]  # cut, and bare: nothing in it to quote
    assert 'method="POST /vend-token"' in lines[1]
    assert not any(line.startswith(FORGED[:10]) for line in lines)


async def test_json_lines_are_one_object_each_with_the_fields_in_order(worker_logging):
    stdout = worker_logging("json", worker=3)
    for record in HOSTILE:
        log_access(record, 0.5)
    lines = flushed(stdout)

    assert len(lines) == len(HOSTILE)
    for line, record in zip(lines, HOSTILE, strict=True):
        entry = json.loads(line)
        assert list(entry) == JSON_KEYS
        assert JSON_TIME.match(entry["time"])
        assert (entry["level"], entry["logger"], entry["worker"]) == ("INFO", ACCESS.name, 3)
        assert (entry["request_id"], entry["user_id"], entry["key_id"]) == (
            record.request_id,
            record.user_id,
            record.caller_id,
        )
        assert (entry["method"], entry["code"], entry["duration_ms"]) == (
            record.method,
            record.code,
            500.0,
        )
        assert message_values(entry["message"])["user_id"] == shown(record.user_id)


@pytest.mark.parametrize(("log_format", "worker"), [("text", None), ("text", 0), ("json", 1)])
async def test_a_line_written_directly_reads_as_logging_would_write_it(
    worker_logging, log_format, worker
):
    stdout = worker_logging(log_format, worker=worker)
    for record in HOSTILE:
        log_access(record, 0.0421)
    direct = flushed(stdout)
    # Another handler on the root: every line now goes as a LogRecord through the formatter.
    logging.getLogger().addHandler(logging.NullHandler())
    for record in HOSTILE:
        log_access(record, 0.0421)
    through_records = flushed(stdout)[len(direct) :]

    def timeless(line: str) -> str:
        if log_format == "json":
            entry = json.loads(line)
            assert JSON_TIME.match(entry.pop("time"))
            return json.dumps(entry)
        parsed = TEXT_LINE.match(line)
        assert parsed, line
        return line[len(parsed.group(1)) :]

    assert [timeless(line) for line in direct] == [timeless(line) for line in through_records]


async def test_other_handlers_still_get_every_access_line_as_a_record(worker_logging):
    stdout = worker_logging("text")
    collector = Collector()
    logging.getLogger().addHandler(collector)
    log_access(HOSTILE[0], 0.001)

    (record,) = collector.records
    assert record.name == ACCESS.name
    assert record.fields["user_id"] == HOSTILE[0].user_id  # type: ignore[attr-defined]
    (line,) = flushed(stdout)
    assert line.endswith(record.getMessage())


async def test_a_line_is_written_soon_without_waiting_for_another(worker_logging):
    stdout = worker_logging("text")
    log_access(HOSTILE[0], 0.001)
    # Nothing else is logged and nothing flushes: the handler's own timer writes the line.
    for _ in range(PATIENCE_SECONDS * 100):
        if stdout.getvalue():
            break
        await asyncio.sleep(0.01)
    assert stdout.getvalue().count("\n") == 1


async def test_access_lines_keep_their_place_among_other_lines(worker_logging):
    stdout = worker_logging("text")
    other = logging.getLogger("pluct_server.somewhere")
    other.warning("before")
    log_access(HOSTILE[0], 0.001)
    other.warning("between")
    log_access(HOSTILE[1], 0.001)
    lines = flushed(stdout)

    assert [line.split(": ", 1)[0].split(" ", 2)[2] for line in lines] == [
        "WARNING [worker 2] pluct_server.somewhere",
        "INFO [worker 2] pluct_server.access",
        "WARNING [worker 2] pluct_server.somewhere",
        "INFO [worker 2] pluct_server.access",
    ]
    assert lines[0].endswith(": before") and lines[2].endswith(": between")


@pytest.mark.parametrize("switch", [{"access_log": False}, {"level": "WARNING"}])
async def test_switched_off_or_below_the_level_there_is_no_access_line(worker_logging, switch):
    stdout = worker_logging("text", **switch)
    log_access(HOSTILE[0], 0.001)
    logging.getLogger("pluct_server").warning("still here")

    (line,) = flushed(stdout)
    assert line.endswith("pluct_server: still here")


def test_outside_an_event_loop_a_line_is_written_at_once(worker_logging):
    stdout = worker_logging("text")
    log_access(HOSTILE[0], 0.001)
    (line,) = stdout.getvalue().split("\n")[:-1]
    assert TEXT_LINE.match(line)


# Written just before the process ends, as a worker's last lines are.
LAST_LINE_SCRIPT = """
import asyncio, os, signal
from pluct_server.observability.access import CallRecord, log_access
from pluct_server.observability.logs import setup_logging

async def serve():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    log_access(CallRecord("grpc", "/x.Y/Last", "-", "last-line"), 0.001)
    os.kill(os.getpid(), signal.SIGTERM)
    await stop.wait()

setup_logging("INFO", "text", 0)
asyncio.run(serve())
"""


def test_a_line_still_batched_when_the_worker_stops_is_written_at_exit():
    ended = subprocess.run(
        [sys.executable, "-c", LAST_LINE_SCRIPT],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ended.returncode == 0, ended.stderr
    (line,) = ended.stdout.split("\n")[:-1]
    assert message_values(TEXT_LINE.match(line).group(3))["request_id"] == "last-line"  # type: ignore[union-attr]


# The service as run: its stdout, as the container runtime or a terminal gets it.


def service(dsn: str, tmp_path, **env: str) -> ServiceProcess:
    return ServiceProcess(
        service_env(
            DATABASE_URL=dsn,
            ADMIN_SECRET=ADMIN_SECRET,
            JWT_SECRET=JWT_SECRET,
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            **env,
        ),
        tmp_path,
    )


async def make_calls(served: ServiceProcess) -> dict[str, str]:
    """Make a plain call, two with hostile values, and one over HTTP; return their request ids."""
    ids = {
        "plain": new_request_id(),
        "quoted": f'{new_request_id()}-"quoted"',
        "hostile user": new_request_id(),
        "http": f'{new_request_id()}-"h"',
    }
    async with grpc.aio.insecure_channel(served.grpc_target) as channel:
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        for name in ("plain", "quoted"):
            await credit.GetBalance(
                credit_pb.GetBalanceRequest(user_id=new_user_id()),
                metadata=(*ADMIN_METADATA, ("x-request-id", ids[name])),
            )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await credit.GetBalance(
                credit_pb.GetBalanceRequest(user_id="who\n" + FORGED),
                metadata=(*ADMIN_METADATA, ("x-request-id", ids["hostile user"])),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    http_port = served.env["PLUCT_HTTP_LISTEN"].rpartition(":")[2]
    async with aiohttp.ClientSession() as session:
        reply = await session.get(
            f"http://127.0.0.1:{http_port}/user/{new_user_id()}/balance",
            headers={"Authorization": f"Bearer {ADMIN_SECRET}", "X-Request-Id": ids["http"]},
        )
        assert reply.status == 200
    return ids


async def wait_for(served: ServiceProcess, text: str) -> None:
    for _ in range(PATIENCE_SECONDS * 20):
        if text in served.output:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never came out:\n{served.output[-3000:]}")


async def stop(served: ServiceProcess) -> str:
    served.process.send_signal(signal.SIGTERM)
    assert await served.exit_code() == 0
    return served.output


async def test_the_service_writes_whole_quoted_text_lines_and_all_of_them_by_exit(
    production_dsn,  # noqa: F811
    tmp_path,
):
    served = service(production_dsn, tmp_path, PLUCT_WORKERS="2")
    try:
        await served.wait_serving()
        ids = await make_calls(served)
        await wait_for(served, json.dumps(ids["http"]))  # the last call's line, before any stop
        more = [new_request_id() for _ in range(20)]
        async with grpc.aio.insecure_channel(served.grpc_target) as channel:
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            for request_id in more:
                await credit.GetBalance(
                    credit_pb.GetBalanceRequest(user_id=new_user_id()),
                    metadata=(*ADMIN_METADATA, ("x-request-id", request_id)),
                )
        output = await stop(served)  # at once: lines still batched must come out too
    finally:
        served.kill()

    lines = output.split("\n")
    access = {}
    for number, line in enumerate(lines):
        if "pluct_server.access" in line:
            parsed = TEXT_LINE.match(line)
            assert parsed, line
            values = message_values(parsed.group(3))
            access[values["request_id"]] = (number, parsed.group(2), values)
    assert set(ids.values()) | set(more) <= set(access)
    assert access[ids["quoted"]][2]["code"] == "OK"
    hostile = access[ids["hostile user"]][2]
    assert (hostile["code"], hostile["user_id"]) == ("INVALID_ARGUMENT", "who\n" + FORGED)
    http = access[ids["http"]][2]
    assert (http["protocol"], http["code"]) == ("http", "200")
    assert http["method"].startswith("GET /user/")
    assert not any(line.startswith(FORGED[:10]) for line in lines)
    assert ADMIN_SECRET not in output
    # Each worker's access lines come before it says it is shutting down.
    for worker in ("[worker 0] ", "[worker 1] "):
        draining = [n for n, line in enumerate(lines) if f"{worker}pluct_server: shutting" in line]
        served_here = [number for number, who, _ in access.values() if who == worker]
        if served_here:
            assert draining and max(served_here) < draining[0]


async def test_the_service_writes_json_access_lines_that_parse(
    production_dsn,  # noqa: F811
    tmp_path,
):
    served = service(production_dsn, tmp_path, PLUCT_WORKERS="1", PLUCT_LOG_FORMAT="json")
    try:
        await served.wait_serving()
        ids = await make_calls(served)
        output = await stop(served)
    finally:
        served.kill()

    entries = [json.loads(line) for line in output.split("\n") if line.startswith("{")]
    access = {e["request_id"]: e for e in entries if e["logger"] == ACCESS.name}
    assert set(ids.values()) <= set(access)
    for entry in access.values():
        assert list(entry) == JSON_KEYS
        assert JSON_TIME.match(entry["time"]) and entry["worker"] == 0
        assert message_values(entry["message"])["request_id"] == entry["request_id"]
    assert access[ids["hostile user"]]["user_id"] == "who\n" + FORGED
    assert access[ids["http"]]["protocol"] == "http"
    assert "stopped" in [entry["message"] for entry in entries]


async def test_the_service_with_access_lines_off_writes_none(
    production_dsn,  # noqa: F811
    tmp_path,
):
    served = service(production_dsn, tmp_path, PLUCT_WORKERS="1", PLUCT_ACCESS_LOG="off")
    try:
        await served.wait_serving()
        await make_calls(served)
        output = await stop(served)
    finally:
        served.kill()

    assert "pluct_server: stopped" in output
    assert "pluct_server.access" not in output
