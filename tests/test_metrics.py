"""GET /metrics in this process (docs/operations.md#metrics): who may read it, and the values
it shows after real requests, a cleanup run and a failed delivery. Events are this process's
counters, which earlier tests have moved too: each test reads the change across what it
does. State comes from the test's own database: read as it is.

tests/test_metrics_served.py reads the same across gunicorn's processes."""

from __future__ import annotations

import math

import pytest
import requests
import responses
from django.db import transaction
from django.test import override_settings

from bookings.audit import record_status_change
from bookings.models import Booking
from bookings.services import booking_create
from notifications import services as notification_services
from notifications.models import Delivery
from tests.factories import initiated, make_flight, release_owed
from tests.helpers import assert_problem, flight_row_locked
from tests.notifications.conftest import register, run_worker
from tests.support.api import patch_cancel, post_booking, post_payment
from tests.support.cleanup import command
from tests.support.metrics import TOKEN, delta, parse, scrape, value
from tests.support.receiver import running_receiver

P = "flight_bookings_"
# Committed for real: changes are counted when their transaction commits.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN


# Access -----------------------------------------------------------------------------------


def test_off_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert_problem(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"), 404, "not_found")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-some-length", f"Token {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"Basic {TOKEN}"],
)
def test_refused_without_the_bearer_token(client, metrics_on, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = client.get("/metrics", **headers)

    assert response.status_code == 401
    assert_problem(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"flight_bookings" not in response.content


def test_served_in_prometheus_text_format_to_its_bearer(client, db, metrics_on):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response["Cache-Control"] == "no-store"
    samples = parse(response.content.decode())
    assert value(samples, P + "database_up") == 1


def test_only_get(client, metrics_on):
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


# Events -----------------------------------------------------------------------------------


def test_requests_by_endpoint_status_and_problem_code(client, user_client, flight, metrics_on):
    before = scrape(client)
    for _ in range(2):
        assert user_client.get(f"/api/v1/flights/{flight.pk}").status_code == 200
    assert_problem(post_booking(user_client, flight, seats=0), 400, "validation_error")
    assert_problem(user_client.get("/api/v1/bookings/999999"), 404, "not_found")
    assert_problem(user_client.get("/api/v1/no-such-thing"), 404, "not_found")
    after = scrape(client)

    requests_ = P + "http_requests_total"
    assert delta(before, after, requests_, method="GET", endpoint="flight-detail", status="200", code="") == 2
    assert (
        delta(before, after, requests_, method="POST", endpoint="booking-list", status="400", code="validation_error")
        == 1
    )
    assert delta(before, after, requests_, method="GET", endpoint="booking-detail", status="404", code="not_found") == 1
    # The catch-all has no name of its own: its view's.
    catch_all = "bookings_project.errors.api_not_found"
    assert delta(before, after, requests_, method="GET", endpoint=catch_all, status="404", code="not_found") == 1
    # The scrape before counted itself.
    assert delta(before, after, requests_, method="GET", endpoint="metrics", status="200", code="") == 1
    latency = P + "http_request_duration_seconds"
    assert delta(before, after, latency + "_count", method="GET", endpoint="flight-detail") == 2
    assert delta(before, after, latency + "_bucket", method="GET", endpoint="flight-detail", le="+Inf") == 2
    assert delta(before, after, latency + "_sum", method="GET", endpoint="flight-detail") > 0


def test_a_booking_paid_replayed_and_cancelled(client, user_client, flight, metrics_on):
    before = scrape(client)
    booking = post_booking(user_client, flight, seats=2).json()
    assert post_payment(user_client, booking["id"], "k1", booking["totalCost"]).status_code == 201
    replay = post_payment(user_client, booking["id"], "k1", booking["totalCost"])
    assert (replay.status_code, replay["Idempotent-Replayed"]) == (201, "true")
    assert patch_cancel(user_client, booking["id"]).json()["payment"]["status"] == "REFUNDED"
    after = scrape(client)

    changes = P + "booking_status_changes_total"
    assert delta(before, after, changes, status="INITIATED", reason="created") == 1
    assert delta(before, after, changes, status="PENDING", reason="payment_started") == 1
    assert delta(before, after, changes, status="BOOKED", reason="payment_succeeded") == 1
    assert delta(before, after, changes, status="CANCELLED", reason="user") == 1
    assert delta(before, after, P + "payment_outcomes_total", outcome="succeeded") == 1
    assert delta(before, after, P + "idempotent_replays_total") == 1
    assert delta(before, after, P + "refunds_total", outcome="refunded") == 1
    # The seats taken, then given back: the flight's row lock each time.
    assert delta(before, after, P + "seat_lock_wait_seconds_count") == 2
    assert delta(before, after, P + "seat_lock_timeouts_total") == 0


@pytest.mark.parametrize(
    ("simulated", "outcome", "status", "code"),
    [
        ("decline", "declined", 402, "payment_declined"),
        ("fail", "failed", 503, "payment_gateway_unavailable"),
        ("lose_answer", "unknown", 503, "payment_gateway_unavailable"),
    ],
)
def test_payment_outcomes(client, user_client, flight, metrics_on, settings, simulated, outcome, status, code):
    settings.PAYMENT_SIMULATED_OUTCOME = simulated
    booking = post_booking(user_client, flight, seats=1).json()
    before = scrape(client)
    assert_problem(post_payment(user_client, booking["id"], "k1", booking["totalCost"]), status, code)
    after = scrape(client)

    for each in ("succeeded", "declined", "failed", "unknown", "requires_action"):
        assert delta(before, after, P + "payment_outcomes_total", outcome=each) == (each == outcome), each
    labels = {"method": "POST", "endpoint": "payment-list", "status": str(status), "code": code}
    assert delta(before, after, P + "http_requests_total", **labels) == 1


@pytest.mark.parametrize("three_ds", [False, True], ids=["confirmed at once", "after 3-D Secure"])
def test_stripes_news_of_an_answer_already_counted_is_not_counted_again(
    client, user_client, flight, metrics_on, served_stripe, stripe_fake, three_ds
):
    """Stripe sends payment_intent.succeeded for every intent that succeeds, the ones whose
    confirm answered succeeded too: one payment, one outcome."""
    from tests.payments.test_stripe_webhook import BOOKED_NOW, SUCCEEDED, book, only, outcome, pay, pending_3ds

    before = scrape(client)
    if three_ds:
        _, payment = pending_3ds(user_client, flight)
        stripe_fake.complete_action(payment.gateway_reference, succeed=True)
    else:
        assert pay(user_client, book(user_client, flight)).status_code == 201
    assert outcome(client, only(stripe_fake, SUCCEEDED)) == BOOKED_NOW
    after = scrape(client)

    assert delta(before, after, P + "payment_outcomes_total", outcome="succeeded") == 1
    assert delta(before, after, P + "payment_outcomes_total", outcome="requires_action") == three_ds


def test_a_method_of_the_clients_own_is_one_label(client, metrics_on):
    before = scrape(client)
    for method in ("FOO", "BAR"):
        client.generic(method, "/healthz")
    after = scrape(client)

    labels = {"endpoint": "healthz", "status": "200", "code": ""}
    assert delta(before, after, P + "http_requests_total", method="other", **labels) == 2
    assert not any(("method", "FOO") in labels for _, labels in after)


def test_a_change_rolled_back_is_not_counted(client, user, flight, metrics_on):
    booking = initiated(user, flight)
    before = scrape(client)
    with pytest.raises(RuntimeError), transaction.atomic():
        record_status_change(booking_id=booking.pk, from_status="INITIATED", to_status="CANCELLED", reason="staff")
        raise RuntimeError("rolled back")
    record_status_change(booking_id=booking.pk, from_status="INITIATED", to_status="CANCELLED", reason="user")
    after = scrape(client)

    changes = P + "booking_status_changes_total"
    assert delta(before, after, changes, status="CANCELLED", reason="staff") == 0
    assert delta(before, after, changes, status="CANCELLED", reason="user") == 1


def test_calls_to_the_payment_gateway_by_outcome(client, user_client, flight, metrics_on, served_gateway):
    booking = post_booking(user_client, flight, seats=1).json()
    before = scrape(client)
    assert post_payment(user_client, booking["id"], "k1", booking["totalCost"]).status_code == 201
    after = scrape(client)

    calls = P + "outbound_requests_total"
    assert delta(before, after, calls, service="payment_gateway", outcome="2xx") == 1
    assert delta(before, after, P + "outbound_request_duration_seconds_count", service="payment_gateway") == 1


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (requests.ConnectTimeout("connect timed out"), "not_connected"),
        (requests.ReadTimeout("read timed out"), "timed_out"),
        (requests.ConnectionError("connection reset"), "connection_lost"),
    ],
)
def test_calls_that_failed_by_how(
    client, user_client, flight, metrics_on, mock_gateway, fresh_gateway_cache, fault, outcome
):
    booking = post_booking(user_client, flight, seats=1).json()
    before = scrape(client)
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{mock_gateway}/charges", body=fault)
        assert post_payment(user_client, booking["id"], "k1", booking["totalCost"]).status_code == 503
    after = scrape(client)

    assert delta(before, after, P + "outbound_requests_total", service="payment_gateway", outcome=outcome) == 1
    assert delta(before, after, P + "outbound_requests_total", service="payment_gateway", outcome="2xx") == 0


def test_calls_to_the_flights_service_answered_5xx(client, user_client, metrics_on, remote):
    flight = make_flight(capacity=5)
    before = scrape(client)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(remote)
        mock.add(responses.GET, f"{remote}/api/v1/flights/{flight.pk}", status=502)
        assert_problem(post_booking(user_client, flight, seats=1), 503, "flight_service_unavailable")
    after = scrape(client)

    # A GET answered 502 is retried twice (bookings_project/http_client.py): one call, its retries in it.
    assert delta(before, after, P + "outbound_requests_total", service="flights", outcome="5xx") == 1


@pytest.mark.postgres
@override_settings(LOCK_TIMEOUT_MS=200)
def test_a_seat_lock_that_is_not_free_in_time(client, staff_client, metrics_on):
    flight = make_flight(capacity=5)
    before = scrape(client)
    with flight_row_locked(flight):
        response = staff_client.patch(f"/api/v1/flights/{flight.pk}/seats", {"seats": 1}, format="json")
    assert_problem(response, 409, "resource_busy")
    after = scrape(client)

    assert delta(before, after, P + "seat_lock_timeouts_total") == 1
    wait = P + "seat_lock_wait_seconds_bucket"
    # It waited LOCK_TIMEOUT_MS (0.2 s), then gave up: in the (0.1, 0.25] bucket.
    assert delta(before, after, wait, le="0.1") == 0
    assert delta(before, after, wait, le="0.25") == 1


# State ------------------------------------------------------------------------------------


def test_cleanup_backlog_and_its_run(client, user, flight, metrics_on, clock):
    """Three bookings past their hold and a release owed: the gauges count them, with how long
    each set has waited; a run expires the three (counted as cancelled, reason expired)."""
    for _ in range(3):
        initiated(user, flight, seats=1)
    owed = release_owed(user, flight, seats=1)
    hold_ended = Booking.objects.filter(status=Booking.Status.INITIATED).first().expires_at
    clock.now = hold_ended
    clock.advance(minutes=5)
    before = scrape(client)

    assert value(before, P + "cleanup_backlog", work="bookings_to_expire") == 3
    assert value(before, P + "cleanup_backlog_oldest_seconds", work="bookings_to_expire") == 300
    assert value(before, P + "cleanup_backlog", work="bookings_owing_release") == 1
    assert (
        value(before, P + "cleanup_backlog_oldest_seconds", work="bookings_owing_release")
        == (clock.now - owed.updated_at).total_seconds()
    )
    assert value(before, P + "cleanup_backlog", work="bookings_needing_a_person") == 0
    assert value(before, P + "cleanup_backlog_oldest_seconds", work="bookings_needing_a_person") == 0
    assert math.isinf(value(before, P + "cleanup_last_run_age_seconds"))
    assert math.isinf(value(before, P + "cleanup_last_success_age_seconds"))

    assert "expired=3 released_seats=4 retried_releases=1" in command()
    clock.advance(seconds=42)
    after = scrape(client)

    assert delta(before, after, P + "booking_status_changes_total", status="CANCELLED", reason="expired") == 3
    assert value(after, P + "cleanup_backlog", work="bookings_to_expire") == 0
    assert value(after, P + "cleanup_backlog", work="bookings_owing_release") == 0
    assert value(after, P + "cleanup_last_run_age_seconds") == 42
    assert value(after, P + "cleanup_last_success_age_seconds") == 42


def test_a_failed_delivery(client, user, flight, metrics_on, clock):
    """A receiver that always answers 503: eight attempts, counted as they fail; pending
    until the last, then failed."""
    with running_receiver() as receiver:
        receiver.always = 503
        register(receiver.url)
        before = scrape(client)
        booking_create(user=user, flight_id=flight.pk, seats=1)
        run_worker()
        pending = scrape(client)
        for _ in range(7):
            clock.now = Delivery.objects.get().next_attempt_at
            run_worker()
    after = scrape(client)

    assert value(pending, P + "notification_deliveries", state="pending") == 1
    assert value(pending, P + "notification_deliveries", state="failed") == 0
    assert delta(before, pending, P + "notification_attempts_total", channel="webhook", outcome="failed") == 1
    assert value(after, P + "notification_deliveries", state="pending") == 0
    assert value(after, P + "notification_deliveries", state="failed") == 1
    assert delta(before, after, P + "notification_attempts_total", channel="webhook", outcome="failed") == 8
    assert delta(before, after, P + "notification_attempts_total", channel="webhook", outcome="delivered") == 0


def test_the_worker_heartbeat_and_the_task_queue(client, db, metrics_on, clock):
    assert math.isinf(value(scrape(client), P + "worker_heartbeat_age_seconds"))
    notification_services.worker_heartbeat_beat(worker_id="w1", host="h1", pid=1, started_at=clock.now)
    clock.advance(seconds=20)
    assert value(scrape(client), P + "worker_heartbeat_age_seconds") == 20
    notification_services.worker_heartbeat_end(worker_id="w1")
    assert math.isinf(value(scrape(client), P + "worker_heartbeat_age_seconds"))


def test_with_the_database_down_the_events_are_still_served(client, db, metrics_on, monkeypatch):
    from django.db import OperationalError

    from workflows import monitoring

    def down(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(monitoring, "background_status", down)
    samples = scrape(client)

    assert value(samples, P + "database_up") == 0
    assert (P + "cleanup_backlog", frozenset({("work", "bookings_to_expire")})) not in samples
    assert value(samples, P + "http_requests_total", method="GET", endpoint="metrics", status="200", code="") >= 0
    assert any(name == P + "http_requests_total" for name, _ in samples)
