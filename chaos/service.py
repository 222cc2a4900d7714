"""The service under test: `python -m pluct_server serve --workers N` in production mode."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
from pluct_client import PluctClient

from bench.harness import REPO, SECRETS
from tests.support import free_port, wait_until_serving

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
CALLER_SCOPES = ["users:create", "credits:read", "tokens:vend", "tokens:validate"]
# Production settings, but no rate limit that this load would trip (they are proven elsewhere),
# and health and caches refreshed every second, so a fault shows within the scenario.
SETTINGS = {
    "PLUCT_VEND_RATE": "0",
    "PLUCT_HTTP_IP_RATE": "0",
    "PLUCT_SIGNUP_RATE": "0",
    "PLUCT_AUTH_FAILURE_RATE": "0",
    "PLUCT_HEALTH_INTERVAL_SECONDS": "1",
    "PLUCT_CACHE_REFRESH_SECONDS": "1",
    "PLUCT_LOG_LEVEL": "WARNING",
}


@dataclass
class Service:
    """A running supervisor with its workers, and where to reach them."""

    process: subprocess.Popen[bytes]
    grpc_target: str
    http_base: str
    log: Path

    def workers(self) -> list[psutil.Process]:
        """Return the live worker processes (not multiprocessing's helper)."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.Error:
            return []
        workers = []
        for child in children:
            try:
                if "spawn_main" in " ".join(child.cmdline()) and child.status() != "zombie":
                    workers.append(child)
            except psutil.Error:
                pass  # it died while we looked
        return workers

    async def wait_for_workers(
        self, count: int, within: float, *, besides: frozenset[int] = frozenset()
    ) -> float | None:
        """Wait until `count` workers not in `besides` are alive; return how long that took."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            if len([w for w in self.workers() if w.pid not in besides]) >= count:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        return None

    def stop(self) -> None:
        """Stop the service with SIGTERM (calls in flight drain), killing what lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT_SECONDS)
        # The workers share the supervisor's process group: nothing of it may outlive us.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


async def start_service(
    database_url: str,
    migrate_url: str,
    log: Path,
    *,
    workers: int,
    settings: Mapping[str, str] | None = None,
) -> Service:
    """Start the service, as an operator would in production, and wait until it serves."""
    grpc_port, http_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'clients'}",
        "DATABASE_URL": database_url,
        "PLUCT_MIGRATE_DATABASE_URL": migrate_url,
        "PLUCT_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
        "PLUCT_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        **SECRETS,
        **SETTINGS,
        **(settings or {}),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: ASYNC220, S603 - start-up only; our own program
            [sys.executable, "-m", "pluct_server", "serve", "--workers", str(workers)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stopping it can reach every worker it started.
            start_new_session=True,
        )
    service = Service(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", log)
    try:
        await wait_until_serving(service.grpc_target, process, START_TIMEOUT_SECONDS)
        if await service.wait_for_workers(workers, START_TIMEOUT_SECONDS) is None:
            raise RuntimeError(f"the service did not start {workers} workers; see {log}")
    except BaseException:
        service.stop()
        raise
    return service


async def make_keys(service: Service) -> tuple[str, str]:
    """Create the API keys the load uses, with the bootstrap admin secret: (caller, admin)."""
    async with PluctClient(service.grpc_target, admin_secret=SECRETS["ADMIN_SECRET"]) as root:
        caller = await root.create_api_key("chaos-caller", CALLER_SCOPES)
        admin = await root.create_api_key("chaos-admin", ["admin"])
    return str(caller.secret), str(admin.secret)
