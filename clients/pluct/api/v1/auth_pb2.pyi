from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class CallerAuth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALLER_AUTH_UNSPECIFIED: _ClassVar[CallerAuth]
    CALLER_AUTH_PUBLIC: _ClassVar[CallerAuth]
    CALLER_AUTH_WEBHOOK: _ClassVar[CallerAuth]
    CALLER_AUTH_ADMIN: _ClassVar[CallerAuth]
CALLER_AUTH_UNSPECIFIED: CallerAuth
CALLER_AUTH_PUBLIC: CallerAuth
CALLER_AUTH_WEBHOOK: CallerAuth
CALLER_AUTH_ADMIN: CallerAuth
CALLER_AUTH_FIELD_NUMBER: _ClassVar[int]
caller_auth: _descriptor.FieldDescriptor
