import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransactionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_TYPE_UNSPECIFIED: _ClassVar[TransactionType]
    TRANSACTION_TYPE_USER_CREATION: _ClassVar[TransactionType]
    TRANSACTION_TYPE_ADD_WEBHOOK: _ClassVar[TransactionType]
    TRANSACTION_TYPE_ADMIN_ADD: _ClassVar[TransactionType]
    TRANSACTION_TYPE_SPEND: _ClassVar[TransactionType]
    TRANSACTION_TYPE_EXPIRATION: _ClassVar[TransactionType]
    TRANSACTION_TYPE_REFUND: _ClassVar[TransactionType]
TRANSACTION_TYPE_UNSPECIFIED: TransactionType
TRANSACTION_TYPE_USER_CREATION: TransactionType
TRANSACTION_TYPE_ADD_WEBHOOK: TransactionType
TRANSACTION_TYPE_ADMIN_ADD: TransactionType
TRANSACTION_TYPE_SPEND: TransactionType
TRANSACTION_TYPE_EXPIRATION: TransactionType
TRANSACTION_TYPE_REFUND: TransactionType

class Transaction(_message.Message):
    __slots__ = ("id", "user_id", "type", "amount", "create_time", "reason", "balance_after", "actor_key_id", "grant_draws", "grant_id", "refunded_transaction_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    ACTOR_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_DRAWS_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    user_id: str
    type: TransactionType
    amount: int
    create_time: _timestamp_pb2.Timestamp
    reason: str
    balance_after: int
    actor_key_id: str
    grant_draws: _containers.RepeatedCompositeFieldContainer[GrantDraw]
    grant_id: str
    refunded_transaction_id: int
    def __init__(self, id: _Optional[int] = ..., user_id: _Optional[str] = ..., type: _Optional[_Union[TransactionType, str]] = ..., amount: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., balance_after: _Optional[int] = ..., actor_key_id: _Optional[str] = ..., grant_draws: _Optional[_Iterable[_Union[GrantDraw, _Mapping]]] = ..., grant_id: _Optional[str] = ..., refunded_transaction_id: _Optional[int] = ...) -> None: ...

class GrantDraw(_message.Message):
    __slots__ = ("grant_id", "amount")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    amount: int
    def __init__(self, grant_id: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...
