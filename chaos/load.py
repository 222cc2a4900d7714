"""The mixed load: vends, payments, grants, sign-ups and reads, mutations retried until settled."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from pluct_client import PluctClient, RetryableError
from pluct_client.client import new_request_id

from chaos.http_client import HttpAnswer, HttpClient
from chaos.tally import Mutation, Tally

# Answers that settle a mutation as not applied: the request itself was refused.
REFUSALS = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# How often each operation is picked: mostly vends, as in production, over both front doors.
MIX = (
    ("vend", "grpc", 50),
    ("vend", "http", 12),
    ("payment", "grpc", 8),
    ("payment", "http", 4),
    ("grant", "grpc", 5),
    ("create", "grpc", 3),
    ("read", "grpc", 10),
)
HOT_SHARE = 0.15
SIGNUP_CREDITS = 10  # the signup allowance: a caller key may create users with this many
RETRY_FIRST_SECONDS = 0.05
RETRY_MOST_SECONDS = 1.0

# What a send returns: the token id (vends) and the balance after the change.
Answer = tuple[str, int]


class Refused(Exception):
    """The service said no to the request itself: it was not applied."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.detail = detail


class Unsettled(Exception):
    """No answer says whether the request was applied: send it again with the same id."""


@dataclass(frozen=True)
class LoadPlan:
    """Where one client sends its load, with which credentials, and to which users."""

    name: str
    grpc_target: str
    http_base: str
    caller_key: str
    admin_key: str
    webhook_secret: str
    users: tuple[str, ...]
    hot_user: str
    concurrency: int
    seed: int
    # After the load stops, how long a mutation still unanswered keeps being retried.
    settle_seconds: float = 30.0


class MixedLoad:
    """Runs the mix in `concurrency` loops; notes every mutation and attempt in `tally`."""

    def __init__(
        self,
        plan: LoadPlan,
        tally: Tally,
        caller: PluctClient,
        admin: PluctClient,
        http: HttpClient,
    ) -> None:
        self.plan = plan
        self.tally = tally
        self._caller = caller
        self._admin = admin
        self._http = http
        self._users = list(plan.users)
        self._random = random.Random(plan.seed)  # noqa: S311 - a load mix, not a secret
        # While run() goes on, a mutation is retried for as long as it takes; outside it (set-up,
        # bursts) its settle_seconds start at its first failure.
        self._stopping: Callable[[], bool] = lambda: True
        self._stopped_at: float | None = None
        self._signups = 0
        operations, weights = zip(
            *(((kind, via), weight) for kind, via, weight in MIX), strict=True
        )
        self._operations: list[tuple[str, str]] = list(operations)
        self._weights: list[int] = list(weights)

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Loop until `stopping()` says so, then let every mutation in flight settle."""
        self._stopping = stopping
        await asyncio.gather(*(self._loop() for _ in range(self.plan.concurrency)))

    async def _loop(self) -> None:
        while not self._stopping():
            kind, via = self._random.choices(self._operations, self._weights)[0]
            await self.one(kind, via)

    async def one(self, kind: str, via: str) -> None:
        """Make one call of the mix."""
        if kind == "read":
            await self._read(self._random.choice(self._users))
        elif kind == "vend":
            await self.vend(self._vend_target(), via)
        elif kind == "payment":
            await self._payment(self._random.choice(self._users), self._random.randint(1, 5), via)
        elif kind == "grant":
            await self._grant(self._random.choice(self._users), self._random.randint(1, 3))
        else:
            self._signups += 1
            await self._signup(f"{self.plan.name}-signup-{self._signups}")

    async def burst(self, vends: int) -> None:
        """Send `vends` vends at once, over gRPC, and wait until each settles."""
        self._stopping, self._stopped_at = lambda: True, None
        await asyncio.gather(*(self.vend(self._vend_target(), "grpc") for _ in range(vends)))

    async def create_users(self, users: list[str], credits: int) -> None:
        """Create users with `credits` each, as an admin may (above the signup allowance)."""
        self._stopping, self._stopped_at = lambda: True, None

        async def create(user_id: str) -> None:
            async def send(request_id: str) -> Answer:
                reply = await self._admin.create_user(user_id, credits, request_id)
                return "", int(reply.initial_balance)

            await self._settle(Mutation("create", "grpc", user_id, new_request_id(), credits), send)

        await asyncio.gather(*(create(user_id) for user_id in users))

    def _vend_target(self) -> str:
        if self._random.random() < HOT_SHARE:
            return self.plan.hot_user
        return self._random.choice(self._users)

    async def vend(self, user_id: str, via: str) -> None:
        """Vend one token for `user_id`, over gRPC or HTTP."""

        async def send(request_id: str) -> Answer:
            if via == "http":
                return await self._http.vend(user_id, request_id)
            reply = await self._caller.vend_token(user_id, request_id)
            return str(reply.token_id), int(reply.balance_after)

        await self._settle(Mutation("vend", via, user_id, new_request_id(), -1), send)

    async def _payment(self, user_id: str, amount: int, via: str) -> None:
        async def send(request_id: str) -> Answer:
            if via == "http":
                return "", await self._http.payment(user_id, amount, request_id)
            reply = await self._caller.add_payment(user_id, amount, request_id)
            return "", int(reply.new_balance)

        await self._settle(Mutation("payment", via, user_id, new_request_id(), amount), send)

    async def _grant(self, user_id: str, amount: int) -> None:
        async def send(request_id: str) -> Answer:
            reply = await self._admin.grant(user_id, amount, "chaos", request_id)
            return "", int(reply.new_balance)

        await self._settle(Mutation("grant", "grpc", user_id, new_request_id(), amount), send)

    async def _signup(self, user_id: str) -> None:
        async def send(request_id: str) -> Answer:
            reply = await self._caller.create_user(user_id, SIGNUP_CREDITS, request_id)
            return "", int(reply.initial_balance)

        mutation = Mutation("create", "grpc", user_id, new_request_id(), SIGNUP_CREDITS)
        await self._settle(mutation, send)
        if mutation.outcome == "ok":
            self._users.append(user_id)

    async def _read(self, user_id: str) -> None:
        self.tally.calls["read"] += 1
        # Every attempt is in the tally already, and a read changes nothing: no retry.
        with contextlib.suppress(grpc.aio.AioRpcError, RetryableError):
            await self._caller.balance(user_id)

    async def _settle(self, mutation: Mutation, send: Callable[[str], Awaitable[Answer]]) -> None:
        """Send until the answer says what happened, always with the mutation's request id."""
        self.tally.mutations.append(mutation)
        self.tally.calls[mutation.kind] += 1
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                mutation.token_id, mutation.balance_after = await _answer(send(mutation.request_id))
            except Refused as refusal:
                mutation.outcome, mutation.last_code = "refused", str(refusal)
                mutation.detail = refusal.detail
                return
            except Unsettled as unsettled:
                mutation.last_code = str(unsettled)
            else:
                mutation.outcome, mutation.last_code = "ok", "OK"
                return
            if self._settling_over():
                mutation.outcome = "unknown"
                return
            # Jitter spreads the retries of many loops apart; it needs no secrecy.
            await asyncio.sleep(delay * (0.5 + self._random.random()))
            delay = min(delay * 2, RETRY_MOST_SECONDS)

    def _settling_over(self) -> bool:
        """Tell whether the load stopped more than `settle_seconds` ago."""
        if self._stopped_at is None:
            if not self._stopping():
                return False
            self._stopped_at = time.monotonic()
        return time.monotonic() > self._stopped_at + self.plan.settle_seconds


async def _answer(call: Awaitable[Answer]) -> Answer:
    """Await a send, turning every failure into Refused or Unsettled."""
    try:
        return await call
    except RetryableError as error:
        cause = error.__cause__
        code = cause.code().name if isinstance(cause, grpc.aio.AioRpcError) else "RETRIES SPENT"
        raise Unsettled(code) from error
    except grpc.aio.AioRpcError as error:
        if error.code() in REFUSALS:
            raise Refused(error.code().name, error.details() or "") from error
        # INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED...: no answer says it was not applied, so a
        # careful client sends it again with the same id, which the id makes safe.
        raise Unsettled(error.code().name) from error
    except HttpAnswer as answer:
        if answer.retried:
            raise Unsettled(answer.code) from answer
        raise Refused(answer.code, answer.detail) from answer
