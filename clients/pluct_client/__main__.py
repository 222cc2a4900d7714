"""Command line for operators: `pluct <command>` (or `python -m pluct_client`) against a service."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import timedelta

import grpc
from google.protobuf.message import Message
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_client.client import PluctClient, RetryableError
from pluct_client.settings import CliSettings, read_settings
from pluct_client.tables import as_dict, as_table

SCOPES = (
    "users:create",
    "credits:read",
    "credits:grant",
    "tokens:vend",
    "tokens:validate",
    "metrics:read",
    "admin",
)


def _duration(text: str) -> timedelta:
    """Read 30d, 12h, 90m or 3600s as a timedelta."""
    units = {"d": 86_400, "h": 3600, "m": 60, "s": 1}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h or 90m")
    return timedelta(seconds=int(number) * units[unit])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pluct",
        description=__doc__,
        epilog="Settings are the server's own, read from the environment, then .env, then the "
        "dev secrets of `make run` (.data/dev-secrets.env): PLUCT_API_KEY (or the dev key, or "
        "ADMIN_SECRET) is sent with every call, WEBHOOK_SECRET with payments; the server is "
        "PLUCT_TARGET, or where PLUCT_GRPC_LISTEN has it listen.",
    )
    parser.add_argument(
        "--target", help="host:port of the gRPC server (env PLUCT_TARGET or PLUCT_GRPC_LISTEN)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print answers as JSON, for scripts (default: tables)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-user", help="create a user")
    create.add_argument("user_id")
    create.add_argument("--credits", type=int, default=0)
    commands.add_parser("balance", help="show a user's balance").add_argument("user_id")
    history = commands.add_parser("transactions", help="show a user's ledger")
    history.add_argument("user_id")
    history.add_argument("--page-size", type=int, default=0)
    vend = commands.add_parser("vend", help="spend a feature's price for a token")
    vend.add_argument("user_id")
    vend.add_argument("--request-id", default="")
    vend.add_argument("--feature", default="", help="what the token unlocks (default: default)")
    validate = commands.add_parser("validate", help="check a token")
    validate.add_argument("token")
    validate.add_argument("--feature", default="", help="refuse a token sold for another one")
    commands.add_parser("prices", help="list every feature and its price")
    price = commands.add_parser("price", help="set a feature's price (admin)")
    price_commands = price.add_subparsers(dest="price_command", required=True)
    set_price = price_commands.add_parser("set", help="make a feature or change its price")
    set_price.add_argument("feature")
    set_price.add_argument("credits", type=int)
    commands.add_parser("users", help="list users (admin)")
    grant = commands.add_parser(
        "credit", aliases=["grant"], help="credit a user by hand, an admin grant (admin)"
    )
    grant.add_argument("user_id")
    grant.add_argument("amount", type=int)
    grant.add_argument("--reason")
    grant.add_argument("--request-id", default="")
    kind = grant.add_mutually_exclusive_group()
    kind.add_argument("--paid", action="store_true", help="paid credits (spent after promotional)")
    kind.add_argument("--promotional", action="store_true", help="promotional credits (default)")
    grant.add_argument("--priority", type=int, help="0 to 100, lower spent first (default 50)")
    grant.add_argument(
        "--expires", type=_duration, help="when what remains expires, from now: 30d, 12h, 90m"
    )
    commands.add_parser("grants", help="list a user's grants").add_argument("user_id")
    commands.add_parser(
        "events", help="list a user's events, newest first, as receivers get them (admin)"
    ).add_argument("user_id")
    give_back = commands.add_parser("refund", help="give back credits of a spend (admin)")
    give_back.add_argument("transaction_id", type=int, help="the spend's ledger id")
    give_back.add_argument("--amount", type=int, default=0, help="default: all that is left")
    give_back.add_argument("--reason")
    give_back.add_argument("--request-id", default="")
    keys = commands.add_parser("keys", help="create, list and revoke API keys (admin)")
    key_commands = keys.add_subparsers(dest="key_command", required=True)
    make = key_commands.add_parser("create", help="make a key; its secret is printed once")
    make.add_argument("name", help="whose key it is, e.g. billing-service")
    make.add_argument(
        "--scope", action="append", required=True, choices=SCOPES, help="repeat for several"
    )
    key_commands.add_parser("list", help="list keys, newest first")
    key_commands.add_parser("revoke", help="revoke a key").add_argument("key_id")
    hooks = commands.add_parser("webhooks", help="where events are sent (admin)")
    hook_commands = hooks.add_subparsers(dest="hook_command", required=True)
    hook = hook_commands.add_parser("create", help="add an endpoint; its secret is printed once")
    hook.add_argument("url", help="https://... (public hosts only in production)")
    hook.add_argument("--event", action="append", help="an event type to send; default: all")
    hook.add_argument(
        "--threshold", action="append", type=int, help="a balance whose crossing it hears of"
    )
    hook_commands.add_parser("list", help="list endpoints, oldest first")
    hook_commands.add_parser("delete", help="remove an endpoint").add_argument("endpoint_id")
    hook_commands.add_parser(
        "rotate-secret", help="a new secret, printed once; the old one signs a day more"
    ).add_argument("endpoint_id")
    revoke = commands.add_parser("revoke-tokens", help="revoke a token or a user's tokens (admin)")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--jti", help="one token, by its jti (token_id)")
    target.add_argument("--user", help="every token this user holds now")
    commands.add_parser("jwks", help="show the public keys of token signing")
    commands.add_parser("audit", help="check every balance against its ledger (admin)")
    return parser


async def _run(args: argparse.Namespace, settings: CliSettings) -> object:
    async with PluctClient(
        args.target or settings.target,
        api_key=settings.api_key,
        admin_secret=settings.admin_secret,
        webhook_secret=settings.webhook_secret,
    ) as client:
        if args.command == "create-user":
            return await client.create_user(args.user_id, args.credits)
        if args.command == "balance":
            return await client.balance(args.user_id)
        if args.command == "transactions":
            return await client.transactions(args.user_id, args.page_size)
        if args.command == "vend":
            return await client.vend_token(args.user_id, args.request_id, args.feature)
        if args.command == "validate":
            return await client.validate_token(args.token, args.feature)
        if args.command == "refund":
            return await client.refund(
                args.transaction_id, args.amount, args.reason, args.request_id
            )
        if args.command == "grants":
            return await client.grants(args.user_id)
        if args.command == "events":
            return await client.events(args.user_id)
        if args.command == "prices":
            return await client.list_prices()
        if args.command == "price":
            return await client.set_price(args.feature, args.credits)
        if args.command == "users":
            return await client.list_users()
        if args.command == "keys":
            if args.key_command == "create":
                return await client.create_api_key(args.name, args.scope)
            if args.key_command == "list":
                return await client.list_api_keys()
            return await client.revoke_api_key(args.key_id)
        if args.command == "webhooks":
            if args.hook_command == "create":
                return await client.create_webhook_endpoint(args.url, args.event, args.threshold)
            if args.hook_command == "list":
                return await client.list_webhook_endpoints()
            if args.hook_command == "delete":
                return await client.delete_webhook_endpoint(args.endpoint_id)
            return await client.rotate_webhook_secret(args.endpoint_id)
        if args.command == "revoke-tokens":
            return await client.revoke_tokens(jti=args.jti, user_id=args.user)
        if args.command == "jwks":
            return await client.jwks()
        if args.command == "audit":
            return await client.audit()
        return await client.grant(
            args.user_id,
            args.amount,
            args.reason,
            args.request_id,
            paid=args.paid,
            priority=args.priority,
            expires_in=args.expires,
        )


def main(argv: list[str] | None = None) -> int:
    """Run one command and print its answer as JSON (or the error on stderr)."""
    args = _parser().parse_args(argv)
    settings = read_settings()
    try:
        answer = asyncio.run(_run(args, settings))
    except RetryableError as error:
        print(f"unavailable, retry: {error}", file=sys.stderr)
        return 75  # EX_TEMPFAIL
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED and not (
            settings.api_key or settings.admin_secret
        ):
            print(
                f"UNAUTHENTICATED: no API key found (looked for "
                f"{settings.where_keys_are_looked_for()})",
                file=sys.stderr,
            )
        else:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if not args.json:
        print(as_table(answer))
    elif isinstance(answer, Message):
        print(json.dumps(as_dict(answer), indent=2))
    else:
        print(json.dumps(answer))
    # A token that is not valid, and an audit that found problems, are failures, for scripts
    # and cron alike.
    if isinstance(answer, token_pb.ValidateTokenResponse) and not answer.valid:
        return 1
    return 1 if getattr(answer, "problems", None) else 0


if __name__ == "__main__":
    sys.exit(main())
