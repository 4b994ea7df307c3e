"""The use cases that need both a booking and its money (docs/design.md#layers).

Cancelling a paid booking refunds it first; reconciling an expired PENDING booking asks the
payment gateway what became of its charge. Each runs the bookings and payments services in
its order, with no transaction or row lock held across a call to the gateway or to the
Flights service.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from enum import StrEnum

from django.db import transaction
from django.utils import timezone

# Modules, not names: the crash-safety tests wrap these steps where they are looked up.
from bookings import services as booking_services
from bookings.flights_gateway import FlightGateway
from bookings.models import Booking, BookingEvent
from bookings_project.db import bound_lock_wait
from bookings_project.exceptions import NotFound, PaymentInProgress, ResourceBusy
from payments import selectors as payment_selectors
from payments import services as payment_services
from payments.gateway import PaymentGateway
from payments.models import Payment

logger = logging.getLogger(__name__)

Status, CancelReason = Booking.Status, Booking.CancelReason


@dataclass(frozen=True)
class Cancellation:
    booking: Booking
    # Seats this call gave back to the Flights service (0 if none, or already given back).
    seats_released: int
    # This call made it CANCELLED (False: it was already).
    cancelled_now: bool = False
    # The payments this call refunded first (a BOOKED booking's; at most one), as refunded.
    refunds: tuple[Payment, ...] = ()


def booking_cancel(
    *,
    booking_id: int,
    reason: str = CancelReason.USER,
    payment_gateway: PaymentGateway | None = None,
    flight_gateway: FlightGateway | None = None,
) -> Cancellation:
    """Cancel (a no-op if already cancelled), then give the seats back outside the lock.

    A BOOKED booking is refunded first, outside any transaction; a refund that fails raises
    `PaymentGatewayUnavailable` and leaves the booking BOOKED. A release that fails leaves
    the booking cancelled with its seats owed; cleanup retries.
    """
    refunds: list[Payment] = []
    # Twice at most: a booking seen unpaid may be paid before the lock is taken.
    for _ in range(2):
        booking = Booking.objects.filter(pk=booking_id).first()
        if booking is None:
            raise NotFound(f"Booking {booking_id} does not exist.")
        if booking.status == Status.BOOKED:
            # Written before the refund: if we die or the gateway fails, cleanup finishes it.
            booking_services.booking_request_cancel(booking_id=booking_id, reason=reason)
            refunds += payment_services.payment_refund_for_booking(booking_id=booking_id, gateway=payment_gateway)

        cancelled_now = False
        with transaction.atomic():
            bound_lock_wait()
            booking = Booking.objects.select_for_update().get(pk=booking_id)
            if booking.status == Status.PENDING:
                raise PaymentInProgress(f"Booking {booking_id} has a payment in progress; cancel it once that is done.")
            if booking.status == Status.BOOKED and payment_selectors.booking_has_standing_charge(booking_id=booking_id):
                continue  # Paid since we looked: refund that payment first.
            if booking.status != Status.CANCELLED:
                # A cancel cut short and finished later keeps the reason it was asked with.
                booking.cancel_reason = booking.cancel_reason or reason
                booking.cancelled_at = timezone.now()
                booking_services.booking_move(
                    booking, to=Status.CANCELLED, reason=booking.cancel_reason, also=("cancel_reason", "cancelled_at")
                )
                cancelled_now = True
        released = (
            booking_services.booking_release_seats(booking_id=booking_id, gateway=flight_gateway).seats
            if booking.release_owed
            else 0
        )
        booking.refresh_from_db()
        return Cancellation(
            booking=booking, seats_released=released, cancelled_now=cancelled_now, refunds=tuple(refunds)
        )
    raise ResourceBusy(f"Booking {booking_id} changed while it was being cancelled. Retry shortly.")


class Reconciliation(StrEnum):
    """What reconciling an expired PENDING booking with the gateway came to."""

    BOOKED = "booked"  # The charge had gone through: the booking is paid after all.
    CANCELLED = "cancelled"  # No money stands: the booking expired; its seats are owed.
    SKIPPED = "skipped"  # Not settled now: its attempt may still run, or another process has it.


def payment_reconcile_expired(
    *,
    booking_id: int,
    expired_before: dt.datetime,
    attempted_before: dt.datetime,
    gateway: PaymentGateway | None = None,
) -> Reconciliation:
    """Cleanup: settle a PENDING booking whose hold ran out by asking the gateway what became
    of its payment (the answer to the charge was lost, or the process died before recording
    it).

    Its payment attempt must be older than `attempted_before` (the attempt window, so the
    request that made it is over). The look-up runs outside any transaction; then, under the
    booking's lock (skipped if another process holds it), nothing may have moved meanwhile:
    a resumed attempt bumps `attempted_at`, and is left alone. A charge that lands after
    this settled it as not charged is refunded: by the payment's own request if it is still
    there to get the answer, else by cleanup (`payment_refund_late_charge`).
    Raises `PaymentGatewayUnavailable` when the gateway cannot say.
    """
    payment = payment_selectors.payment_in_flight(booking_id=booking_id)
    if payment is not None and payment.attempted_at > attempted_before:
        return Reconciliation.SKIPPED
    charge = payment_services.payment_find_charge(payment=payment, gateway=gateway) if payment is not None else None

    with transaction.atomic():
        booking = (
            Booking.objects.select_for_update(skip_locked=True)
            .filter(pk=booking_id, status=Status.PENDING, expires_at__lte=expired_before)
            .first()
        )
        if booking is None:
            return Reconciliation.SKIPPED
        current = payment_selectors.payment_in_flight(booking_id=booking.pk, lock=True)
        if _attempt(current) != _attempt(payment):
            return Reconciliation.SKIPPED  # Resumed or replaced since we looked.
        if payment_services.payment_settle_from_gateway(payment=current, charge=charge):
            booking_services.booking_move(booking, to=Status.BOOKED, reason=BookingEvent.Reason.RECONCILED_CHARGED)
            logger.info("booking %s: reconciled, the gateway had charged payment %s: BOOKED", booking.pk, current.pk)
            return Reconciliation.BOOKED
        booking_services.booking_expire(booking=booking, payment_settled=True)
        logger.info("booking %s: reconciled, no money stands: expired", booking.pk)
        return Reconciliation.CANCELLED


def _attempt(payment: Payment | None) -> tuple | None:
    return None if payment is None else (payment.pk, payment.attempted_at)
