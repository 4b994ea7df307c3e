from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html

from bookings_project.admin import OPS_CSS, ReadOnlyAdmin, badge, change_link, csv_export, flight_link, user_link
from payments.models import IdempotencyKey, Payment, SimulatedCharge, StripeEvent
from payments.selectors import payment_attempt_window

Status = Payment.Status


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "status_shown",
        "booking_shown",
        "flight_shown",
        "user_shown",
        "amount",
        "currency",
        "gateway_reference",
        "attempts",
        "created_at",
        "attempted_at",
    ]
    list_filter = ["status", "currency"]
    search_fields = ["=id", "=booking__id", "reference", "gateway_reference", "idempotency_key", "user__username"]
    list_select_related = ["booking", "user"]
    date_hierarchy = "created_at"
    actions = ["export_csv"]
    readonly_fields = ["status_shown", "booking_shown", "flight_shown", "user_shown"]
    fieldsets = [
        (None, {"fields": ["status_shown", "booking_shown", "flight_shown", "user_shown", "created_by"]}),
        (
            "Money",
            {
                "fields": [
                    "amount",
                    "currency",
                    "reference",
                    "gateway_reference",
                    "payment_method",
                    "failure_reason",
                    "refund_reference",
                ]
            },
        ),
        (
            "When",
            {
                "fields": [
                    "created_at",
                    "attempted_at",
                    "attempts",
                    "completed_at",
                    "refunded_at",
                    "reconciled_at",
                    "late_charge_at",
                    "updated_at",
                    "idempotency_key",
                ]
            },
        ),
    ]

    class Media:
        css = OPS_CSS

    @admin.display(description="status", ordering="status")
    def status_shown(self, payment: Payment):
        label = payment.get_status_display()
        if payment.status in (Status.FAILED, Status.DECLINED):
            return badge(label, "alert", title=payment.failure_reason)
        # Older than the attempt window, its request is surely over: cleanup should have
        # reconciled it with the gateway (payments.selectors.payment_attempt_window).
        if payment.status == Status.PROCESSING and payment.attempted_at < timezone.now() - payment_attempt_window():
            return format_html("{} {}", label, badge("stuck", "alert", title="Processing past its attempt window"))
        return label

    @admin.display(description="booking", ordering="booking")
    def booking_shown(self, payment: Payment):
        return change_link(payment.booking, f"{payment.booking_id} ({payment.booking.reference})")

    @admin.display(description="flight id", ordering="booking__flight_id")
    def flight_shown(self, payment: Payment):
        return flight_link(payment.booking.flight_id)

    @admin.display(description="user", ordering="user__username")
    def user_shown(self, payment: Payment):
        return user_link(payment.user)

    @admin.action(description="Export selected as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Payment]) -> HttpResponse:
        # Header: field.
        columns = {
            "id": "id",
            "booking id": "booking_id",
            "user": "user__username",
            "amount": "amount",
            "currency": "currency",
            "status": "status",
            "gateway reference": "gateway_reference",
            "created": "created_at",
            "refunded at": "refunded_at",
        }
        header = list(columns)
        rows = queryset.order_by("pk").values_list(*columns.values()).iterator(chunk_size=2000)
        return csv_export(name="payments", header=header, rows=rows)


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyAdmin):
    list_display = ["key", "user", "state", "response_status", "created_at", "completed_at", "expires_at"]
    list_filter = ["state", "response_status"]
    search_fields = ["key", "user__username"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"


@admin.register(SimulatedCharge)
class SimulatedChargeAdmin(ReadOnlyAdmin):
    list_display = ["charge_id", "status", "reference", "amount", "currency", "created_at", "refunded_at"]
    list_filter = ["status"]
    search_fields = ["charge_id", "reference", "idempotency_key"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    """Stripe's webhook events, each handled once, and what each came to (docs/operations.md#stripe)."""

    list_display = ["event_id", "type", "payment_shown", "outcome", "created", "received_at"]
    list_filter = ["type"]
    search_fields = ["event_id", "=payment__id", "payment__gateway_reference"]
    list_select_related = ["payment"]
    date_hierarchy = "received_at"

    @admin.display(description="payment", ordering="payment")
    def payment_shown(self, event: StripeEvent):
        return change_link(event.payment, str(event.payment_id))
