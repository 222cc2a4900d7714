"""Every RPC states who may call it, and only RPCs the interceptor can guard are served."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2
from pluct.api.v1 import auth_pb2

from pluct_server.app.server import SERVICES
from pluct_server.security.callers import access_rules


def service_with(*, streaming: bool, scope: int = auth_pb2.SCOPE_ADMIN):
    """A service of one method, made for the test, with the access option set as asked."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"probe_{streaming}_{scope}.proto",
        package=f"probe{int(streaming)}{scope}",
        syntax="proto3",
        dependency=["pluct/api/v1/auth.proto", empty_pb2.DESCRIPTOR.name],
    )
    method = file.service.add(name="Probe").method.add(
        name="Watch",
        input_type=".google.protobuf.Empty",
        output_type=".google.protobuf.Empty",
        server_streaming=streaming,
    )
    method.options.Extensions[auth_pb2.access].scope = scope
    method.options.Extensions[auth_pb2.access].legacy = auth_pb2.CALLER_AUTH_ADMIN
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(file.SerializeToString())
    return pool.FindServiceByName(f"{file.package}.Probe")


def test_every_served_rpc_has_a_rule():
    rules = access_rules(SERVICES)
    assert len(rules) == sum(len(service.methods) for service in SERVICES)


def test_a_streaming_rpc_is_refused_at_start_rather_than_served_unguarded():
    with pytest.raises(ValueError, match="streams"):
        access_rules([service_with(streaming=True)])


def test_an_rpc_without_a_scope_is_refused_at_start():
    with pytest.raises(ValueError, match="names no scope"):
        access_rules([service_with(streaming=False, scope=auth_pb2.SCOPE_UNSPECIFIED)])
