"""What an attacker sends to every endpoint: bodies nested past the decoder's recursion,
bodies over the size limit, NUL characters in the URL. Each is a 4xx problem with a stable
code, never a 500, and nothing is written (issue: hardening)."""

from __future__ import annotations

import logging

import pytest
from django.conf import settings
from drf_spectacular.generators import SchemaGenerator

from bookings.models import Booking
from bookings_project.parsers import MAX_JSON_DEPTH
from tests.helpers import assert_problem

pytestmark = pytest.mark.django_db

NESTED_PAST_RECURSION = "[" * 1000 + "]" * 1000


def nested(levels: int) -> str:
    """A body whose `flightId` is an array nested `levels` deep (the body itself one more)."""
    return '{"flightId": ' + "[" * levels + "]" * levels + ', "numberOfSeats": 1}'


# Stripe's webhook reads its body only once the signature over it verifies: whatever it holds,
# an unsigned one is a 400 `webhook_signature_invalid` (tests/payments/test_stripe_webhook.py).
SIGNED_BODIES = {("POST", "/api/v1/payments/stripe/webhook")}


def body_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation the API documents with a request body, whose body it parses."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation and (method.upper(), path) not in SIGNED_BODIES
    )


@pytest.fixture
def no_error_logged(caplog):
    with caplog.at_level(logging.WARNING):
        yield
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]


def send(client, method: str, path: str, body: str, flight_id: int):
    url = path.replace("{id}", str(flight_id))
    # A key, so that a payment gets as far as reading its body.
    return client.generic(method, url, body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="hostile-1")


# 1. Nesting ---------------------------------------------------------------------------------


def test_every_operation_with_a_body_is_covered():
    """The next test walks the schema: it must find the endpoints an attacker found."""
    operations = body_operations()
    for expected in [("POST", "/api/v1/auth/token"), ("POST", "/api/v1/bookings"), ("POST", "/api/v1/payments")]:
        assert expected in operations


@pytest.mark.parametrize(("method", "path"), body_operations())
def test_a_body_nested_past_the_recursion_limit_is_a_400_on_every_endpoint(
    staff_client, flight, method, path, no_error_logged
):
    response = send(staff_client, method, path, NESTED_PAST_RECURSION, flight.pk)

    assert_problem(response, 400, "validation_error")
    assert not Booking.objects.exists()


def test_the_token_endpoint_refuses_it_anonymously(anon_client, no_error_logged):
    response = anon_client.generic("POST", "/api/v1/auth/token", NESTED_PAST_RECURSION, content_type="application/json")

    body = assert_problem(response, 400, "validation_error")
    assert f"deeper than {MAX_JSON_DEPTH} levels" in body["detail"]


def test_a_body_nested_just_under_the_recursion_limit_is_refused_too(user_client, flight, no_error_logged):
    # It would parse, then break whatever walks it next (a serializer, the key's fingerprint).
    response = user_client.generic("POST", "/api/v1/bookings", nested(990), content_type="application/json")

    assert_problem(response, 400, "validation_error")


def test_the_depth_bound_is_exact(user_client, flight):
    """At the bound a body is read as usual (here refused for its field), one deeper is not."""
    at_bound = user_client.generic(
        "POST", "/api/v1/bookings", nested(MAX_JSON_DEPTH - 1), content_type="application/json"
    )
    past = user_client.generic("POST", "/api/v1/bookings", nested(MAX_JSON_DEPTH), content_type="application/json")

    at_bound_body = assert_problem(at_bound, 400, "validation_error")
    assert [error["field"] for error in at_bound_body["errors"]] == ["flightId"]
    past_body = assert_problem(past, 400, "validation_error")
    assert [error["field"] for error in past_body["errors"]] == [None]


# 2. Size ------------------------------------------------------------------------------------


def oversized() -> str:
    padding = "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return '{"flightId": 1, "numberOfSeats": 1, "padding": "' + padding + '"}'


@pytest.mark.parametrize(("method", "path"), body_operations())
def test_a_body_over_the_limit_is_a_413_on_every_endpoint(staff_client, flight, method, path, no_error_logged):
    response = send(staff_client, method, path, oversized(), flight.pk)

    body = assert_problem(response, 413, "payload_too_large")
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in body["detail"]
    assert not Booking.objects.exists()


def test_a_body_at_the_limit_is_read(user_client, flight):
    body = '{"flightId": ' + str(flight.pk) + ', "numberOfSeats": 1, "padding": "'
    body += "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE - len(body) - 2) + '"}'
    assert len(body) == settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    response = user_client.generic("POST", "/api/v1/bookings", body, content_type="application/json")

    assert response.status_code == 201, response.content


def test_the_proxy_refuses_the_same_size(settings):
    """nginx in front answers the larger body itself: it must draw the line where the app does."""
    conf = (settings.BASE_DIR / "deploy" / "nginx.conf").read_text()
    assert f"client_max_body_size {settings.DATA_UPLOAD_MAX_MEMORY_SIZE};" in conf
    assert f"larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes" in conf


# 7. NUL in the URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/bookings?status=%00",
        "/api/v1/flights?departureAirport=DEL%00",
        "/api/v1/bookings/1%00",
        "/api/v1/payments/%00",
    ],
)
def test_a_nul_in_an_api_url_is_a_400_problem(user_client, url, no_error_logged):
    assert_problem(user_client.get(url), 400, "bad_request")


@pytest.mark.parametrize(
    "url",
    [
        "/admin/bookings/booking/?status__exact=%00",
        "/admin/bookings/booking/?q=%00",
        "/admin/payments/payment/?status__exact=abc%00def",
        "/admin/flights/flight/%00/change/",
    ],
)
def test_a_nul_in_an_admin_url_is_a_400_page(staff_user, client, url, no_error_logged):
    client.force_login(staff_user)

    response = client.get(url)

    assert response.status_code == 400
    assert "problem" not in response["Content-Type"]


# Plain HTTP --------------------------------------------------------------------------------


@pytest.fixture
def https_enforced(settings):
    settings.SECURE_SSL_REDIRECT = True


def test_an_api_request_over_plain_http_is_refused_not_redirected(user_client, flight, https_enforced):
    response = user_client.get(f"/api/v1/flights/{flight.pk}")

    assert_problem(response, 403, "https_required")
    assert "Location" not in response


def test_over_https_the_api_answers(user_client, flight, https_enforced):
    assert user_client.get(f"/api/v1/flights/{flight.pk}", secure=True).status_code == 200


@pytest.mark.parametrize(("path", "status"), [("/admin/", 301), ("/api/docs/", 301), ("/healthz", 200)])
def test_pages_are_still_redirected_and_probes_answered(client, https_enforced, path, status):
    response = client.get(path)

    assert response.status_code == status
    if status == 301:
        assert response["Location"].startswith("https://")
