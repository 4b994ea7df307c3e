"""Rate limits (bookings_project/throttling.py): 429 problem+json `throttled` with Retry-After.

- `POST /auth/token` per client IP (REMOTE_ADDR, or the address `NUM_PROXIES` trusted proxies
  put last in X-Forwarded-For); every bookings endpoint per user; every payments endpoint per
  user, counted apart from bookings. Flights endpoints and the probes are never limited.
- Rates come from `THROTTLE_RATES`, read on every request; an empty rate is no limit. A bad
  `THROTTLE_RATE_*` refuses to start.

The suite's settings switch every limit off, so each test sets its own rates. The window is
moved with a fake clock on DRF's throttle (`SimpleRateThrottle.timer`), never by sleeping,
and the cache the counts live in is emptied around every test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.cache import cache
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from bookings.models import Booking
from payments.models import IdempotencyKey, Payment, SimulatedCharge
from tests.factories import make_flight
from tests.helpers import SERVICE_TOKEN, assert_problem
from tests.support.api import post_booking, post_payment
from tests.support.processes import ROOT, SETTINGS_KEYS, settings_free_environ

pytestmark = pytest.mark.django_db

TOKEN_URL = "/api/v1/auth/token"
WINDOW = 60  # Seconds: every rate in these tests is per minute.
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
NO_LIMITS = {"token": "", "bookings": "", "payments": ""}


class ThrottleClock:
    """Stands in for `time.time` in DRF's throttles. An instance (not a function) so that it
    is not bound as a method when read from the class as `self.timer`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def throttle_clock(monkeypatch) -> ThrottleClock:
    clock = ThrottleClock(1_000_000.0)
    monkeypatch.setattr(SimpleRateThrottle, "timer", clock)
    return clock


@pytest.fixture
def rates(settings):
    """`rates(bookings="5/min")`: these limits, every other one off."""

    def apply(**scopes: str) -> None:
        settings.THROTTLE_RATES = NO_LIMITS | scopes

    return apply


@pytest.fixture
def num_proxies(settings):
    def apply(count: int) -> None:
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": count}

    return apply


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def assert_throttled(response, retry_after: int) -> dict:
    body = assert_problem(response, 429, "throttled")
    assert set(body) == PROBLEM_FIELDS
    assert body["title"] == "Too many requests"
    assert body["type"] == "https://flight-bookings.example/problems/throttled"
    assert response["Retry-After"] == str(retry_after)
    assert 1 <= int(response["Retry-After"]) <= WINDOW
    return body


def login(client, username="alice", password="alice-password", **extra):
    return client.post(TOKEN_URL, {"username": username, "password": password}, format="json", **extra)


# 1. The token endpoint, per client IP ----------------------------------------------------------


def test_the_fourth_login_in_a_minute_is_429_even_with_the_right_password(user, rates, throttle_clock):
    rates(token="3/min")
    client = APIClient()

    # Failed guesses count too: that is what the limit is for.
    for _ in range(3):
        assert_problem(login(client, password="guess"), 401, "not_authenticated")
    throttled = login(client)

    assert_throttled(throttled, retry_after=WINDOW)
    assert not Token.objects.filter(user=user).exists()


def test_retry_after_counts_down_from_the_oldest_request_and_the_window_slides(user, rates, throttle_clock):
    rates(token="3/min")
    client = APIClient()
    for offset in (0, 10, 10.5):  # Requests at t, t+10, t+20.5.
        throttle_clock.advance(offset)
        assert login(client).status_code == 200

    throttle_clock.advance(10)  # t+30.5: the oldest leaves the window in 29.5 s.
    assert_throttled(login(client), retry_after=30)
    throttle_clock.advance(29.4)  # t+59.9: 0.1 s left, rounded up.
    assert_throttled(login(client), retry_after=1)

    throttle_clock.advance(0.1)  # t+60: the first request has left the window, one slot is free.
    assert login(client).status_code == 200
    # Full again: now the request at t+10 is the oldest, 10 s from leaving.
    assert_throttled(login(client), retry_after=10)


def test_revoking_a_token_counts_towards_the_same_limit(user, rates, throttle_clock):
    """DELETE (log out) shares the token endpoint's count; a refused one (401) is not counted."""
    rates(token="2/min")
    client = APIClient()
    assert_problem(client.delete(TOKEN_URL), 401, "not_authenticated")
    client.credentials(HTTP_AUTHORIZATION=f"Token {login(client).json()['token']}")

    assert client.delete(TOKEN_URL).status_code == 204

    assert_throttled(login(client), retry_after=WINDOW)


def test_each_client_ip_has_its_own_count(user, rates, throttle_clock):
    rates(token="2/min")
    client = APIClient()
    for _ in range(2):
        assert login(client, REMOTE_ADDR="203.0.113.1").status_code == 200
    assert_throttled(login(client, REMOTE_ADDR="203.0.113.1"), retry_after=WINDOW)

    other_ip = login(client, REMOTE_ADDR="203.0.113.2")

    assert other_ip.status_code == 200
    assert other_ip.json() == {"token": Token.objects.get(user=user).key}


def test_a_forged_x_forwarded_for_gets_no_fresh_count_without_trusted_proxies(user, rates, num_proxies, throttle_clock):
    rates(token="2/min")
    num_proxies(0)
    client = APIClient()
    for forged in ("198.51.100.1", "198.51.100.2"):
        assert login(client, REMOTE_ADDR="203.0.113.1", HTTP_X_FORWARDED_FOR=forged).status_code == 200

    for forged in ("198.51.100.3", "198.51.100.3, 198.51.100.4", "203.0.113.9"):
        assert_throttled(login(client, REMOTE_ADDR="203.0.113.1", HTTP_X_FORWARDED_FOR=forged), retry_after=WINDOW)


def test_behind_one_trusted_proxy_the_last_forwarded_address_is_the_client(user, rates, num_proxies, throttle_clock):
    rates(token="2/min")
    num_proxies(1)
    client = APIClient()
    proxy = {"REMOTE_ADDR": "10.0.0.5"}  # Every request arrives from the proxy.

    # The client 203.0.113.7 puts whatever it likes first; the proxy appends its real address.
    assert login(client, HTTP_X_FORWARDED_FOR="203.0.113.7", **proxy).status_code == 200
    assert login(client, HTTP_X_FORWARDED_FOR="1.1.1.1, 203.0.113.7", **proxy).status_code == 200
    assert_throttled(login(client, HTTP_X_FORWARDED_FOR="9.9.9.9,203.0.113.7", **proxy), retry_after=WINDOW)

    # Another client behind the same proxy has its own count, whatever it forges first.
    assert login(client, HTTP_X_FORWARDED_FOR="203.0.113.7, 203.0.113.8", **proxy).status_code == 200


# 2. Bookings and payments, per user ------------------------------------------------------------


def test_the_sixth_bookings_request_is_429_for_that_user_only(user, other_user, flight, rates, throttle_clock):
    rates(bookings="5/min")
    alice, bob = client_for(user), client_for(other_user)

    created = post_booking(alice, flight, 1)
    booking_id = created.json()["id"]
    answers = [
        created,
        alice.get("/api/v1/bookings"),
        alice.get(f"/api/v1/bookings/{booking_id}"),
        alice.get(f"/api/v1/bookings/{booking_id}/events"),
        alice.patch(f"/api/v1/bookings/{booking_id}/cancel"),
    ]
    assert [answer.status_code for answer in answers] == [201, 200, 200, 200, 200]

    assert_throttled(alice.get("/api/v1/bookings"), retry_after=WINDOW)
    # Bob's count is his own, and alice's other endpoints are counted elsewhere or not at all.
    assert bob.get("/api/v1/bookings").status_code == 200
    assert alice.get("/api/v1/payments/999").status_code == 404
    assert alice.get(f"/api/v1/flights/{flight.pk}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/bookings", "create"),
        ("get", "/api/v1/bookings", None),
        ("get", "/api/v1/bookings/{id}", None),
        ("get", "/api/v1/bookings/{id}/events", None),
        ("patch", "/api/v1/bookings/{id}/cancel", None),
        ("post", "/api/v1/bookings/{id}/cancel", None),
    ],
)
def test_every_bookings_endpoint_is_limited(user, flight, rates, throttle_clock, method, path, body):
    rates(bookings="1/min")
    alice = client_for(user)
    booking_id = post_booking(alice, flight, 1).json()["id"]  # Uses up the one request.
    data = {"flightId": flight.pk, "numberOfSeats": 1} if body else None

    response = getattr(alice, method)(path.format(id=booking_id), data, format="json")

    assert_throttled(response, retry_after=WINDOW)
    booking = Booking.objects.get()  # A throttled create writes nothing; a throttled cancel changes nothing.
    assert (booking.pk, booking.status) == (booking_id, Booking.Status.INITIATED)


@pytest.mark.parametrize(("method", "path"), [("post", "/api/v1/payments"), ("get", "/api/v1/payments/{id}")])
def test_every_payments_endpoint_is_limited(user, flight, rates, throttle_clock, method, path):
    rates(payments="1/min")
    alice = client_for(user)
    booking_id = post_booking(alice, flight, 1).json()["id"]
    paid = post_payment(alice, booking_id, "first", "5500.00")  # Uses up the one request.
    assert paid.status_code == 201, paid.content

    if method == "post":
        response = post_payment(alice, booking_id, "first", "5500.00")  # Not even a replay gets through.
    else:
        response = alice.get(path.format(id=paid.json()["id"]))

    assert_throttled(response, retry_after=WINDOW)


def test_bookings_and_payments_count_apart(user, flight, rates, throttle_clock):
    rates(bookings="2/min", payments="2/min")
    alice = client_for(user)
    booking_id = post_booking(alice, flight, 1).json()["id"]
    assert alice.get("/api/v1/bookings").status_code == 200
    assert_throttled(alice.get("/api/v1/bookings"), retry_after=WINDOW)

    # Bookings are used up; payments still have their own two.
    paid = post_payment(alice, booking_id, "k-1", "5500.00")
    assert paid.status_code == 201, paid.content
    assert alice.get(f"/api/v1/payments/{paid.json()['id']}").status_code == 200
    assert_throttled(alice.get(f"/api/v1/payments/{paid.json()['id']}"), retry_after=WINDOW)

    # And being throttled on payments took nothing more from bookings.
    assert_throttled(alice.get("/api/v1/bookings"), retry_after=WINDOW)


def test_after_the_window_the_user_is_allowed_again(user, rates, throttle_clock):
    rates(bookings="2/min")
    alice = client_for(user)
    assert [alice.get("/api/v1/bookings").status_code for _ in range(2)] == [200, 200]
    throttle_clock.advance(59)
    assert_throttled(alice.get("/api/v1/bookings"), retry_after=1)

    throttle_clock.advance(1)

    assert [alice.get("/api/v1/bookings").status_code for _ in range(2)] == [200, 200]
    assert_throttled(alice.get("/api/v1/bookings"), retry_after=WINDOW)


def test_anonymous_requests_are_refused_401_and_not_counted(user, rates, throttle_clock):
    rates(bookings="1/min", payments="1/min")
    anonymous = APIClient()

    for path in ["/api/v1/bookings"] * 3 + ["/api/v1/payments/1"] * 3:
        assert_problem(anonymous.get(path), 401, "not_authenticated")

    # Nobody's count moved: the user still has their one request.
    assert client_for(user).get("/api/v1/bookings").status_code == 200


def test_a_throttled_payment_stores_nothing_for_its_key_and_is_processed_once_allowed(
    user, flight, rates, throttle_clock
):
    rates(payments="2/min")
    alice = client_for(user)
    booking_id = post_booking(alice, flight, 1).json()["id"]
    assert [alice.get(f"/api/v1/payments/{n}").status_code for n in (998, 999)] == [404, 404]

    throttled = post_payment(alice, booking_id, "pay-once", "5500.00")

    assert_throttled(throttled, retry_after=WINDOW)
    assert "Idempotent-Replayed" not in throttled
    assert not IdempotencyKey.objects.exists()
    assert not Payment.objects.exists()
    assert not SimulatedCharge.objects.exists()
    assert Booking.objects.get(pk=booking_id).status == Booking.Status.INITIATED

    throttle_clock.advance(WINDOW)
    paid = post_payment(alice, booking_id, "pay-once", "5500.00")
    replayed = post_payment(alice, booking_id, "pay-once", "5500.00")

    assert paid.status_code == 201, paid.content
    assert "Idempotent-Replayed" not in paid
    assert (replayed.status_code, replayed["Idempotent-Replayed"], replayed.json()) == (201, "true", paid.json())
    assert SimulatedCharge.objects.count() == 1
    assert Payment.objects.get().status == Payment.Status.SUCCEEDED
    key = IdempotencyKey.objects.get()
    assert (key.key, key.response_status) == ("pay-once", 201)
    assert Booking.objects.get(pk=booking_id).status == Booking.Status.BOOKED


# 3. What is never limited ---------------------------------------------------------------------


def test_flights_endpoints_and_probes_are_never_limited(user, staff_user, flight, rates, settings, throttle_clock):
    rates(token="1/min", bookings="1/min", payments="1/min")
    settings.FLIGHT_SERVICE_TOKEN = SERVICE_TOKEN
    alice, staff, service, anonymous = client_for(user), client_for(staff_user), APIClient(), APIClient()
    service.credentials(HTTP_AUTHORIZATION=f"Bearer {SERVICE_TOKEN}")
    departure = flight.departure_time.isoformat()
    new_flight = {
        "flightNumber": "AI101",
        "departureAirport": "DEL",
        "arrivalAirport": "BOM",
        "departureTime": departure,
        "arrivalTime": flight.arrival_time.isoformat(),
        "price": "4000.00",
        "capacity": 50,
    }

    statuses = []
    for _ in range(4):
        statuses += [
            alice.get("/api/v1/flights").status_code,
            alice.get(f"/api/v1/flights/{flight.pk}").status_code,
            staff.post("/api/v1/flights", new_flight, format="json").status_code,
            service.patch(f"/api/v1/flights/{flight.pk}/seats", {"seats": 1, "dec": True}, format="json").status_code,
            anonymous.get("/healthz").status_code,
            anonymous.get("/readyz").status_code,
        ]

    assert statuses == [200, 200, 201, 200, 200, 200] * 4
    flight.refresh_from_db()
    assert flight.available_seats == 16
    # The limits were on all along.
    assert post_booking(alice, flight, 1).status_code == 201
    assert_throttled(alice.get("/api/v1/bookings"), retry_after=WINDOW)


@pytest.mark.django_db(transaction=True)
def test_the_bookings_services_own_calls_to_flights_over_http_are_never_limited(
    remote, user, other_user, rates, throttle_clock
):
    # Each booking is one bookings request but two calls to the Flights service (read, reserve),
    # all from the one service token: a limit on flights would refuse the second call.
    rates(token="1/min", bookings="1/min", payments="1/min")
    flight = make_flight(capacity=20)

    created = [post_booking(client_for(person), flight, 2) for person in (user, other_user)]

    assert [response.status_code for response in created] == [201, 201]
    assert set(Booking.objects.values_list("status", "seats_state")) == {("INITIATED", "reserved")}
    flight.refresh_from_db()
    assert flight.available_seats == 16


def test_an_empty_rate_means_no_limit(user, rates, throttle_clock):
    rates(bookings="", payments="1/min")
    alice = client_for(user)

    assert [alice.get("/api/v1/bookings").status_code for _ in range(30)] == [200] * 30
    assert alice.get("/api/v1/payments/1").status_code == 404
    assert_throttled(alice.get("/api/v1/payments/1"), retry_after=WINDOW)


def test_a_changed_rate_applies_at_once(user, rates, throttle_clock):
    rates(bookings="1/min")
    alice = client_for(user)
    assert alice.get("/api/v1/bookings").status_code == 200
    assert_throttled(alice.get("/api/v1/bookings"), retry_after=WINDOW)

    rates(bookings="2/min")

    assert alice.get("/api/v1/bookings").status_code == 200
    assert_throttled(alice.get("/api/v1/bookings"), retry_after=WINDOW)
    rates(bookings="")
    assert alice.get("/api/v1/bookings").status_code == 200


def test_a_lowered_rate_still_answers_retry_after(user, rates, throttle_clock):
    rates(bookings="5/min")
    alice = client_for(user)
    assert [alice.get("/api/v1/bookings").status_code for _ in range(5)] == [200] * 5

    rates(bookings="2/min")
    response = alice.get("/api/v1/bookings")

    assert_problem(response, 429, "throttled")
    # The 4th-newest request (the 2nd of the new limit's 2) leaves the window in 60 s.
    assert response["Retry-After"] == str(WINDOW)


# 4. Documentation and configuration ----------------------------------------------------------


def test_the_schema_documents_429_on_every_limited_operation_and_on_no_flights_operation():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = {
        (path, method): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    }
    # Stripe's webhook is not limited: Stripe paces its own retries, and the signature is checked first.
    stripe_webhook = {("/api/v1/payments/stripe/webhook", "post")}
    limited = {key for key in operations if key[0].startswith(("/api/v1/bookings", "/api/v1/payments"))}
    limited -= stripe_webhook
    limited |= {(TOKEN_URL, "post"), (TOKEN_URL, "delete")}
    flights = {key for key in operations if key[0].startswith("/api/v1/flights")}
    # Staff's webhook endpoints are not limited.
    webhooks = {key for key in operations if key[0].startswith("/api/v1/webhooks")}
    assert {
        ("/api/v1/bookings", "get"),
        ("/api/v1/bookings", "post"),
        ("/api/v1/bookings/{id}", "get"),
        ("/api/v1/bookings/{id}/cancel", "patch"),
        ("/api/v1/bookings/{id}/cancel", "post"),
        ("/api/v1/bookings/{id}/events", "get"),
        ("/api/v1/payments", "post"),
        ("/api/v1/payments/{id}", "get"),
        (TOKEN_URL, "post"),
        (TOKEN_URL, "delete"),
    } <= limited
    assert {("/api/v1/flights", "get"), ("/api/v1/flights/{id}/seats", "patch")} <= flights
    assert len(webhooks) == 6
    assert limited | flights | webhooks | stripe_webhook == set(operations)

    for key in sorted(limited):
        documented = operations[key]["responses"].get("429")
        assert documented is not None, key
        assert set(documented["content"]) == {"application/problem+json"}, key
        assert documented["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }, key
        assert "`throttled`" in documented["description"], key
    for key in sorted(flights | webhooks):
        assert "429" not in operations[key]["responses"], key


def start_django(**env: str) -> subprocess.CompletedProcess:
    """A fresh process that loads the real settings, as `manage.py` would."""
    assert {"DATABASE_URL", "THROTTLE_RATE_TOKEN"} <= SETTINGS_KEYS, "the pattern is stale"
    clean = settings_free_environ()
    code = "import django; django.setup(); from django.conf import settings; print(settings.THROTTLE_RATES)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("THROTTLE_RATE_TOKEN", "abc"),
        ("THROTTLE_RATE_BOOKINGS", "0/min"),
        ("THROTTLE_RATE_PAYMENTS", "10/fortnight"),
    ],
)
def test_a_malformed_rate_refuses_to_start(name, value):
    result = start_django(**{name: value})

    assert result.returncode != 0
    assert result.stdout == ""
    assert f"{name} must look like 10/min (or be empty), not {value!r}." in result.stderr


def test_rates_come_from_the_environment_and_empty_is_allowed():
    result = start_django(THROTTLE_RATE_TOKEN="", THROTTLE_RATE_BOOKINGS="7/hour")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'token': '', 'bookings': '7/hour', 'payments': '30/min'}"
