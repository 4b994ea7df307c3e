"""Test data builders: real rows through the real services.

Each builder reaches its state the way production does (booking, paying, cancelling,
running cleanup), never by writing a status by hand, and asserts it got there:

- `make_flight(...)`: a flight with a ledger, through `flight_create`.
- `initiated(user, flight)`: a booking INITIATED with its seats reserved.
- `pay(user, booking)`: `payment_create` for the booking's full amount (raises what it raises).
- `paid(user, flight)`: BOOKED, its payment SUCCEEDED: `Paid(booking, payment, charge)`.
- `pending_never_charged(user, flight)`: PENDING, the payment PROCESSING; the request died
  before the gateway was asked: `Pending(booking, payment)`.
- `pending_answer_lost(user, flight, settings)`: PENDING, the payment PROCESSING; the
  gateway charged and the answer was lost: `Paid(booking, payment, charge)`.
- `cancel_cut_short(user, flight)`: BOOKED with a cancel asked for (`cancel_requested_at`)
  whose refund failed: `Paid(booking, payment, charge)`.
- `release_owed(user, flight)`: CANCELLED while the Flights service was down, the release owed.
- `late_charge(user, flight, clock)`: cleanup expired a never-charged booking, then the
  gateway applied the queued charge with no request left: `Pending(booking, payment)`.
- `stranded_payment(user, flight, clock)`: money that landed after cleanup expired its
  booking, whose refund then failed: a SUCCEEDED payment on a CANCELLED booking.

The simulated payment gateway's faults used to get there (`RequestDied`,
`DiesBeforeCharging`, `LosesTheAnswer`, `RefundsDown`, `refund_down`) are here too.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import asdict
from decimal import Decimal
from typing import NamedTuple
from unittest import mock

import pytest
from django.db import OperationalError
from django.utils import timezone

from bookings.models import Booking
from bookings.services import booking_create
from bookings_project.exceptions import PaymentGatewayUnavailable
from flights import services as flight_services
from flights.models import Flight
from flights.services import flight_create
from payments import services as payment_services
from payments.gateway import SimulatedPaymentGateway
from payments.models import Payment, SimulatedCharge
from tests.support.cleanup import counts
from workflows.cleanup import cleanup_stale_bookings
from workflows.services import booking_cancel

_numbers = itertools.count(100)


def make_flight(*, capacity: int = 120, price: str = "5500.00", **overrides) -> Flight:
    departure = timezone.now().replace(microsecond=0) + dt.timedelta(days=30)
    fields = {
        "flight_number": f"UK{next(_numbers)}",
        "departure_airport": "BOM",
        "arrival_airport": "DEL",
        "departure_time": departure,
        "arrival_time": departure + dt.timedelta(hours=2, minutes=10),
        "price": Decimal(price),
        "capacity": capacity,
    }
    fields.update(overrides)
    return flight_create(**fields)


# Bookings and payments ----------------------------------------------------------------------

SEATS = 2
PAST_THE_HOLD = {"minutes": 10, "seconds": 1}  # From booking: past expires_at, and an attempt made then is over.


class Paid(NamedTuple):
    booking: Booking
    payment: Payment
    charge: SimulatedCharge


class Pending(NamedTuple):
    booking: Booking
    payment: Payment


class RequestDied(BaseException):
    """The worker is killed mid-request: not an `Exception`, so nothing under test catches it."""


class DiesBeforeCharging(SimulatedPaymentGateway):
    """The request dies after the payment was written PROCESSING, before the gateway was asked."""

    def charge(self, **kwargs):
        raise RequestDied("the request died before the charge was sent")


class LosesTheAnswer(SimulatedPaymentGateway):
    """Applies the charge (as PAYMENT_SIMULATED_OUTCOME says), then the answer is lost."""

    def charge(self, **kwargs):
        super().charge(**kwargs)
        raise PaymentGatewayUnavailable("The answer to the charge was lost.")


def refund_down(self, *, payment):
    """A simulated gateway's `refund` that refuses before refunding anything."""
    raise PaymentGatewayUnavailable("The simulated gateway is down (refund).", maybe_charged=False)


class RefundsDown(SimulatedPaymentGateway):
    refund = refund_down


def initiated(user, flight: Flight, seats: int = SEATS) -> Booking:
    """A booking INITIATED with its seats reserved."""
    booking = booking_create(user=user, flight_id=flight.pk, seats=seats)
    assert (booking.status, booking.seats_state) == (Booking.Status.INITIATED, Booking.SeatsState.RESERVED)
    return booking


def pay(user, booking: Booking, *, key: str = "k1", gateway=None) -> Payment:
    """Pay the booking's full amount under `key`, as the payment view does."""
    return payment_services.payment_create(
        caller=user, booking_id=booking.pk, amount=booking.total_cost, idempotency_key=key, gateway=gateway
    )


def reload(booking: Booking) -> Booking:
    return Booking.objects.get(pk=booking.pk)


def paid(user, flight: Flight, seats: int = SEATS, *, key: str = "k1") -> Paid:
    """BOOKED, its payment SUCCEEDED, the simulated gateway's charge standing."""
    booking = initiated(user, flight, seats)
    payment = pay(user, booking, key=key)
    booking.refresh_from_db()
    assert (booking.status, payment.status) == (Booking.Status.BOOKED, Payment.Status.SUCCEEDED)
    return Paid(booking, payment, SimulatedCharge.objects.get(reference=payment.reference))


def expect_pending(booking: Booking) -> Pending:
    """The booking is PENDING with its seats held, its one payment PROCESSING."""
    booking.refresh_from_db()
    payment = Payment.objects.get(booking=booking)
    assert (booking.status, booking.seats_state) == (Booking.Status.PENDING, Booking.SeatsState.RESERVED)
    assert payment.status == Payment.Status.PROCESSING
    return Pending(booking, payment)


def pending_never_charged(user, flight: Flight, seats: int = SEATS, *, key: str = "k1") -> Pending:
    """A PENDING booking whose PROCESSING payment never reached the gateway (the request died)."""
    booking = initiated(user, flight, seats)
    with pytest.raises(RequestDied):
        pay(user, booking, key=key, gateway=DiesBeforeCharging())
    return expect_pending(booking)


def pending_answer_lost(user, flight: Flight, settings, seats: int = SEATS, *, key: str = "k1") -> Paid:
    """A PENDING booking whose charge went through at the gateway, the answer lost on the way
    back. Leaves PAYMENT_SIMULATED_OUTCOME at "lose_answer": a retry is charged-and-lost again."""
    booking = initiated(user, flight, seats)
    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    with pytest.raises(PaymentGatewayUnavailable):
        pay(user, booking, key=key)
    booking, payment = expect_pending(booking)
    charge = SimulatedCharge.objects.get(reference=payment.reference)
    assert (charge.status, charge.amount) == (SimulatedCharge.Status.SUCCEEDED, booking.total_cost)
    return Paid(booking, payment, charge)


def cancel_cut_short(
    user, flight: Flight, seats: int = SEATS, *, key: str = "k1", reason: str = Booking.CancelReason.USER
) -> Paid:
    """A paid booking whose cancel was asked for, and cut short: its refund failed. Still
    BOOKED with its seats, `cancel_requested_at` set, the reason asked kept."""
    booking, payment, charge = paid(user, flight, seats, key=key)
    with pytest.raises(PaymentGatewayUnavailable):
        booking_cancel(booking_id=booking.pk, reason=reason, payment_gateway=RefundsDown())
    booking = reload(booking)
    assert (booking.status, booking.seats_state, booking.cancel_reason) == (
        Booking.Status.BOOKED,
        Booking.SeatsState.RESERVED,
        reason,
    )
    assert booking.cancel_requested_at is not None
    return Paid(booking, payment, charge)


def release_owed(user, flight: Flight, seats: int = SEATS) -> Booking:
    """CANCELLED by its customer while the Flights service was down: the seats still held
    there, their release owed (for cleanup's retry)."""

    def flights_down(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    booking = initiated(user, flight, seats)
    with mock.patch.object(flight_services, "flight_seats_change", flights_down):
        assert booking_cancel(booking_id=booking.pk).booking.release_owed
    booking = reload(booking)
    assert (booking.status, booking.seats_state) == (Booking.Status.CANCELLED, Booking.SeatsState.RESERVED)
    return booking


def late_charge(user, flight: Flight, clock, seats: int = SEATS) -> Pending:
    """A charge the gateway applied after cleanup had expired its booking, with no request
    left to record it: the booking CANCELLED, the payment FAILED, the charge standing."""
    booking, payment = pending_never_charged(user, flight, seats)  # The request died; its charge is still queued.
    clock.advance(**PAST_THE_HOLD)
    assert asdict(cleanup_stale_bookings()) == counts(expired=1, released_seats=seats)
    # The gateway applies the queued charge now (its own processing, under the forwarded key).
    SimulatedPaymentGateway().charge(
        amount=payment.amount, currency=payment.currency, reference=payment.reference, idempotency_key=payment.reference
    )
    return Pending(reload(booking), payment)


def stranded_payment(user, flight: Flight, clock, seats: int = 5, *, key: str = "late") -> Payment:
    """Money that arrived after cleanup had expired its booking, and whose refund failed: a
    SUCCEEDED payment on a CANCELLED booking (the late-money path of `_record_charge`)."""
    booking = initiated(user, flight, seats)

    class SlowChargeRefundDown(SimulatedPaymentGateway):
        def charge(self, **kwargs):
            # The request stalls past the hold and the attempt window; meanwhile cleanup
            # finds no charge and expires the booking; then the charge lands after all.
            clock.advance(minutes=11)
            counts = cleanup_stale_bookings()
            assert (counts.expired, counts.released_seats, counts.failed) == (1, seats, 0)
            return super().charge(**kwargs)

        refund = refund_down

    with pytest.raises(PaymentGatewayUnavailable):
        pay(user, booking, key=key, gateway=SlowChargeRefundDown())
    payment = Payment.objects.get(booking=booking)
    assert payment.status == Payment.Status.SUCCEEDED
    assert SimulatedCharge.objects.get(reference=payment.reference).status == SimulatedCharge.Status.SUCCEEDED
    booking = reload(booking)
    assert (booking.status, booking.seats_state) == (Booking.Status.CANCELLED, Booking.SeatsState.RELEASED)
    return payment
