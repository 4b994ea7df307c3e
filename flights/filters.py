"""Flight search (docs/api.md#flight-search): `?departureAirport=&arrivalAirport=&departureDate=&minSeats=`,
each optional and combinable, each read by an index (flights.models)."""

import datetime as dt

import django_filters
from django.db.models import QuerySet

from bookings_project.query import IntegerFilter, RegexFilter, StrictFilterSet
from flights.models import MAX_CAPACITY, Flight


class AirportFilter(RegexFilter):
    """A 3-letter IATA code in any case; codes are stored in capitals."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("error_messages", {"invalid": "A 3-letter IATA airport code, e.g. DEL."})
        super().__init__(regex=r"^[A-Za-z]{3}$", **kwargs)

    def filter(self, queryset: QuerySet, value: str | None) -> QuerySet:
        return super().filter(queryset, value.upper() if value else value)


class FlightFilter(StrictFilterSet):
    departureAirport = AirportFilter(field_name="departure_airport", help_text="From this airport (e.g. BOM).")
    arrivalAirport = AirportFilter(field_name="arrival_airport", help_text="To this airport (e.g. DEL).")
    departureDate = django_filters.DateFilter(
        method="departing_on",
        input_formats=["%Y-%m-%d"],
        help_text="Leaving on this UTC date (YYYY-MM-DD), the date of `departureTime`.",
    )
    minSeats = IntegerFilter(
        field_name="available_seats",
        lookup_expr="gte",
        min_value=1,
        max_value=MAX_CAPACITY,
        help_text="With at least this many seats still available.",
    )

    class Meta:
        model = Flight
        fields = ["departureAirport", "arrivalAirport", "departureDate", "minSeats"]

    def departing_on(self, queryset: QuerySet, name: str, value: dt.date) -> QuerySet:
        # A half-open range of instants, not `__date`: the index on departure_time serves it.
        start = dt.datetime.combine(value, dt.time.min, tzinfo=dt.UTC)
        return queryset.filter(departure_time__gte=start, departure_time__lt=start + dt.timedelta(days=1))
