import datetime

from pluct import _validate_rules as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pluct.api.v1 import auth_pb2 as _auth_pb2
from pluct.credit.v1 import grant_pb2 as _grant_pb2
from pluct.credit.v1 import ledger_pb2 as _ledger_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateUserRequest(_message.Message):
    __slots__ = ("user_id", "initial_credits", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CREDITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    initial_credits: int
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., initial_credits: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateUserResponse(_message.Message):
    __slots__ = ("user_id", "initial_balance")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BALANCE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    initial_balance: int
    def __init__(self, user_id: _Optional[str] = ..., initial_balance: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("user_id", "balance", "read_time", "next_expire_time", "next_expire_amount")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    READ_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_EXPIRE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    balance: int
    read_time: _timestamp_pb2.Timestamp
    next_expire_time: _timestamp_pb2.Timestamp
    next_expire_amount: int
    def __init__(self, user_id: _Optional[str] = ..., balance: _Optional[int] = ..., read_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_expire_amount: _Optional[int] = ...) -> None: ...

class ListTransactionsRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("user_id", "transactions", "next_page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    transactions: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.Transaction]
    next_page_token: str
    def __init__(self, user_id: _Optional[str] = ..., transactions: _Optional[_Iterable[_Union[_ledger_pb2.Transaction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AddCreditsRequest(_message.Message):
    __slots__ = ("user_id", "amount", "request_id", "event_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    amount: int
    request_id: str
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., amount: _Optional[int] = ..., request_id: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class AddCreditsResponse(_message.Message):
    __slots__ = ("user_id", "new_balance", "grant_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_BALANCE_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    new_balance: int
    grant_id: str
    def __init__(self, user_id: _Optional[str] = ..., new_balance: _Optional[int] = ..., grant_id: _Optional[str] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants", "next_page_token")
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[_grant_pb2.Grant]
    next_page_token: str
    def __init__(self, grants: _Optional[_Iterable[_Union[_grant_pb2.Grant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
