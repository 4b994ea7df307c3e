"""Query filters for the bookings list: `?status=&flightId=&reference=` (and `userId` for staff)."""

import django_filters
from django.db.models import QuerySet

from bookings import references
from bookings.models import Booking
from bookings_project.openapi import MAX_ID
from bookings_project.query import IntegerFilter, RegexFilter, StrictFilterSet


class BookingFilter(StrictFilterSet):
    status = django_filters.ChoiceFilter(choices=Booking.Status.choices, help_text="Only bookings in this status.")
    flightId = IntegerFilter(
        field_name="flight_id", min_value=1, max_value=MAX_ID, help_text="Only bookings on this flight."
    )
    userId = IntegerFilter(
        field_name="user_id",
        min_value=1,
        max_value=MAX_ID,
        help_text="Only this user's bookings (useful to staff; others only ever see their own).",
    )
    reference = RegexFilter(
        method="with_reference",
        regex=f"^[{references.ALPHABET}{references.ALPHABET.lower()}]{{{references.LENGTH}}}$",
        error_messages={"invalid": f"A booking reference: {references.LENGTH} of {references.ALPHABET}."},
        help_text="The booking with this reference (case-insensitive), e.g. VPTX4Z.",
    )

    class Meta:
        model = Booking
        fields = ["status", "flightId", "userId", "reference"]

    def with_reference(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        # A reference is the id, scrambled (bookings.references): a look-up by primary key.
        return queryset.filter(pk=references.booking_id_of(value))
