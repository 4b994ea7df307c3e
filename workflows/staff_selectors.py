"""Reads for staff's pages (admin) that need both bookings and payments: what a cancel would
do before it is confirmed, and a booking's history with its refunds.

Apart from `workflows.selectors` (what cleanup acts on), so that neither page's needs shape
cleanup's reads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from bookings.models import Booking, BookingEvent
from payments.models import Payment

Status = Booking.Status


@dataclass(frozen=True)
class CancelPreview:
    """What `workflows.services.booking_cancel` would do to one booking now."""

    booking: Booking
    # Seats the cancel would give back (none when they are not plainly held for it).
    seats_to_release: int
    # The SUCCEEDED payment a paid booking's cancel refunds first.
    refund: Payment | None
    # Why the cancel would be refused ("" when it would go through).
    refusal: str = ""

    @property
    def nothing_to_do(self) -> bool:
        return self.booking.status == Status.CANCELLED and not self.seats_to_release

    @property
    def refund_amount(self) -> Decimal | None:
        return None if self.refund is None else self.refund.amount


def cancel_previews(*, booking_ids: Iterable[int]) -> list[CancelPreview]:
    """The bookings in id order, each with the seats and the money its cancel would give
    back: two queries however many bookings (the bookings with their users, and their
    standing payments). A preview, not a promise: the cancel decides again under the lock."""
    bookings = list(Booking.objects.filter(pk__in=list(booking_ids)).select_related("user").order_by("pk"))
    paid = [booking.pk for booking in bookings if booking.status == Status.BOOKED]
    refunds = {
        payment.booking_id: payment
        for payment in Payment.objects.filter(booking_id__in=paid, status=Payment.Status.SUCCEEDED)
    }
    return [
        CancelPreview(
            booking=booking,
            # A CANCELLED booking still owing its seats has them released by a cancel too.
            seats_to_release=booking.seats if booking.seats_state in Booking.SEATS_OWED else 0,
            refund=refunds.get(booking.pk),
            refusal="a payment is in progress; cancel it once that is done" if booking.status == Status.PENDING else "",
        )
        for booking in bookings
    ]


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a booking's history: a status change (`event`) or a refund (`refund`)."""

    at: dt.datetime
    event: BookingEvent | None = None
    refund: Payment | None = None


def booking_history(*, booking_id: int) -> list[HistoryEntry]:
    """The booking's status changes in write order (the event id, as everywhere: hosts'
    clocks may disagree), with each refund of its payments placed before the first status
    change written after it. Two queries."""
    events = BookingEvent.objects.filter(booking_id=booking_id).select_related("actor_user").order_by("id")
    refunds = list(
        Payment.objects.filter(booking_id=booking_id, refunded_at__isnull=False).order_by("refunded_at", "id")
    )
    history: list[HistoryEntry] = []
    for event in events:
        while refunds and refunds[0].refunded_at <= event.created_at:
            payment = refunds.pop(0)
            history.append(HistoryEntry(at=payment.refunded_at, refund=payment))
        history.append(HistoryEntry(at=event.created_at, event=event))
    history += [HistoryEntry(at=payment.refunded_at, refund=payment) for payment in refunds]
    return history
