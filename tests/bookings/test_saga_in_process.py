"""The booking saga's failures against the in-process inventory, its calls committing one at a
time (`saga_in_process`) as they do over HTTP.

The faults are injected at the boundary only: the `flights` app's functions are wrapped so
that a call fails before doing its work, or does it and then loses the answer (as a
database connection that drops at COMMIT would). The saga, the ledger and the database are
real. After every failure the invariants (docs/design.md#invariants) hold, or (where the issue leaves the
rest to cleanup) the booking is marked for it and `booking_release_seats` finishes it.
"""

import threading

import pytest
from django.db import OperationalError
from django.test import override_settings

from bookings.models import Booking
from bookings.services import booking_create, booking_release_seats
from bookings_project.exceptions import (
    FlightServiceUnavailable,
    ReservationConflict,
    ResourceBusy,
)
from flights import selectors as flight_selectors
from flights import services as flight_services
from flights.models import SeatHold
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, assert_problem, flight_row_locked
from tests.support.api import post_booking
from workflows.services import booking_cancel

# The in-process adapter joins the booking's transaction by default; here it commits each
# call on its own, so that the saga runs as it does over HTTP.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("saga_in_process")]

real_seats_change = flight_services.flight_seats_change
real_flight_get = flight_selectors.flight_get


def _connection_lost() -> OperationalError:
    return OperationalError("server closed the connection unexpectedly")


def _fail_seat_changes(monkeypatch, *, decrease: bool, apply_first: bool) -> list:
    """Seat changes in one direction fail; with `apply_first` the change commits first."""
    calls = []

    def flaky(**kwargs):
        calls.append(kwargs)
        if kwargs["decrease"] is not decrease:
            return real_seats_change(**kwargs)
        if apply_first:
            real_seats_change(**kwargs)
        raise _connection_lost()

    monkeypatch.setattr(flight_services, "flight_seats_change", flaky)
    return calls


def test_flight_lookup_fails(user_client, flight, monkeypatch):
    def down(**kwargs):
        raise _connection_lost()

    monkeypatch.setattr(flight_selectors, "flight_get", down)

    response = post_booking(user_client, flight)

    assert_problem(response, 503, "flight_service_unavailable")
    assert response["Retry-After"] == "5"
    assert not Booking.objects.exists()
    assert_bookings_match_ledger(flight)


def test_reserve_applied_but_answer_lost(user_client, flight, monkeypatch):
    _fail_seat_changes(monkeypatch, decrease=True, apply_first=True)

    assert_problem(post_booking(user_client, flight), 503, "flight_service_unavailable")

    booking = Booking.objects.get()
    assert (booking.status, booking.cancel_reason) == ("CANCELLED", "flight_service_unavailable")
    assert booking.seats_state == Booking.SeatsState.RELEASED
    assert SeatHold.objects.get(ref=booking.hold_ref).state == "released"
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity


def test_reserve_fails_before_applying(user_client, flight, monkeypatch):
    _fail_seat_changes(monkeypatch, decrease=True, apply_first=False)

    assert_problem(post_booking(user_client, flight), 503, "flight_service_unavailable")

    booking = Booking.objects.get()
    assert booking.status == "CANCELLED"
    assert booking.seats_state == Booking.SeatsState.RELEASED
    # The release left a tombstone, so the reserve cannot land late and strand seats.
    tombstone = SeatHold.objects.get(ref=booking.hold_ref)
    assert (tombstone.seats, tombstone.state) == (0, "released")
    with pytest.raises(ReservationConflict):
        real_seats_change(flight_id=flight.pk, seats=2, decrease=True, reservation=booking.hold_ref)
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity


def test_reserve_refused_because_another_customer_took_the_seats(user_client, other_user, monkeypatch):
    flight = make_flight(capacity=2)
    competitor: list[Booking] = []
    sold_out = threading.Event()

    def get_then_sell_out(**kwargs):
        found = real_flight_get(**kwargs)
        if not sold_out.is_set():  # Once: between our look-up and our reserve, someone books every seat.
            sold_out.set()
            competitor.append(booking_create(user=other_user, flight_id=flight.pk, seats=2))
        return found

    monkeypatch.setattr(flight_selectors, "flight_get", get_then_sell_out)

    assert_problem(post_booking(user_client, flight), 409, "insufficient_seats")

    ours = Booking.objects.exclude(pk=competitor[0].pk).get()
    assert (ours.status, ours.cancel_reason, ours.seats_state) == ("CANCELLED", "reservation_failed", "none")
    assert not SeatHold.objects.filter(ref=ours.hold_ref).exists()
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == 0


def test_reserve_and_its_compensation_both_fail_then_release_finishes(user, flight, monkeypatch):
    calls = []

    def down(**kwargs):
        calls.append(kwargs)
        if kwargs["decrease"]:
            real_seats_change(**kwargs)
        raise _connection_lost()

    monkeypatch.setattr(flight_services, "flight_seats_change", down)
    with pytest.raises(FlightServiceUnavailable):
        booking_create(user=user, flight_id=flight.pk, seats=2)

    booking = Booking.objects.get()
    assert [c["decrease"] for c in calls] == [True, False]
    assert booking.status == "CANCELLED"
    assert booking.release_owed and booking.seats_state == Booking.SeatsState.UNCONFIRMED
    assert booking.flight_service_error
    flight.refresh_from_db()
    assert flight.available_seats == flight.capacity - 2  # Held until cleanup gives it back.

    monkeypatch.setattr(flight_services, "flight_seats_change", real_seats_change)  # The database is back.
    assert booking_release_seats(booking_id=booking.pk).seats == 2
    assert booking_release_seats(booking_id=booking.pk).seats == 0
    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RELEASED and not booking.release_owed
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity


def test_release_fails_after_a_cancel_then_is_finished_later(user_client, flight, monkeypatch):
    created = post_booking(user_client, flight, 3).json()
    _fail_seat_changes(monkeypatch, decrease=False, apply_first=False)

    response = user_client.patch(f"/api/v1/bookings/{created['id']}/cancel")

    assert response.status_code == 200  # The cancel stands; the seats follow.
    assert response.json()["status"] == "CANCELLED"
    booking = Booking.objects.get(pk=created["id"])
    assert booking.release_owed and booking.seats_state == Booking.SeatsState.RESERVED
    flight.refresh_from_db()
    assert flight.available_seats == flight.capacity - 3

    monkeypatch.setattr(flight_services, "flight_seats_change", real_seats_change)
    assert booking_release_seats(booking_id=booking.pk).seats == 3
    assert booking_release_seats(booking_id=booking.pk).seats == 0
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity


def test_release_applied_but_answer_lost_is_not_applied_twice(user_client, flight, monkeypatch):
    created = post_booking(user_client, flight, 3).json()
    _fail_seat_changes(monkeypatch, decrease=False, apply_first=True)

    assert user_client.patch(f"/api/v1/bookings/{created['id']}/cancel").status_code == 200
    booking = Booking.objects.get(pk=created["id"])
    assert booking.release_owed  # We cannot know it arrived...

    monkeypatch.setattr(flight_services, "flight_seats_change", real_seats_change)
    booking_release_seats(booking_id=booking.pk)  # ...so we ask again, by reference: a no-op.
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity


def test_cancel_arriving_while_the_reserve_is_in_flight(user, flight, monkeypatch):
    """Staff cancel between the booking's commit and its reserve: the reserve must not land."""

    def cancel_first(**kwargs):
        if kwargs["decrease"]:
            booking_id = int(kwargs["reservation"].removeprefix("booking-"))
            booking_cancel(booking_id=booking_id, reason=Booking.CancelReason.STAFF)
        return real_seats_change(**kwargs)

    monkeypatch.setattr(flight_services, "flight_seats_change", cancel_first)

    with pytest.raises(ReservationConflict):
        booking_create(user=user, flight_id=flight.pk, seats=2)

    booking = Booking.objects.get()
    assert (booking.status, booking.cancel_reason) == ("CANCELLED", "staff")
    assert booking.seats_state == Booking.SeatsState.RELEASED
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity


def test_cleanup_finds_cancelled_bookings_that_owe_seats(user, flight, monkeypatch):
    """What the cleanup issue builds on: owed releases are a plain query."""
    booking = booking_create(user=user, flight_id=flight.pk, seats=1)
    _fail_seat_changes(monkeypatch, decrease=False, apply_first=False)
    booking_cancel(booking_id=booking.pk)

    owed = Booking.objects.filter(status="CANCELLED", seats_state__in=Booking.SEATS_OWED)
    assert list(owed) == [booking]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@override_settings(LOCK_TIMEOUT_MS=200)
def test_flight_row_locked_elsewhere_is_a_definite_refusal(user):
    flight = make_flight(capacity=5)
    with flight_row_locked(flight), pytest.raises(ResourceBusy):
        booking_create(user=user, flight_id=flight.pk, seats=1)

    booking = Booking.objects.get()
    assert (booking.status, booking.cancel_reason, booking.seats_state) == ("CANCELLED", "reservation_failed", "none")
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == 5
