"""One table: every domain error, the HTTP status and legacy message the shim answers it with."""

from __future__ import annotations

import grpc
import pytest

from pluct_server.api.http.legacy import LEGACY
from pluct_server.api.http.problems import CallError, to_problem
from pluct_server.api.http.status import HTTP_STATUS
from pluct_server.domain import errors

EXPECTED = [
    (errors.InvalidArgument("user_id", "bad"), 400, "Valid user ID is required"),
    (errors.InvalidArgument("amount", "bad"), 400, "Valid amount between 1 and 10000 is required"),
    (errors.InvalidArgument("token", "bad"), 400, "Valid token is required"),
    (errors.InvalidArgument("reason", "reason is too long"), 400, "reason is too long"),
    (errors.RequestIdReused(), 400, None),
    (errors.MalformedCredentials("authorization must be 'Bearer <token>'"), 400, None),
    (errors.Unauthenticated("Unauthorized", reason="MISSING_CREDENTIALS"), 401, "Unauthorized"),
    (errors.Unauthenticated("Unauthorized", reason="BAD_CREDENTIALS"), 401, "Unauthorized"),
    (errors.Unauthenticated("needs admin", reason="ADMIN_TOKEN_REQUIRED"), 401, "needs admin"),
    (errors.AlreadyExists("User already exists"), 409, "User already exists"),
    (errors.PaymentEventReused(), 409, "Payment event already used"),
    (errors.InsufficientCredits(), 403, "Insufficient credits"),
    (errors.Unavailable(), 503, None),
    (errors.UserBusy(), 503, None),
    (errors.PermissionDenied("this API key lacks the 'admin' scope"), 403, None),
    (errors.RateLimited(3), 429, "Too many requests"),
    (errors.TooManyAtOnce(), 429, "Too many requests"),
    (errors.Overloaded(), 429, "Too many requests"),
    (errors.RequestTimeout(10), 408, None),
    (errors.NotFound("no API key has id 0123"), 404, None),
    (errors.FeatureNotFound("export"), 404, None),
    (errors.WebhookEndpointNotFound("7"), 404, None),
    (errors.NotASpend(7), 409, None),
    (errors.RefundExceedsSpend(7), 409, None),
    (errors.ReplayedTokenExpired(), 400, None),
    (errors.OutcomeUnknown(), 503, None),
    (errors.OutcomeUnknownAfterTimeout(), 503, None),
]


def all_error_classes(root: type[errors.DomainError]) -> set[type[errors.DomainError]]:
    found = set()
    for sub in root.__subclasses__():
        found |= {sub, *all_error_classes(sub)}
    return found


@pytest.mark.parametrize(("error", "status", "message"), EXPECTED, ids=lambda v: repr(v)[:40])
def test_domain_error_maps_to_its_http_status_and_legacy_message(error, status, message):
    problem = to_problem(CallError.from_domain(error), LEGACY)

    assert problem.status == status
    assert problem.body()["code"] == status
    assert problem.body()["reason"] == error.reason
    assert problem.message == (message if message is not None else error.message)


def test_the_table_covers_every_domain_error():
    assert {type(error) for error, _, _ in EXPECTED} == all_error_classes(errors.DomainError)


def test_every_grpc_code_has_an_http_status():
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.OK] == 200
    assert all(status >= 400 for code, status in HTTP_STATUS.items() if code != grpc.StatusCode.OK)


def test_insufficient_credits_is_the_one_failed_precondition_that_is_403():
    other = CallError(grpc.StatusCode.FAILED_PRECONDITION, "something else", "OTHER")
    assert to_problem(other, LEGACY).status == 400


def test_admin_401s_challenge_with_bearer():
    missing = errors.Unauthenticated("Unauthorized", reason="MISSING_CREDENTIALS")
    admin = to_problem(CallError.from_domain(missing), LEGACY, bearer_route=True)
    webhook = to_problem(CallError.from_domain(missing), LEGACY, bearer_route=False)

    assert admin.headers == {"WWW-Authenticate": "Bearer"}
    assert webhook.headers == {}


def test_a_refusal_by_a_limit_says_when_to_retry():
    problem = to_problem(CallError.from_domain(errors.RateLimited(7)), LEGACY)

    assert (problem.status, problem.message) == (429, "Too many requests")
    assert problem.headers == {"Retry-After": "7"}
