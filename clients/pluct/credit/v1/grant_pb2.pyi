import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GrantCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_CATEGORY_UNSPECIFIED: _ClassVar[GrantCategory]
    GRANT_CATEGORY_PAID: _ClassVar[GrantCategory]
    GRANT_CATEGORY_PROMOTIONAL: _ClassVar[GrantCategory]

class GrantSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_SOURCE_UNSPECIFIED: _ClassVar[GrantSource]
    GRANT_SOURCE_SIGNUP: _ClassVar[GrantSource]
    GRANT_SOURCE_PAYMENT: _ClassVar[GrantSource]
    GRANT_SOURCE_ADMIN: _ClassVar[GrantSource]
    GRANT_SOURCE_OPENING_BALANCE: _ClassVar[GrantSource]
GRANT_CATEGORY_UNSPECIFIED: GrantCategory
GRANT_CATEGORY_PAID: GrantCategory
GRANT_CATEGORY_PROMOTIONAL: GrantCategory
GRANT_SOURCE_UNSPECIFIED: GrantSource
GRANT_SOURCE_SIGNUP: GrantSource
GRANT_SOURCE_PAYMENT: GrantSource
GRANT_SOURCE_ADMIN: GrantSource
GRANT_SOURCE_OPENING_BALANCE: GrantSource

class Grant(_message.Message):
    __slots__ = ("grant_id", "user_id", "category", "priority", "amount", "remaining", "expire_time", "source", "create_time")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    user_id: str
    category: GrantCategory
    priority: int
    amount: int
    remaining: int
    expire_time: _timestamp_pb2.Timestamp
    source: GrantSource
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, grant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., category: _Optional[_Union[GrantCategory, str]] = ..., priority: _Optional[int] = ..., amount: _Optional[int] = ..., remaining: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[GrantSource, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
