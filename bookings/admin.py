import datetime as dt

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from bookings.models import Booking, BookingEvent, CleanupRun
from bookings_project.admin import ReadOnlyAdmin
from bookings_project.exceptions import DomainError
from payments.models import Payment
from workflows.cleanup import WORK_SETS, Cutoffs, cleanup_backlog
from workflows.services import booking_cancel


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


class BookingEventInline(admin.TabularInline):
    """The audit trail: every status change, oldest first. Written by the services only."""

    model = BookingEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "from_status", "to_status", "reason", "actor", "actor_user", "request_id"]
    readonly_fields = fields
    ordering = ["id"]  # Write order (see BookingEvent.Meta).
    verbose_name = "status change"
    verbose_name_plural = "history (status changes)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[BookingEvent]:
        return super().get_queryset(request).select_related("actor_user")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class NeedsAttentionFilter(admin.SimpleListFilter):
    """What cleanup will act on, and outcomes only a person can settle (the cleanup page
    links here)."""

    title = "needs attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [work.attention for work in WORK_SETS if work.attention]

    def queryset(self, request, queryset):
        work = next((work for work in WORK_SETS if work.attention and work.attention[0] == self.value()), None)
        if work is None:
            return queryset
        return queryset.filter(pk__in=work.rows(Cutoffs.at(timezone.now())).values("pk"))


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
    inlines = [BookingEventInline, PaymentInline]
    # Money, state and the saga's record change only through the services, never by hand.
    readonly_fields = [
        "user",
        "flight_id",
        "seats",
        "total_cost",
        "currency",
        "status",
        "seats_state",
        "flight_keeps_holds",
        "cancel_reason",
        "flight_service_error",
        "created_at",
        "updated_at",
        "expires_at",
        "cancelled_at",
        "cancel_requested_at",
        "seats_released_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # A booking must reserve its seats: the API does that, a form cannot.

    def get_urls(self):
        cleanup = path("cleanup/", self.admin_site.admin_view(self.cleanup_view), name="bookings_booking_cleanup")
        return [cleanup, *super().get_urls()]

    def cleanup_view(self, request: HttpRequest) -> TemplateResponse:
        """What `cleanup_stale_bookings` would do now, and when it last ran: work waiting
        longer than two cron intervals, or no recent run, means cron has stopped."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        overdue_after = dt.timedelta(minutes=2 * settings.CLEANUP_INTERVAL_MINUTES)
        backlog = cleanup_backlog(now=now)
        runs = list(CleanupRun.objects.all()[:10])
        warnings = []
        if not runs:
            warnings.append(
                "cleanup_stale_bookings has never run: install its cron line (docs/operations.md#cleanup-from-cron)."
            )
        elif now - runs[0].started_at > overdue_after:
            warnings.append(f"No cleanup run since {runs[0].started_at:%Y-%m-%d %H:%M:%S %Z}: is cron running it?")
        for item in backlog:
            if item.count and item.oldest and now - item.oldest > overdue_after:
                warnings.append(f"{item.label}: waiting since {item.oldest:%Y-%m-%d %H:%M:%S %Z}.")
        context = {
            **self.admin_site.each_context(request),
            "title": "Cleanup of stale bookings",
            "opts": self.model._meta,
            "backlog": backlog,
            "runs": runs,
            "warnings": warnings,
            "interval_minutes": settings.CLEANUP_INTERVAL_MINUTES,
        }
        return TemplateResponse(request, "admin/bookings/booking/cleanup.html", context)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # Deleting a booking would strand its seats; cancel it instead.

    @admin.action(description="Cancel selected bookings (refunding paid ones)", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Booking]) -> None:
        cancelled = seats = 0
        refused: list[str] = []
        for booking_id in queryset.values_list("pk", flat=True):
            try:
                result = booking_cancel(booking_id=booking_id, reason=Booking.CancelReason.STAFF)
            except DomainError as error:
                refused.append(f"{booking_id}: {error.detail}")
                continue
            cancelled += 1
            seats += result.seats_released
        self.message_user(request, f"Cancelled {cancelled} booking(s); released {seats} seat(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not cancelled: " + "; ".join(refused), messages.WARNING)


@admin.register(CleanupRun)
class CleanupRunAdmin(ReadOnlyAdmin):
    """Written by `cleanup_stale_bookings` only."""

    list_display = ["started_at", "finished_at", "host", "failed", "counts"]
    list_filter = ["host"]
    search_fields = ["=run_id"]
    date_hierarchy = "started_at"


@admin.register(BookingEvent)
class BookingEventAdmin(ReadOnlyAdmin):
    """The audit trail across bookings: find what one request (or cleanup run) changed."""

    list_display = ["created_at", "booking", "from_status", "to_status", "reason", "actor", "actor_user", "request_id"]
    list_filter = ["actor", "reason", "to_status"]
    search_fields = ["=booking__id", "=request_id", "actor_user__username"]
    list_select_related = ["booking", "actor_user"]
    date_hierarchy = "created_at"
