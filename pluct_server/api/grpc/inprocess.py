"""The HTTP shim's way in: the very handlers gRPC serves, guard included, called in-process."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from pluct_server.api.grpc.interceptor import Behavior, ServiceInterceptor
from pluct_server.values.callers import Caller

Metadata = Sequence[tuple[str, str]]


class CallAborted(Exception):
    """A call ended with a status other than OK: what a gRPC client would have received."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: Metadata = ()
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)


class InProcessContext:
    """What a guarded handler reads of its context, for a call the shim makes in this process."""

    def __init__(self, caller: Caller) -> None:
        # Admitted by the shim already: the guard checks nobody twice.
        self.caller = caller

    def invocation_metadata(self) -> Metadata:
        """Return the call's metadata: none, as the shim hands over its caller instead."""
        return ()

    def peer(self) -> str:
        """Return where the call came from: here."""
        return "in-process"

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> None:
        """End the call with a status, as grpc.aio does, by raising."""
        raise CallAborted(code, details, trailing_metadata)


class InProcessCalls:
    """Every RPC of the services, each behind the same guard the gRPC server applies."""

    def __init__(
        self,
        interceptor: ServiceInterceptor,
        servicers: Iterable[tuple[ServiceDescriptor, object]],
    ) -> None:
        self._calls: dict[str, tuple[Behavior, Any]] = {}
        for service, servicer in servicers:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                request_class = message_factory.GetMessageClass(method.input_type)
                self._calls[path] = (
                    interceptor.guard(
                        path, getattr(servicer, method.name), request_class.FromString
                    ),
                    request_class,
                )

    async def call(self, path: str, request: Message, caller: Caller) -> Message:
        """Call the RPC at `path` as `caller`; raise CallAborted if it does not succeed."""
        guarded, _ = self._calls[path]
        # Bytes, as the network would carry them: the guard decodes them as it does those.
        response: Message = await guarded(request.SerializeToString(), InProcessContext(caller))
        return response
