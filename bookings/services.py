"""Booking writes: the saga between a booking row and the Flights service (DESIGN §1, §2).

Writing the booking and reserving its seats commit separately (the Flights service may be
another process), so every step has a compensation and every compensation is idempotent:
seat changes carry the booking's hold reference, and `Booking.seats_state` moves only by
compare-and-set, so that seats go back exactly once whoever tries, however often.

No database transaction or row lock is held across a call to the Flights service.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from bookings.flights_gateway import FlightGateway, get_flight_gateway
from bookings.models import Booking
from bookings_project.db import bound_lock_wait
from bookings_project.errors import (
    DomainError,
    FlightServiceUnavailable,
    InsufficientSeats,
    NotFound,
    PaymentInProgress,
    ResourceBusy,
    UserMismatch,
)

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")
Status, SeatsState, CancelReason = Booking.Status, Booking.SeatsState, Booking.CancelReason


@dataclass(frozen=True)
class Cancellation:
    booking: Booking
    # Seats this call gave back to the Flights service (0 if none, or already given back).
    seats_released: int


def booking_owner(*, caller: AbstractBaseUser, user_id: int | None) -> AbstractBaseUser:
    """Whom a booking is for: the caller, or (staff only) the customer named by `userId`."""
    if user_id is None or user_id == caller.pk:
        return caller
    if not caller.is_staff:
        raise UserMismatch()
    try:
        return get_user_model().objects.get(pk=user_id)
    except get_user_model().DoesNotExist:
        raise NotFound(f"User {user_id} does not exist.") from None


def booking_create(*, user: AbstractBaseUser, flight_id: int, seats: int) -> Booking:
    """Write the booking, then reserve its seats; on any failure leave nothing held.

    Answers the booking INITIATED with its seats reserved, or raises: a definite refusal
    (`NotFound`, `InsufficientSeats`, ...) or `FlightServiceUnavailable`.
    """
    gateway = get_flight_gateway()
    flight = gateway.get_flight(flight_id)
    if flight.available_seats < seats:
        raise InsufficientSeats(f"Flight {flight_id} has {max(flight.available_seats, 0)} seat(s) left; {seats} asked.")

    # Committed before the reserve, so a crash from here on leaves a row that cleanup sees.
    booking = Booking.objects.create(
        user=user,
        flight_id=flight_id,
        seats=seats,
        total_cost=(flight.price * seats).quantize(CENT),
        status=Status.INITIATED,
        seats_state=SeatsState.UNCONFIRMED,
        flight_keeps_holds=flight.keeps_holds,
        expires_at=timezone.now() + dt.timedelta(minutes=settings.BOOKING_HOLD_MINUTES),
    )
    try:
        change = gateway.reserve_seats(flight_id=flight_id, seats=seats, ref=booking.hold_ref)
    except FlightServiceUnavailable as error:
        _abandon_after_unknown_outcome(booking, error, gateway)
        raise
    except DomainError as error:
        # A definite no: nothing was taken, so there is nothing to give back.
        _cancel(booking, CancelReason.RESERVATION_FAILED, error=error.detail)
        _set_seats_state(booking, expect=SeatsState.UNCONFIRMED, to=SeatsState.NONE)
        raise

    reserved = _set_seats_state(
        booking, expect=SeatsState.UNCONFIRMED, to=SeatsState.RESERVED, flight_keeps_holds=change.keeps_holds
    )
    if not reserved:
        # Staff cancelled it while the reserve was in flight: give the seats back now.
        if not change.keeps_holds:
            # That cancel, not knowing the outcome, flagged it for a person; we now know
            # the seats were taken, so they can go back without one.
            _set_seats_state(booking, expect=SeatsState.RECONCILE, to=SeatsState.RESERVED, flight_keeps_holds=False)
        booking_release_seats(booking_id=booking.pk, gateway=gateway)
    booking.refresh_from_db()
    return booking


def booking_cancel(*, booking_id: int, reason: str = CancelReason.USER) -> Cancellation:
    """Cancel (a no-op if already cancelled), then give the seats back outside the lock.

    A BOOKED booking is refunded first, outside any transaction; a refund that fails raises
    `PaymentGatewayUnavailable` and leaves the booking BOOKED. A release that fails leaves
    the booking cancelled with its seats owed; cleanup retries.
    """
    from payments import selectors as payment_selectors
    from payments import services as payment_services

    # Twice at most: a booking seen unpaid may be paid before the lock is taken.
    for _ in range(2):
        booking = Booking.objects.filter(pk=booking_id).first()
        if booking is None:
            raise NotFound(f"Booking {booking_id} does not exist.")
        if booking.status == Status.BOOKED:
            payment_services.payment_refund_for_booking(booking_id=booking_id)

        with transaction.atomic():
            bound_lock_wait()
            booking = Booking.objects.select_for_update().get(pk=booking_id)
            if booking.status == Status.PENDING:
                raise PaymentInProgress(f"Booking {booking_id} has a payment in progress; cancel it once that is done.")
            if booking.status == Status.BOOKED and payment_selectors.booking_has_standing_charge(booking_id=booking_id):
                continue  # Paid since we looked: refund that payment first.
            if booking.status != Status.CANCELLED:
                booking.status = Status.CANCELLED
                booking.cancel_reason = reason
                booking.cancelled_at = timezone.now()
                booking.save(update_fields=["status", "cancel_reason", "cancelled_at", "updated_at"])
        released = booking_release_seats(booking_id=booking_id) if booking.release_owed else 0
        booking.refresh_from_db()
        return Cancellation(booking=booking, seats_released=released)
    raise ResourceBusy(f"Booking {booking_id} changed while it was being cancelled. Retry shortly.")


def booking_expire(*, booking: Booking) -> bool:
    """Cancel an unpaid booking whose hold ran out. Call it holding the booking's row lock,
    then release its seats after the commit. True if this call cancelled it."""
    if booking.status != Status.INITIATED or timezone.now() < booking.expires_at:
        return False
    return _cancel(booking, CancelReason.EXPIRED)


def booking_release_seats(*, booking_id: int, gateway: FlightGateway | None = None) -> int:
    """Give a cancelled booking's seats back, once. Answers the seats this call moved.

    Safe to call any number of times, from anywhere (cancel, saga, cleanup), concurrently.
    A failure is recorded on the booking, which stays owed for the next try.
    """
    booking = Booking.objects.get(pk=booking_id)
    if not booking.release_owed:
        return 0
    gateway = gateway or get_flight_gateway()
    if not booking.flight_keeps_holds:
        return _release_without_holds(booking, gateway)
    try:
        change = gateway.release_seats(flight_id=booking.flight_id, seats=booking.seats, ref=booking.hold_ref)
    except (FlightServiceUnavailable, ResourceBusy) as error:
        logger.warning("booking %s: release failed, left for cleanup: %s", booking.pk, error.detail)
        _record_error(booking, error.detail)
        return 0
    except DomainError as error:
        # The ledger disagrees with us (e.g. another seat count): never guess, flag it.
        logger.error("booking %s: release refused, needs reconciliation: %s", booking.pk, error.detail)
        _set_seats_state(booking, expect=booking.seats_state, to=SeatsState.RECONCILE, error=error.detail)
        return 0
    if _set_seats_state(booking, expect=booking.seats_state, to=SeatsState.RELEASED, released=True):
        return change.hold_seats or 0
    return 0


def _release_without_holds(booking: Booking, gateway: FlightGateway) -> int:
    """Against a service that keeps no holds a release is not idempotent: claim it first,
    send it once, and if its outcome is unknown hand it to a person, never resend."""
    if booking.seats_state != SeatsState.RESERVED:
        # We do not know that the seats were ever taken: a blind release could create seats.
        _set_seats_state(booking, expect=booking.seats_state, to=SeatsState.RECONCILE)
        return 0
    if not _set_seats_state(booking, expect=SeatsState.RESERVED, to=SeatsState.RELEASING):
        return 0  # Another caller claimed this release.
    try:
        gateway.release_seats(flight_id=booking.flight_id, seats=booking.seats, ref=booking.hold_ref)
    except (FlightServiceUnavailable, ResourceBusy) as error:
        # Busy is a definite "nothing changed"; an outage may or may not have applied it.
        retry_is_safe = not getattr(error, "maybe_applied", False)
        _set_seats_state(
            booking,
            expect=SeatsState.RELEASING,
            to=SeatsState.RESERVED if retry_is_safe else SeatsState.RECONCILE,
            error=error.detail,
        )
        return 0
    except DomainError as error:
        _set_seats_state(booking, expect=SeatsState.RELEASING, to=SeatsState.RECONCILE, error=error.detail)
        return 0
    _set_seats_state(booking, expect=SeatsState.RELEASING, to=SeatsState.RELEASED, released=True)
    return booking.seats


def _abandon_after_unknown_outcome(booking: Booking, error: FlightServiceUnavailable, gateway: FlightGateway) -> None:
    """The reserve may or may not have happened: cancel, then give back whatever is held."""
    _cancel(booking, CancelReason.FLIGHT_SERVICE_UNAVAILABLE, error=error.detail)
    if booking.flight_keeps_holds:
        # By reference: a no-op if the reserve never arrived, and it bars a late one.
        booking_release_seats(booking_id=booking.pk, gateway=gateway)
    else:
        outcome = SeatsState.RECONCILE if error.maybe_applied else SeatsState.NONE
        _set_seats_state(booking, expect=SeatsState.UNCONFIRMED, to=outcome, error=error.detail)


def _cancel(booking: Booking, reason: str, *, error: str = "") -> bool:
    """Cancel an INITIATED booking; True if this call did it."""
    now = timezone.now()
    return (
        Booking.objects.filter(pk=booking.pk, status=Status.INITIATED).update(
            status=Status.CANCELLED,
            cancel_reason=reason,
            cancelled_at=now,
            updated_at=now,
            flight_service_error=error[:255],
        )
        == 1
    )


def _set_seats_state(
    booking: Booking,
    *,
    expect: str,
    to: str,
    error: str | None = None,
    released: bool = False,
    flight_keeps_holds: bool | None = None,
) -> bool:
    """Compare-and-set on `seats_state`: True if this call made the move, False if the
    booking had moved on meanwhile (another caller did it, or cancelled it first)."""
    now = timezone.now()
    changes: dict = {"seats_state": to, "updated_at": now}
    if error is not None:
        changes["flight_service_error"] = error[:255]
    if released:
        changes["seats_released_at"] = now
    if flight_keeps_holds is not None:
        changes["flight_keeps_holds"] = flight_keeps_holds
    return Booking.objects.filter(pk=booking.pk, seats_state=expect).update(**changes) == 1


def _record_error(booking: Booking, error: str) -> None:
    now = timezone.now()
    Booking.objects.filter(pk=booking.pk).update(flight_service_error=error[:255], updated_at=now)
