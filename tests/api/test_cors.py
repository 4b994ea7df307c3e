"""CORS (docs/api.md#cors): browser pages from `CORS_ALLOWED_ORIGINS` may call the API, with
their Token header and our own request headers; nobody else's, and never the admin.

django-cors-headers reads its settings on every request, so `override_settings` applies."""

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

ORIGIN = "https://app.example.com"
ALLOWED = override_settings(CORS_ALLOWED_ORIGINS=[ORIGIN, "http://localhost:3000"])


def _header_names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",")}


def _preflight(path: str, origin: str = ORIGIN, method: str = "POST"):
    """What a browser sends before a cross-origin POST with our headers: no credentials."""
    return APIClient().options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type,idempotency-key",
    )


@ALLOWED
@pytest.mark.parametrize("path", ["/api/v1/bookings", "/api/v1/payments", "/api/v1/auth/token"])
def test_a_preflight_from_an_allowed_origin_is_answered_without_a_token(path):
    response = _preflight(path)

    assert response.status_code == 200, response.content
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    assert {"authorization", "content-type", "idempotency-key"} <= _header_names(
        response["Access-Control-Allow-Headers"]
    )
    assert "post" in _header_names(response["Access-Control-Allow-Methods"])
    assert int(response["Access-Control-Max-Age"]) >= 600
    assert "Access-Control-Allow-Credentials" not in response
    assert "origin" in _header_names(response["Vary"])
    assert response["X-Request-ID"]  # Logged and traceable like every other answer.


@ALLOWED
def test_a_preflight_allows_every_header_our_clients_send_and_every_method():
    response = _preflight("/api/v1/bookings/1/cancel", method="PATCH")

    assert response.status_code == 200
    assert {
        "accept",
        "authorization",
        "content-type",
        "idempotency-key",
        "x-idempotency-key",
        "x-request-id",
    } <= _header_names(response["Access-Control-Allow-Headers"])
    assert {"get", "post", "patch", "delete"} <= _header_names(response["Access-Control-Allow-Methods"])


@ALLOWED
@override_settings(SECURE_SSL_REDIRECT=True)
def test_a_preflight_is_not_refused_by_our_own_middleware():
    """Over plain HTTP with the redirect on, the API refuses requests (403 https_required);
    a preflight carries no token to protect and is answered first. The refusal of the actual
    request then carries the CORS headers, so the page can read why."""
    assert _preflight("/api/v1/bookings").status_code == 200

    refused = APIClient().get("/api/v1/bookings", HTTP_ORIGIN=ORIGIN)
    assert refused.status_code == 403
    assert refused["Access-Control-Allow-Origin"] == ORIGIN


@ALLOWED
def test_an_actual_call_from_an_allowed_origin_may_read_our_headers(user_client):
    response = user_client.get("/api/v1/bookings", HTTP_ORIGIN=ORIGIN)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    exposed = _header_names(response["Access-Control-Expose-Headers"])
    assert {"location", "idempotent-replayed", "retry-after", "x-request-id"} <= exposed
    assert "Access-Control-Allow-Credentials" not in response


@ALLOWED
def test_an_error_carries_the_cors_headers_too(anon_client):
    """A 401 the page cannot read would look like a network failure to it."""
    response = anon_client.get("/api/v1/bookings", HTTP_ORIGIN=ORIGIN)

    assert response.status_code == 401
    assert response["Access-Control-Allow-Origin"] == ORIGIN


def test_the_cors_headers_are_the_ones_the_api_uses():
    """The settings name headers as literals (they may not import the apps): in step here."""
    from django.conf import settings

    from bookings_project import request_id
    from payments.apis import REPLAYED_HEADER

    exposed = _header_names(", ".join(settings.CORS_EXPOSE_HEADERS))
    assert {request_id.HEADER.lower(), REPLAYED_HEADER.lower(), "retry-after", "location"} <= exposed
    assert request_id.HEADER.lower() in settings.CORS_ALLOW_HEADERS  # Clients send their own too.


@ALLOWED
@pytest.mark.parametrize("origin", ["https://evil.example", "http://app.example.com", "https://app.example.com:8443"])
def test_another_origin_gets_no_access(user_client, origin):
    preflight = _preflight("/api/v1/bookings", origin=origin)
    actual = user_client.get("/api/v1/bookings", HTTP_ORIGIN=origin)

    for response in (preflight, actual):
        assert "Access-Control-Allow-Origin" not in response
        assert "Access-Control-Expose-Headers" not in response


def test_by_default_no_origin_is_allowed(user_client, settings):
    assert settings.CORS_ALLOWED_ORIGINS == []
    assert not getattr(settings, "CORS_ALLOW_ALL_ORIGINS", False)

    preflight = _preflight("/api/v1/bookings")
    actual = user_client.get("/api/v1/bookings", HTTP_ORIGIN=ORIGIN)

    assert "Access-Control-Allow-Origin" not in preflight
    assert "Access-Control-Allow-Origin" not in actual
    assert actual.status_code == 200  # Same-origin and non-browser clients are unaffected.


@ALLOWED
@pytest.mark.parametrize("path", ["/admin/", "/admin/login/", "/healthz"])
def test_pages_outside_the_api_get_no_cors_headers(path):
    preflight = _preflight(path)
    actual = APIClient().get(path, HTTP_ORIGIN=ORIGIN)

    for response in (preflight, actual):
        assert not [name for name in response.headers if name.lower().startswith("access-control-")], path
