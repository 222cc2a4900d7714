"""A service process on a scratch database, and a closed-loop load generator for it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from pluct_server.runtime.embedded_postgres import EmbeddedPostgres
from pluct_server.values.settings import SECRET_NAMES
from tests.support import free_port, scratch_database, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
SECRETS = {name: secrets.token_hex(32) for name in SECRET_NAMES}


@dataclass
class Service:
    """A running `python -m pluct_server serve` and where to reach it."""

    process: subprocess.Popen[bytes]
    grpc_target: str
    http_base: str
    dsn: str
    metrics_url: str

    def rss_mib(self) -> float:
        """Resident memory of the service process, in MiB."""
        return psutil.Process(self.process.pid).memory_info().rss / 2**20


@asynccontextmanager
async def postgres_server() -> AsyncIterator[str]:
    """Yield a PostgreSQL server URL: DATABASE_URL's if set, else a temporary embedded one."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="pluct-bench-") as folder:
        embedded = EmbeddedPostgres(Path(folder) / "pg")
        dsn = await asyncio.to_thread(embedded.start)
        try:
            yield dsn
        finally:
            await asyncio.to_thread(embedded.stop)


@asynccontextmanager
async def running_service(
    server_url: str, settings: dict[str, str] | None = None
) -> AsyncIterator[Service]:
    """Start the service on a scratch database in its own process; stop it on the way out."""
    async with scratch_database(server_url) as dsn:
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": dsn,
            "PLUCT_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
            "PLUCT_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "PLUCT_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            # Health pings and cache refreshes would add transactions to the round-trip count;
            # one an hour (a minute for the caches) is as good as none.
            "PLUCT_HEALTH_INTERVAL_SECONDS": "3600",
            "PLUCT_CACHE_REFRESH_SECONDS": "60",
            "PLUCT_LOG_LEVEL": "WARNING",
            "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'clients'}",
            **SECRETS,
            **(settings or {}),
        }
        process = subprocess.Popen(  # noqa: ASYNC220 - start-up only, not on a hot path
            [sys.executable, "-m", "pluct_server", "serve"], env=env, stdin=subprocess.DEVNULL
        )
        service = Service(
            process,
            f"127.0.0.1:{grpc_port}",
            f"http://127.0.0.1:{http_port}",
            dsn,
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
        try:
            await wait_until_serving(service.grpc_target, process, deadline_seconds=60)
            yield service
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 30)
