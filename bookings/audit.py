"""The audit trail of booking status changes (`BookingEvent`), and the outbox events derived
from it: a change that notifications report gets its `OutboxEvent` in the same transaction.

Every change of `Booking.status` goes through `record_status_change`, inside the transaction
that makes it. Who made it is found, in order: an explicit `actor` (the payment gateway's
answer), the surrounding `acting_as` block (cleanup), the signed-in user of the request being
served (user or staff), else `system`. A person's own words on why (staff's reason on the
cancel page) go on the events written inside a `noting` block.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from bookings import outbox
from bookings.models import BookingEvent
from bookings_project import metrics, request_id, statements

logger = logging.getLogger(__name__)

Actor = BookingEvent.Actor
_acting: ContextVar[str | None] = ContextVar("booking_actor", default=None)
_noting: ContextVar[str] = ContextVar("booking_event_note", default="")
NOTE_MAX_LENGTH = BookingEvent._meta.get_field("note").max_length


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Attribute the status changes made inside the block to `actor` (e.g. cleanup)."""
    token = _acting.set(actor)
    try:
        yield
    finally:
        _acting.reset(token)


@contextmanager
def noting(note: str) -> Iterator[None]:
    """Store `note` (why, in the words of the person making the change) on the status
    changes made inside the block. A context variable, like `acting_as`, so the services
    between here and the event need no parameter for it and the hot path reads nothing more."""
    token = _noting.set(note.strip()[:NOTE_MAX_LENGTH])
    try:
        yield
    finally:
        _noting.reset(token)


def record_status_change(
    *, booking_id: int, from_status: str, to_status: str, reason: str, actor: str | None = None
) -> BookingEvent:
    """Write one event, and the outbox's if the change is reported (bookings.outbox). Call it
    in the transaction that changes the status."""
    event = _event(booking_id, from_status=from_status, to_status=to_status, reason=reason, actor=actor)
    if reported := outbox.event_for_status_change(from_status=from_status, to_status=to_status):
        outbox.record_event(type=reported, booking_id=booking_id, written_with=(event,))
    else:
        statements.insert(event)
    metrics.count_on_commit(metrics.BOOKING_STATUS_CHANGES.labels(to_status, reason))
    _log(event)
    return event


def record_status_changes(*, booking_ids: list[int], from_status: str, to_status: str, reason: str) -> None:
    """The same event for many bookings (cleanup's batches), in one INSERT; call it in the
    transaction that changes their status. Each booking still gets its own log line."""
    events = [
        _event(booking_id, from_status=from_status, to_status=to_status, reason=reason) for booking_id in booking_ids
    ]
    BookingEvent.objects.bulk_create(events)
    if reported := outbox.event_for_status_change(from_status=from_status, to_status=to_status):
        outbox.record_events(type=reported, booking_ids=booking_ids)
    metrics.count_on_commit(metrics.BOOKING_STATUS_CHANGES.labels(to_status, reason), len(events))
    for event in events:
        _log(event)


def _event(booking_id: int, *, from_status: str, to_status: str, reason: str, actor: str | None = None) -> BookingEvent:
    """The event, with who made the change (see the module's docstring) and the request id."""
    user = _signed_in_user()
    kind = actor or _acting.get() or (None if user is None else Actor.STAFF if user.is_staff else Actor.USER)
    return BookingEvent(
        booking_id=booking_id,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        actor=kind or Actor.SYSTEM,
        actor_user=user,
        request_id=request_id.get() or "",
        note=_noting.get(),
    )


def _log(event: BookingEvent) -> None:
    logger.info(
        "booking %s: %s -> %s (%s) by %s",
        event.booking_id,
        event.from_status or "new",
        event.to_status,
        event.reason,
        event.actor,
        extra={"booking_id": event.booking_id},
    )


def _signed_in_user():
    request = request_id.current_request()
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None
