"""CreditService: sign-up, balances, history and the payment webhook."""

from __future__ import annotations

import grpc
from pluct.credit.v1 import credit_service_pb2 as pb
from pluct.credit.v1 import credit_service_pb2_grpc

from pluct_server.api.grpc.services.convert import (
    grant_message,
    timestamp,
    timestamp_now,
    transaction_message,
)
from pluct_server.domain.errors import InvalidArgument
from pluct_server.domain.ledger import Ledger
from pluct_server.security.callers import current_caller
from pluct_server.values.callers import Caller


class CreditServicer(credit_service_pb2_grpc.CreditServiceServicer):  # type: ignore[misc]
    """Serves pluct.credit.v1.CreditService from the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def CreateUser(
        self, request: pb.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateUserResponse:
        """Create a user with its initial credits."""
        balance = await self._ledger.create_user(
            request.user_id, request.initial_credits, request.request_id, current_caller()
        )
        return pb.CreateUserResponse(user_id=request.user_id, initial_balance=balance)

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        """Return a user's balance (0 for an unknown user)."""
        balance = await self._ledger.balance(request.user_id)
        response = pb.GetBalanceResponse(
            user_id=request.user_id, balance=balance.balance, read_time=timestamp_now()
        )
        if balance.next_expire_time is not None:
            response.next_expire_time.CopyFrom(timestamp(balance.next_expire_time))
            response.next_expire_amount = balance.next_expire_amount
        return response

    async def ListTransactions(
        self, request: pb.ListTransactionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTransactionsResponse:
        """Return one page of a user's ledger, newest first."""
        page = await self._ledger.transactions(
            request.user_id, request.page_size, request.page_token
        )
        return pb.ListTransactionsResponse(
            user_id=request.user_id,
            transactions=[transaction_message(entry) for entry in page.transactions],
            next_page_token=page.next_page_token,
        )

    async def ListGrants(
        self, request: pb.ListGrantsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListGrantsResponse:
        """Return one page of a user's grants, newest first, with what remains of each."""
        page = await self._ledger.grants(request.user_id, request.page_size, request.page_token)
        return pb.ListGrantsResponse(
            grants=[grant_message(grant) for grant in page.grants],
            next_page_token=page.next_page_token,
        )

    async def AddCredits(
        self, request: pb.AddCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddCreditsResponse:
        """Credit a payment reported by the payment provider."""
        caller = current_caller()
        credited = await self._ledger.add_payment(
            request.user_id, request.amount, _payment_id(request, caller), caller
        )
        return pb.AddCreditsResponse(
            user_id=request.user_id,
            new_balance=credited.balance_after,
            grant_id=credited.grant_id or "",
        )


def _payment_id(request: pb.AddCreditsRequest, caller: Caller) -> str:
    """Return the id a payment is deduplicated by: the provider's event id or the request id."""
    if caller.signature is not None:
        # The signature covers the body alone: an id from anywhere else (a header) could be
        # changed by whoever captured the call, making a replay look like a new payment.
        if not request.event_id:
            raise InvalidArgument(
                "event_id",
                "a signed payment must carry the provider's event id as eventId in its signed body",
            )
        if request.request_id and request.request_id != request.event_id:
            raise InvalidArgument(
                "request_id",
                "a signed payment is known by the eventId its signature covers; its request_id "
                "(Idempotency-Key) must be the same or left out",
            )
    if request.event_id and request.request_id and request.event_id != request.request_id:
        # Two different ids for one payment is a client bug; picking one could credit twice.
        raise InvalidArgument(
            "event_id", "event_id and request_id differ; send one, or the same in both"
        )
    return str(request.event_id or request.request_id)
