"""Token keys as a running service uses them: EdDSA with a JWKS, rotation, iss/aud, revocation."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import grpc
import jwt
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as pb
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.security.tokens import generate_ed25519_key
from tests.http_support import call, http_client
from tests.support import ADMIN_METADATA, JWT_SECRET, clock_of, running_server, settings_for_test

pytestmark = pytest.mark.usefixtures("database_dsn")
# How long every replica may take to see a revocation: the cache refresh (1 s in tests) and slack.
REVOCATION_SECONDS = 5


class Stubs:
    """The three services over one channel, as the bootstrap admin."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        self.token = token_service_pb2_grpc.TokenServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)

    async def vend(self, user_id: str, credits: int = 0) -> pb.VendTokenResponse:
        if credits:
            await self.admin.AddCredits(
                admin_pb.AddCreditsRequest(user_id=user_id, amount=credits),
                metadata=ADMIN_METADATA,
            )
        reply: pb.VendTokenResponse = await self.token.VendToken(
            pb.VendTokenRequest(user_id=user_id), metadata=ADMIN_METADATA
        )
        return reply

    async def verdict(self, token: str) -> pb.ValidateTokenResponse:
        reply: pb.ValidateTokenResponse = await self.token.ValidateToken(
            pb.ValidateTokenRequest(token=token), metadata=ADMIN_METADATA
        )
        return reply


async def _until_revoked(stubs: Stubs, token: str) -> float:
    """Return how long it took until `token` validated as revoked (the test timeout bounds it)."""
    started = time.monotonic()
    while (await stubs.verdict(token)).reason != "Token revoked":
        assert time.monotonic() - started < REVOCATION_SECONDS
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_a_revoked_token_is_refused_by_every_server_within_seconds(
    server, database_dsn, tmp_path, user_id
):
    async with (
        running_server(settings_for_test(tmp_path), database_dsn) as other,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as here_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{other.grpc_port}") as there_channel,
        http_client(other.http_port) as http,
    ):
        here, there = Stubs(here_channel), Stubs(there_channel)
        revoked = await here.vend(user_id, credits=2)
        kept = await here.vend(user_id)
        assert (await there.verdict(revoked.token)).valid

        answer = await here.admin.RevokeTokens(
            admin_pb.RevokeTokensRequest(jti=revoked.token_id), metadata=ADMIN_METADATA
        )

        assert answer.expire_time.ToDatetime() >= revoked.expire_time.ToDatetime()
        assert (await here.verdict(revoked.token)).reason == "Token revoked"
        # The other server learns it at its next refresh: its clock is moved there, not waited.
        clock_of(other).advance(other.settings.cache_refresh_seconds)
        await _until_revoked(there, revoked.token)
        legacy = await call(http, "POST", "/validate-token", json_body={"token": revoked.token})
        assert legacy.body == {"valid": False, "reason": "Token revoked"}
        assert (await there.verdict(kept.token)).valid


async def test_revoking_a_user_revokes_the_tokens_it_holds_not_later_ones(
    database_dsn, tmp_path, user_id
):
    async with (
        running_server(settings_for_test(tmp_path), database_dsn) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stubs = Stubs(channel)
        held = [await stubs.vend(user_id, credits=3), await stubs.vend(user_id)]

        await stubs.admin.RevokeTokens(
            admin_pb.RevokeTokensRequest(user_id=user_id), metadata=ADMIN_METADATA
        )
        # Token times are whole seconds: one vended in the revocation's second counts as before,
        # so the next token is vended a second on.
        clock_of(server).advance(1)
        later = await stubs.vend(user_id)

        assert [(await stubs.verdict(t.token)).reason for t in held] == ["Token revoked"] * 2
        assert (await stubs.verdict(later.token)).valid


async def test_revoke_tokens_needs_a_target(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await Stubs(channel).admin.RevokeTokens(
                admin_pb.RevokeTokensRequest(), metadata=ADMIN_METADATA
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_eddsa_tokens_verify_offline_from_the_jwks_and_cannot_be_minted(
    database_dsn, tmp_path, user_id
):
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_ed25519_key(keys, "2026-11")
    settings = settings_for_test(
        tmp_path, token_algorithm="EdDSA", token_keys_dir=keys, token_active_kid="2026-11"
    )
    async with (
        running_server(settings, database_dsn) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        http_client(server.http_port) as http,
    ):
        stubs = Stubs(channel)
        vended = await stubs.vend(user_id, credits=1)
        published = await call(http, "GET", "/.well-known/jwks.json")
        # A downstream verifier with nothing but the JWKS and a JWT library:
        [jwk] = published.body["keys"]
        claims = jwt.decode(vended.token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"])
        forged_hs256 = jwt.encode(
            {"sub": user_id, "exp": int(time.time()) + 30}, JWT_SECRET, "HS256"
        )
        confused = jwt.encode(
            {"sub": user_id, "exp": int(time.time()) + 30},
            jwk["x"],
            "HS256",
            headers={"kid": "2026-11"},
        )

        assert jwt.get_unverified_header(vended.token) == {
            "alg": "EdDSA",
            "kid": "2026-11",
            "typ": "JWT",
        }
        assert claims["sub"] == user_id and claims["jti"] == vended.token_id
        assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}  # no private part
        assert (await stubs.verdict(vended.token)).valid
        assert not (await stubs.verdict(forged_hs256)).valid
        assert not (await stubs.verdict(confused)).valid


async def test_jwks_is_empty_for_hs256(http):
    reply = await call(http, "GET", "/.well-known/jwks.json")

    assert (reply.status, reply.body) == (200, {"keys": []})


async def test_hs256_rotation_signs_with_the_first_secret_and_accepts_both(
    database_dsn, tmp_path, user_id
):
    new_secret = "rotated-jwt-" + "Z9y8X7w6V5u4T3s2R1q0" * 2
    settings = settings_for_test(tmp_path, jwt_secret=f"{new_secret},{JWT_SECRET}")
    old_token = jwt.encode(
        {"sub": user_id, "jti": "legacy-1", "exp": int(time.time()) + 30}, JWT_SECRET, "HS256"
    )
    async with (
        running_server(settings, database_dsn) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stubs = Stubs(channel)
        vended = await stubs.vend(user_id, credits=1)

        assert jwt.decode(vended.token, new_secret, algorithms=["HS256"])["sub"] == user_id
        assert (await stubs.verdict(old_token)).valid


async def test_issuer_and_audience_are_set_and_required(database_dsn, tmp_path, user_id):
    settings = settings_for_test(
        tmp_path,
        token_issuer="https://credits.example",
        token_audience="premium-api",
        token_ttl=timedelta(seconds=60),
    )
    bare = jwt.encode({"sub": user_id, "exp": int(time.time()) + 30}, JWT_SECRET, "HS256")
    async with (
        running_server(settings, database_dsn) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stubs = Stubs(channel)
        vended = await stubs.vend(user_id, credits=1)
        claims = jwt.decode(vended.token, JWT_SECRET, algorithms=["HS256"], audience="premium-api")

        assert (claims["iss"], claims["aud"]) == ("https://credits.example", "premium-api")
        assert (await stubs.verdict(vended.token)).valid
        assert not (await stubs.verdict(bare)).valid


async def test_the_signing_algorithm_and_kid_are_logged_once_and_the_jwks_is_cacheable(
    database_dsn, tmp_path, caplog
):
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_ed25519_key(keys, "2026-12")
    generate_ed25519_key(keys, "2027-01")  # published ahead of its switch, as a rotation does
    settings = settings_for_test(
        tmp_path, token_algorithm="EdDSA", token_keys_dir=keys, token_active_kid="2026-12"
    )
    caplog.set_level(logging.INFO, logger="pluct_server.app.server")
    async with (
        running_server(settings, database_dsn) as server,
        http_client(server.http_port) as http,
    ):
        published = await call(http, "GET", "/.well-known/jwks.json")
        balance = await call(http, "GET", "/user/nobody/balance")

    announced = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tokens ")]
    assert announced == ["tokens signed with EdDSA, active kid 2026-12"]
    assert [key["kid"] for key in published.body["keys"]] == ["2026-12", "2027-01"]
    assert published.headers["Cache-Control"] == "public, max-age=300"
    assert "Cache-Control" not in balance.headers  # a balance is never served from a cache


async def test_the_jwks_is_cacheable_for_hs256_too(http):
    reply = await call(http, "HEAD", "/.well-known/jwks.json")

    assert (reply.status, reply.headers["Cache-Control"]) == (200, "public, max-age=300")
