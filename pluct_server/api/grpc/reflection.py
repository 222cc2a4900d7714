"""Server reflection, as v1 (what current grpcurl and buf curl ask for) and v1alpha."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

# Imported for its descriptors: our errors carry these details, and clients decode them by
# reflection, so their file must be in the pool reflection serves though no service names it.
from google.rpc import error_details_pb2  # noqa: F401
from grpc_reflection.v1alpha import reflection, reflection_pb2

# The v1 service is v1alpha renamed: the same messages, field for field. grpcio-reflection
# serves only v1alpha, so v1 is the same servicer under the new name.
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection (v1 and v1alpha) for `service_names` and itself."""
    # Only v1alpha is listed: tools describe every listed service, and v1's descriptor is not
    # in any package we depend on. Asked on v1, the same answers come back.
    names = (*service_names, V1ALPHA_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )
