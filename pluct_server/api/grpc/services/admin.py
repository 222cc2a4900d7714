"""AdminService: every user, every ledger entry, manual grants, keys, revocations and prices."""

from __future__ import annotations

import grpc
from pluct.admin.v1 import admin_service_pb2 as pb
from pluct.admin.v1 import admin_service_pb2_grpc

from pluct_server.api.grpc.services.convert import (
    GRANT_CATEGORIES,
    moment,
    timestamp,
    transaction_message,
)
from pluct_server.domain.audit import audit
from pluct_server.domain.events import Events, payload, sequence
from pluct_server.domain.ledger import ADMIN_TERMS, Ledger
from pluct_server.domain.prices import Prices
from pluct_server.domain.webhooks import WebhookEndpoints
from pluct_server.security.api_keys import ApiKeys
from pluct_server.security.callers import current_caller
from pluct_server.security.revocations import Revocations
from pluct_server.store.audit_store import AuditStore
from pluct_server.values.records import ApiKeyRecord, GrantTerms, Price, WebhookEndpoint


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    """Serves pluct.admin.v1.AdminService; the interceptor has already checked the admin scope."""

    def __init__(
        self,
        ledger: Ledger,
        keys: ApiKeys,
        revocations: Revocations,
        audits: AuditStore,
        prices: Prices,
        events: Events,
        endpoints: WebhookEndpoints,
    ) -> None:
        self._ledger = ledger
        self._keys = keys
        self._revocations = revocations
        self._audits = audits
        self._prices = prices
        self._events = events
        self._endpoints = endpoints

    async def SetPrice(
        self, request: pb.SetPriceRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPriceResponse:
        """Make or change a feature's price."""
        price = await self._prices.set(request.feature, request.credits)
        return pb.SetPriceResponse(price=_price_message(price))

    async def ListPrices(
        self, request: pb.ListPricesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPricesResponse:
        """Return every feature's price, by name."""
        return pb.ListPricesResponse(prices=[_price_message(p) for p in await self._prices.all()])

    async def ListUsers(
        self, request: pb.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUsersResponse:
        """Return one page of users, newest first, or every user by recent activity."""
        if request.order in _PAGED_USER_ORDERS:
            page = await self._ledger.users(request.page_size, request.page_token)
        elif request.order == pb.USER_ORDER_RECENT_ACTIVITY:
            page = await self._ledger.users_by_activity(request.page_size, request.page_token)
        else:
            # buf.validate refuses undefined values; a defined one not served here is our bug.
            raise NotImplementedError(f"user order {request.order}")
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
        """Return one page of everyone's (or one user's) ledger, newest or oldest first."""
        user_id = request.user_id if request.HasField("user_id") else None
        if request.order in _NEWEST_FIRST_TRANSACTIONS:
            page = await self._ledger.transactions(
                user_id, request.page_size, request.page_token, admin_view=True
            )
        elif request.order == pb.TRANSACTION_ORDER_OLDEST_FIRST:
            page = await self._ledger.followed_transactions(
                user_id, request.page_size, request.page_token
            )
        else:
            raise NotImplementedError(f"transaction order {request.order}")
        return pb.ListTransactionsResponse(
            transactions=[transaction_message(e, with_actor=True) for e in page.transactions],
            next_page_token=page.next_page_token,
        )

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEventsResponse:
        """Return one page of a user's events, newest first, each with its webhook body."""
        page = await self._events.of_user(request.user_id, request.page_size, request.page_token)
        events = [
            pb.Event(
                event_id=event.event_id,
                type=event.type,
                create_time=timestamp(event.create_time),
                user_id=event.user_id,
                transaction_id=event.transaction_id,
                sequence=sequence(event),
                payload=payload(event),
            )
            for event in page.events
        ]
        return pb.ListEventsResponse(events=events, next_page_token=page.next_page_token)

    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateWebhookEndpointResponse:
        """Make a webhook endpoint; its secret is in this answer alone."""
        endpoint, secret = await self._endpoints.create(
            request.url, list(request.event_types), list(request.balance_thresholds)
        )
        return pb.CreateWebhookEndpointResponse(endpoint=_endpoint_message(endpoint), secret=secret)

    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookEndpointsResponse:
        """Return every webhook endpoint, oldest first, without secrets."""
        endpoints = [_endpoint_message(e) for e in await self._endpoints.all()]
        return pb.ListWebhookEndpointsResponse(endpoints=endpoints)

    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteWebhookEndpointResponse:
        """Remove a webhook endpoint."""
        removed = await self._endpoints.delete(request.endpoint_id)
        return pb.DeleteWebhookEndpointResponse(endpoint=_endpoint_message(removed))

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateWebhookSecretResponse:
        """Give an endpoint a new secret; the previous one signs beside it for a day."""
        endpoint, secret = await self._endpoints.rotate(request.endpoint_id)
        return pb.RotateWebhookSecretResponse(endpoint=_endpoint_message(endpoint), secret=secret)

    async def AddCredits(
        self, request: pb.AddCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddCreditsResponse:
        """Grant credits by hand, with an optional reason for the ledger."""
        reason = request.reason if request.HasField("reason") else None
        terms = GrantTerms(
            GRANT_CATEGORIES.get(request.category, ADMIN_TERMS.category),
            request.priority if request.HasField("priority") else ADMIN_TERMS.priority,
            moment(request.expire_time, "expire_time") if request.HasField("expire_time") else None,
        )
        credited = await self._ledger.add_admin_grant(
            request.user_id, request.amount, reason, request.request_id, current_caller(), terms
        )
        return pb.AddCreditsResponse(
            user_id=request.user_id,
            new_balance=credited.balance_after,
            grant_id=credited.grant_id or "",
        )

    async def RefundSpend(
        self, request: pb.RefundSpendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RefundSpendResponse:
        """Give back credits of one spend to the grants it drew from."""
        reason = request.reason if request.HasField("reason") else None
        refund = await self._ledger.refund(
            request.transaction_id, request.amount, reason, request.request_id, current_caller()
        )
        if refund.revoked_token is not None:
            # Every replica learns it at its next refresh; this one refuses the token now.
            self._revocations.remember_token(refund.revoked_token)
        return pb.RefundSpendResponse(
            refund=transaction_message(refund.entry, with_actor=True),
            balance_after=refund.entry.balance_after,
        )

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        """Make a key; its secret is in this answer and nowhere else, ever."""
        secret, record = await self._keys.create(request.name, request.scopes, current_caller())
        return pb.CreateApiKeyResponse(secret=secret, api_key=_api_key(record))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        """Return one page of keys, newest first, without secrets."""
        page = await self._keys.page(request.page_size, request.page_token)
        return pb.ListApiKeysResponse(
            api_keys=[_api_key(record) for record in page.keys],
            next_page_token=page.next_page_token,
        )

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        """Revoke a key on every replica within the cache refresh interval."""
        return pb.RevokeApiKeyResponse(api_key=_api_key(await self._keys.revoke(request.key_id)))

    async def RevokeTokens(
        self, request: pb.RevokeTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeTokensResponse:
        """Revoke one token, or every token a user holds now, until they expire."""
        target = request.WhichOneof("target")
        by = current_caller().id
        if target == "jti":
            revoked, expires = await self._revocations.revoke_token(request.jti, by)
        elif target == "user_id":
            revoked, expires = await self._revocations.revoke_user(request.user_id, by)
        else:  # buf.validate requires one of them
            raise NotImplementedError(f"revocation target {target}")
        return pb.RevokeTokensResponse(
            revoke_time=timestamp(revoked), expire_time=timestamp(expires)
        )

    async def AuditLedger(
        self, request: pb.AuditLedgerRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuditLedgerResponse:
        """Check every user against its ledger."""
        report = await audit(self._audits)
        return pb.AuditLedgerResponse(
            users_checked=report.users_checked,
            problems=[
                pb.LedgerProblem(
                    user_id=p.user_id,
                    balance=p.balance,
                    ledger_sum=p.ledger_sum,
                    findings=list(p.findings),
                )
                for p in report.problems
            ],
        )


# Unset means the default order, as AIP-132 has it.
_PAGED_USER_ORDERS = frozenset({pb.USER_ORDER_UNSPECIFIED, pb.USER_ORDER_NEWEST_FIRST})
_NEWEST_FIRST_TRANSACTIONS = frozenset(
    {pb.TRANSACTION_ORDER_UNSPECIFIED, pb.TRANSACTION_ORDER_NEWEST_FIRST}
)


def _api_key(record: ApiKeyRecord) -> pb.ApiKey:
    message = pb.ApiKey(
        key_id=record.key_id,
        name=record.name,
        scopes=sorted(record.scopes),
        create_time=timestamp(record.create_time),
        created_by=record.created_by,
    )
    if record.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(record.revoke_time))
    return message


def _price_message(price: Price) -> pb.Price:
    return pb.Price(
        feature=price.feature,
        credits=price.credits,
        version=price.version,
        update_time=timestamp(price.update_time),
    )


def _endpoint_message(endpoint: WebhookEndpoint) -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(
        endpoint_id=endpoint.endpoint_id,
        url=endpoint.url,
        event_types=endpoint.event_types,
        balance_thresholds=endpoint.balance_thresholds,
        create_time=timestamp(endpoint.create_time),
        disabled=endpoint.disabled,
    )
