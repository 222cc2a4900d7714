"""TLS on both listeners when certificate files are configured, and mutual TLS for gRPC."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from tests.support import ADMIN_METADATA, running_server, settings_for_test

pytestmark = pytest.mark.usefixtures("database_dsn")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    *,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _key_pem(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, all signed by the CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("pluct test CA", ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "ca": _pem(tmp_path / "ca.pem", ca),
        "server_cert": _pem(
            tmp_path / "server.pem",
            _certificate("localhost", server_key, ("pluct test CA", ca_key), server=True),
        ),
        "server_key": _key_pem(tmp_path / "server.key", server_key),
        "client_cert": _pem(
            tmp_path / "client.pem",
            _certificate("billing-service", client_key, ("pluct test CA", ca_key)),
        ),
        "client_key": _key_pem(tmp_path / "client.key", client_key),
        # Self-signed: the same name, but no CA of ours vouches for it.
        "stranger_cert": _pem(
            tmp_path / "stranger.pem", _certificate("billing-service", stranger_key)
        ),
        "stranger_key": _key_pem(tmp_path / "stranger.key", stranger_key),
    }


async def _balance(target: str, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        stub = credit_service_pb2_grpc.CreditServiceStub(channel)
        reply = await stub.GetBalance(
            credit_pb.GetBalanceRequest(user_id="tls-user"), metadata=ADMIN_METADATA, timeout=10
        )
        return int(reply.balance)


async def test_tls_serves_grpc_and_http_and_refuses_plaintext(pki, tmp_path, database_dsn):
    settings = settings_for_test(
        tmp_path, tls_cert_file=pki["server_cert"], tls_key_file=pki["server_key"]
    )
    async with running_server(settings, database_dsn) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())

        assert await _balance(target, trusted) == 0
        async with grpc.aio.insecure_channel(target) as plain:
            stub = credit_service_pb2_grpc.CreditServiceStub(plain)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetBalance(
                    credit_pb.GetBalanceRequest(user_id="tls-user"),
                    metadata=ADMIN_METADATA,
                    timeout=5,
                )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

        context = ssl.create_default_context(cafile=str(pki["ca"]))
        async with aiohttp.ClientSession() as session:
            url = f"https://127.0.0.1:{server.http_port}/user/tls-user/balance"
            async with session.get(url, ssl=context) as response:
                assert (response.status, (await response.json())["balance"]) == (200, 0)
            with pytest.raises(aiohttp.ClientError):
                plain_url = f"http://127.0.0.1:{server.http_port}/health"
                async with session.get(plain_url) as response:
                    await response.read()


async def test_mutual_tls_admits_only_clients_our_ca_signed(pki, tmp_path, database_dsn):
    settings = settings_for_test(
        tmp_path,
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["ca"],
    )
    root = pki["ca"].read_bytes()
    async with running_server(settings, database_dsn) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        signed = grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=pki["client_key"].read_bytes(),
            certificate_chain=pki["client_cert"].read_bytes(),
        )
        assert await _balance(target, signed) == 0

        for credentials in (
            grpc.ssl_channel_credentials(root_certificates=root),  # no certificate at all
            grpc.ssl_channel_credentials(
                root_certificates=root,
                private_key=pki["stranger_key"].read_bytes(),
                certificate_chain=pki["stranger_cert"].read_bytes(),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await _balance(target, credentials)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
