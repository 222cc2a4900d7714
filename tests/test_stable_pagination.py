"""Listings page stably while writes go on, and a follower of the ledger never skips an entry."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import ledger_pb2
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_server.store.ledger_store import _CREDIT
from tests.http_support import ADMIN_HEADERS, call
from tests.support import ADMIN_METADATA, WEBHOOK_METADATA, error_reason, new_user_id

OLDEST_FIRST = admin_pb.TRANSACTION_ORDER_OLDEST_FIRST
FOLLOW_PAGE = 100  # the most an admin ledger page holds
# How many writes the background writer makes at most, so that a long scan does not flood.
WRITES = 60


class Writer:
    """A background task that keeps writing, and lets a reader wait for writes in between."""

    def __init__(self, write: Callable[[int], Awaitable[object]], total: int) -> None:
        self._write = write
        self._total = total
        self.done = 0
        self._stopped = False
        self._progress = asyncio.Condition()

    async def run(self) -> None:
        """Write `total` times, one write after another, each committed before the next."""
        try:
            for n in range(self._total):
                await self._write(n)
                async with self._progress:
                    self.done += 1
                    self._progress.notify_all()
        finally:
            async with self._progress:
                self._stopped = True
                self._progress.notify_all()

    async def wait_for_more(self) -> None:
        """Wait until one more write has committed (unless the writer is done or failed)."""
        async with self._progress:
            target = self.done + 1
            await self._progress.wait_for(lambda: self.done >= target or self._stopped)

    @property
    def running(self) -> bool:
        """Tell whether writes are still going on."""
        return not self._stopped


@contextlib.asynccontextmanager
async def writing(
    write: Callable[[int], Awaitable[object]], total: int = WRITES
) -> AsyncIterator[Writer]:
    """Run `write(0)`, `write(1)`, ... in a background task for the duration of the block."""
    writer = Writer(write, total)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a write that failed fails the test here


async def touch(credit: Any, user_id: str) -> None:
    """Credit one credit: the user's activity moves and its ledger grows by one entry."""
    await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=1), metadata=WEBHOOK_METADATA
    )


def repeated(items: Iterable[Any]) -> list[Any]:
    """Return what occurs more than once."""
    return [item for item, count in Counter(items).items() if count > 1]


# ---- ListUsers ---------------------------------------------------------------------------------


async def scan_users(
    admin: Any, page_size: int, between_pages: Callable[[], Awaitable[None]]
) -> list[str]:
    """Page through ListUsers to the end in its default order; return every user id seen."""
    seen: list[str] = []
    page_token = ""
    while True:
        page = await admin.ListUsers(
            admin_pb.ListUsersRequest(page_size=page_size, page_token=page_token),
            metadata=ADMIN_METADATA,
        )
        seen += [user.user_id for user in page.users]
        page_token = page.next_page_token
        if not page_token:
            return seen
        await between_pages()


async def test_a_user_scan_sees_every_user_once_while_activity_moves_and_users_sign_up(
    admin, credit
):
    users = [new_user_id("scan") for _ in range(24)]
    for user in users:
        await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user, initial_credits=1))

    async def write(n: int) -> None:
        if n % 2:
            await credit.CreateUser(credit_pb.CreateUserRequest(user_id=new_user_id("signup")))
        else:
            # The first made are the least recently active: a scan by activity has not reached
            # them yet, and moving them to the front is how it skipped them.
            await touch(credit, users[n // 2 % len(users)])

    async with writing(write) as writer:
        seen = await scan_users(admin, 6, writer.wait_for_more)
        assert writer.done > 0

    assert repeated(seen) == []
    assert {user: seen.count(user) for user in users} == dict.fromkeys(users, 1)


def old_users_token() -> str:
    """A ListUsers page token as the server made them when it paged by last activity."""
    payload = {"l": "users", "s": None, "p": ["2024-01-01T00:00:00+00:00", "someone"]}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


async def test_a_page_token_from_the_activity_paging_is_refused_clearly(admin, http):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.ListUsers(
            admin_pb.ListUsersRequest(page_token=old_users_token()), metadata=ADMIN_METADATA
        )
    reply = await call(
        http,
        "GET",
        f"/admin/users?order=USER_ORDER_NEWEST_FIRST&page_token={old_users_token()}",
        headers=ADMIN_HEADERS,
    )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": "page_token"})
    assert "start again" in (raised.value.details() or "")
    assert (reply.status, reply.body["reason"], reply.body["field"]) == (
        400,
        "INVALID_ARGUMENT",
        "pageToken",
    )


async def test_activity_order_comes_whole_in_one_response_most_recently_active_first(
    admin, credit, db
):
    first, second = new_user_id("active"), new_user_id("active")
    for user in (first, second, first):
        await touch(credit, user)

    top = await admin.ListUsers(
        admin_pb.ListUsersRequest(order=admin_pb.USER_ORDER_RECENT_ACTIVITY, page_size=2),
        metadata=ADMIN_METADATA,
    )
    everyone = await admin.ListUsers(
        admin_pb.ListUsersRequest(order=admin_pb.USER_ORDER_RECENT_ACTIVITY),
        metadata=ADMIN_METADATA,
    )

    assert [user.user_id for user in top.users] == [first, second]
    assert top.next_page_token == everyone.next_page_token == ""
    assert len(everyone.users) == await db.fetchval("SELECT count(*) FROM users")
    activity = [user.last_activity_time.ToDatetime() for user in everyone.users]
    assert activity == sorted(activity, reverse=True)


ACTIVITY = admin_pb.USER_ORDER_RECENT_ACTIVITY
REFUSED_LISTINGS = {
    "activity-has-no-pages": (
        admin_pb.ListUsersRequest(order=ACTIVITY, page_token="x"),
        "page_token",
    ),
    "activity-negative-size": (
        admin_pb.ListUsersRequest(order=ACTIVITY, page_size=-1),
        "page_size",
    ),
    "unknown-user-order": (admin_pb.ListUsersRequest(order=99), "order"),
    "unknown-ledger-order": (admin_pb.ListTransactionsRequest(order=99), "order"),
    "follow-negative-size": (
        admin_pb.ListTransactionsRequest(order=OLDEST_FIRST, page_size=-1),
        "page_size",
    ),
}


@pytest.mark.parametrize("case", REFUSED_LISTINGS)
async def test_listings_refuse_what_they_cannot_honour(admin, case):
    request, field = REFUSED_LISTINGS[case]
    method = (
        admin.ListUsers
        if isinstance(request, admin_pb.ListUsersRequest)
        else admin.ListTransactions
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(request, metadata=ADMIN_METADATA)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": field})


# More users than the shim once asked for per page when it stitched /admin/users from pages.
SEEDED_USERS = 1100


@pytest.fixture(scope="module")
async def seeded_users(db) -> list[str]:
    """Users created long ago and idle since, oldest activity first, at the end of the listing.

    Made in one statement: 1100 sign-ups through the API would only make the test slower.
    """
    prefix = new_user_id("idle")
    users = [f"{prefix}-{rank:04d}" for rank in range(SEEDED_USERS)]
    await db.execute(
        """
        INSERT INTO users (user_id, created_at, last_activity_at)
        SELECT user_id, moment, moment
          FROM unnest($1::text[]) WITH ORDINALITY AS seeded (user_id, rank),
               LATERAL (SELECT timestamptz '2001-01-01 00:00:00Z'
                               + rank * interval '1 second' AS moment) AS at
        """,
        users,
    )
    return users


async def test_legacy_admin_users_lists_everyone_once_in_activity_order_while_writes_go_on(
    http, credit, seeded_users
):
    async def write(n: int) -> None:
        # The least recently active move to the front: a listing stitched from pages skipped
        # those that moved between its pages.
        await touch(credit, seeded_users[n])

    listings = []
    async with writing(write, total=len(seeded_users)) as writer:
        for _ in range(10):
            reply = await call(http, "GET", "/admin/users", headers=ADMIN_HEADERS)
            assert reply.status == 200
            listings.append(reply.body)
            await writer.wait_for_more()

    rank = {user: index for index, user in enumerate(seeded_users)}
    for rows in listings:
        listed = [row["user_id"] for row in rows]
        assert repeated(listed) == []
        seeded = [row for row in rows if row["user_id"] in rank]
        assert sorted(row["user_id"] for row in seeded) == seeded_users
        # One moment's activity order: the ones touched so far (in rank order, each after the
        # last), newest first, then the idle ones, most recently active first.
        touched = [row["user_id"] for row in seeded if row["transaction_count"]]
        idle = [row["user_id"] for row in seeded if not row["transaction_count"]]
        assert [row["user_id"] for row in seeded] == touched + idle
        assert touched == sorted(touched, key=rank.__getitem__, reverse=True)
        assert idle == sorted(idle, key=rank.__getitem__, reverse=True)


# ---- Ledger listings, newest first -------------------------------------------------------------


async def test_a_users_ledger_scan_sees_every_entry_once_while_the_user_keeps_buying(
    credit, user_id
):
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=1))
    for _ in range(14):
        await touch(credit, user_id)
    before = await credit.ListTransactions(
        credit_pb.ListTransactionsRequest(user_id=user_id, page_size=100)
    )

    seen: list[int] = []
    async with writing(lambda n: touch(credit, user_id), total=20) as writer:
        page_token = ""
        while True:
            page = await credit.ListTransactions(
                credit_pb.ListTransactionsRequest(
                    user_id=user_id, page_size=3, page_token=page_token
                )
            )
            seen += [entry.id for entry in page.transactions]
            page_token = page.next_page_token
            if not page_token:
                break
            await writer.wait_for_more()

    assert repeated(seen) == []
    assert {entry.id for entry in before.transactions} <= set(seen)


async def test_an_admin_ledger_scan_sees_every_entry_once_while_writes_go_on(admin, credit):
    users = [new_user_id("ledger") for _ in range(3)]
    for n in range(15):
        await touch(credit, users[n % 3])
    mine = await own_entries(admin, users)

    seen: list[int] = []
    async with writing(lambda n: touch(credit, users[n % 3]), total=20) as writer:
        page_token = ""
        # Newest first: once past the oldest of ours, every one of ours has come by.
        while not seen or seen[-1] > min(mine):
            page = await admin.ListTransactions(
                admin_pb.ListTransactionsRequest(page_size=3, page_token=page_token),
                metadata=ADMIN_METADATA,
            )
            seen += [entry.id for entry in page.transactions]
            page_token = page.next_page_token
            await writer.wait_for_more()

    assert repeated(seen) == []
    assert set(mine) <= set(seen)


async def own_entries(admin: Any, users: Iterable[str]) -> list[int]:
    """Return the ids of every entry of these users (fewer than a page each)."""
    ids: list[int] = []
    for user in users:
        page = await admin.ListTransactions(
            admin_pb.ListTransactionsRequest(user_id=user, page_size=100), metadata=ADMIN_METADATA
        )
        assert not page.next_page_token
        ids += [entry.id for entry in page.transactions]
    return ids


# ---- Following the ledger, oldest first --------------------------------------------------------


class Follower:
    """A consumer of the admin ledger listing, oldest first, that keeps its place."""

    def __init__(self, admin: Any, user_id: str | None = None) -> None:
        self._admin = admin
        self._user_id = user_id
        self.page_token = ""

    async def page(self, page_size: int = FOLLOW_PAGE) -> list[ledger_pb2.Transaction]:
        """Read the next page and keep its token."""
        request = admin_pb.ListTransactionsRequest(
            order=OLDEST_FIRST, page_size=page_size, page_token=self.page_token
        )
        if self._user_id is not None:
            request.user_id = self._user_id
        page = await self._admin.ListTransactions(request, metadata=ADMIN_METADATA)
        assert page.next_page_token  # the ledger grows: there is always a place to resume
        self.page_token = page.next_page_token
        return list(page.transactions)

    async def catch_up(self) -> list[ledger_pb2.Transaction]:
        """Read pages until one is short: everything settled so far has come by."""
        seen: list[ledger_pb2.Transaction] = []
        while True:
            page = await self.page()
            seen += page
            if len(page) < FOLLOW_PAGE:
                return seen

    async def until(self, wanted: set[int]) -> list[ledger_pb2.Transaction]:
        """Catch up again and again until every wanted entry has come by.

        An entry is listed once every transaction older than its own has finished, which the
        server's own short transactions may delay for a moment; this waits for that, bounded.
        """
        seen: list[ledger_pb2.Transaction] = []
        for _ in range(200):
            seen += await self.catch_up()
            if wanted <= {entry.id for entry in seen}:
                return seen
            await asyncio.sleep(0.02)
        raise AssertionError(f"never listed: {wanted - {entry.id for entry in seen}}")


@pytest.fixture(scope="module")
async def follower(admin) -> Follower:
    """One follower for the module: each test catches up from where the last one stopped."""
    return Follower(admin)


async def credit_in_open_transaction(conn: asyncpg.Connection, user_id: str) -> int:
    """Credit `user_id` through the server's own statement inside `conn`'s open transaction."""
    # pluct_credit's arguments: user, amount, type, reason, actor, the grant's category,
    # priority, source and expiry, then no request id (and so no key).
    await conn.fetchrow(
        _CREDIT,
        user_id,
        1,
        "admin_add",
        "held open",
        "tests",
        "promotional",
        50,
        "admin",
        None,
        None,
        False,
        None,
        None,
        None,
        None,
    )
    entry_id: int = await conn.fetchval("SELECT max(id) FROM ledger WHERE user_id = $1", user_id)
    return entry_id


@contextlib.asynccontextmanager
async def open_transaction(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that the test commits when it chooses."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("BEGIN")
        yield conn
    finally:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        await conn.close()


async def test_a_follower_does_not_skip_an_entry_that_commits_after_a_later_numbered_one(
    follower, admin, credit, serving_dsn
):
    held, later = new_user_id("held"), new_user_id("later")
    await follower.catch_up()

    async with open_transaction(serving_dsn) as conn:
        held_id = await credit_in_open_transaction(conn, held)
        await touch(credit, later)  # commits at once, with a larger id
        [later_id] = await own_entries(admin, [later])
        assert held_id < later_id
        while_open = await follower.catch_up()
        await conn.execute("COMMIT")
    after_commit = await follower.until({held_id, later_id} - {entry.id for entry in while_open})

    # Listing the later entry while the held one was still open would have moved the follower
    # past the held one's id for good.
    assert later_id not in {entry.id for entry in while_open}
    seen = [entry.id for entry in while_open + after_commit]
    assert seen.count(held_id) == seen.count(later_id) == 1
    assert seen.index(held_id) < seen.index(later_id)
    assert repeated(seen) == []


async def test_a_follower_does_not_skip_a_lower_id_that_a_younger_transaction_commits_late(
    follower, serving_dsn
):
    older_user, younger_user = new_user_id("older"), new_user_id("younger")
    await follower.catch_up()

    async with open_transaction(serving_dsn) as older, open_transaction(serving_dsn) as younger:
        # The older transaction takes its id first, then the younger one writes (a lower ledger
        # id) and stays open while the older one writes a higher id and commits.
        await older.fetchval("SELECT pg_current_xact_id()")
        low_id = await credit_in_open_transaction(younger, younger_user)
        high_id = await credit_in_open_transaction(older, older_user)
        await older.execute("COMMIT")
        assert low_id < high_id
        while_open = await follower.until({high_id})
        await younger.execute("COMMIT")
    after_commit = await follower.until({low_id} - {entry.id for entry in while_open})

    # By id alone, the follower would stand past low_id once it had read high_id.
    assert low_id not in {entry.id for entry in while_open}
    seen = [entry.id for entry in while_open + after_commit]
    assert seen.count(low_id) == seen.count(high_id) == 1
    assert repeated(seen) == []


async def test_following_the_ledger_sees_every_entry_once_while_writes_go_on(
    follower, admin, credit
):
    users = [new_user_id("follow") for _ in range(3)]
    for n in range(9):
        await touch(credit, users[n % 3])
    seen = await follower.catch_up()

    async with writing(lambda n: touch(credit, users[n % 3]), total=30) as writer:
        while True:
            page = await follower.page(page_size=3)
            seen += page
            if not writer.running and len(page) < 3:
                break
            await writer.wait_for_more()
    written = set(await own_entries(admin, users))
    seen += await follower.until(written - {entry.id for entry in seen})

    ids = [entry.id for entry in seen]
    assert repeated(ids) == []
    assert {entry.id for entry in seen if entry.user_id in users} == written
    assert len(written) == 9 + 30


async def test_following_one_users_ledger_lists_only_theirs_oldest_first(admin, credit, user_id):
    for _ in range(5):
        await touch(credit, user_id)
        await touch(credit, user_id + "-other")

    entries = await Follower(admin, user_id).until(set(await own_entries(admin, [user_id])))

    assert {entry.user_id for entry in entries} == {user_id}
    assert [entry.balance_after for entry in entries] == [1, 2, 3, 4, 5]


async def test_a_vend_records_its_transaction_in_the_ledger_with_no_change_to_the_spend(
    credit, token, db, user_id
):
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=2))
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))

    rows = await db.fetch("SELECT type, xid FROM ledger WHERE user_id = $1 ORDER BY id", user_id)

    assert [row["type"] for row in rows] == ["user_creation", "spend"]
    assert all(row["xid"] > 0 for row in rows)
    assert rows[0]["xid"] != rows[1]["xid"]  # each its own transaction
