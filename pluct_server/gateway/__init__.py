"""The JSON shim: legacy HTTP callers served from the gRPC contract (grpc-gateway style)."""

from pluct_server.gateway.app import Guards, HttpLimits
from pluct_server.gateway.server import Gateway

__all__ = ["Gateway", "Guards", "HttpLimits"]
