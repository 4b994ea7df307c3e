"""Reads of flight inventory."""

from django.db.models import QuerySet

from bookings_project import statements
from bookings_project.exceptions import NotFound
from flights.models import Flight


def flight_list() -> QuerySet[Flight]:
    return Flight.objects.order_by("departure_time", "id")


def flight_get(*, flight_id: int) -> Flight:
    flight = statements.get(Flight, flight_id)
    if flight is None:
        raise NotFound(f"Flight {flight_id} does not exist.")
    return flight
