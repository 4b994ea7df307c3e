"""Test data builders: real rows through the real services."""

import datetime as dt
import itertools
from decimal import Decimal

from django.utils import timezone

from flights.models import Flight
from flights.services import flight_create

_numbers = itertools.count(100)


def make_flight(*, capacity: int = 120, price: str = "5500.00", **overrides) -> Flight:
    departure = timezone.now().replace(microsecond=0) + dt.timedelta(days=30)
    fields = {
        "flight_number": f"UK{next(_numbers)}",
        "departure_airport": "BOM",
        "arrival_airport": "DEL",
        "departure_time": departure,
        "arrival_time": departure + dt.timedelta(hours=2, minutes=10),
        "price": Decimal(price),
        "capacity": capacity,
    }
    fields.update(overrides)
    return flight_create(**fields)
