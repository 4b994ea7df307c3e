"""100 customers book the last 30 seats at once: exactly 30 get them, nobody is oversold.

Real threads, each with its own database connection and token, through the HTTP API and
the whole saga (look-up, booking row, reserve under the flight's row lock). Run on
PostgreSQL, whose row locks are what production relies on.
"""

from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings.models import Booking
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CUSTOMERS = 100
SEATS = 30


def test_hundred_customers_race_for_thirty_seats():
    flight = make_flight(capacity=SEATS)
    tokens = [
        Token.objects.create(user=get_user_model().objects.create_user(username=f"customer{i}")).key
        for i in range(CUSTOMERS)
    ]

    def book(index):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {tokens[index]}")
        response = client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 1}, format="json")
        return response.status_code, response.json().get("code")

    answers = Counter(race(CUSTOMERS, book))

    assert answers == {(201, None): SEATS, (409, "insufficient_seats"): CUSTOMERS - SEATS}, answers
    holding = Booking.objects.filter(flight_id=flight.pk, seats_state=Booking.SeatsState.RESERVED)
    assert holding.count() == SEATS
    assert set(holding.values_list("status", flat=True)) == {"INITIATED"}
    # Those that lost after writing their booking were cancelled, holding nothing.
    losers = Booking.objects.filter(flight_id=flight.pk).exclude(seats_state=Booking.SeatsState.RESERVED)
    assert set(losers.values_list("status", "seats_state")) <= {("CANCELLED", "none")}
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == 0
