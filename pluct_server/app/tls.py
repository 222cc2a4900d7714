"""TLS for both listeners when certificate files are configured; mutual TLS for gRPC."""

from __future__ import annotations

import ssl

import grpc

from pluct_server.values.settings import Settings


def grpc_server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Return the gRPC listener's TLS credentials, None for plaintext.

    With PLUCT_TLS_CLIENT_CA_FILE every client must present a certificate that CA signed.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Return the HTTP listener's TLS context, None for plaintext.

    No client certificates here: the legacy callers of these routes (mobile apps, the payment
    provider) could never present one.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def grpc_channel_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """Return credentials for a local client (the healthcheck) that trusts our own certificate."""
    assert settings.tls_cert_file is not None
    return grpc.ssl_channel_credentials(root_certificates=settings.tls_cert_file.read_bytes())
