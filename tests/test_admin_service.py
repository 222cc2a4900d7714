"""AdminService through the generated stubs: users, all transactions, manual grants."""

from __future__ import annotations

import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import ledger_pb2
from pluct.token.v1 import token_service_pb2 as token_pb

from tests.support import (
    ADMIN_METADATA,
    ADMIN_SECRET,
    WEBHOOK_METADATA,
    error_reason,
    new_request_id,
    new_user_id,
)

pytestmark = pytest.mark.usefixtures("database_dsn")


async def test_admin_grant_adds_credits_with_the_given_reason(admin, credit, user_id):
    added = await admin.AddCredits(
        pb.AddCreditsRequest(user_id=user_id, amount=3, reason="goodwill"),
        metadata=ADMIN_METADATA,
    )

    assert (added.user_id, added.new_balance) == (user_id, 3)
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    entry = history.transactions[0]
    assert entry.type == ledger_pb2.TRANSACTION_TYPE_ADMIN_ADD
    assert (entry.amount, entry.reason) == (3, "goodwill")


@pytest.mark.parametrize("reason", [None, "", "   "])
async def test_admin_grant_reason_defaults(admin, credit, user_id, reason):
    request = pb.AddCreditsRequest(user_id=user_id, amount=2)
    if reason is not None:
        request.reason = reason

    await admin.AddCredits(request, metadata=ADMIN_METADATA)

    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    assert history.transactions[0].reason == "Manual credit addition by admin"


@pytest.mark.parametrize(
    ("user_id", "amount", "reason", "field"),
    [
        ("", 5, None, "user_id"),
        ("ok-user", 0, None, "amount"),
        ("ok-user", 10_001, None, "amount"),
        ("ok-user", 5, "r" * 501, "reason"),
        ("ok-user", 5, "bell\x07", "reason"),
    ],
)
async def test_admin_grant_rejects_bad_input(admin, credit, user_id, amount, reason, field):
    request = pb.AddCreditsRequest(user_id=user_id, amount=amount)
    if reason is not None:
        request.reason = reason

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.AddCredits(request, metadata=ADMIN_METADATA)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": field})


async def test_admin_grant_retry_counts_once(admin, credit, user_id):
    request = pb.AddCreditsRequest(user_id=user_id, amount=9, request_id=new_request_id())

    await admin.AddCredits(request, metadata=ADMIN_METADATA)
    again = await admin.AddCredits(request, metadata=ADMIN_METADATA)

    assert again.new_balance == 9
    balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == 9


async def test_a_webhook_request_id_is_another_request_for_an_admin_grant(admin, credit, user_id):
    request_id = new_request_id()
    await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=9, request_id=request_id),
        metadata=WEBHOOK_METADATA,
    )

    granted = await admin.AddCredits(
        pb.AddCreditsRequest(user_id=user_id, amount=9, request_id=request_id),
        metadata=ADMIN_METADATA,
    )

    # Scoped to (caller, operation, user): neither call can squat or replay the other's id.
    assert granted.new_balance == 18


ADMIN_CALLS = [
    ("ListUsers", pb.ListUsersRequest()),
    ("ListTransactions", pb.ListTransactionsRequest()),
    ("AddCredits", pb.AddCreditsRequest(user_id="someone", amount=1)),
    ("CreateApiKey", pb.CreateApiKeyRequest(name="sneaky", scopes=["admin"])),
    ("ListApiKeys", pb.ListApiKeysRequest()),
    ("RevokeApiKey", pb.RevokeApiKeyRequest(key_id="0123456789abcdef")),
    ("RevokeTokens", pb.RevokeTokensRequest(user_id="someone")),
    ("AuditLedger", pb.AuditLedgerRequest()),
]


@pytest.mark.parametrize(("method", "request_message"), ADMIN_CALLS)
@pytest.mark.parametrize(
    ("metadata", "code", "reason"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS"),
        (
            (("authorization", "Bearer wrong-token"),),
            grpc.StatusCode.UNAUTHENTICATED,
            "BAD_CREDENTIALS",
        ),
        (
            (("authorization", ADMIN_SECRET),),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_CREDENTIALS",
        ),
        (
            (("authorization", f"Basic {ADMIN_SECRET}"),),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_CREDENTIALS",
        ),
        (WEBHOOK_METADATA, grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS"),
        (None, grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE"),
    ],
    ids=["missing", "wrong", "no-scheme", "basic-scheme", "webhook-secret", "key-without-admin"],
)
async def test_every_admin_call_needs_the_admin_scope(
    bare_admin, admin, method, request_message, metadata, code, reason
):
    # None: the suite's own API key, which holds every scope but admin's.
    stub = admin if metadata is None else bare_admin
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(stub, method)(request_message, metadata=metadata or ())

    assert raised.value.code() == code
    assert error_reason(raised.value)[0] == reason
    assert ADMIN_SECRET not in (raised.value.details() or "")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_bearer_scheme_is_case_insensitive(admin, credit, user_id, scheme):
    await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=4), metadata=WEBHOOK_METADATA
    )
    metadata = (("authorization", f"{scheme} {ADMIN_SECRET}"),)

    page = await admin.ListTransactions(
        pb.ListTransactionsRequest(user_id=user_id), metadata=metadata
    )

    assert [(t.user_id, t.amount) for t in page.transactions] == [(user_id, 4)]


async def test_list_users_shows_balances_counts_and_spending(admin, credit, token, user_id):
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=5))
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))

    page = await admin.ListUsers(pb.ListUsersRequest(page_size=1), metadata=ADMIN_METADATA)

    [user] = page.users
    assert user.user_id == user_id  # the newest user comes first
    assert (user.balance, user.transaction_count, user.total_spent) == (3, 3, 2)
    assert user.last_activity_time.ToDatetime() >= user.create_time.ToDatetime()
    assert page.next_page_token


async def test_list_users_pages_through_every_user_once(admin, credit):
    made = {new_user_id("pager") for _ in range(7)}
    for user_id in made:
        await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id))

    seen: list[str] = []
    page_token = ""
    while True:
        page = await admin.ListUsers(
            pb.ListUsersRequest(page_size=3, page_token=page_token), metadata=ADMIN_METADATA
        )
        seen += [user.user_id for user in page.users]
        page_token = page.next_page_token
        if not page_token:
            break

    assert len(seen) == len(set(seen))
    assert made <= set(seen)


async def every_user(admin) -> list[pb.User]:
    """Page through ListUsers to the end."""
    users: list[pb.User] = []
    page_token = ""
    while True:
        page = await admin.ListUsers(
            pb.ListUsersRequest(page_size=1000, page_token=page_token), metadata=ADMIN_METADATA
        )
        users += page.users
        page_token = page.next_page_token
        if not page_token:
            return users


async def every_transaction(admin) -> list[ledger_pb2.Transaction]:
    """Page through the admin ledger listing to the end, newest first."""
    rows: list[ledger_pb2.Transaction] = []
    page_token = ""
    while True:
        page = await admin.ListTransactions(
            pb.ListTransactionsRequest(page_size=100, page_token=page_token),
            metadata=ADMIN_METADATA,
        )
        rows += page.transactions
        page_token = page.next_page_token
        if not page_token:
            return rows


async def test_list_users_includes_users_without_ledger_entries(admin, credit, user_id):
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=0))

    mine = [u for u in await every_user(admin) if u.user_id == user_id]

    assert [(u.balance, u.transaction_count, u.total_spent) for u in mine] == [(0, 0, 0)]


async def test_list_transactions_shows_everyone_newest_first(admin, credit, user_id):
    other = user_id + "-b"
    await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=1), metadata=WEBHOOK_METADATA
    )
    await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=other, amount=2), metadata=WEBHOOK_METADATA
    )

    everyone = await every_transaction(admin)

    ours = [(t.user_id, t.amount) for t in everyone if t.user_id in (user_id, other)]
    assert ours == [(other, 2), (user_id, 1)]  # both users, the later first
    ids = [t.id for t in everyone]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)


async def test_list_transactions_filters_by_user(admin, credit, user_id):
    for amount in (1, 2):
        await credit.AddCredits(
            credit_pb.AddCreditsRequest(user_id=user_id, amount=amount), metadata=WEBHOOK_METADATA
        )
    await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id + "-z", amount=5), metadata=WEBHOOK_METADATA
    )

    page = await admin.ListTransactions(
        pb.ListTransactionsRequest(user_id=user_id), metadata=ADMIN_METADATA
    )

    assert [t.amount for t in page.transactions] == [2, 1]


async def test_list_transactions_returns_at_most_100(admin, credit, user_id):
    for _ in range(101):
        await credit.AddCredits(
            credit_pb.AddCreditsRequest(user_id=user_id, amount=1), metadata=WEBHOOK_METADATA
        )
    page = await admin.ListTransactions(
        pb.ListTransactionsRequest(user_id=user_id, page_size=5000), metadata=ADMIN_METADATA
    )
    rest = await admin.ListTransactions(
        pb.ListTransactionsRequest(user_id=user_id, page_token=page.next_page_token),
        metadata=ADMIN_METADATA,
    )

    assert len(page.transactions) == 100  # 5000 asked, the maximum given
    assert [len(rest.transactions), rest.next_page_token] == [1, ""]


@pytest.mark.parametrize("page_size", [-1, -100])
async def test_admin_lists_reject_negative_page_size(admin, page_size):
    for method, request in (
        (admin.ListUsers, pb.ListUsersRequest(page_size=page_size)),
        (admin.ListTransactions, pb.ListTransactionsRequest(page_size=page_size)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await method(request, metadata=ADMIN_METADATA)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_page_token_from_one_list_is_refused_by_another(admin, credit, user_id):
    for _ in range(2):
        await credit.CreateUser(credit_pb.CreateUserRequest(user_id=new_user_id()))
    users = await admin.ListUsers(pb.ListUsersRequest(page_size=1), metadata=ADMIN_METADATA)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.ListTransactions(
            pb.ListTransactionsRequest(page_token=users.next_page_token),
            metadata=ADMIN_METADATA,
        )
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": "page_token"})


async def test_one_request_id_in_each_scope_is_its_own_request_and_replays_itself(
    admin, credit, token, user_id
):
    request_id = new_request_id()

    async def every_kind() -> tuple[object, ...]:
        created = await credit.CreateUser(
            credit_pb.CreateUserRequest(user_id=user_id, initial_credits=3, request_id=request_id)
        )
        vended = await token.VendToken(
            token_pb.VendTokenRequest(user_id=user_id, request_id=request_id)
        )
        paid = await credit.AddCredits(
            credit_pb.AddCreditsRequest(user_id=user_id, amount=1, request_id=request_id),
            metadata=WEBHOOK_METADATA,
        )
        granted = await admin.AddCredits(
            pb.AddCreditsRequest(user_id=user_id, amount=1, request_id=request_id),
            metadata=ADMIN_METADATA,
        )
        other = await credit.CreateUser(
            credit_pb.CreateUserRequest(user_id=user_id + "-2", request_id=request_id)
        )
        return created.initial_balance, vended.token, paid.new_balance, granted.new_balance, other

    first = await every_kind()
    again = await every_kind()

    assert first == again
    assert first[0] == 3 and first[2:4] == (3, 4)
    balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == 4


async def test_the_audit_rpc_finds_the_shared_books_clean(admin, credit, token, user_id):
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=2))
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))

    report = await admin.AuditLedger(pb.AuditLedgerRequest(), metadata=ADMIN_METADATA)

    assert report.users_checked >= 1
    assert list(report.problems) == []
