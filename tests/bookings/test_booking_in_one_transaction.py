"""A booking with the in-process adapter: booking, hold, event and seats in one transaction.

The inventory shares our database, so the reserve joins the booking's own transaction
(docs/design.md#the-flights-service-boundary): it commits whole or not at all, and a fault
anywhere in it leaves nothing to compensate. The faults are injected at the functions the
transaction calls, after they did their work, as a connection lost mid-transaction would.
"""

from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from bookings import services as booking_services
from bookings.models import Booking, BookingEvent
from flights import selectors as flight_selectors
from flights import services as flight_services
from flights.models import Flight, SeatHold
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, assert_problem, flight_row_locked
from tests.support.api import post_booking

pytestmark = pytest.mark.django_db(transaction=True)


def _nothing_written(flight) -> None:
    assert not Booking.objects.exists()
    assert not SeatHold.objects.exists()
    assert not BookingEvent.objects.exists()
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity


def test_seats_booking_hold_and_event_commit_once(user_client, flight):
    with CaptureQueriesContext(connection) as captured:
        response = post_booking(user_client, flight, 3)

    assert response.status_code == 201, response.content
    statements = [query["sql"] for query in captured.captured_queries]
    assert [sql for sql in statements if sql in ("COMMIT", "ROLLBACK")] == ["COMMIT"]
    # The flight's row is locked last: its UPDATE is the statement before COMMIT.
    commit = statements.index("COMMIT")
    assert statements[commit - 1].startswith('UPDATE "flights_flight"'), statements[commit - 1]
    # After it, the worker's task for the booking.created event is queued (docs/design.md#notifications).
    (queued,) = statements[commit + 1 :]
    assert queued.startswith('INSERT INTO "django_tasks_database_dbtaskresult"'), queued
    booking = Booking.objects.get(pk=response.json()["id"])
    assert (booking.status, booking.seats_state, booking.flight_keeps_holds) == ("INITIATED", "reserved", True)
    assert booking.total_cost == flight.price * 3
    hold = SeatHold.objects.get(ref=booking.hold_ref)
    assert (hold.flight_id, hold.seats, hold.state) == (flight.pk, 3, "held")
    assert list(BookingEvent.objects.values_list("from_status", "to_status", "reason")) == [
        ("", "INITIATED", "created")
    ]
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity - 3


def _connection_lost(*args, **kwargs):
    raise OperationalError("server closed the connection unexpectedly")


def test_a_failure_after_the_seats_were_taken_takes_nothing(user_client, flight, monkeypatch):
    real_take = flight_services.flight_seats_take

    def take_then_fail(**kwargs):
        assert real_take(**kwargs)
        _connection_lost()

    monkeypatch.setattr(flight_services, "flight_seats_take", take_then_fail)

    assert_problem(post_booking(user_client, flight), 503, "service_unavailable")
    _nothing_written(flight)


def test_a_failure_writing_the_hold_takes_nothing(user_client, flight, monkeypatch):
    real_hold = flight_services.seat_hold_add

    def hold_then_fail(**kwargs):
        real_hold(**kwargs)
        _connection_lost()

    monkeypatch.setattr(flight_services, "seat_hold_add", hold_then_fail)

    assert_problem(post_booking(user_client, flight), 503, "service_unavailable")
    _nothing_written(flight)


def test_a_price_changed_between_the_read_and_the_take_is_booked_at_the_new_price(user_client, flight, monkeypatch):
    real_get = flight_selectors.flight_get
    changed = []

    def read_then_staff_reprices(**kwargs):
        found = real_get(**kwargs)
        if not changed:  # Once: after our read, before our transaction, committed.
            changed.append(Flight.objects.filter(pk=flight.pk).update(price=Decimal("7777.00")))
        return found

    monkeypatch.setattr(flight_selectors, "flight_get", read_then_staff_reprices)

    response = post_booking(user_client, flight, 2)

    assert response.status_code == 201, response.content
    assert response.json()["totalCost"] == "15554.00"
    assert Booking.objects.count() == 1  # The first try left nothing.
    assert SeatHold.objects.get().ref == f"booking-{response.json()['id']}"
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity - 2


def test_a_failure_writing_the_event_takes_nothing(user_client, flight, monkeypatch):
    monkeypatch.setattr(booking_services, "record_status_change", _connection_lost)

    assert_problem(post_booking(user_client, flight), 503, "service_unavailable")
    _nothing_written(flight)


def test_no_such_flight_and_too_few_seats_are_refused_with_nothing_written(user_client):
    flight = make_flight(capacity=2)

    assert_problem(post_booking(user_client, 999_999), 404, "not_found")
    refused = assert_problem(post_booking(user_client, flight, 3), 409, "insufficient_seats")

    assert "2 seat(s) left" in refused["detail"]
    _nothing_written(flight)


def test_the_last_seats_can_be_taken_to_zero(user_client):
    flight = make_flight(capacity=2)

    assert post_booking(user_client, flight, 2).status_code == 201

    flight.refresh_from_db()
    assert flight.available_seats == 0
    assert_problem(post_booking(user_client, flight, 1), 409, "insufficient_seats")
    assert_bookings_match_ledger(flight)


@pytest.mark.postgres
@override_settings(LOCK_TIMEOUT_MS=200)
def test_flight_row_locked_elsewhere_is_a_definite_refusal_with_nothing_written(user_client):
    flight = make_flight(capacity=5)

    with flight_row_locked(flight):
        response = post_booking(user_client, flight, 1)

    assert_problem(response, 409, "resource_busy")
    assert response["Retry-After"]
    _nothing_written(flight)
