"""Booking reads, scoped to what the caller may see (docs/api.md#auth)."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from bookings.models import Booking, BookingEvent
from bookings_project.exceptions import NotFound
from bookings_project.http_client import timeouts

Status, SeatsState = Booking.Status, Booking.SeatsState


def booking_list(*, user: AbstractBaseUser) -> QuerySet[Booking]:
    """Newest first. Staff see every booking; anyone else only their own."""
    bookings = Booking.objects.order_by("-created_at", "-id")
    return bookings if user.is_staff else bookings.filter(user=user)


def booking_get(*, user: AbstractBaseUser, booking_id: int) -> Booking:
    """Another user's booking is as unknown as a missing one: 404, never 403."""
    booking = booking_list(user=user).filter(pk=booking_id).first()
    if booking is None:
        raise NotFound(f"Booking {booking_id} does not exist.")
    return booking


def booking_events(*, user: AbstractBaseUser, booking_id: int) -> QuerySet[BookingEvent]:
    """The booking's status changes in the order they were made; 404 for a booking the caller
    may not see."""
    booking = booking_get(user=user, booking_id=booking_id)
    return BookingEvent.objects.filter(booking=booking).order_by("id")


# What cleanup acts on (docs/design.md#cleanup); the admin's cleanup page shows the same sets.


def bookings_to_expire(*, expired_before: dt.datetime) -> QuerySet[Booking]:
    """Unpaid bookings whose hold ended before `expired_before`."""
    return Booking.objects.filter(status=Status.INITIATED, expires_at__lte=expired_before)


def bookings_owing_release() -> QuerySet[Booking]:
    """Cancelled bookings whose seats the Flights service may still hold (a release failed)."""
    return Booking.objects.filter(status=Status.CANCELLED, seats_state__in=Booking.SEATS_OWED)


def flight_call_window() -> dt.timedelta:
    """How long a call to the Flights service can last: its connect and read timeouts plus
    the same margin payments use. A release in flight longer than that has lost its sender."""
    connect, read = timeouts(settings.FLIGHT_SERVICE_TIMEOUT)
    return dt.timedelta(seconds=connect + read + settings.PAYMENT_ATTEMPT_MARGIN_SECONDS)


def bookings_with_stuck_release(*, updated_before: dt.datetime) -> QuerySet[Booking]:
    """Releases sent to a service without holds and never recorded (the sender died)."""
    return Booking.objects.filter(
        status=Status.CANCELLED, seats_state=SeatsState.RELEASING, updated_at__lte=updated_before
    )


def bookings_with_unfinished_cancel(*, requested_before: dt.datetime) -> QuerySet[Booking]:
    """Paid bookings whose cancel (refund, then cancel) was cut short before `requested_before`."""
    return Booking.objects.filter(status=Status.BOOKED, cancel_requested_at__lte=requested_before)


def bookings_needing_a_person() -> QuerySet[Booking]:
    """Seat outcomes only a person can settle (see `SeatsState.RECONCILE`)."""
    return Booking.objects.filter(seats_state=SeatsState.RECONCILE)
