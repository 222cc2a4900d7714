"""One table: every domain error and the gRPC status it is reported with."""

from __future__ import annotations

import grpc
import pytest

from pluct_server.api.grpc.status import grpc_code
from pluct_server.domain import errors

EXPECTED = [
    (errors.InvalidArgument("user_id", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.RequestIdReused(), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.MalformedCredentials("bad header"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated("Unauthorized"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.AlreadyExists("User already exists"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.PaymentEventReused(), grpc.StatusCode.ALREADY_EXISTS),
    (errors.InsufficientCredits(), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable(), grpc.StatusCode.UNAVAILABLE),
    (errors.UserBusy(), grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied("key lacks admin"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.RateLimited(3), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.TooManyAtOnce(), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Overloaded(), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RequestTimeout(10), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.NotFound("no such key"), grpc.StatusCode.NOT_FOUND),
    (errors.FeatureNotFound("export"), grpc.StatusCode.NOT_FOUND),
    (errors.WebhookEndpointNotFound("7"), grpc.StatusCode.NOT_FOUND),
    (errors.NotASpend(7), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RefundExceedsSpend(7), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ReplayedTokenExpired(), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.OutcomeUnknown(), grpc.StatusCode.ABORTED),
    (errors.OutcomeUnknownAfterTimeout(), grpc.StatusCode.DEADLINE_EXCEEDED),
]


def all_error_classes(root: type[errors.DomainError]) -> set[type[errors.DomainError]]:
    found = set()
    for sub in root.__subclasses__():
        found |= {sub, *all_error_classes(sub)}
    return found


@pytest.mark.parametrize(("error", "code"), EXPECTED, ids=lambda v: type(v).__name__)
def test_domain_error_maps_to_its_status(error, code):
    assert grpc_code(error) == code
    assert error.reason and error.reason.isupper()


def test_the_table_covers_every_domain_error():
    assert {type(error) for error, _ in EXPECTED} == all_error_classes(errors.DomainError)


def test_no_domain_error_is_internal():
    assert all(code != grpc.StatusCode.INTERNAL for _, code in EXPECTED)
