"""Flight resources on the wire: camelCase, as the seed's clients send and read them."""

from rest_framework import serializers

from bookings_project.fields import (
    CachedFieldsSerializer,
    MoneyField,
    SeedBooleanField,
    StrictIntegerField,
    StrictRegexField,
)
from flights.models import MAX_CAPACITY, Flight, SeatHold

IATA_CODE = r"^[A-Za-z]{3}$"
FLIGHT_NUMBER = r"^[A-Za-z0-9]{2,10}$"
CURRENCY_CODE = r"^[A-Za-z]{3}$"
RESERVATION_REF = r"^[A-Za-z0-9._:-]{1,100}$"


class FlightSerializer(CachedFieldsSerializer):
    flightNumber = serializers.CharField(source="flight_number")
    departureAirport = serializers.CharField(source="departure_airport")
    arrivalAirport = serializers.CharField(source="arrival_airport")
    departureTime = serializers.DateTimeField(source="departure_time")
    arrivalTime = serializers.DateTimeField(source="arrival_time")
    price = serializers.DecimalField(max_digits=10, decimal_places=2)
    currency = serializers.CharField(help_text="ISO 4217 code of `price`, e.g. INR.")
    capacity = serializers.IntegerField()
    totalSeats = serializers.IntegerField(
        source="available_seats", help_text="Seats still available (the seed's meaning)."
    )

    class Meta:
        model = Flight
        fields = [
            "id",
            "flightNumber",
            "departureAirport",
            "arrivalAirport",
            "departureTime",
            "arrivalTime",
            "price",
            "currency",
            "capacity",
            "totalSeats",
        ]
        read_only_fields = fields


class FlightCreateSerializer(serializers.Serializer):
    flightNumber = StrictRegexField(FLIGHT_NUMBER, max_length=10)
    departureAirport = StrictRegexField(IATA_CODE, help_text="IATA airport code, e.g. BOM.")
    arrivalAirport = StrictRegexField(IATA_CODE, help_text="IATA airport code, e.g. DEL.")
    departureTime = serializers.DateTimeField()
    arrivalTime = serializers.DateTimeField()
    price = MoneyField()
    currency = StrictRegexField(
        CURRENCY_CODE, required=False, help_text="ISO 4217 code of `price`; the service's `CURRENCY` if left out."
    )
    capacity = StrictIntegerField(min_value=1, max_value=MAX_CAPACITY)

    def validate(self, attrs: dict) -> dict:
        if attrs["departureAirport"].upper() == attrs["arrivalAirport"].upper():
            raise serializers.ValidationError({"arrivalAirport": "Must differ from departureAirport."})
        if attrs["arrivalTime"] <= attrs["departureTime"]:
            raise serializers.ValidationError({"arrivalTime": "Must be after departureTime."})
        return attrs

    def to_service_kwargs(self) -> dict:
        data = self.validated_data
        return {
            "flight_number": data["flightNumber"].upper(),
            "departure_airport": data["departureAirport"].upper(),
            "arrival_airport": data["arrivalAirport"].upper(),
            "departure_time": data["departureTime"],
            "arrival_time": data["arrivalTime"],
            "price": data["price"],
            "currency": data.get("currency", "").upper(),
            "capacity": data["capacity"],
        }


class SeatsChangeSerializer(serializers.Serializer):
    seats = StrictIntegerField(min_value=1, max_value=MAX_CAPACITY)
    dec = SeedBooleanField(
        default=True,
        help_text='true takes seats, false gives them back. Like the seed, 0, 1, "true" and "false" are understood.',
    )
    reservation = StrictRegexField(
        RESERVATION_REF,
        required=False,
        help_text=(
            "Our extension: a hold reference (e.g. `booking-789`). A reserve with it applies once; "
            "a release gives back exactly that hold once, and is a no-op if it never existed."
        ),
    )


class SeatHoldSerializer(CachedFieldsSerializer):
    state = serializers.ChoiceField(choices=SeatHold.State.choices)

    class Meta:
        model = SeatHold
        fields = ["ref", "seats", "state"]
        read_only_fields = fields


class FlightSeatsResultSerializer(FlightSerializer):
    reservation = SeatHoldSerializer(
        allow_null=True, help_text="The hold this change applied to; null when no reference was sent."
    )

    class Meta(FlightSerializer.Meta):
        fields = [*FlightSerializer.Meta.fields, "reservation"]
        read_only_fields = fields
