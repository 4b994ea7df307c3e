"""The hot paths' answers (`bookings_project.fields.CachedFieldsSerializer`): fields built once per
class, and every answer what DRF itself renders for the same declaration."""

import datetime as dt

import pytest
from rest_framework import serializers

from bookings.models import BookingEvent
from bookings.serializers import BookingEventSerializer, BookingSerializer
from flights.models import Flight, SeatHold
from flights.serializers import FlightSeatsResultSerializer, FlightSerializer, SeatHoldSerializer
from payments.serializers import PaymentSerializer, PaymentSummarySerializer
from tests.factories import make_flight, paid

pytestmark = pytest.mark.django_db


def _as_drf_renders_it(serializer_class, instance) -> dict:
    """The same declaration with DRF's own per-instance fields."""
    uncached = type(f"Uncached{serializer_class.__name__}", (serializer_class,), {})
    uncached._readable_fields = serializers.ModelSerializer._readable_fields
    return dict(uncached(instance).data)


def test_a_flight_answer_is_the_seed_shape():
    departure = dt.datetime(2027, 1, 10, 10, 0, tzinfo=dt.UTC)
    flight = make_flight(
        capacity=120, price="5500.5", departure_time=departure, arrival_time=departure + dt.timedelta(hours=2)
    )

    assert FlightSerializer(flight).data == {
        "id": flight.pk,
        "flightNumber": flight.flight_number,
        "departureAirport": "BOM",
        "arrivalAirport": "DEL",
        "departureTime": "2027-01-10T10:00:00Z",
        "arrivalTime": "2027-01-10T12:00:00Z",
        "price": "5500.50",
        "currency": "INR",
        "capacity": 120,
        "totalSeats": 120,
    }


def test_every_answer_is_what_drf_renders(user):
    booking, payment, _ = paid(user, make_flight())
    hold = SeatHold.objects.get(ref=booking.hold_ref)
    event = BookingEvent.objects.filter(booking=booking).first()
    for serializer_class, instance in (
        (FlightSerializer, Flight.objects.get(pk=booking.flight_id)),
        (SeatHoldSerializer, hold),
        (BookingSerializer, booking),
        (BookingEventSerializer, event),
        (PaymentSerializer, payment),
        (PaymentSummarySerializer, payment),
    ):
        for _ in range(2):  # Built, then cached.
            assert dict(serializer_class(instance).data) == _as_drf_renders_it(serializer_class, instance)


def test_fields_are_built_once_per_class(monkeypatch):
    flights = [make_flight(), make_flight()]
    FlightSerializer(flights[0]).data  # noqa: B018  Whatever built it before: built now.
    built = []
    real = serializers.ModelSerializer.get_fields
    monkeypatch.setattr(serializers.ModelSerializer, "get_fields", lambda self: built.append(self) or real(self))

    answers = [FlightSerializer(flight).data for flight in flights]

    assert built == []
    assert [answer["id"] for answer in answers] == [flight.pk for flight in flights]
    # A subclass declares more fields: its own set, not its parent's.
    assert "reservation" in FlightSeatsResultSerializer(flights[0]).fields
    assert "reservation" not in FlightSerializer(flights[0]).data
