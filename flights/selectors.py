"""Reads of flight inventory."""

from django.db.models import QuerySet

from bookings_project.exceptions import NotFound
from flights.models import Flight


def flight_list() -> QuerySet[Flight]:
    return Flight.objects.order_by("departure_time", "id")


def flight_get(*, flight_id: int) -> Flight:
    try:
        return Flight.objects.get(pk=flight_id)
    except Flight.DoesNotExist:
        raise NotFound(f"Flight {flight_id} does not exist.") from None
