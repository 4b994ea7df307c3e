"""Booking reads, scoped to what the caller may see (DESIGN §3.1)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from bookings.models import Booking
from bookings_project.errors import NotFound


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
