"""TokenKeys without a server: signing, rotation, JWKS, and every hostile token it must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import stat
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_server.api.grpc.field_rules import check_fields
from pluct_server.domain.errors import InvalidArgument
from pluct_server.security.tokens import (
    EDDSA,
    EXPIRED,
    HS256,
    INVALID_SIGNATURE,
    REVOKED,
    VETTED_TOKENS,
    TokenKeys,
    Verdict,
    generate_ed25519_key,
)
from pluct_server.values.records import TokenClaims
from tests.support import MovableClock

# 64 bytes and more, so that PyJWT does not warn even when a test signs HS512 with them.
SECRET = "current-jwt-secret-" + "a1b2c3d4e5f6g7h8" * 4
OLD_SECRET = "previous-jwt-secret-" + "z9y8x7w6v5u4t3s2" * 4
MISSING = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(part: object) -> str:
    """A str is taken as raw JSON text, so tests can write what json.dumps never would."""
    text = part if isinstance(part, str) else json.dumps(part, separators=(",", ":"))
    return b64(text.encode())


def forge(header: object, payload: object, sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact JWT built by hand: any header, any payload, any signature (none by default)."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def hmac_signer(key: bytes, digest=hashlib.sha256) -> Callable[[bytes], bytes]:
    return lambda message: hmac.new(key, message, digest).digest()


def hs_kid(secret: str) -> str:
    return hashlib.sha256(b"pluct-jwt-kid:" + secret.encode()).hexdigest()[:16]


def payload(**overrides: object) -> dict[str, object]:
    """Claims of a fresh one-minute token; MISSING drops a claim."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": "user-1", "jti": str(uuid4()), "iat": now, "exp": now + 60}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not MISSING}


# Tokens we sign carry their header keys sorted; verify() takes a fast path for exactly that
# header and the general one (PyJWT) for any other. Every test here runs through both.
SORTED_HEADERS = True


@pytest.fixture(autouse=True, params=["our-header", "reordered-header"])
def header_layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "SORTED_HEADERS", request.param == "our-header")


def hs_token(claims: object, secret: str = SECRET, kid: object = MISSING) -> str:
    """An HS256 token signed with `secret`, its kid that of the secret unless told otherwise."""
    header: dict[str, object] = {"alg": "HS256", "typ": "JWT"}
    header["kid"] = hs_kid(secret) if kid is MISSING else kid
    if SORTED_HEADERS:
        header = dict(sorted(header.items()))
    return forge(header, claims, hmac_signer(secret.encode()))


def legacy_token(claims: object, secret: str = SECRET) -> str:
    """What the legacy engine signed: HS256 with JWT_SECRET, no kid header."""
    return forge({"alg": "HS256", "typ": "JWT"}, claims, hmac_signer(secret.encode()))


def ed_pem(key: Ed25519PrivateKey | None = None) -> bytes:
    key = key or Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ed_private(pem: bytes) -> Ed25519PrivateKey:
    private_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private_key, Ed25519PrivateKey)
    return private_key


def ed_token(claims: object, pem: bytes, kid: str) -> str:
    return forge({"alg": "EdDSA", "kid": kid, "typ": "JWT"}, claims, ed_private(pem).sign)


def ed_keys(**options) -> tuple[TokenKeys, bytes]:
    """EdDSA keys with one Ed25519 key named k1, and that key's PEM."""
    pem = ed_pem()
    return TokenKeys(algorithm=EDDSA, ed25519_keys={"k1": pem}, active_kid="k1", **options), pem


def token_claims(ttl: int = 60) -> TokenClaims:
    now = datetime.now(UTC).replace(microsecond=0)
    return TokenClaims("user-1", uuid4(), now, now + timedelta(seconds=ttl))


def assert_refused(verdict: Verdict, reason: str = INVALID_SIGNATURE) -> None:
    assert verdict == Verdict(valid=False, reason=reason)


# --- what a good token gives --------------------------------------------------------------------


def test_a_valid_token_gives_its_subject_and_expiry():
    claims = payload()

    verdict = TokenKeys(SECRET).verify(hs_token(claims))

    assert verdict == Verdict(
        valid=True,
        user_id="user-1",
        expires_at=datetime.fromtimestamp(claims["exp"], tz=UTC),  # type: ignore[arg-type]
        feature="default",
    )


def test_sign_writes_kid_sub_jti_iat_exp_and_iss_aud_when_configured():
    keys = TokenKeys(SECRET, issuer="pluct", audience="premium")
    claims = token_claims()

    token = keys.sign(claims)

    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": hs_kid(SECRET), "typ": "JWT"}
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience="premium", issuer="pluct")
    assert decoded == {
        "sub": "user-1",
        "jti": str(claims.token_id),
        "iat": int(claims.issued_at.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
        "iss": "pluct",
        "aud": "premium",
    }
    assert keys.verify(token).valid


def test_blank_or_oversized_tokens_are_invalid_arguments():
    for token in ("", "   ", "\t\n", "a" * 4097):
        with pytest.raises(InvalidArgument) as raised:
            check_fields(token_pb.ValidateTokenRequest(token=token))
        assert raised.value.field == "token"
    check_fields(token_pb.ValidateTokenRequest(token="a" * 4096))


def test_properties_name_the_algorithm_and_the_signing_kid():
    assert (TokenKeys(SECRET).algorithm, TokenKeys(SECRET).active_kid) == (HS256, hs_kid(SECRET))
    keys, _ = ed_keys()
    assert (keys.algorithm, keys.active_kid) == (EDDSA, "k1")


# --- HS256: the legacy contract and rotation ----------------------------------------------------


def test_token_signer_with_one_secret_signs_exactly_as_before():
    claims = token_claims()
    # What the engine signed before key rotation existed: a retry must get the same bytes.
    before = jwt.encode(
        {
            "sub": claims.user_id,
            "jti": str(claims.token_id),
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
        },
        SECRET.encode(),
        algorithm="HS256",
        headers={"kid": hs_kid(SECRET)},
    )

    assert TokenKeys(SECRET).sign(claims) == before


def test_hs256_tokens_verify_downstream_with_plain_jwt_decode():
    token = TokenKeys([SECRET, OLD_SECRET]).sign(token_claims())

    claims = jwt.decode(token, SECRET, algorithms=["HS256"])

    assert claims["sub"] == "user-1"


def test_hs256_rotation_first_secret_signs_all_verify_removed_secret_stops_verifying():
    old_token = TokenKeys(OLD_SECRET).sign(token_claims())
    rotated = TokenKeys([SECRET, OLD_SECRET])

    new_token = rotated.sign(token_claims())

    assert rotated.active_kid == hs_kid(SECRET)
    assert jwt.get_unverified_header(new_token)["kid"] == hs_kid(SECRET)
    assert rotated.verify(old_token).valid
    assert rotated.verify(new_token).valid
    assert_refused(TokenKeys(SECRET).verify(old_token))
    assert TokenKeys(SECRET).verify(new_token).valid


def test_legacy_token_without_kid_or_iat_verifies_with_any_hs256_secret():
    token = legacy_token(payload(iat=MISSING, jti=MISSING))

    assert TokenKeys([SECRET, OLD_SECRET]).verify(token).valid
    assert TokenKeys([OLD_SECRET, SECRET]).verify(token).valid
    assert_refused(TokenKeys(OLD_SECRET).verify(token))


def test_legacy_hs256_tokens_are_refused_in_eddsa_mode_unless_accept_hs256():
    token = legacy_token(payload(iat=MISSING))
    pem = ed_pem()

    def eddsa(accept_hs256: bool) -> TokenKeys:
        return TokenKeys(
            SECRET,
            algorithm=EDDSA,
            ed25519_keys={"k1": pem},
            active_kid="k1",
            accept_hs256=accept_hs256,
        )

    assert_refused(eddsa(accept_hs256=False).verify(token))
    assert_refused(eddsa(accept_hs256=False).verify(hs_token(payload())))
    accepting = eddsa(accept_hs256=True)
    assert accepting.verify(token).valid
    assert accepting.verify(hs_token(payload())).valid
    assert jwt.get_unverified_header(accepting.sign(token_claims()))["alg"] == "EdDSA"


# --- EdDSA, rotation of key files, JWKS ---------------------------------------------------------


def test_eddsa_signs_with_the_active_key_and_verifies():
    keys, pem = ed_keys()

    token = keys.sign(token_claims())

    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": "k1", "typ": "JWT"}
    assert keys.verify(token).valid
    assert keys.verify(ed_token(payload(), pem, "k1")).valid


def test_eddsa_key_rotation_through_key_files(tmp_path: Path):
    generate_ed25519_key(tmp_path, "2025-01")
    first = TokenKeys.load(EDDSA, (), tmp_path, "2025-01")
    old_token = first.sign(token_claims())

    generate_ed25519_key(tmp_path, "2025-02")
    rotated = TokenKeys.load(EDDSA, (), tmp_path, "2025-02")
    new_token = rotated.sign(token_claims())

    assert jwt.get_unverified_header(new_token)["kid"] == "2025-02"
    assert rotated.verify(old_token).valid
    assert rotated.verify(new_token).valid
    assert first.verify(old_token).valid
    assert_refused(first.verify(new_token))  # first never had the new key
    (tmp_path / "2025-01.pem").unlink()
    retired = TokenKeys.load(EDDSA, (), tmp_path, "2025-02")
    assert_refused(retired.verify(old_token))
    assert retired.verify(new_token).valid


def test_jwks_lets_a_downstream_verifier_check_eddsa_tokens_offline():
    pems = {"b-key": ed_pem(), "a-key": ed_pem()}
    keys = TokenKeys(algorithm=EDDSA, ed25519_keys=pems, active_kid="b-key")
    token = keys.sign(token_claims())

    published = json.loads(json.dumps(keys.jwks()))  # what goes over the wire

    assert [jwk["kid"] for jwk in published] == ["a-key", "b-key"]
    for jwk in published:
        assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == (
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
        )
        assert "=" not in jwk["x"] and len(base64.urlsafe_b64decode(jwk["x"] + "=")) == 32
    by_kid = {jwk["kid"]: jwt.PyJWK(jwk).key for jwk in published}
    claims = jwt.decode(
        token, by_kid[jwt.get_unverified_header(token)["kid"]], algorithms=["EdDSA"]
    )
    assert claims["sub"] == "user-1"


def test_jwks_never_holds_private_material_or_hs256_secrets():
    keys, pem = ed_keys()
    body = b"".join(pem.splitlines()[1:-1]).decode()

    text = json.dumps(keys.jwks())

    assert all("d" not in jwk for jwk in keys.jwks())
    assert body not in text
    assert TokenKeys([SECRET, OLD_SECRET]).jwks() == []
    assert SECRET not in json.dumps(TokenKeys(SECRET, accept_hs256=False).jwks())
    keys.jwks()[0]["x"] = "changed"
    assert keys.jwks()[0]["x"] != "changed"


def test_the_same_claims_always_give_the_same_token():
    claims = token_claims()
    pem = ed_pem()

    def ed() -> TokenKeys:
        return TokenKeys(algorithm=EDDSA, ed25519_keys={"k1": pem}, active_kid="k1")

    assert ed().sign(claims) == ed().sign(claims)
    assert TokenKeys(SECRET).sign(claims) == TokenKeys(SECRET).sign(claims)
    assert TokenKeys(SECRET, issuer="i", audience="a").sign(claims) == TokenKeys(
        SECRET, issuer="i", audience="a"
    ).sign(claims)


# --- load and generate_ed25519_key --------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad kid.pem", "k" * 65 + ".pem", "clé.pem", ".pem", "a$b.pem"])
def test_load_refuses_a_key_file_whose_name_is_no_kid(tmp_path: Path, name: str):
    (tmp_path / name).write_bytes(ed_pem())

    with pytest.raises(ValueError, match="kid") as raised:
        TokenKeys.load(EDDSA, (), tmp_path, None)

    assert name in str(raised.value)


def _foreign_pems() -> dict[str, bytes]:
    plain = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = serialization.Encoding.PEM
    ed = Ed25519PrivateKey.generate()
    return {
        "ec": ec.generate_private_key(ec.SECP256R1()).private_bytes(pem, pkcs8, plain),
        "rsa": rsa.generate_private_key(65537, 2048).private_bytes(pem, pkcs8, plain),
        "ed448": ed448.Ed448PrivateKey.generate().private_bytes(pem, pkcs8, plain),
        "ed25519-public": ed.public_key().public_bytes(
            pem, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "ed25519-encrypted": ed.private_bytes(
            pem, pkcs8, serialization.BestAvailableEncryption(b"passphrase")
        ),
        "garbage": b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
        b"-----END PRIVATE KEY-----\n",
        "empty": b"",
    }


def test_load_refuses_a_pem_that_is_no_ed25519_private_key_without_echoing_it(tmp_path: Path):
    for name, pem in _foreign_pems().items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "good.pem").write_bytes(ed_pem())
        (folder / f"{name}.pem").write_bytes(pem)

        with pytest.raises(ValueError) as raised:
            TokenKeys.load(EDDSA, (), folder, "good")

        message = str(raised.value)
        assert f"{name}.pem" in message and "Ed25519" in message
        for line in pem.splitlines()[1:-1]:
            assert line.decode() not in message
        # No chained cryptography error that a traceback would print either.
        assert raised.value.__cause__ is None and raised.value.__context__ is None


def test_constructor_refuses_bad_configuration():
    pem = ed_pem()
    refusals: list[Callable[[], object]] = [
        lambda: TokenKeys(),
        lambda: TokenKeys(""),
        lambda: TokenKeys([SECRET, ""]),
        lambda: TokenKeys(SECRET, algorithm="RS256"),
        lambda: TokenKeys(algorithm=EDDSA, ed25519_keys={"k1": pem}),
        lambda: TokenKeys(algorithm=EDDSA, ed25519_keys={"k1": pem}, active_kid="k2"),
        lambda: TokenKeys(algorithm=EDDSA, ed25519_keys={"bad kid": pem}, active_kid="bad kid"),
        lambda: TokenKeys(
            algorithm=EDDSA, ed25519_keys={"k1": pem}, active_kid="k1", accept_hs256=True
        ),
        lambda: TokenKeys(pem.decode()),  # a PEM is no HMAC secret
        lambda: TokenKeys(SECRET, leeway_seconds=-1),
        lambda: TokenKeys(SECRET, max_lifetime=timedelta(0)),
        lambda: TokenKeys(SECRET, issuer=""),
        lambda: TokenKeys(SECRET, ed25519_keys={hs_kid(SECRET): pem}),
        lambda: TokenKeys.load(EDDSA, (), Path("/nonexistent/keys"), "k1"),
    ]
    for build in refusals:
        with pytest.raises(ValueError):
            build()


def test_generate_ed25519_key_writes_an_owner_only_key_that_loads(tmp_path: Path):
    folder = tmp_path / "keys"

    path = generate_ed25519_key(folder, "dev-1")

    assert path == folder / "dev-1.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = TokenKeys.load(EDDSA, (), folder, "dev-1")
    assert keys.verify(keys.sign(token_claims())).valid
    with pytest.raises(FileExistsError):
        generate_ed25519_key(folder, "dev-1")
    with pytest.raises(ValueError):
        generate_ed25519_key(folder, "../escape")


# --- refusals: algorithms and keys --------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused_unsigned_or_signed(alg: str):
    keys = TokenKeys(SECRET)
    for kid in (MISSING, hs_kid(SECRET)):
        header: dict[str, object] = {"alg": alg, "typ": "JWT"}
        if kid is not MISSING:
            header["kid"] = kid
        assert_refused(keys.verify(forge(header, payload())))
        assert_refused(keys.verify(forge(header, payload(), hmac_signer(SECRET.encode()))))
    header = {"alg": "none", "kid": "k1"}
    eddsa, _ = ed_keys()
    assert_refused(eddsa.verify(forge(header, payload())))


def test_algorithms_other_than_the_configured_one_are_refused():
    keys = TokenKeys(SECRET)
    kid = {"kid": hs_kid(SECRET)}
    rsa_key = rsa.generate_private_key(65537, 2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    hostile = [
        jwt.encode(payload(), SECRET, algorithm="HS384", headers=kid),
        jwt.encode(payload(), SECRET, algorithm="HS512", headers=kid),
        jwt.encode(payload(), SECRET, algorithm="HS384"),
        jwt.encode(payload(), rsa_key, algorithm="RS256", headers=kid),
        jwt.encode(payload(), rsa_key, algorithm="PS256", headers=kid),
        jwt.encode(payload(), ec_key, algorithm="ES256", headers=kid),
        jwt.encode(payload(), ec_key, algorithm="ES256"),
        forge({"alg": "HS256 ", **kid}, payload(), hmac_signer(SECRET.encode())),
        forge({"alg": ["HS256"], **kid}, payload(), hmac_signer(SECRET.encode())),
    ]
    for token in hostile:
        assert_refused(keys.verify(token))
    eddsa, _ = ed_keys(accept_hs256=False)
    assert_refused(
        eddsa.verify(jwt.encode(payload(), ec_key, algorithm="ES256", headers={"kid": "k1"}))
    )
    assert_refused(eddsa.verify(hs_token(payload(), kid="k1")))


def test_algorithm_confusion_hs256_keyed_with_the_ed25519_public_key_is_refused():
    # The worst case: HS256 secrets are accepted too, and the attacker knows the public key.
    keys, pem = ed_keys(accept_hs256=True, hs256_secrets=SECRET)
    jwk = keys.jwks()[0]
    private_key = ed_private(pem)
    public_key = private_key.public_key()
    public_pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for hmac_key in (public_pem, raw, jwk["x"].encode(), json.dumps(jwk).encode()):
        for header in ({"alg": "HS256", "kid": "k1"}, {"alg": "HS256"}):
            assert_refused(keys.verify(forge(header, payload(), hmac_signer(hmac_key))))


def test_unknown_kid_is_refused():
    keys = TokenKeys([SECRET, OLD_SECRET])
    assert_refused(keys.verify(hs_token(payload(), kid="someone-else")))
    assert_refused(keys.verify(hs_token(payload(), kid="")))
    assert_refused(keys.verify(hs_token(payload(), kid=hs_kid(SECRET) + "0")))
    eddsa, pem = ed_keys()
    assert_refused(eddsa.verify(ed_token(payload(), pem, "k2")))


@pytest.mark.parametrize("kid", [123, None, True, ["k1"], {"kid": "k1"}, 1.5])
def test_a_kid_that_is_not_a_string_is_refused(kid: object):
    assert_refused(TokenKeys(SECRET).verify(hs_token(payload(), kid=kid)))
    eddsa, pem = ed_keys()
    private_key = ed_private(pem)
    assert_refused(eddsa.verify(forge({"alg": "EdDSA", "kid": kid}, payload(), private_key.sign)))


def test_tampered_claims_or_header_are_refused():
    keys = TokenKeys([SECRET, OLD_SECRET])
    token = keys.sign(token_claims())
    header, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    headers = json.loads(base64.urlsafe_b64decode(header + "=="))
    tampered = [
        f"{header}.{segment({**claims, 'sub': 'admin'})}.{signature}",
        f"{header}.{segment({**claims, 'exp': claims['exp'] + 3600})}.{signature}",
        f"{segment({**headers, 'typ': 'JOSE'})}.{body}.{signature}",
        f"{segment({**headers, 'kid': hs_kid(OLD_SECRET)})}.{body}.{signature}",
        f"{segment({**headers, 'x': 1})}.{body}.{signature}",
    ]
    for token in tampered:
        assert_refused(keys.verify(token))
    eddsa, _ = ed_keys()
    ed = eddsa.sign(token_claims())
    header, body, signature = ed.split(".")
    assert_refused(eddsa.verify(f"{header}.{segment({**claims, 'sub': 'admin'})}.{signature}"))


def test_truncated_signatures_are_refused():
    eddsa, _ = ed_keys()
    hs256 = TokenKeys(SECRET)
    for keys in (hs256, eddsa):
        token = keys.sign(token_claims())
        head, body, signature = token.split(".")
        assert keys.verify(token).valid
        for cut in (1, 2, 3, 4, 10, len(signature)):
            assert_refused(keys.verify(token[:-cut]))
        assert_refused(keys.verify(f"{head}.{body}.{signature[:4]}"))
        assert_refused(keys.verify(f"{head}.{body}"))


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "...",
        "!!!.!!!.!!!",
        "eyJhbGciOiJIUzI1NiJ9",
        "ключ.ключ.ключ",
        "\ud800.a.b",
        "a\x00.b.c",
    ],
)
def test_malformed_tokens_are_refused(token: str):
    assert_refused(TokenKeys(SECRET).verify(token))


def test_headers_or_payloads_that_are_no_json_object_are_refused():
    keys = TokenKeys(SECRET)
    sign = hmac_signer(SECRET.encode())
    good_header = {"alg": "HS256", "kid": hs_kid(SECRET)}
    for text in ["[]", '"text"', "1", "null", "{bad", "", '{"a":1', "[" * 2000, '{"a":1}{}']:
        assert_refused(keys.verify(forge(text, payload(), sign)))
        assert_refused(keys.verify(forge(good_header, text, sign)))
    not_utf8 = b64(b"\xff\xfe{}")
    assert_refused(keys.verify(f"{not_utf8}.{segment(payload())}.{b64(sign(b'x'))}"))
    signing_input = f"{segment(good_header)}.{not_utf8}"
    assert_refused(keys.verify(f"{signing_input}.{b64(sign(signing_input.encode()))}"))
    assert_refused(keys.verify(forge({"kid": hs_kid(SECRET)}, payload(), sign)))  # no alg
    # A good token with extra dots or segments is not the token we signed.
    token = keys.sign(token_claims())
    assert_refused(keys.verify(token + "."))
    assert_refused(keys.verify(token + ".e30"))
    assert_refused(keys.verify("." + token))
    assert_refused(keys.verify(token.replace(".", "..", 1)))


# --- refusals: claims ---------------------------------------------------------------------------


def test_missing_exp_or_sub_is_refused():
    keys = TokenKeys(SECRET)
    assert_refused(keys.verify(hs_token(payload(exp=MISSING))))
    assert_refused(keys.verify(hs_token(payload(sub=MISSING))))
    assert_refused(keys.verify(legacy_token(payload(exp=MISSING, iat=MISSING))))


@pytest.mark.parametrize("sub", ["", 123, None, [], ["user-1"], {"id": "user-1"}, True])
def test_a_sub_that_is_no_non_empty_string_is_refused(sub: object):
    assert_refused(TokenKeys(SECRET).verify(hs_token(payload(sub=sub))))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("kind", ["string", "true", "false", "null", "list", "object"])
def test_times_that_are_no_json_numbers_are_refused(claim: str, kind: str):
    now = int(time.time())
    value = {
        "string": str(now + 30),
        "true": True,
        "false": False,
        "null": None,
        "list": [now + 30],
        "object": {"t": now + 30},
    }[kind]

    assert_refused(TokenKeys(SECRET).verify(hs_token(payload(**{claim: value}))))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize(
    "raw", ["1e30", "-1", "-1e9", "1e400", "-1e400", "NaN", "Infinity", "10" * 200]
)
def test_absurd_times_are_refused_never_raised(claim: str, raw: str):
    placeholder = 31337
    text = json.dumps(payload(**{claim: placeholder})).replace(str(placeholder), raw)
    keys = TokenKeys(SECRET, max_lifetime=timedelta(hours=1))

    assert_refused(keys.verify(hs_token(text)))
    assert_refused(TokenKeys(SECRET).verify(legacy_token(text)))
    eddsa, pem = ed_keys()
    assert_refused(eddsa.verify(ed_token(text, pem, "k1")))


def test_times_near_the_limits_of_datetime_do_not_overflow():
    keys = TokenKeys(SECRET)
    last_second_of_9999 = 253_402_300_799
    verdict = keys.verify(hs_token(payload(exp=last_second_of_9999)))
    assert verdict.valid and verdict.expires_at == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert_refused(keys.verify(hs_token(payload(exp=last_second_of_9999 + 1))))
    assert_refused(keys.verify(hs_token(payload(exp=10**400))))
    assert keys.verify(hs_token(payload(exp=time.time() + 60.5))).valid  # fractions are numbers


def test_iat_in_the_future_beyond_the_leeway_is_refused():
    now = int(time.time())
    keys = TokenKeys(SECRET, leeway_seconds=30)
    assert_refused(keys.verify(hs_token(payload(iat=now + 45, exp=now + 100))))
    assert keys.verify(hs_token(payload(iat=now + 15, exp=now + 100))).valid
    assert_refused(TokenKeys(SECRET, leeway_seconds=0).verify(hs_token(payload(iat=now + 15))))


def test_nbf_in_the_future_beyond_the_leeway_is_refused():
    now = int(time.time())
    keys = TokenKeys(SECRET, leeway_seconds=30)
    assert_refused(keys.verify(hs_token(payload(nbf=now + 45))))
    assert keys.verify(hs_token(payload(nbf=now + 15))).valid
    assert keys.verify(hs_token(payload(nbf=now - 15))).valid


def test_a_lifetime_longer_than_max_lifetime_is_refused():
    now = int(time.time())
    keys = TokenKeys(SECRET, max_lifetime=timedelta(minutes=1), leeway_seconds=30)
    assert keys.verify(hs_token(payload(iat=now, exp=now + 60))).valid
    assert keys.verify(hs_token(payload(iat=now, exp=now + 90))).valid  # within the leeway
    assert_refused(keys.verify(hs_token(payload(iat=now, exp=now + 91))))
    assert_refused(keys.verify(hs_token(payload(iat=now - 3600, exp=now + 3600))))
    # A legacy token has no iat: only how far ahead its exp lies is bounded.
    assert keys.verify(legacy_token(payload(iat=MISSING, exp=now + 60))).valid
    assert_refused(keys.verify(legacy_token(payload(iat=MISSING, exp=now + 600))))
    # Without max_lifetime, any lifetime goes.
    assert TokenKeys(SECRET).verify(hs_token(payload(iat=now, exp=now + 86400 * 365))).valid


def test_iss_and_aud_are_required_and_matched_when_configured():
    keys = TokenKeys(SECRET, issuer="pluct", audience="premium")
    assert keys.verify(hs_token(payload(iss="pluct", aud="premium"))).valid
    assert keys.verify(hs_token(payload(iss="pluct", aud=["other", "premium"]))).valid
    for claims in (
        payload(aud="premium"),
        payload(iss="pluct"),
        payload(iss="evil", aud="premium"),
        payload(iss="pluct", aud="other"),
        payload(iss=None, aud="premium"),
        payload(iss="pluct", aud=""),
        payload(iss="pluct", aud=[]),
        payload(iss=["pluct"], aud="premium"),
        payload(iss="pluct", aud={"premium": 1}),
        payload(iss="pluct", aud=[1, "premium"]),
    ):
        assert_refused(keys.verify(hs_token(claims)))


def test_iss_and_aud_are_ignored_when_not_configured():
    assert TokenKeys(SECRET).verify(hs_token(payload(iss="anyone", aud="anything"))).valid
    keys = TokenKeys(SECRET, issuer="pluct")
    assert keys.verify(hs_token(payload(iss="pluct", aud="anything"))).valid


def test_expired_only_for_a_token_whose_signature_verified():
    now = int(time.time())
    keys = TokenKeys(SECRET)
    expired = payload(iat=now - 120, exp=now - 60)
    assert_refused(keys.verify(hs_token(expired)), EXPIRED)
    assert_refused(keys.verify(hs_token(payload(iat=now - 60, exp=now))), EXPIRED)  # exp <= now
    assert_refused(keys.verify(legacy_token(payload(iat=MISSING, exp=now - 1))), EXPIRED)
    assert_refused(keys.verify(hs_token(expired, secret=OLD_SECRET, kid=hs_kid(SECRET))))
    assert_refused(keys.verify(hs_token(expired, secret=OLD_SECRET)))
    assert_refused(keys.verify(legacy_token(expired, secret=OLD_SECRET)))
    eddsa, pem = ed_keys()
    assert_refused(eddsa.verify(ed_token(expired, pem, "k1")), EXPIRED)
    assert_refused(eddsa.verify(ed_token(expired, ed_pem(), "k1")))


def test_revoked_tokens_are_refused_after_every_other_check():
    now = int(time.time())
    calls: list[tuple[str, str, int]] = []

    def revoked(jti: str, sub: str, issued_at: int) -> bool:
        calls.append((jti, sub, issued_at))
        return sub == "banned"

    keys = TokenKeys(SECRET, is_revoked=revoked, max_lifetime=timedelta(minutes=2))
    claims = payload(sub="banned", jti="t-1", iat=now - 5, exp=now + 55)
    assert_refused(keys.verify(hs_token(claims)), REVOKED)
    assert calls == [("t-1", "banned", now - 5)]
    assert keys.verify(hs_token(payload(sub="fine", jti="t-2", iat=now))).valid
    assert calls[-1] == ("t-2", "fine", now)
    # A legacy token's issue time is its exp less max_lifetime; no jti is "".
    keys.verify(legacy_token(payload(sub="fine", jti=MISSING, iat=MISSING, exp=now + 100)))
    assert calls[-1] == ("", "fine", now + 100 - 120)
    TokenKeys(SECRET, is_revoked=revoked).verify(legacy_token(payload(iat=MISSING, exp=now + 9)))
    assert calls[-1][2] == now + 9
    # Expired, forged or malformed tokens never reach the revocation check.
    calls.clear()
    assert_refused(keys.verify(hs_token({**claims, "iat": now - 90, "exp": now - 1})), EXPIRED)
    assert_refused(keys.verify(hs_token(claims, secret=OLD_SECRET)))
    assert_refused(keys.verify(hs_token({**claims, "nbf": now + 3600})))
    assert calls == []


# --- no input raises ----------------------------------------------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é\ud800"


def _random_json(rng: random.Random, depth: int = 0) -> object:
    choices: list[Callable[[], object]] = [
        lambda: rng.randint(-(10**20), 10**20),
        lambda: 10 ** rng.randint(0, 500),
        lambda: rng.uniform(-1e20, 1e20),
        lambda: rng.choice([float("inf"), float("-inf"), float("nan"), 0, -0.0, True, False]),
        lambda: None,
        lambda: "".join(rng.choice(_ALPHABET[:-1]) for _ in range(rng.randint(0, 12))),
        lambda: int(time.time()) + rng.randint(-200, 200),
    ]
    if depth < 3:
        choices.append(lambda: [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))])
        choices.append(
            lambda: {
                rng.choice(["exp", "iat", "nbf", "sub", "kid", "alg", "x"]): _random_json(
                    rng, depth + 1
                )
                for _ in range(rng.randint(0, 3))
            }
        )
    return rng.choice(choices)()


def _random_claims(rng: random.Random) -> dict[str, object]:
    claims = payload(iss="pluct", aud="premium")
    for name in ("sub", "jti", "iat", "exp", "nbf", "iss", "aud"):
        roll = rng.random()
        if roll < 0.25:
            claims.pop(name, None)
        elif roll < 0.6:
            claims[name] = _random_json(rng)
    return claims


def _mutate(rng: random.Random, token: str) -> str:
    chars = list(token)
    for _ in range(rng.randint(1, 4)):
        action = rng.random()
        position = rng.randrange(len(chars) + 1)
        if action < 0.4 and chars:
            chars[min(position, len(chars) - 1)] = rng.choice(_ALPHABET)
        elif action < 0.7:
            chars.insert(position, rng.choice(_ALPHABET))
        elif chars:
            del chars[min(position, len(chars) - 1)]
    return "".join(chars)


def test_random_and_mutated_tokens_never_raise():
    rng = random.Random(20240607)
    pem = ed_pem()
    private_key = ed_private(pem)
    lifetime = timedelta(minutes=5)
    keyrings = [
        TokenKeys(
            [SECRET, OLD_SECRET],
            issuer="pluct",
            audience="premium",
            max_lifetime=lifetime,
            is_revoked=lambda *_: False,
        ),
        TokenKeys(SECRET),
        TokenKeys(
            SECRET,
            algorithm=EDDSA,
            ed25519_keys={"k1": pem},
            active_kid="k1",
            accept_hs256=True,
            issuer="pluct",
            audience="premium",
            max_lifetime=lifetime,
        ),
    ]
    signers: list[tuple[dict[str, object], Callable[[bytes], bytes] | None]] = [
        ({"alg": "HS256", "kid": hs_kid(SECRET)}, hmac_signer(SECRET.encode())),
        ({"alg": "HS256"}, hmac_signer(OLD_SECRET.encode())),
        ({"alg": "EdDSA", "kid": "k1"}, private_key.sign),
        ({"alg": "none"}, None),
    ]
    outcomes: dict[str | None, int] = {}
    for round_ in range(500):
        header, sign = rng.choice(signers)
        kind = round_ % 4
        if kind == 0:  # well signed, hostile claims: reaches the claim checks
            token = forge(header, _random_claims(rng), sign)
        elif kind == 1:  # hostile header fields, then signed
            extra = {
                rng.choice(["alg", "kid", "typ", "crit", "b64", "x"]): _random_json(rng, 2)
                for _ in range(rng.randint(1, 3))
            }
            token = forge({**header, **extra}, payload(), sign)
        elif kind == 2:  # a good token, mangled
            token = _mutate(rng, forge(header, payload(iss="pluct", aud="premium"), sign))
        else:  # segments of random bytes and JSON
            parts = [
                b64(rng.randbytes(rng.randint(0, 40)))
                if rng.random() < 0.5
                else segment(_random_json(rng))
                for _ in range(rng.randint(1, 4))
            ]
            token = ".".join(parts)
        for keys in keyrings:
            verdict = keys.verify(token)
            assert isinstance(verdict, Verdict)
            assert verdict.valid == (verdict.reason is None)
            outcomes[verdict.reason] = outcomes.get(verdict.reason, 0) + 1
    # The loop reached past the signature check, not only the parser.
    assert outcomes.get(None, 0) > 0 and outcomes.get(INVALID_SIGNATURE, 0) > 0


def test_a_token_that_passed_is_refused_once_revoked_and_once_expired():
    clock = MovableClock()
    now = int(clock.time())
    banned: set[str] = set()
    keys = TokenKeys(SECRET, is_revoked=lambda jti, sub, issued_at: jti in banned, clock=clock)
    token = hs_token(payload(jti="t-1", iat=now, exp=now + 2))
    assert keys.verify(token).valid

    banned.add("t-1")
    assert_refused(keys.verify(token), REVOKED)
    banned.clear()
    assert keys.verify(token).valid

    clock.advance(2)  # the service's clock passes its exp
    assert_refused(keys.verify(token), EXPIRED)


def test_a_token_altered_after_it_passed_is_checked_afresh_and_refused():
    keys = TokenKeys(SECRET)
    token = hs_token(payload())
    assert keys.verify(token).valid
    head, body, signature = token.split(".")
    flipped = "A" if signature[5] != "A" else "B"
    forged_signature = f"{head}.{body}.{signature[:5]}{flipped}{signature[6:]}"
    other_claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged_body = f"{head}.{segment({**other_claims, 'sub': 'someone-else'})}.{signature}"
    for forged in (forged_signature, forged_body, token + "A", " " + token):
        assert_refused(keys.verify(forged))
    assert keys.verify(token).valid


def test_a_token_that_passed_is_refused_once_its_user_is_revoked():
    now = int(time.time())
    revoked_before: dict[str, int] = {}  # user -> tokens issued up to this time are revoked

    def revoked(jti: str, sub: str, issued_at: int) -> bool:
        return issued_at <= revoked_before.get(sub, -1)

    keys = TokenKeys(SECRET, is_revoked=revoked)
    held = hs_token(payload(sub="u-1", iat=now - 10))
    later = hs_token(payload(sub="u-1", iat=now + 5))
    other = hs_token(payload(sub="u-2", iat=now - 10))
    assert all(keys.verify(token).valid for token in (held, later, other))

    revoked_before["u-1"] = now
    assert_refused(keys.verify(held), REVOKED)
    assert keys.verify(later).valid
    assert keys.verify(other).valid


def test_more_tokens_than_are_kept_all_still_verify_and_are_still_revocable():
    banned: set[str] = set()
    keys = TokenKeys(SECRET, is_revoked=lambda jti, sub, issued_at: jti in banned)
    tokens = [hs_token(payload(jti=f"t-{n}")) for n in range(VETTED_TOKENS + 2)]
    assert all(keys.verify(token).valid for token in tokens)
    # The memory it keeps stays bounded, however many tokens it is shown.
    assert len(keys._vetted) <= VETTED_TOKENS
    # The first were let go to keep the bound; checked again, they pass, or fail, as before.
    assert keys.verify(tokens[0]).valid
    banned.update({"t-0", f"t-{VETTED_TOKENS + 1}"})
    assert_refused(keys.verify(tokens[0]), REVOKED)
    assert_refused(keys.verify(tokens[-1]), REVOKED)


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def respellings(token: str) -> list[str]:
    """The token with one segment spelled otherwise: same bytes, a spare bit of its end set."""
    found = []
    segments = token.split(".")
    for index, segment in enumerate(segments):
        spare = len(segment) * 6 % 8  # bits the last character carries beyond the bytes
        if spare:
            last = BASE64URL.index(segment[-1])
            other = segment[:-1] + BASE64URL[last ^ 1]
            assert b64decode(other) == b64decode(segment)  # the very same bytes
            found.append(".".join([*segments[:index], other, *segments[index + 1 :]]))
    return found


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.mark.parametrize("sub", ["u", "user-1", "user-12", "user-123"])
def test_a_token_has_one_spelling_only(sub: str):
    keys = TokenKeys(SECRET)
    token = hs_token(payload(sub=sub))
    others = respellings(token)
    assert others  # the signature's 43 characters always have 2 bits to spare
    assert keys.verify(token).valid
    for other in others:
        assert_refused(keys.verify(other))
    assert keys.verify(token).valid


def test_an_eddsa_token_has_one_spelling_only():
    keys, pem = ed_keys()
    token = ed_token(payload(), pem, "k1")
    others = respellings(token)
    assert others  # 86 characters carry the 64-byte signature with 4 bits to spare
    assert keys.verify(token).valid
    for other in others:
        assert_refused(keys.verify(other))
