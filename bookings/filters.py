"""Query filters for the bookings list: `?status=&flightId=` (and `userId` for staff)."""

import django_filters
from django import forms

from bookings.models import Booking
from bookings_project.openapi import MAX_ID
from bookings_project.query import StrictFilterSet


class IdFilter(django_filters.NumberFilter):
    """Whole numbers only: "1.5" is an error, not flight 1."""

    field_class = forms.IntegerField


class BookingFilter(StrictFilterSet):
    status = django_filters.ChoiceFilter(choices=Booking.Status.choices, help_text="Only bookings in this status.")
    flightId = IdFilter(
        field_name="flight_id", min_value=1, max_value=MAX_ID, help_text="Only bookings on this flight."
    )
    userId = IdFilter(
        field_name="user_id",
        min_value=1,
        max_value=MAX_ID,
        help_text="Only this user's bookings (useful to staff; others only ever see their own).",
    )

    class Meta:
        model = Booking
        fields = ["status", "flightId", "userId"]
