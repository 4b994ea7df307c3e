"""Booking resources on the wire (docs/api.md#bookings): camelCase, money as a 2-place decimal string."""

from django.conf import settings
from rest_framework import serializers

from bookings.models import Booking, BookingEvent
from bookings_project.fields import CachedFieldsSerializer, StrictIntegerField, resolve_alias
from bookings_project.openapi import MAX_ID


class BookingSerializer(CachedFieldsSerializer):
    reference = serializers.CharField(
        help_text="6 characters a person can read out, like a PNR (unique); `?reference=` finds it."
    )
    flightId = serializers.IntegerField(source="flight_id")
    userId = serializers.IntegerField(source="user_id")
    numberOfSeats = serializers.IntegerField(source="seats")
    totalCost = serializers.DecimalField(
        source="total_cost", max_digits=12, decimal_places=2, help_text="Price times seats at booking time."
    )
    currency = serializers.CharField(help_text="ISO 4217 code of `totalCost`: the flight's currency.")
    status = serializers.ChoiceField(choices=Booking.Status.choices)
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    expiresAt = serializers.DateTimeField(
        source="expires_at", help_text="The seats are held until then; past it an unpaid booking is cancelled."
    )
    cancelReason = serializers.ChoiceField(
        source="cancel_reason",
        choices=Booking.CancelReason.choices,
        allow_null=True,
        help_text="Why the booking was cancelled; null unless it is CANCELLED.",
    )

    class Meta:
        model = Booking
        fields = [
            "id",
            "reference",
            "flightId",
            "userId",
            "numberOfSeats",
            "totalCost",
            "currency",
            "status",
            "createdAt",
            "updatedAt",
            "expiresAt",
            "cancelReason",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Booking) -> dict:
        data = super().to_representation(instance)
        # A paid booking being cancelled carries its reason before it is CANCELLED.
        data["cancelReason"] = (instance.cancel_reason or None) if instance.status == Booking.Status.CANCELLED else None
        return data


class BookingCreateSerializer(serializers.Serializer):
    flightId = StrictIntegerField(min_value=1, max_value=MAX_ID)
    userId = StrictIntegerField(
        min_value=1,
        max_value=MAX_ID,
        required=False,
        help_text="Optional. Must be your own id, unless you are staff booking for a customer.",
    )

    def get_fields(self) -> dict:
        # Built per request so that MAX_SEATS_PER_BOOKING is read when it is used.
        fields = super().get_fields()
        limit = settings.MAX_SEATS_PER_BOOKING
        fields["numberOfSeats"] = StrictIntegerField(
            min_value=1,
            max_value=limit,
            required=False,
            help_text="Seats to book. Required, unless given under its older name `noOfSeats`.",
        )
        fields["noOfSeats"] = StrictIntegerField(
            min_value=1,
            max_value=limit,
            required=False,
            help_text="Deprecated alias of `numberOfSeats`, as the older course clients send it.",
        )
        return fields

    def validate(self, attrs: dict) -> dict:
        return resolve_alias(attrs, "numberOfSeats", "noOfSeats")


class BookingEventSerializer(CachedFieldsSerializer):
    """One status change of a booking (the audit trail)."""

    bookingId = serializers.IntegerField(source="booking_id")
    fromStatus = serializers.ChoiceField(
        source="from_status",
        choices=Booking.Status.choices,
        allow_null=True,
        help_text="null for the booking's creation.",
    )
    toStatus = serializers.ChoiceField(source="to_status", choices=Booking.Status.choices)
    reason = serializers.ChoiceField(choices=BookingEvent.Reason.choices)
    actor = serializers.ChoiceField(
        choices=BookingEvent.Actor.choices,
        help_text="Who made the change: the customer, staff, the cleanup job, or the payment gateway's answer.",
    )
    requestId = serializers.CharField(
        source="request_id", allow_null=True, help_text="The `X-Request-ID` of the request (or cleanup run)."
    )
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = BookingEvent
        fields = ["id", "bookingId", "fromStatus", "toStatus", "reason", "actor", "requestId", "createdAt"]
        read_only_fields = fields

    def to_representation(self, instance: BookingEvent) -> dict:
        data = super().to_representation(instance)
        data["fromStatus"] = instance.from_status or None
        data["requestId"] = instance.request_id or None
        return data
