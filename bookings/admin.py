from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from bookings import services
from bookings.models import Booking
from bookings_project.errors import DomainError
from payments.models import Payment


class PaymentInline(admin.TabularInline):
    model = Payment
    extra = 0
    can_delete = False
    fields = ["id", "status", "amount", "currency", "gateway_reference", "attempts", "created_at", "refunded_at"]
    readonly_fields = fields
    ordering = ["-created_at"]
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class NeedsAttentionFilter(admin.SimpleListFilter):
    """What ops must look at: releases still owed, and outcomes only a person can settle."""

    title = "needs attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [
            ("release_owed", "Cancelled, seats not yet given back"),
            ("reconcile", "Needs reconciliation with the Flights service"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "release_owed":
            return queryset.filter(status=Booking.Status.CANCELLED, seats_state__in=Booking.SEATS_OWED)
        if self.value() == "reconcile":
            return queryset.filter(seats_state=Booking.SeatsState.RECONCILE)
        return queryset


@admin.register(Booking)
class BookingAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status",
        "flight_id",
        "user",
        "seats",
        "total_cost",
        "seats_state",
        "created_at",
        "expires_at",
    ]
    list_filter = ["status", NeedsAttentionFilter, "seats_state", "flight_id", "cancel_reason"]
    search_fields = ["=id", "user__username"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    actions = ["cancel_selected"]
    inlines = [PaymentInline]
    # Money, state and the saga's record change only through the services, never by hand.
    readonly_fields = [
        "user",
        "flight_id",
        "seats",
        "total_cost",
        "status",
        "seats_state",
        "flight_keeps_holds",
        "cancel_reason",
        "flight_service_error",
        "created_at",
        "updated_at",
        "expires_at",
        "cancelled_at",
        "seats_released_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # A booking must reserve its seats: the API does that, a form cannot.

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # Deleting a booking would strand its seats; cancel it instead.

    @admin.action(description="Cancel selected bookings (refunding paid ones)", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Booking]) -> None:
        cancelled = seats = 0
        refused: list[str] = []
        for booking_id in queryset.values_list("pk", flat=True):
            try:
                result = services.booking_cancel(booking_id=booking_id, reason=Booking.CancelReason.STAFF)
            except DomainError as error:
                refused.append(f"{booking_id}: {error.detail}")
                continue
            cancelled += 1
            seats += result.seats_released
        self.message_user(request, f"Cancelled {cancelled} booking(s); released {seats} seat(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not cancelled: " + "; ".join(refused), messages.WARNING)
