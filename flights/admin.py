from django.contrib import admin
from django.http import HttpRequest

from bookings.models import Booking
from bookings_project.admin import OPS_CSS, ReadOnlyAdmin
from flights import services
from flights.models import Flight, SeatHold

# Bookings listed on a flight's page, newest first; the bookings list filtered by the flight has them all.
BOOKINGS_SHOWN = 50


class SeatHoldInline(admin.TabularInline):
    model = SeatHold
    extra = 0
    can_delete = False
    fields = ["ref", "seats", "state", "created_at", "released_at"]
    readonly_fields = fields
    ordering = ["-created_at"]
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Flight)
class FlightAdmin(admin.ModelAdmin):
    """Editable: an edit goes through `flights.services.flight_update`, which records it
    (FlightEdit, shown on the page). The page lists the flight's bookings and its holds."""

    list_display = [
        "id",
        "flight_number",
        "departure_airport",
        "arrival_airport",
        "departure_time",
        "price",
        "capacity",
        "available_seats",
    ]
    list_filter = ["departure_airport", "arrival_airport"]
    search_fields = ["flight_number", "=id"]
    date_hierarchy = "departure_time"
    ordering = ["departure_time", "id"]
    inlines = [SeatHoldInline]

    class Media:
        css = OPS_CSS

    def get_fields(self, request, obj=None):
        lines = [
            ("flight_number", "price", "currency"),
            ("departure_airport", "arrival_airport"),
            ("departure_time", "arrival_time"),
            ("capacity", "available_seats"),
        ]
        return [*lines, ("created_at", "updated_at")] if obj else lines

    def get_readonly_fields(self, request, obj=None):
        # Seats move only through the ledger (the seats API); capacity is fixed once sold from.
        return ["capacity", "available_seats", "created_at", "updated_at"] if obj else ["available_seats"]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        extra_context = dict(extra_context or {})
        if (flight := self.get_object(request, object_id)) is not None:
            bookings = Booking.objects.filter(flight_id=flight.pk).select_related("user").order_by("-created_at", "-id")
            live = bookings.exclude(status=Booking.Status.CANCELLED)
            extra_context.update(
                bookings=bookings[:BOOKINGS_SHOWN],
                bookings_count=bookings.count(),
                bookings_shown=BOOKINGS_SHOWN,
                live_bookings_count=live.count(),
                edits=flight.edits.select_related("changed_by")[:100],
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change) -> None:
        if change:
            services.flight_update(
                flight_id=obj.pk,
                changes={name: form.cleaned_data[name] for name in form.changed_data},
                changed_by=request.user,
            )
            obj.refresh_from_db()
            return
        created = services.flight_create(
            flight_number=obj.flight_number,
            departure_airport=obj.departure_airport,
            arrival_airport=obj.arrival_airport,
            departure_time=obj.departure_time,
            arrival_time=obj.arrival_time,
            price=obj.price,
            capacity=obj.capacity,
            currency=obj.currency,
        )
        obj.pk, obj.available_seats = created.pk, created.available_seats


@admin.register(SeatHold)
class SeatHoldAdmin(ReadOnlyAdmin):
    """The ledger: written by seat changes only."""

    list_display = ["ref", "flight", "seats", "state", "created_at", "released_at"]
    list_filter = ["state"]
    search_fields = ["ref", "=flight__id", "flight__flight_number"]
    list_select_related = ["flight"]
