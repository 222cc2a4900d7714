from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_USERS_CREATE: _ClassVar[Scope]
    SCOPE_CREDITS_READ: _ClassVar[Scope]
    SCOPE_CREDITS_GRANT: _ClassVar[Scope]
    SCOPE_TOKENS_VEND: _ClassVar[Scope]
    SCOPE_TOKENS_VALIDATE: _ClassVar[Scope]
    SCOPE_ADMIN: _ClassVar[Scope]
    SCOPE_PUBLIC: _ClassVar[Scope]
    SCOPE_METRICS_READ: _ClassVar[Scope]

class CallerAuth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALLER_AUTH_UNSPECIFIED: _ClassVar[CallerAuth]
    CALLER_AUTH_PUBLIC: _ClassVar[CallerAuth]
    CALLER_AUTH_WEBHOOK: _ClassVar[CallerAuth]
    CALLER_AUTH_ADMIN: _ClassVar[CallerAuth]
SCOPE_UNSPECIFIED: Scope
SCOPE_USERS_CREATE: Scope
SCOPE_CREDITS_READ: Scope
SCOPE_CREDITS_GRANT: Scope
SCOPE_TOKENS_VEND: Scope
SCOPE_TOKENS_VALIDATE: Scope
SCOPE_ADMIN: Scope
SCOPE_PUBLIC: Scope
SCOPE_METRICS_READ: Scope
CALLER_AUTH_UNSPECIFIED: CallerAuth
CALLER_AUTH_PUBLIC: CallerAuth
CALLER_AUTH_WEBHOOK: CallerAuth
CALLER_AUTH_ADMIN: CallerAuth
ACCESS_FIELD_NUMBER: _ClassVar[int]
access: _descriptor.FieldDescriptor

class Access(_message.Message):
    __slots__ = ("scope", "legacy")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    LEGACY_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    legacy: CallerAuth
    def __init__(self, scope: _Optional[_Union[Scope, str]] = ..., legacy: _Optional[_Union[CallerAuth, str]] = ...) -> None: ...
