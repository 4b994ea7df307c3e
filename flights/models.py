from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import F, Q

MAX_CAPACITY = 1000

iata_code = RegexValidator(r"^[A-Z]{3}$", "An IATA airport code: three capital letters.")


def default_currency() -> str:
    """The currency of prices that do not name one (`CURRENCY`, e.g. the seed's flights)."""
    return settings.CURRENCY


class Flight(models.Model):
    flight_number = models.CharField(max_length=10)
    departure_airport = models.CharField(max_length=3, validators=[iata_code], help_text="IATA code, e.g. BOM")
    arrival_airport = models.CharField(max_length=3, validators=[iata_code], help_text="IATA code, e.g. DEL")
    departure_time = models.DateTimeField()
    arrival_time = models.DateTimeField()
    price = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3, default=default_currency, help_text="ISO 4217 code of the price.")
    capacity = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(MAX_CAPACITY)])
    available_seats = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["departure_time", "id"]
        indexes = [
            models.Index(fields=["departure_time", "id"], name="flight_departure_idx"),
            # Search (docs/api.md#flight-search): by route, or by one end of it, in departure order.
            models.Index(
                fields=["departure_airport", "arrival_airport", "departure_time", "id"], name="flight_route_idx"
            ),
            models.Index(fields=["arrival_airport", "departure_time", "id"], name="flight_arrival_idx"),
        ]
        constraints = [
            # The database itself refuses an oversold or overfilled flight.
            models.CheckConstraint(
                condition=Q(available_seats__gte=0) & Q(available_seats__lte=F("capacity")),
                name="flight_available_seats_within_capacity",
            ),
            models.CheckConstraint(condition=Q(price__gte=0), name="flight_price_not_negative"),
            models.CheckConstraint(
                condition=Q(arrival_time__gt=F("departure_time")), name="flight_arrives_after_departure"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.flight_number} {self.departure_airport}→{self.arrival_airport} {self.departure_time:%Y-%m-%d %H:%M}"
        )


class SeatHold(models.Model):
    """The ledger: one row per reservation reference (e.g. one per booking).

    A reference is reserved at most once and released at most once. A release of a
    reference that was never reserved writes a RELEASED tombstone and moves no seat, so a
    reserve that arrives late (a request that timed out on the client but still ran) finds
    the tombstone and is refused instead of taking seats that nobody will give back.
    """

    class State(models.TextChoices):
        HELD = "held", "Held"
        RELEASED = "released", "Released"

    flight = models.ForeignKey(Flight, on_delete=models.PROTECT, related_name="holds")
    ref = models.CharField(max_length=100, unique=True)
    seats = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=State.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["flight", "state"], name="seathold_flight_state_idx")]

    def __str__(self) -> str:
        return f"{self.ref}: {self.seats} seat(s) {self.state}"


class FlightEdit(models.Model):
    """One edit staff made to a flight in admin: each changed field, from what, to what.
    Never edited; a sold flight's price or times changing is something ops must be able to trace."""

    flight = models.ForeignKey(Flight, on_delete=models.CASCADE, related_name="edits")
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # {"price": ["5500.00", "6000.00"], ...}: the values as text, before and after.
    changes = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["flight", "-id"], name="flight_edit_flight_idx")]

    def __str__(self) -> str:
        return f"Flight {self.flight_id} edited: {', '.join(self.changes)}"
