"""Booking writes: the saga between a booking row and the Flights service (docs/design.md#the-saga, #state-machine).

In process, the inventory shares our database and a booking takes its seats in its own
transaction: nothing to compensate. Over HTTP (another process, another database), writing
the booking and reserving its seats commit separately, so every step has a compensation
and every compensation is idempotent: seat changes carry the booking's hold reference, and
`Booking.seats_state` moves only by compare-and-set, so that seats go back exactly once
whoever tries, however often.

No database transaction or row lock is held across a call to the Flights service.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, transaction
from django.utils import timezone

from bookings.audit import record_status_change, record_status_changes
from bookings.flights_gateway import FlightGateway, FlightInfo, HoldToRelease, get_flight_gateway
from bookings.models import Booking, BookingEvent
from bookings_project import statements
from bookings_project.exceptions import (
    DomainError,
    FlightServiceUnavailable,
    InsufficientSeats,
    NotFound,
    ResourceBusy,
    UserMismatch,
)

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")
Status, SeatsState, CancelReason = Booking.Status, Booking.SeatsState, Booking.CancelReason


@dataclass(frozen=True)
class SeatRelease:
    """What one call of `booking_release_seats` did."""

    class Outcome(StrEnum):
        RELEASED = "released"  # This call gave the seats back.
        NOT_OWED = "not_owed"  # Nothing to give back, or another caller did it.
        FAILED = "failed"  # The Flights service did not confirm: still owed, retried later.
        RECONCILE = "reconcile"  # Only a person can tell what the Flights service holds.

    outcome: Outcome
    # Seats the Flights service took back (0 when the reserve had never reached it).
    seats: int = 0

    @property
    def failed(self) -> bool:
        return self.outcome in (self.Outcome.FAILED, self.Outcome.RECONCILE)


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
    if gateway.joins_transactions:
        return _book_in_one_transaction(gateway, user=user, flight_id=flight_id, seats=seats)
    flight = gateway.recent_flight(flight_id)
    if flight is None or flight.available_seats < seats:
        flight = _bookable_flight(gateway, flight_id=flight_id, seats=seats)
    # Committed before the reserve, so a crash from here on leaves a row that cleanup sees.
    with transaction.atomic():
        booking = _write_booking(user=user, flight=flight, seats=seats, seats_state=SeatsState.UNCONFIRMED)
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

    # Priced as the seats were taken: the answer says the price then, which may not be the
    # price the booking was written at (a remembered flight's, or one read before a change).
    price = change.flight.price if change.flight is not None else flight.price
    reserved = _set_seats_state(
        booking,
        expect=SeatsState.UNCONFIRMED,
        to=SeatsState.RESERVED,
        flight_keeps_holds=change.keeps_holds,
        total_cost=_total_cost(price, seats),
    )
    if not reserved:
        # Staff cancelled it while the reserve was in flight: give the seats back now.
        if not change.keeps_holds:
            # That cancel, not knowing the outcome, flagged it for a person; we now know
            # the seats were taken, so they can go back without one.
            _set_seats_state(booking, expect=SeatsState.RECONCILE, to=SeatsState.RESERVED, flight_keeps_holds=False)
        booking_release_seats(booking_id=booking.pk, gateway=gateway)
        booking.refresh_from_db()  # Cancelled, its seats given back: answer what it is now.
    return booking


def _book_in_one_transaction(gateway: FlightGateway, *, user: AbstractBaseUser, flight_id: int, seats: int) -> Booking:
    """Booking, hold, event and seats commit together or not at all: a failure anywhere,
    even at COMMIT, leaves no half to compensate (docs/design.md#the-flights-service-boundary).

    The flight's price is read unlocked first, and its seats are taken last, so that its row
    (every booking of a hot flight queues on it) is locked only for the UPDATE and the COMMIT.
    """
    for _ in range(3):
        flight = _bookable_flight(gateway, flight_id=flight_id, seats=seats)
        with transaction.atomic():
            booking = _write_booking(user=user, flight=flight, seats=seats, seats_state=SeatsState.RESERVED)
            gateway.hold_seats(flight_id=flight_id, seats=seats, ref=booking.hold_ref)
            if gateway.take_seats(flight_id=flight_id, seats=seats, price=flight.price):
                return booking
            transaction.set_rollback(True)  # The price changed meanwhile: book again at the new one.
    raise ResourceBusy("The flight's price kept changing while booking. Retry shortly.")


def _bookable_flight(gateway: FlightGateway, *, flight_id: int, seats: int) -> FlightInfo:
    """The flight as the Flights service has it, refused at once when too few seats are left."""
    flight = gateway.get_flight(flight_id)
    if flight.available_seats < seats:
        raise InsufficientSeats(f"Flight {flight_id} has {max(flight.available_seats, 0)} seat(s) left; {seats} asked.")
    return flight


def _write_booking(*, user: AbstractBaseUser, flight: FlightInfo, seats: int, seats_state: str) -> Booking:
    """A new booking INITIATED at the flight's price, and its creation event, in the caller's transaction."""
    booking = statements.insert(
        Booking(
            user=user,
            flight_id=flight.id,
            seats=seats,
            total_cost=_total_cost(flight.price, seats),
            currency=flight.currency or settings.CURRENCY,
            status=Status.INITIATED,
            seats_state=seats_state,
            flight_keeps_holds=flight.keeps_holds,
            expires_at=timezone.now() + dt.timedelta(minutes=settings.BOOKING_HOLD_MINUTES),
        )
    )
    record_status_change(
        booking_id=booking.pk, from_status="", to_status=Status.INITIATED, reason=BookingEvent.Reason.CREATED
    )
    return booking


def _total_cost(price: Decimal, seats: int) -> Decimal:
    return (price * seats).quantize(CENT)


def booking_move(
    booking: Booking, *, to: str, reason: str, actor: str | None = None, also: tuple[str, ...] = ()
) -> None:
    """Change the status of a booking whose row lock the caller holds, and record the change
    in the audit trail in the same transaction. `also` names other fields set on it."""
    from_status, booking.status = booking.status, to
    booking.save(update_fields=["status", "updated_at", *also])
    record_status_change(booking_id=booking.pk, from_status=from_status, to_status=to, reason=reason, actor=actor)


def booking_expire(*, booking: Booking, payment_settled: bool = False) -> bool:
    """Cancel an unpaid booking whose hold ran out. Call it holding the booking's row lock,
    then release its seats after the commit. True if this call cancelled it.

    A PENDING booking expires only once reconciliation has found that its payment took no
    money (`payment_settled`): a PENDING one that was charged is BOOKED instead.
    """
    expirable = (Status.INITIATED, Status.PENDING) if payment_settled else (Status.INITIATED,)
    if booking.status not in expirable or timezone.now() < booking.expires_at:
        return False
    return _cancel(booking, CancelReason.EXPIRED, from_status=booking.status)


def booking_expire_stale(*, booking_id: int, expired_before: dt.datetime) -> bool:
    """Cleanup: cancel an INITIATED booking whose hold ended before `expired_before`.

    A booking another process holds locked is skipped (the next run gets it), and its state
    is checked again under the lock. True if this call cancelled it: its seats are then owed,
    to be released after this returns.
    """
    with transaction.atomic():
        booking = (
            Booking.objects.select_for_update(skip_locked=True)
            .filter(pk=booking_id, status=Status.INITIATED, expires_at__lte=expired_before)
            .first()
        )
        return booking is not None and booking_expire(booking=booking)


def booking_flag_stuck_release(*, booking_id: int, updated_before: dt.datetime) -> bool:
    """Cleanup: a release sent to a Flights service that keeps no holds, and never recorded
    (the process died mid-call). Resending could give back seats twice: hand it to a person."""
    flagged = (
        Booking.objects.filter(pk=booking_id, seats_state=SeatsState.RELEASING, updated_at__lte=updated_before).update(
            seats_state=SeatsState.RECONCILE,
            flight_service_error="The release was cut short; check the Flights service's seat count.",
            updated_at=timezone.now(),
        )
        == 1
    )
    if flagged:
        logger.error("booking %s: release cut short on a service without holds; needs reconciliation", booking_id)
    return flagged


def booking_release_seats(*, booking_id: int, gateway: FlightGateway | None = None) -> SeatRelease:
    """Give a cancelled booking's seats back, once, and say what this call did.

    Safe to call any number of times, from anywhere (cancel, saga, cleanup), concurrently.
    A failure is recorded on the booking, which stays owed for the next try.
    """
    Outcome = SeatRelease.Outcome
    booking = Booking.objects.get(pk=booking_id)
    if not booking.release_owed:
        return SeatRelease(Outcome.NOT_OWED)
    gateway = gateway or get_flight_gateway()
    if not booking.flight_keeps_holds:
        return _release_without_holds(booking, gateway)
    try:
        change = gateway.release_seats(flight_id=booking.flight_id, seats=booking.seats, ref=booking.hold_ref)
    except (FlightServiceUnavailable, ResourceBusy) as error:
        logger.warning("booking %s: release failed, left for cleanup: %s", booking.pk, error.detail)
        _record_error(booking, error.detail)
        return SeatRelease(Outcome.FAILED)
    except DomainError as error:
        # The ledger disagrees with us (e.g. another seat count): never guess, flag it.
        logger.error("booking %s: release refused, needs reconciliation: %s", booking.pk, error.detail)
        if _set_seats_state(booking, expect=booking.seats_state, to=SeatsState.RECONCILE, error=error.detail):
            return SeatRelease(Outcome.RECONCILE)
        return SeatRelease(Outcome.NOT_OWED)
    if _set_seats_state(booking, expect=booking.seats_state, to=SeatsState.RELEASED, released=True):
        return SeatRelease(Outcome.RELEASED, change.hold_seats or 0)
    return SeatRelease(Outcome.NOT_OWED)


def _release_without_holds(booking: Booking, gateway: FlightGateway) -> SeatRelease:
    """Against a service that keeps no holds a release is not idempotent: claim it first,
    send it once, and if its outcome is unknown hand it to a person, never resend."""
    Outcome = SeatRelease.Outcome
    if booking.seats_state != SeatsState.RESERVED:
        # We do not know that the seats were ever taken: a blind release could create seats.
        flagged = _set_seats_state(booking, expect=booking.seats_state, to=SeatsState.RECONCILE)
        return SeatRelease(Outcome.RECONCILE if flagged else Outcome.NOT_OWED)
    if not _set_seats_state(booking, expect=SeatsState.RESERVED, to=SeatsState.RELEASING):
        return SeatRelease(Outcome.NOT_OWED)  # Another caller claimed this release.
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
        return SeatRelease(Outcome.FAILED if retry_is_safe else Outcome.RECONCILE)
    except DomainError as error:
        _set_seats_state(booking, expect=SeatsState.RELEASING, to=SeatsState.RECONCILE, error=error.detail)
        return SeatRelease(Outcome.RECONCILE)
    _set_seats_state(booking, expect=SeatsState.RELEASING, to=SeatsState.RELEASED, released=True)
    return SeatRelease(Outcome.RELEASED, booking.seats)


def _abandon_after_unknown_outcome(booking: Booking, error: FlightServiceUnavailable, gateway: FlightGateway) -> None:
    """The reserve may or may not have happened: cancel, then give back whatever is held."""
    _cancel(booking, CancelReason.FLIGHT_SERVICE_UNAVAILABLE, error=error.detail)
    if booking.flight_keeps_holds:
        # By reference: a no-op if the reserve never arrived, and it bars a late one.
        booking_release_seats(booking_id=booking.pk, gateway=gateway)
    else:
        outcome = SeatsState.RECONCILE if error.maybe_applied else SeatsState.NONE
        _set_seats_state(booking, expect=SeatsState.UNCONFIRMED, to=outcome, error=error.detail)


def booking_request_cancel(*, booking_id: int, reason: str) -> None:
    """Record that a paid booking is to be cancelled, before its refund: if the refund or the
    process fails, cleanup finishes the cancel. The first request's reason wins."""
    now = timezone.now()
    Booking.objects.filter(pk=booking_id, status=Status.BOOKED, cancel_requested_at__isnull=True).update(
        cancel_requested_at=now, cancel_reason=reason, updated_at=now
    )


def _cancel(booking: Booking, reason: str, *, error: str = "", from_status: str = Status.INITIATED) -> bool:
    """Cancel an unpaid booking (INITIATED, or PENDING once its payment is settled as not
    charged); True if this call did it."""
    now = timezone.now()
    with transaction.atomic():
        cancelled = (
            Booking.objects.filter(pk=booking.pk, status=from_status).update(
                status=Status.CANCELLED,
                cancel_reason=reason,
                cancelled_at=now,
                updated_at=now,
                flight_service_error=error[:255],
            )
            == 1
        )
        if cancelled:
            record_status_change(
                booking_id=booking.pk, from_status=from_status, to_status=Status.CANCELLED, reason=reason
            )
    return cancelled


def _set_seats_state(
    booking: Booking,
    *,
    expect: str,
    to: str,
    error: str | None = None,
    released: bool = False,
    flight_keeps_holds: bool | None = None,
    total_cost: Decimal | None = None,
) -> bool:
    """Compare-and-set on `seats_state`: True if this call made the move (and then `booking`
    in memory shows it), False if the booking had moved on meanwhile (another caller did it,
    or cancelled it first)."""
    now = timezone.now()
    changes: dict = {"seats_state": to, "updated_at": now}
    if error is not None:
        changes["flight_service_error"] = error[:255]
    if released:
        changes["seats_released_at"] = now
    if flight_keeps_holds is not None:
        changes["flight_keeps_holds"] = flight_keeps_holds
    if total_cost is not None:
        changes["total_cost"] = total_cost
    if statements.update(Booking, where={"pk": booking.pk, "seats_state": expect}, values=changes) != 1:
        return False
    for name, value in changes.items():
        setattr(booking, name, value)
    return True


def _record_error(booking: Booking, error: str) -> None:
    now = timezone.now()
    Booking.objects.filter(pk=booking.pk).update(flight_service_error=error[:255], updated_at=now)


@dataclass(frozen=True)
class ExpiredBatch:
    """What one call of `booking_expire_stale_batch` did."""

    # The ids it locked, in id order: the next batch starts after the last.
    claimed: tuple[int, ...] = ()
    # Booking id -> seats given back, for each one it expired.
    expired: dict[int, int] = field(default_factory=dict)
    # Why the batch failed; it then changed nothing (and `claimed` may be short).
    error: str = ""

    @property
    def left(self) -> list[int]:
        """Locked but not expired here (seats not plainly reserved, or a hold the ledger does
        not hold so): for the one-booking path, `booking_expire_stale` then `booking_release_seats`."""
        return [pk for pk in self.claimed if pk not in self.expired]


def booking_expire_stale_batch(
    *, expired_before: dt.datetime, after_id: int, limit: int, gateway: FlightGateway
) -> ExpiredBatch:
    """Cleanup, on an inventory that joins our transactions (`gateway.joins_transactions`):
    expire up to `limit` INITIATED bookings whose hold ended before `expired_before`, with ids
    after `after_id`, in one transaction (docs/design.md#cleanup).

    It locks them (`skip_locked`: a booking another process holds is left to it, or to the
    next run), gives their holds back through the ledger (one seat change for all their
    flights), cancels them (`expired`, seats released) and writes one event each. All of it
    commits, or none: a death or an error anywhere leaves the batch as it was. A booking whose
    seats are not plainly reserved in the ledger is locked but left as it is (`left`).
    Ten statements (with BEGIN and COMMIT; the outbox INSERT is the tenth), whatever `limit` and the
    number of flights; then the worker's task is queued after the commit.
    """
    if not gateway.joins_transactions:
        raise ValueError("booking_expire_stale_batch needs a Flights gateway that joins our transactions")
    claimed: list[tuple[int, int, int, str, bool]] = []
    try:
        with transaction.atomic():
            claimed = list(
                Booking.objects.select_for_update(skip_locked=True)
                .filter(status=Status.INITIATED, expires_at__lte=expired_before, pk__gt=after_id)
                .order_by("pk")
                .values_list("pk", "flight_id", "seats", "seats_state", "flight_keeps_holds")[:limit]
            )
            refs = {pk: Booking(pk=pk).hold_ref for pk, *_ in claimed}
            holds = [
                HoldToRelease(refs[pk], flight_id, seats)
                for pk, flight_id, seats, seats_state, keeps_holds in claimed
                if seats_state == SeatsState.RESERVED and keeps_holds
            ]
            released = gateway.release_holds(holds=holds) if holds else {}
            expired = {pk: released[ref] for pk, ref in refs.items() if ref in released}
            if expired:
                now = timezone.now()
                cancelled = Booking.objects.filter(pk__in=expired, status=Status.INITIATED).update(
                    status=Status.CANCELLED,
                    cancel_reason=CancelReason.EXPIRED,
                    cancelled_at=now,
                    seats_state=SeatsState.RELEASED,
                    seats_released_at=now,
                    flight_service_error="",
                    updated_at=now,
                )
                if cancelled != len(expired):  # Not while we hold their locks; never commit half.
                    raise DatabaseError(f"{len(expired) - cancelled} booking(s) of the batch moved under its lock")
                record_status_changes(
                    booking_ids=list(expired),
                    from_status=Status.INITIATED,
                    to_status=Status.CANCELLED,
                    reason=CancelReason.EXPIRED,
                )
    except (DomainError, DatabaseError) as error:
        detail = error.detail if isinstance(error, DomainError) else str(error)
        logger.warning("expiry batch after booking %s failed, nothing changed: %s", after_id, detail)
        return ExpiredBatch(claimed=tuple(row[0] for row in claimed), error=str(detail)[:255])
    return ExpiredBatch(claimed=tuple(row[0] for row in claimed), expired=expired)
