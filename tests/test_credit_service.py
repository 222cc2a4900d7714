"""CreditService through the generated stubs: sign-up, balance, history, payment webhook."""

from __future__ import annotations

import grpc
import pytest
from pluct.credit.v1 import credit_service_pb2 as pb
from pluct.credit.v1 import ledger_pb2

from tests.support import ADMIN_METADATA, WEBHOOK_METADATA, error_reason, new_request_id

pytestmark = pytest.mark.usefixtures("database_dsn")


async def test_create_user_grants_initial_credits_in_the_ledger(credit, user_id):
    created = await credit.CreateUser(pb.CreateUserRequest(user_id=user_id, initial_credits=10))

    assert (created.user_id, created.initial_balance) == (user_id, 10)
    history = await credit.ListTransactions(pb.ListTransactionsRequest(user_id=user_id))
    [entry] = history.transactions
    assert entry.type == ledger_pb2.TRANSACTION_TYPE_USER_CREATION
    assert (entry.amount, entry.reason, entry.balance_after) == (10, "User account creation", 10)


async def test_create_user_with_zero_credits_writes_no_ledger_entry(credit, user_id):
    created = await credit.CreateUser(pb.CreateUserRequest(user_id=user_id))

    assert created.initial_balance == 0
    history = await credit.ListTransactions(pb.ListTransactionsRequest(user_id=user_id))
    assert list(history.transactions) == []


async def test_duplicate_user_is_already_exists(credit, user_id):
    await credit.CreateUser(pb.CreateUserRequest(user_id=user_id, initial_credits=5))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.CreateUser(pb.CreateUserRequest(user_id=user_id, initial_credits=5))

    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert raised.value.details() == "User already exists"
    balance = await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == 5


@pytest.mark.parametrize(
    ("user_id", "initial_credits", "field"),
    [
        ("", 5, "user_id"),
        ("   ", 5, "user_id"),
        ("x" * 101, 5, "user_id"),
        ("bad\x00id", 5, "user_id"),
        ("fine-user", -1, "initial_credits"),
        ("fine-user", 10_001, "initial_credits"),
    ],
)
async def test_create_user_rejects_bad_input_naming_the_field(
    credit, user_id, initial_credits, field
):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.CreateUser(
            pb.CreateUserRequest(user_id=user_id, initial_credits=initial_credits)
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": field})
    if user_id == "fine-user":
        balance = await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))
        assert balance.balance == 0


async def test_user_id_of_exactly_100_characters_is_accepted(credit):
    user_id = "u" * 100
    created = await credit.CreateUser(pb.CreateUserRequest(user_id=user_id, initial_credits=1))
    assert created.user_id == user_id


async def test_credits_above_signup_allowance_need_the_admin_token(credit, user_id):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.CreateUser(pb.CreateUserRequest(user_id=user_id, initial_credits=11))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(raised.value)[0] == "ADMIN_TOKEN_REQUIRED"

    created = await credit.CreateUser(
        pb.CreateUserRequest(user_id=user_id, initial_credits=500), metadata=ADMIN_METADATA
    )
    assert created.initial_balance == 500


async def test_create_user_retry_with_same_request_id_returns_first_answer(credit, user_id):
    request = pb.CreateUserRequest(user_id=user_id, initial_credits=7, request_id=new_request_id())

    first = await credit.CreateUser(request)
    again = await credit.CreateUser(request)

    assert first == again
    history = await credit.ListTransactions(pb.ListTransactionsRequest(user_id=user_id))
    assert len(history.transactions) == 1


async def test_a_create_request_id_for_another_user_is_another_request(credit, user_id):
    request_id = new_request_id()
    await credit.CreateUser(pb.CreateUserRequest(user_id=user_id, request_id=request_id))

    other = await credit.CreateUser(
        pb.CreateUserRequest(user_id=user_id + "-other", initial_credits=2, request_id=request_id)
    )

    # Scoped to the user: one user's id can neither squat nor replay another's creation.
    assert (other.user_id, other.initial_balance) == (user_id + "-other", 2)
    assert (await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))).balance == 0


async def test_unknown_user_has_balance_zero(credit, user_id):
    balance = await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))

    assert (balance.user_id, balance.balance) == (user_id, 0)
    assert balance.read_time.seconds > 0


async def test_get_balance_rejects_blank_user_id(credit):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.GetBalance(pb.GetBalanceRequest(user_id=""))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in raised.value.details()


async def test_webhook_credit_adds_to_balance_and_ledger(credit, user_id):
    await credit.CreateUser(pb.CreateUserRequest(user_id=user_id, initial_credits=2))

    added = await credit.AddCredits(
        pb.AddCreditsRequest(user_id=user_id, amount=40), metadata=WEBHOOK_METADATA
    )

    assert (added.user_id, added.new_balance) == (user_id, 42)
    history = await credit.ListTransactions(pb.ListTransactionsRequest(user_id=user_id))
    newest = history.transactions[0]
    assert newest.type == ledger_pb2.TRANSACTION_TYPE_ADD_WEBHOOK
    assert (newest.amount, newest.reason, newest.balance_after) == (40, "Payment gateway", 42)


async def test_webhook_credit_creates_an_unknown_user(credit, user_id):
    added = await credit.AddCredits(
        pb.AddCreditsRequest(user_id=user_id, amount=3), metadata=WEBHOOK_METADATA
    )

    assert added.new_balance == 3
    assert (await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))).balance == 3


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_CREDENTIALS"),
        ((("x-webhook-secret", "wrong"),), "BAD_CREDENTIALS"),
        ((("x-webhook-secret", ""),), "BAD_CREDENTIALS"),
        (ADMIN_METADATA, "MISSING_CREDENTIALS"),
    ],
)
async def test_webhook_refuses_callers_without_the_secret(
    credit, bare_credit, user_id, metadata, reason
):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await bare_credit.AddCredits(
            pb.AddCreditsRequest(user_id=user_id, amount=5), metadata=metadata
        )

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == "Unauthorized"
    assert error_reason(raised.value)[0] == reason
    assert (await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))).balance == 0


@pytest.mark.parametrize(("amount"), [0, -1, 10_001])
async def test_webhook_rejects_amounts_outside_1_to_10000(credit, user_id, amount):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.AddCredits(
            pb.AddCreditsRequest(user_id=user_id, amount=amount), metadata=WEBHOOK_METADATA
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": "amount"})
    assert (await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))).balance == 0


async def test_webhook_accepts_the_amount_bounds(credit, user_id):
    for amount in (1, 10_000):
        await credit.AddCredits(
            pb.AddCreditsRequest(user_id=user_id, amount=amount), metadata=WEBHOOK_METADATA
        )
    assert (await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))).balance == 10_001


async def test_webhook_retry_with_same_request_id_counts_once(credit, user_id):
    request = pb.AddCreditsRequest(user_id=user_id, amount=25, request_id=new_request_id())

    first = await credit.AddCredits(request, metadata=WEBHOOK_METADATA)
    again = await credit.AddCredits(request, metadata=WEBHOOK_METADATA)

    assert first.new_balance == again.new_balance == 25
    assert (await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))).balance == 25


async def test_a_payment_id_reused_with_another_amount_is_refused(credit, user_id):
    request_id = new_request_id()
    await credit.AddCredits(
        pb.AddCreditsRequest(user_id=user_id, amount=25, request_id=request_id),
        metadata=WEBHOOK_METADATA,
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.AddCredits(
            pb.AddCreditsRequest(user_id=user_id, amount=26, request_id=request_id),
            metadata=WEBHOOK_METADATA,
        )

    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(raised.value)[0] == "PAYMENT_EVENT_REUSED"
    assert (await credit.GetBalance(pb.GetBalanceRequest(user_id=user_id))).balance == 25


async def test_transactions_are_newest_first_and_paginate(credit, user_id):
    for amount in range(1, 8):
        await credit.AddCredits(
            pb.AddCreditsRequest(user_id=user_id, amount=amount), metadata=WEBHOOK_METADATA
        )

    seen: list[int] = []
    page_token = ""
    pages = 0
    while True:
        page = await credit.ListTransactions(
            pb.ListTransactionsRequest(user_id=user_id, page_size=3, page_token=page_token)
        )
        seen += [entry.amount for entry in page.transactions]
        pages += 1
        page_token = page.next_page_token
        if not page_token:
            break

    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3


async def test_transactions_of_unknown_user_is_empty(credit, user_id):
    page = await credit.ListTransactions(pb.ListTransactionsRequest(user_id=user_id))
    assert (list(page.transactions), page.next_page_token) == ([], "")


async def test_transactions_page_size_above_maximum_is_clamped(credit, user_id):
    for _ in range(3):
        await credit.AddCredits(
            pb.AddCreditsRequest(user_id=user_id, amount=1), metadata=WEBHOOK_METADATA
        )
    page = await credit.ListTransactions(
        pb.ListTransactionsRequest(user_id=user_id, page_size=1_000_000)
    )
    assert len(page.transactions) == 3


@pytest.mark.parametrize(
    ("page_size", "page_token", "field"),
    [(-1, "", "page_size"), (0, "not-a-token", "page_token")],
)
async def test_transactions_reject_bad_paging(credit, user_id, page_size, page_token, field):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.ListTransactions(
            pb.ListTransactionsRequest(user_id=user_id, page_size=page_size, page_token=page_token)
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": field})


async def test_page_token_of_another_user_is_refused(credit, user_id):
    for _ in range(3):
        await credit.AddCredits(
            pb.AddCreditsRequest(user_id=user_id, amount=1), metadata=WEBHOOK_METADATA
        )
    page = await credit.ListTransactions(pb.ListTransactionsRequest(user_id=user_id, page_size=1))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.ListTransactions(
            pb.ListTransactionsRequest(
                user_id=user_id + "-x", page_size=1, page_token=page.next_page_token
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
