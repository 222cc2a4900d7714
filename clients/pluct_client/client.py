"""PluctClient: one channel, the three services, secrets attached where each call needs them."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from types import TracebackType

import grpc
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.credit.v1 import grant_pb2 as grant_pb
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

Metadata = tuple[tuple[str, str], ...]
DEFAULT_TIMEOUT_SECONDS = 10.0


class RetryableError(Exception):
    """The call still failed after its retries; retry later with the same request id."""


# Codes after which the same call may simply be sent again: nothing happened (UNAVAILABLE), or
# the outcome is unknown (DEADLINE_EXCEEDED, ABORTED) and the request id makes a retry safe.
RETRIED_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)
DEFAULT_ATTEMPTS = 4
FIRST_BACKOFF_SECONDS = 0.1


def new_request_id() -> str:
    """Return a fresh request id for a mutation (keep it to retry the same mutation safely)."""
    return uuid.uuid4().hex


class PluctClient:
    """Async client; use as `async with PluctClient("127.0.0.1:50051", api_key=...) as client:`.

    `api_key` (or, for operators, `admin_secret`) goes with every call as a bearer token;
    `webhook_secret`, when given, is what a payment is credited with instead.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        admin_secret: str | None = None,
        webhook_secret: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        credentials: grpc.ChannelCredentials | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials)
        self._credit = credit_service_pb2_grpc.CreditServiceStub(self._channel)
        self._token = token_service_pb2_grpc.TokenServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        bearer = api_key or admin_secret
        self._bearer_md: Metadata = (("authorization", f"Bearer {bearer}"),) if bearer else ()
        self._webhook_md: Metadata = (
            (("x-webhook-secret", webhook_secret),) if webhook_secret else self._bearer_md
        )
        self._timeout = timeout
        self._attempts = max(1, attempts)

    async def __aenter__(self) -> PluctClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def create_user(
        self, user_id: str, initial_credits: int = 0, request_id: str = ""
    ) -> credit_pb.CreateUserResponse:
        """Create a user (above the signup allowance, the key needs the admin scope)."""
        request = credit_pb.CreateUserRequest(
            user_id=user_id, initial_credits=initial_credits, request_id=request_id
        )
        reply: credit_pb.CreateUserResponse = await self._call(self._credit.CreateUser, request)
        return reply

    async def balance(self, user_id: str) -> int:
        """Return a user's balance (0 for an unknown user)."""
        reply = await self._call(
            self._credit.GetBalance, credit_pb.GetBalanceRequest(user_id=user_id)
        )
        return int(reply.balance)

    async def transactions(
        self, user_id: str, page_size: int = 0, page_token: str = ""
    ) -> credit_pb.ListTransactionsResponse:
        """Return one page of a user's ledger, newest first."""
        request = credit_pb.ListTransactionsRequest(
            user_id=user_id, page_size=page_size, page_token=page_token
        )
        reply: credit_pb.ListTransactionsResponse = await self._call(
            self._credit.ListTransactions, request
        )
        return reply

    async def grants(
        self, user_id: str, page_size: int = 0, page_token: str = ""
    ) -> credit_pb.ListGrantsResponse:
        """Return one page of a user's grants, newest first, with what remains of each."""
        request = credit_pb.ListGrantsRequest(
            user_id=user_id, page_size=page_size, page_token=page_token
        )
        reply: credit_pb.ListGrantsResponse = await self._call(self._credit.ListGrants, request)
        return reply

    async def add_payment(
        self, user_id: str, amount: int, request_id: str = ""
    ) -> credit_pb.AddCreditsResponse:
        """Credit a payment (webhook secret, or a key with credits:grant); ids never expire."""
        request = credit_pb.AddCreditsRequest(user_id=user_id, amount=amount, request_id=request_id)
        reply: credit_pb.AddCreditsResponse = await self._call(
            self._credit.AddCredits, request, self._webhook_md
        )
        return reply

    async def vend_token(
        self, user_id: str, request_id: str = "", feature: str = ""
    ) -> token_pb.VendTokenResponse:
        """Spend a feature's price (`default`, one credit, when unset) and return the token."""
        request = token_pb.VendTokenRequest(user_id=user_id, request_id=request_id, feature=feature)
        reply: token_pb.VendTokenResponse = await self._call(self._token.VendToken, request)
        return reply

    async def validate_token(self, token: str, feature: str = "") -> token_pb.ValidateTokenResponse:
        """Tell whether a token is valid (for `feature`, when set), and why not if it is not."""
        reply: token_pb.ValidateTokenResponse = await self._call(
            self._token.ValidateToken, token_pb.ValidateTokenRequest(token=token, feature=feature)
        )
        return reply

    async def set_price(self, feature: str, credits: int) -> admin_pb.SetPriceResponse:
        """Make or change what a token for `feature` costs (needs the admin scope)."""
        request = admin_pb.SetPriceRequest(feature=feature, credits=credits)
        reply: admin_pb.SetPriceResponse = await self._call(self._admin.SetPrice, request)
        return reply

    async def list_prices(self) -> admin_pb.ListPricesResponse:
        """Return every feature's price (needs credits:read)."""
        reply: admin_pb.ListPricesResponse = await self._call(
            self._admin.ListPrices, admin_pb.ListPricesRequest()
        )
        return reply

    async def list_users(
        self,
        page_size: int = 0,
        page_token: str = "",
        order: admin_pb.UserOrder.ValueType = admin_pb.USER_ORDER_UNSPECIFIED,
    ) -> admin_pb.ListUsersResponse:
        """Return one page of users, newest first unless `order` says (needs the admin secret)."""
        request = admin_pb.ListUsersRequest(page_size=page_size, page_token=page_token, order=order)
        reply: admin_pb.ListUsersResponse = await self._call(
            self._admin.ListUsers, request, self._bearer_md
        )
        return reply

    async def all_transactions(
        self,
        page_size: int = 0,
        page_token: str = "",
        user_id: str | None = None,
        order: admin_pb.TransactionOrder.ValueType = admin_pb.TRANSACTION_ORDER_UNSPECIFIED,
    ) -> admin_pb.ListTransactionsResponse:
        """Return one page of everyone's ledger, or one user's (needs the admin secret).

        With TRANSACTION_ORDER_OLDEST_FIRST the ledger is followed: keep the last token and call
        again with it later; a page shorter than `page_size` means caught up for now.
        """
        request = admin_pb.ListTransactionsRequest(
            page_size=page_size, page_token=page_token, order=order
        )
        if user_id is not None:
            request.user_id = user_id
        reply: admin_pb.ListTransactionsResponse = await self._call(
            self._admin.ListTransactions, request, self._bearer_md
        )
        return reply

    async def grant(
        self,
        user_id: str,
        amount: int,
        reason: str | None = None,
        request_id: str = "",
        *,
        paid: bool = False,
        priority: int | None = None,
        expires_in: timedelta | None = None,
    ) -> admin_pb.AddCreditsResponse:
        """Grant credits by hand, promotional unless `paid`, expiring `expires_in` from now."""
        request = admin_pb.AddCreditsRequest(user_id=user_id, amount=amount, request_id=request_id)
        if reason is not None:
            request.reason = reason
        if paid:
            request.category = grant_pb.GRANT_CATEGORY_PAID
        if priority is not None:
            request.priority = priority
        if expires_in is not None:
            request.expire_time.FromDatetime(datetime.now(UTC) + expires_in)
        reply: admin_pb.AddCreditsResponse = await self._call(
            self._admin.AddCredits, request, self._bearer_md
        )
        return reply

    async def events(
        self, user_id: str, page_size: int = 0, page_token: str = ""
    ) -> admin_pb.ListEventsResponse:
        """Return one page of a user's events, newest first, each with its webhook body (admin)."""
        request = admin_pb.ListEventsRequest(
            user_id=user_id, page_size=page_size, page_token=page_token
        )
        reply: admin_pb.ListEventsResponse = await self._call(
            self._admin.ListEvents, request, self._bearer_md
        )
        return reply

    async def refund(
        self,
        transaction_id: int,
        amount: int = 0,
        reason: str | None = None,
        request_id: str = "",
    ) -> admin_pb.RefundSpendResponse:
        """Give back credits of a spend, all that is left by default (needs the admin scope)."""
        request = admin_pb.RefundSpendRequest(
            transaction_id=transaction_id, amount=amount, request_id=request_id
        )
        if reason is not None:
            request.reason = reason
        reply: admin_pb.RefundSpendResponse = await self._call(
            self._admin.RefundSpend, request, self._bearer_md
        )
        return reply

    async def create_api_key(self, name: str, scopes: list[str]) -> admin_pb.CreateApiKeyResponse:
        """Make an API key; its secret is in this answer only (needs the admin scope)."""
        request = admin_pb.CreateApiKeyRequest(name=name, scopes=scopes)
        reply: admin_pb.CreateApiKeyResponse = await self._call(self._admin.CreateApiKey, request)
        return reply

    async def list_api_keys(
        self, page_size: int = 0, page_token: str = ""
    ) -> admin_pb.ListApiKeysResponse:
        """Return one page of API keys, newest first, without secrets (needs the admin scope)."""
        request = admin_pb.ListApiKeysRequest(page_size=page_size, page_token=page_token)
        reply: admin_pb.ListApiKeysResponse = await self._call(self._admin.ListApiKeys, request)
        return reply

    async def revoke_api_key(self, key_id: str) -> admin_pb.RevokeApiKeyResponse:
        """Revoke an API key everywhere within seconds (needs the admin scope)."""
        request = admin_pb.RevokeApiKeyRequest(key_id=key_id)
        reply: admin_pb.RevokeApiKeyResponse = await self._call(self._admin.RevokeApiKey, request)
        return reply

    async def create_webhook_endpoint(
        self, url: str, event_types: list[str] | None = None, thresholds: list[int] | None = None
    ) -> admin_pb.CreateWebhookEndpointResponse:
        """Make a webhook endpoint; its secret is in this answer only (needs the admin scope)."""
        request = admin_pb.CreateWebhookEndpointRequest(
            url=url, event_types=event_types or [], balance_thresholds=thresholds or []
        )
        reply: admin_pb.CreateWebhookEndpointResponse = await self._call(
            self._admin.CreateWebhookEndpoint, request
        )
        return reply

    async def list_webhook_endpoints(self) -> admin_pb.ListWebhookEndpointsResponse:
        """Return every webhook endpoint, oldest first, without secrets (needs the admin scope)."""
        request = admin_pb.ListWebhookEndpointsRequest()
        reply: admin_pb.ListWebhookEndpointsResponse = await self._call(
            self._admin.ListWebhookEndpoints, request
        )
        return reply

    async def delete_webhook_endpoint(
        self, endpoint_id: str
    ) -> admin_pb.DeleteWebhookEndpointResponse:
        """Remove a webhook endpoint (needs the admin scope)."""
        request = admin_pb.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id)
        reply: admin_pb.DeleteWebhookEndpointResponse = await self._call(
            self._admin.DeleteWebhookEndpoint, request
        )
        return reply

    async def rotate_webhook_secret(self, endpoint_id: str) -> admin_pb.RotateWebhookSecretResponse:
        """Give an endpoint a new secret, shown once; the old one signs a day more (admin)."""
        request = admin_pb.RotateWebhookSecretRequest(endpoint_id=endpoint_id)
        reply: admin_pb.RotateWebhookSecretResponse = await self._call(
            self._admin.RotateWebhookSecret, request
        )
        return reply

    async def revoke_tokens(
        self, *, jti: str | None = None, user_id: str | None = None
    ) -> admin_pb.RevokeTokensResponse:
        """Revoke one token (jti) or every token a user holds now (needs the admin scope)."""
        request = admin_pb.RevokeTokensRequest()
        if jti is not None:
            request.jti = jti
        if user_id is not None:
            request.user_id = user_id
        reply: admin_pb.RevokeTokensResponse = await self._call(self._admin.RevokeTokens, request)
        return reply

    async def audit(self) -> admin_pb.AuditLedgerResponse:
        """Check every balance against its ledger (needs the admin scope)."""
        reply: admin_pb.AuditLedgerResponse = await self._call(
            self._admin.AuditLedger, admin_pb.AuditLedgerRequest()
        )
        return reply

    async def jwks(self) -> token_pb.GetJwksResponse:
        """Return the public keys that verify EdDSA tokens (empty for HS256)."""
        reply: token_pb.GetJwksResponse = await self._call(
            self._token.GetJwks, token_pb.GetJwksRequest()
        )
        return reply

    async def _call(self, method, request, metadata: Metadata | None = None):  # type: ignore[no-untyped-def]
        """Send a call, and again (same request, same request id) while it may be retried."""
        if metadata is None:
            metadata = self._bearer_md
        # A mutation without an id gets one here, so that resending it can never apply it twice.
        if hasattr(request, "request_id") and not request.request_id:
            request.request_id = new_request_id()
        for attempt in range(self._attempts):
            try:
                return await method(request, metadata=metadata, timeout=self._timeout)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRIED_CODES:
                    raise
                if attempt + 1 == self._attempts:
                    raise RetryableError(error.details() or error.code().name) from error
                # Jitter spreads the retries of many clients apart; it needs no secrecy.
                jitter = 0.5 + random.random()  # noqa: S311
                await asyncio.sleep(FIRST_BACKOFF_SECONDS * 2**attempt * jitter)
        raise AssertionError("unreachable")
