from django.contrib import admin

from bookings_project.admin import ReadOnlyAdmin
from payments.models import IdempotencyKey, Payment, SimulatedCharge


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "status",
        "booking",
        "user",
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
