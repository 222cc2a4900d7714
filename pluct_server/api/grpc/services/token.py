"""TokenService: sell a token for a feature's price, and check tokens."""

from __future__ import annotations

import grpc
from pluct.token.v1 import token_service_pb2 as pb
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.api.grpc.services.convert import timestamp
from pluct_server.domain.vending import TokenVendor
from pluct_server.security.callers import current_caller
from pluct_server.security.tokens import TokenKeys
from pluct_server.values.records import DEFAULT_FEATURE


class TokenServicer(token_service_pb2_grpc.TokenServiceServicer):  # type: ignore[misc]
    """Serves pluct.token.v1.TokenService."""

    def __init__(self, vendor: TokenVendor, signer: TokenKeys) -> None:
        self._vendor = vendor
        self._signer = signer

    async def VendToken(
        self, request: pb.VendTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.VendTokenResponse:
        """Spend the feature's price and return the signed token it bought."""
        vended = await self._vendor.vend(
            request.user_id,
            request.request_id,
            current_caller(),
            request.feature or DEFAULT_FEATURE,
        )
        return pb.VendTokenResponse(
            token=vended.token,
            expire_time=timestamp(vended.claims.expires_at),
            balance_after=vended.balance_after,
            token_id=str(vended.claims.token_id),
            feature=vended.claims.feature,
            credits_charged=vended.claims.cost,
        )

    async def ValidateToken(
        self, request: pb.ValidateTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateTokenResponse:
        """Tell whether a token is ours and still valid, and why not if it is not."""
        verdict = self._signer.verify(request.token, request.feature)
        response = pb.ValidateTokenResponse(valid=verdict.valid)
        if verdict.user_id is not None:
            response.user_id = verdict.user_id
        if verdict.expires_at is not None:
            response.expire_time.CopyFrom(timestamp(verdict.expires_at))
        if verdict.reason is not None:
            response.reason = verdict.reason
        if verdict.feature is not None:
            response.feature = verdict.feature
        return response

    async def GetJwks(
        self, request: pb.GetJwksRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJwksResponse:
        """Return the public keys that verify our EdDSA tokens (none in HS256 mode)."""
        return pb.GetJwksResponse(keys=[pb.JsonWebKey(**jwk) for jwk in self._signer.jwks()])
