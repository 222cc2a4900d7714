"""The JSON shim: legacy HTTP callers served from the gRPC contract (grpc-gateway style)."""

from pluct_server.api.http.app import Guards, HttpLimits
from pluct_server.api.http.server import Gateway

__all__ = ["Gateway", "Guards", "HttpLimits"]
