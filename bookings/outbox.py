"""The transactional outbox (docs/design.md#notifications): one event per change that
notifications report, written in the transaction that makes the change.

The layers above learn of committed events through `events_committed`, sent after the commit
(the notifications app enqueues their delivery there). A lost signal only delays: the rows are
the truth, and cleanup re-queues events nobody has picked up.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Model
from django.dispatch import Signal

from bookings.models import Booking, OutboxEvent
from bookings_project import statements

EventType = OutboxEvent.Type

# Sent once the transaction that wrote the events has committed: `event_ids`, a list.
events_committed = Signal()

# The booking status changes that are reported, and as what (the audit trail's other
# changes, a payment started or declined, are not).
STATUS_EVENTS: dict[str, EventType] = {
    Booking.Status.BOOKED: EventType.BOOKING_CONFIRMED,
    Booking.Status.CANCELLED: EventType.BOOKING_CANCELLED,
}


def event_for_status_change(*, from_status: str, to_status: str) -> EventType | None:
    """What a status change is reported as: a new booking is `booking.created`."""
    if not from_status:
        return EventType.BOOKING_CREATED
    return STATUS_EVENTS.get(to_status)


def record_event(
    *, type: str, booking_id: int, payment_id: int | None = None, written_with: tuple[Model, ...] = ()
) -> OutboxEvent:
    """Write one event. Call it in the transaction that makes the change; `written_with`, rows
    of the same change (its audit event), are written in the same statement."""
    event = OutboxEvent(type=type, booking_id=booking_id, payment_id=payment_id)
    statements.insert_together(*written_with, event)
    _announce_on_commit([event.pk])
    return event


def record_events(*, type: str, booking_ids: list[int]) -> None:
    """The same event for many bookings (cleanup's batches), in one INSERT."""
    events = OutboxEvent.objects.bulk_create(OutboxEvent(type=type, booking_id=pk) for pk in booking_ids)
    _announce_on_commit([event.pk for event in events])


def _announce_on_commit(event_ids: list[int]) -> None:
    transaction.on_commit(lambda: events_committed.send(sender=OutboxEvent, event_ids=event_ids))
