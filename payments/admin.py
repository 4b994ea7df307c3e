from django.contrib import admin
from django.http import HttpRequest

from payments.models import IdempotencyKey, Payment, SimulatedCharge


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money and its records change only through the services, never by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


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
