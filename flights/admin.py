from django.contrib import admin

from flights import services
from flights.models import Flight, SeatHold


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

    def get_readonly_fields(self, request, obj=None):
        # Seats move only through the ledger (the seats API); capacity is fixed once sold from.
        return ["capacity", "available_seats", "created_at", "updated_at"] if obj else ["available_seats"]

    def save_model(self, request, obj, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
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
class SeatHoldAdmin(admin.ModelAdmin):
    list_display = ["ref", "flight", "seats", "state", "created_at", "released_at"]
    list_filter = ["state"]
    search_fields = ["ref", "=flight__id", "flight__flight_number"]
    list_select_related = ["flight"]
    readonly_fields = ["flight", "ref", "seats", "state", "created_at", "released_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
