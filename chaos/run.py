"""One scenario's servers, clients and findings, all stopped and removed on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import asyncpg

from bench.harness import SECRETS
from chaos.accounts import give
from chaos.drivers import Drivers
from chaos.grpc_client import RecordingClient
from chaos.health import HealthWatch
from chaos.http_client import HttpClient
from chaos.load import LoadPlan, MixedLoad
from chaos.outcome import Fault, Outcome
from chaos.pgbouncer import PgBouncer
from chaos.postgres import Postgres
from chaos.progress import Progress
from chaos.raw import write_raw
from chaos.recovery import heal_seconds
from chaos.service import Service, make_keys, start_service
from chaos.tally import Tally
from chaos.verdict import judge
from tests.support import free_port

DATABASE = "pluct"
OWNER = "postgres"
SERVING_ROLE = "pluct_app"
WORKERS = 3
CLIENTS = 3
LOOPS_PER_CLIENT = 12
USERS = 40
USER_CREDITS = 1000
HOT_USER = "hot"
HOT_CREDITS = 10_000  # the most CreateUser grants at once
SHORT_SCALE = 0.4
TICK_SECONDS = 3.0


class Run:
    """Builds a scenario's topology in a temporary folder and tears it all down in `close`."""

    def __init__(
        self,
        outcome: Outcome,
        progress: Progress,
        out: Path,
        account: pwd.struct_passwd | None,
        *,
        short: bool,
    ) -> None:
        self.outcome = outcome
        self.progress = progress
        self.out = out
        self.short = short
        self.tally = Tally()
        self.started = time.monotonic()
        self._account = account
        self.plan: LoadPlan | None = None
        self._cleanups: list[Callable[[], None]] = []
        self._kept: list[Path] = []
        self._ticker: asyncio.Task[None] | None = None
        self.root = Path(tempfile.mkdtemp(prefix=f"pluct-chaos-{outcome.name}-"))
        give(self.root, account)
        # Each run's record starts empty: nothing in it may come from an earlier run.
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)

    def seconds(self, full: float) -> float:
        """Return how long a step lasts: `full`, or less in a short run."""
        return full * SHORT_SCALE if self.short else full

    def say(self, text: str) -> None:
        """Print a progress line."""
        self.progress.say(text)

    async def cluster(self, name: str, settings: Mapping[str, str] | None = None) -> Postgres:
        """Create and start a PostgreSQL server with the service's database and roles."""
        server = Postgres(self.root / name, free_port(), self._account)
        self.adopt(server)
        await asyncio.to_thread(server.create, settings)
        await asyncio.to_thread(server.start)
        conn = await asyncpg.connect(server.url())
        try:
            await conn.execute(f"CREATE DATABASE {DATABASE}")
            # The production split: the owner migrates, the serving role may only serve.
            await conn.execute(f"CREATE ROLE {SERVING_ROLE} LOGIN")
        finally:
            await conn.close()
        self.say(f"PostgreSQL {name} on port {server.port}")
        return server

    def adopt(self, server: Postgres) -> None:
        """Stop `server` on the way out, keeping its log."""
        self._kept.append(server.log)
        self._cleanups.append(server.kill)

    async def pgbouncer(self, program: str, server: Postgres) -> PgBouncer:
        """Start PgBouncer in transaction mode in front of `server`."""
        folder = self.root / "pgbouncer"
        give(folder, self._account)
        bouncer = PgBouncer(
            program, folder, free_port(), server.port, (OWNER, SERVING_ROLE), self._account
        )
        self._kept.append(bouncer.log)
        self._cleanups.append(bouncer.stop)
        await bouncer.start()
        self.say(f"PgBouncer (transaction mode) on port {bouncer.port}")
        return bouncer

    async def service(
        self,
        database_url: str,
        migrate_url: str,
        settings: Mapping[str, str] | None = None,
        *,
        workers: int = WORKERS,
    ) -> Service:
        """Start the service with `workers` workers (three by default); stop it on the way out."""
        log = self.out / "service.log"
        service = await start_service(
            database_url, migrate_url, log, workers=workers, settings=settings
        )
        self._cleanups.append(service.stop)
        self.say(f"service serving on {service.grpc_target} with {workers} workers")
        return service

    async def start_load(self, service: Service) -> Drivers:
        """Make the keys and users, then start the client processes' mixed load."""
        caller_key, admin_key = await make_keys(service)
        users = tuple(f"u{n}" for n in range(1, USERS + 1))
        base = LoadPlan(
            name="setup",
            grpc_target=service.grpc_target,
            http_base=service.http_base,
            caller_key=caller_key,
            admin_key=admin_key,
            webhook_secret=SECRETS["WEBHOOK_SECRET"],
            users=users,
            hot_user=HOT_USER,
            concurrency=LOOPS_PER_CLIENT,
            seed=0,
        )
        self.plan = base
        async with self.clients() as load:
            await load.create_users(list(users), USER_CREDITS)
            await load.create_users([HOT_USER], HOT_CREDITS)
        plans = [replace(base, name=f"c{index}", seed=index) for index in range(1, CLIENTS + 1)]
        drivers = Drivers(plans)
        self._cleanups.append(drivers.kill)
        drivers.start()
        self._ticker = asyncio.create_task(self._tick(drivers))
        self.say(
            f"load started: {CLIENTS} client processes x {LOOPS_PER_CLIENT} loops, "
            f"{USERS} users and a hot one"
        )
        return drivers

    @contextlib.asynccontextmanager
    async def clients(self) -> AsyncIterator[MixedLoad]:
        """Yield a mixed load run from this process, its calls tallied with the scenario's."""
        plan = self.plan
        assert plan is not None, "start_load() first"
        async with (
            RecordingClient(
                plan.grpc_target,
                self.tally,
                api_key=plan.caller_key,
                webhook_secret=plan.webhook_secret,
            ) as caller,
            RecordingClient(plan.grpc_target, self.tally, api_key=plan.admin_key) as admin,
            HttpClient(plan.http_base, plan.webhook_secret, self.tally) as http,
        ):
            yield MixedLoad(plan, self.tally, caller, admin, http)

    async def finish_load(self, drivers: Drivers) -> Tally:
        """Stop the load, let it settle, and return every client's tally merged."""
        self.say("load stopping; retrying what is still unsettled")
        self.tally.merge(await drivers.finish())
        if self._ticker is not None:
            self._ticker.cancel()
        return self.tally

    def fault(self, label: str) -> Fault:
        """Note a fault injected now."""
        fault = Fault(label, time.monotonic() - self.started)
        self.outcome.faults.append(fault)
        self.say(f"fault: {label}")
        return fault

    def at(self, fault: Fault) -> float:
        """Return the fault's time on the clients' clock (time.monotonic)."""
        return self.started + fault.at

    def heal(self, fault: Fault) -> float | None:
        """Work out and record how long vends took to succeed again after `fault`."""
        fault.heal_seconds = heal_seconds(self.tally.attempts, self.at(fault))
        return fault.heal_seconds

    def health_between(self, watch: HealthWatch, fault: Fault, state: str) -> bool:
        """Tell whether health reported `state` between the fault and the heal (or now)."""
        since = self.at(fault)
        until = None if fault.heal_seconds is None else since + fault.heal_seconds + 1.0
        return watch.seen(state, since, until)

    async def prove(self, owner_url: str) -> None:
        """Keep the raw record, then judge the calls and prove the invariants on `owner_url`."""
        write_raw(self.tally, self.started, self.out)
        self.say("proving the invariants (audit, ledger against answers)")
        await judge(self.outcome, self.tally, owner_url)

    def close(self) -> None:
        """Stop everything started, keep the logs in the output folder, remove the temp folder."""
        if self._ticker is not None:
            self._ticker.cancel()
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as error:  # the rest must still be cleaned up
                self.say(f"clean-up step failed: {error}")
        for log in self._kept:
            if log.exists():
                shutil.copyfile(log, self.out / log.name)
        shutil.rmtree(self.root, ignore_errors=True)
        self.outcome.seconds = time.monotonic() - self.started

    async def _tick(self, drivers: Drivers) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            attempts, failed = drivers.progress()
            self.say(f"load: {attempts:,} attempts, {failed:,} failed")
