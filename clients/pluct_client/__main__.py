"""Command line for operators: `python -m pluct_client <command> ...` against a running service."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from pluct_client.client import PluctClient, RetryableError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pluct_client", description=__doc__)
    parser.add_argument(
        "--target",
        default=os.environ.get("PLUCT_TARGET", "127.0.0.1:50051"),
        help="host:port of the gRPC server (env PLUCT_TARGET)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-user", help="create a user")
    create.add_argument("user_id")
    create.add_argument("--credits", type=int, default=0)
    commands.add_parser("balance", help="show a user's balance").add_argument("user_id")
    history = commands.add_parser("transactions", help="show a user's ledger")
    history.add_argument("user_id")
    history.add_argument("--page-size", type=int, default=0)
    vend = commands.add_parser("vend", help="spend one credit for a token")
    vend.add_argument("user_id")
    vend.add_argument("--request-id", default="")
    commands.add_parser("validate", help="check a token").add_argument("token")
    commands.add_parser("users", help="list users (ADMIN_SECRET)")
    grant = commands.add_parser("grant", help="grant credits by hand (ADMIN_SECRET)")
    grant.add_argument("user_id")
    grant.add_argument("amount", type=int)
    grant.add_argument("--reason")
    grant.add_argument("--request-id", default="")
    return parser


async def _run(args: argparse.Namespace) -> object:
    async with PluctClient(
        args.target,
        admin_secret=os.environ.get("ADMIN_SECRET"),
        webhook_secret=os.environ.get("WEBHOOK_SECRET"),
    ) as client:
        if args.command == "create-user":
            return await client.create_user(args.user_id, args.credits)
        if args.command == "balance":
            return await client.balance(args.user_id)
        if args.command == "transactions":
            return await client.transactions(args.user_id, args.page_size)
        if args.command == "vend":
            return await client.vend_token(args.user_id, args.request_id)
        if args.command == "validate":
            return await client.validate_token(args.token)
        if args.command == "users":
            return await client.list_users()
        return await client.grant(args.user_id, args.amount, args.reason, args.request_id)


def main(argv: list[str] | None = None) -> int:
    """Run one command and print its answer as JSON (or the error on stderr)."""
    args = _parser().parse_args(argv)
    try:
        answer = asyncio.run(_run(args))
    except RetryableError as error:
        print(f"unavailable, retry: {error}", file=sys.stderr)
        return 75  # EX_TEMPFAIL
    except grpc.aio.AioRpcError as error:
        print(f"{error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if isinstance(answer, Message):
        print(json_format.MessageToJson(answer, preserving_proto_field_name=True))
    else:
        print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
