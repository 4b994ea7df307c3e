"""Every error, DRF's and Django's included, is problem+json with a stable code."""

import pytest
from django.test import override_settings

from tests.helpers import assert_problem

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/api/v1/nothing-here", "/api/v2/flights", "/api/", "/api/v1/flights/1/nope"])
def test_unknown_api_url_is_problem_json(user_client, path, debug):
    with override_settings(DEBUG=debug):
        body = assert_problem(user_client.get(path), 404, "not_found")
    assert path in body["detail"]


def test_unsafe_method_to_an_unknown_api_url_with_a_session_is_404_not_csrf(user):
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert_problem(client.patch("/api/v1/flights/null,null/seats", {"seats": 1}, format="json"), 404, "not_found")


def test_unknown_url_outside_the_api_is_an_ordinary_page(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert "problem" not in response["Content-Type"]


def test_not_acceptable_is_problem_json(user_client, flight):
    response = user_client.get(f"/api/v1/flights/{flight.pk}", HTTP_ACCEPT="application/xml")
    assert_problem(response, 406, "not_acceptable")


def test_disallowed_host_under_api_is_problem_json(client):
    response = client.get("/api/v1/flights", HTTP_HOST="evil.example")
    assert_problem(response, 400, "bad_request")


def test_an_unexpected_error_is_a_logged_problem_500(user_client, monkeypatch, caplog):
    """A bug must still answer problem+json (and be logged), never an HTML page."""
    from flights import selectors

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(selectors, "flight_list", broken)
    body = assert_problem(user_client.get("/api/v1/flights"), 500, "internal_error")
    assert "boom" not in body["detail"]
    assert any("unhandled error" in record.message for record in caplog.records)


@pytest.mark.parametrize(
    "message, status, code, retry_after",
    [
        ("connection refused", 503, "service_unavailable", "5"),
        # SQLite's writer lock timing out means "busy, retry", not "down".
        ("database is locked", 409, "resource_busy", "1"),
    ],
)
def test_database_errors_invite_a_retry(user_client, monkeypatch, message, status, code, retry_after):
    from django.db import OperationalError

    from flights import selectors

    def fail():
        raise OperationalError(message)

    monkeypatch.setattr(selectors, "flight_list", fail)
    response = user_client.get("/api/v1/flights")
    assert_problem(response, status, code)
    assert response["Retry-After"] == retry_after


def test_a_503_is_logged_once_with_its_cause(user_client, monkeypatch, caplog):
    """Not a second time by django.request, at ERROR and without the cause."""
    import logging

    from django.db import OperationalError

    from flights import selectors

    def fail():
        raise OperationalError("connection refused")

    monkeypatch.setattr(selectors, "flight_list", fail)
    with caplog.at_level(logging.INFO):
        assert_problem(user_client.get("/api/v1/flights"), 503, "service_unavailable")

    errors = [(record.name, record.getMessage()) for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [("bookings_project.errors", "database unavailable: connection refused")]
