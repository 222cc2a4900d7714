"""Hostile clients at full scale from one address each, a well-behaved one served throughout."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time

import psutil
from pluct_client import PluctClient

from bench.harness import SECRETS
from chaos.attackers import Pressure, pressure_from_json
from chaos.bystander import Bystander, Seen
from chaos.run import DATABASE, OWNER, SERVING_ROLE, Run
from chaos.service import Service, make_keys
from pluct_server.values.settings import Settings

TITLE = "2,400 slow HTTP bodies, 6,000 stalled gRPC streams, 3,000 idle HTTP/2 connections"
ATTACK_SECONDS = 15.0
# Idle gRPC connections are closed after this long here (the default is longer), so the
# scenario sees them go; every other edge setting is the default.
IDLE_SECONDS = 5
# Each attacker connects from an address of its own; the bystander from 127.0.0.1.
SLOW_SOURCE, STALL_SOURCE, IDLE_SOURCE = "127.0.0.2", "127.0.0.3", "127.0.0.4"
USER = "bystander"
DEADLINE_EXCEEDED = 4  # the gRPC status a stalled call ends with, once its read timeout passes
# The attackers run niced, as if on machines of their own: their CPU is not the service's.
ATTACKER_NICENESS = "10"
# Public calls a stalled stream may name: no key is needed to reach them.
STALLED_PATHS = (
    "/pluct.admin.v1.AdminService/ListUsers",
    "/grpc.health.v1.Health/Check",
    "/pluct.token.v1.TokenService/GetJwks",
)


def _largest_worker_mib(service: Service) -> float:
    sizes = []
    for worker in service.workers():
        with contextlib.suppress(psutil.Error):
            sizes.append(worker.memory_info().rss / 2**20)
    return max(sizes, default=0.0)


async def attacker(kind: str, target: str, source: str, seconds: float, *paths: str) -> Pressure:
    """Run one attack in a process of its own; return what it managed."""
    argv = ["nice", "-n", ATTACKER_NICENESS, sys.executable, "-m", "chaos.attackers", kind]
    argv += [target, "--source", source, "--seconds", str(seconds)]
    argv += [arg for path in paths for arg in ("--path", path)]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the {kind} attacker failed: {err.decode()[-2000:]}")
    return pressure_from_json(out.decode())


async def _attack(
    run: Run, service: Service, bystander: Bystander, label: str, attack: asyncio.Task[Pressure]
) -> tuple[Pressure, dict[str, Seen], float]:
    """Run one attack beside the bystander; return what each saw and the largest worker's RSS."""
    run.say(f"attack: {label}")
    bystander.reset()
    largest = 0.0
    while not attack.done():
        largest = max(largest, _largest_worker_mib(service))
        await asyncio.sleep(0.5)
    pressure = attack.result()
    seen = bystander.reset()
    for kind, what in seen.items():
        run.say(f"  {kind}: {what.summary()}")
    run.say(
        f"  attacker held at most {pressure.held_most} (opened {pressure.opened}, "
        f"{pressure.refused_connects} connects refused); answers {dict(pressure.answers)}"
    )
    return pressure, seen, largest


def _record(run: Run, name: str, pressure: Pressure, seen: dict[str, Seen], rss: float) -> None:
    run.outcome.figures[name] = {
        "attacker_held_most": pressure.held_most,
        "attacker_opened": pressure.opened,
        "attacker_refused_connects": pressure.refused_connects,
        "attacker_answers": dict(pressure.answers),
        "held_over_time": pressure.held_over_time,
        "largest_worker_rss_mib": round(rss, 1),
        "bystander": {kind: what.summary() for kind, what in seen.items()},
    }
    for kind, what in seen.items():
        run.outcome.check(
            f"{name}: every {kind} answered OK",
            what.calls > 0 and what.ok == what.calls,
            what.summary(),
        )


def _held_at_most(run: Run, what: str, timed_out: int, share: int, seconds: float) -> None:
    """Check the attacker held no more than its share: each held request ends in a timeout."""
    workers = os.cpu_count() or 1
    rounds = math.ceil(seconds / Settings.request_read_timeout_seconds)
    most = workers * share * rounds
    run.outcome.check(
        f"{what}: the attacker's address held at most its share",
        timed_out <= most,
        f"{timed_out} ended by the read timeout; its share, {share} in each of {workers} workers, "
        f"allows {most} in {seconds:.0f} s",
    )


async def scenario(run: Run) -> None:
    """Attack with each hostile client in turn; the bystander must be served all along."""
    primary = await run.cluster("primary")
    service = await run.service(
        primary.url(SERVING_ROLE, DATABASE),
        primary.url(OWNER, DATABASE),
        {"PLUCT_GRPC_MAX_CONNECTION_IDLE_SECONDS": str(IDLE_SECONDS)},
        workers=os.cpu_count() or 1,  # the default: one per core
    )
    _, admin_key = await make_keys(service)
    async with PluctClient(service.grpc_target, admin_secret=SECRETS["ADMIN_SECRET"]) as root:
        await root.grant(USER, 10, reason="bystander")
    http_target = service.http_base.removeprefix("http://")
    seconds = run.seconds(ATTACK_SECONDS)
    async with Bystander(service.grpc_target, service.http_base, admin_key, USER) as bystander:
        slow = attacker("slow-bodies", http_target, SLOW_SOURCE, seconds)
        result = await _attack(
            run, service, bystander, "2,400 slow bodies", asyncio.create_task(slow)
        )
        _record(run, "slow-bodies", *result)
        _held_at_most(
            run,
            "slow bodies",
            result[0].answers["408"],
            Settings.http_max_concurrent_requests_per_address,
            seconds,
        )

        stalled = attacker(
            "stalled-streams", service.grpc_target, STALL_SOURCE, seconds, *STALLED_PATHS
        )
        result = await _attack(
            run,
            service,
            bystander,
            "6 x 1,000 stalled gRPC streams",
            asyncio.create_task(stalled),
        )
        _record(run, "stalled-streams", *result)
        _held_at_most(
            run,
            "stalled calls",
            result[0].answers[f"grpc-status {DEADLINE_EXCEEDED}"],
            Settings.grpc_max_concurrent_rpcs_per_address,
            seconds,
        )

        began = time.monotonic()
        idle = attacker("idle", service.grpc_target, IDLE_SOURCE, IDLE_SECONDS + 10.0)
        result = await _attack(
            run, service, bystander, "3,000 idle HTTP/2 connections", asyncio.create_task(idle)
        )
        _record(run, "idle-connections", *result)
        pressure = result[0]
        run.outcome.check(
            f"idle connections closed within {IDLE_SECONDS} s + 10 s",
            pressure.opened > 0 and pressure.closed_by_server == pressure.opened,
            f"{pressure.closed_by_server} of {pressure.opened} closed in "
            f"{time.monotonic() - began:.0f} s",
        )
