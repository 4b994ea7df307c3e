"""100 customers book the last 30 seats at once: exactly 30 get them, nobody is oversold.

Real threads, each with its own database connection and token, through the HTTP API: once
with the in-process adapter's one transaction (a conditional UPDATE of the flight's row),
once through the whole saga (look-up, booking row, reserve under the flight's row lock, as
over HTTP). Run on PostgreSQL, whose row locks are what production relies on.
"""

import threading
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db.models import F
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings.models import Booking
from flights import services as flight_services
from flights.models import Flight
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CUSTOMERS = 100
SEATS = 30


def _race_for_the_seats(flight) -> Counter:
    tokens = [
        Token.objects.create(user=get_user_model().objects.create_user(username=f"customer{i}")).key
        for i in range(CUSTOMERS)
    ]

    def book(index):
        client = APIClient(raise_request_exception=False)
        client.credentials(HTTP_AUTHORIZATION=f"Token {tokens[index]}")
        response = client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 1}, format="json")
        return response.status_code, response.json().get("code") if response.status_code < 500 else None

    return Counter(race(CUSTOMERS, book))


@pytest.mark.parametrize("path", ["one_transaction", "saga"])
def test_hundred_customers_race_for_thirty_seats(path, request):
    if path == "saga":
        request.getfixturevalue("saga_in_process")
    flight = make_flight(capacity=SEATS)

    answers = _race_for_the_seats(flight)

    assert answers == {(201, None): SEATS, (409, "insufficient_seats"): CUSTOMERS - SEATS}, answers
    holding = Booking.objects.filter(flight_id=flight.pk, seats_state=Booking.SeatsState.RESERVED)
    assert holding.count() == SEATS
    assert set(holding.values_list("status", flat=True)) == {"INITIATED"}
    # Those that lost after writing their booking were cancelled, holding nothing.
    losers = Booking.objects.filter(flight_id=flight.pk).exclude(seats_state=Booking.SeatsState.RESERVED)
    assert set(losers.values_list("status", "seats_state")) <= {("CANCELLED", "none")}
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == 0


def test_control_without_the_seats_left_condition_the_race_test_fails(monkeypatch):
    """Proof that the race test can fail: take `available_seats >= seats` out of the UPDATE.

    (Each booking reads the seats left first, unlocked: that read lets them all through. The
    unguarded take waits until every booking has read it, so that a thread scheduled late,
    after the seats are gone, cannot be refused by that read and change the counts.)

    Every booking then takes its seat unconditionally; the 31st finds the database's check
    constraint instead of a refusal, and answers 500 where the test wants 409.
    """
    flight = make_flight(capacity=SEATS)
    all_have_read = threading.Barrier(CUSTOMERS)

    def take_unguarded(*, flight_id, seats, price):
        all_have_read.wait(timeout=60)
        return Flight.objects.filter(pk=flight_id).update(available_seats=F("available_seats") - seats) == 1

    monkeypatch.setattr(flight_services, "flight_seats_take", take_unguarded)

    answers = _race_for_the_seats(flight)

    assert answers[(201, None)] == SEATS  # The constraint still stops an oversold flight...
    assert answers[(409, "insufficient_seats")] == 0  # ...but nobody is told "no seats": 500s.
    assert answers[(500, None)] == CUSTOMERS - SEATS
