"""AdminService: every user, every ledger entry, and manual grants."""

from __future__ import annotations

import grpc
from pluct.admin.v1 import admin_service_pb2 as pb
from pluct.admin.v1 import admin_service_pb2_grpc

from pluct_server.ledger import Ledger
from pluct_server.services.convert import timestamp, transaction_message


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    """Serves pluct.admin.v1.AdminService; the interceptor has already checked the admin token."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def ListUsers(
        self, request: pb.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUsersResponse:
        """Return one page of users, most recently active first."""
        page = await self._ledger.users(request.page_size, request.page_token)
        users = [
            pb.User(
                user_id=user.user_id,
                balance=user.balance,
                transaction_count=user.transaction_count,
                total_spent=user.total_spent,
                last_activity_time=timestamp(user.last_activity_time),
                create_time=timestamp(user.create_time),
            )
            for user in page.users
        ]
        return pb.ListUsersResponse(users=users, next_page_token=page.next_page_token)

    async def ListTransactions(
        self, request: pb.ListTransactionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTransactionsResponse:
        """Return one page of everyone's (or one user's) ledger, newest first."""
        user_id = request.user_id if request.HasField("user_id") else None
        page = await self._ledger.transactions(
            user_id, request.page_size, request.page_token, admin_view=True
        )
        return pb.ListTransactionsResponse(
            transactions=[transaction_message(entry) for entry in page.transactions],
            next_page_token=page.next_page_token,
        )

    async def AddCredits(
        self, request: pb.AddCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddCreditsResponse:
        """Grant credits by hand, with an optional reason for the ledger."""
        reason = request.reason if request.HasField("reason") else None
        balance = await self._ledger.add_admin_grant(
            request.user_id, request.amount, reason, request.request_id
        )
        return pb.AddCreditsResponse(user_id=request.user_id, new_balance=balance)
