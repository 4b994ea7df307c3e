"""Concurrency: real threads, real transactions, exact counts.

Each thread has its own database connection (Django's connections are per thread), so the
requests race exactly as they would across gunicorn workers. The races run on both
databases: PostgreSQL serialises them with the row lock, SQLite with BEGIN IMMEDIATE. The
control and the lock timeout are about PostgreSQL's row locks and run only there.
"""

import threading
from collections import Counter

import pytest
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from flights import services
from flights.models import Flight, SeatHold
from tests.factories import make_flight
from tests.helpers import assert_ledger_invariant, flight_row_locked, race

pytestmark = [pytest.mark.django_db(transaction=True)]

THREADS = 50
SEATS = 20


def _take_one_seat(staff_user, flight, reservation=None) -> list:
    """THREADS staff clients each take one seat at once; `reservation(i)` names each hold."""
    key = Token.objects.get_or_create(user=staff_user)[0].key

    def task(index):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        body = {"seats": 1, "dec": True}
        if reservation:
            body["reservation"] = reservation(index)
        response = client.patch(f"/api/v1/flights/{flight.pk}/seats", body, format="json")
        return response.status_code, response.json().get("code")

    return race(THREADS, task)


def test_fifty_clients_taking_one_seat_of_twenty(staff_user):
    flight = make_flight(capacity=SEATS)

    answers = Counter(_take_one_seat(staff_user, flight))

    assert answers == {(200, None): SEATS, (409, "insufficient_seats"): THREADS - SEATS}
    flight.refresh_from_db()
    assert flight.available_seats == 0


def test_fifty_bookings_holding_one_seat_of_twenty(staff_user):
    flight = make_flight(capacity=SEATS)

    answers = Counter(_take_one_seat(staff_user, flight, reservation=lambda i: f"booking-{i}"))

    assert answers == {(200, None): SEATS, (409, "insufficient_seats"): THREADS - SEATS}
    assert SeatHold.objects.filter(flight=flight, state="held").count() == SEATS
    assert_ledger_invariant(flight)
    assert flight.available_seats == 0


def test_one_reference_sent_by_fifty_retries_is_held_once(staff_user):
    flight = make_flight(capacity=SEATS)

    answers = Counter(_take_one_seat(staff_user, flight, reservation=lambda i: "booking-retried"))

    assert answers == {(200, None): THREADS}
    assert SeatHold.objects.get(ref="booking-retried").seats == 1
    assert_ledger_invariant(flight)
    assert flight.available_seats == SEATS - 1


@pytest.mark.postgres
def test_control_without_the_row_lock_the_race_test_catches_overselling(monkeypatch):
    """Proof that the race tests above can fail: take the lock away and they would.

    `_flight_for_update` is swapped for a plain read, and every thread waits at a barrier
    after reading, the interleaving that the row lock forbids. Each thread then sees 20
    seats left and writes 19: all 50 "succeed" and the seat count is wrong, which is exactly
    what `test_fifty_clients_taking_one_seat_of_twenty` asserts against.
    """
    flight = make_flight(capacity=SEATS)
    after_read = threading.Barrier(THREADS, timeout=30)

    def unlocked_read(flight_id):
        row = Flight.objects.get(pk=flight_id)
        after_read.wait()
        return row

    monkeypatch.setattr(services, "_flight_for_update", unlocked_read)

    def task(index):
        try:
            services.flight_seats_change(flight_id=flight.pk, seats=1, decrease=True)
            return "ok"
        except Exception as error:
            return type(error).__name__

    results = Counter(race(THREADS, task))

    flight.refresh_from_db()
    assert results["ok"] > SEATS  # oversold: the exact-count assertion would fail
    assert flight.available_seats != 0  # lost updates: the final-count assertion would fail


@pytest.mark.postgres
@override_settings(LOCK_TIMEOUT_MS=200)
def test_a_lock_wait_that_runs_out_answers_409_with_retry_after(staff_client):
    """A row held locked elsewhere: the request gives up after LOCK_TIMEOUT_MS, not hangs."""
    flight = make_flight(capacity=SEATS)
    with flight_row_locked(flight):
        response = staff_client.patch(f"/api/v1/flights/{flight.pk}/seats", {"seats": 1}, format="json")

    assert response.status_code == 409
    assert response.json()["code"] == "resource_busy"
    assert response["Retry-After"] == "1"
    flight.refresh_from_db()
    assert flight.available_seats == SEATS
