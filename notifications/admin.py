"""Notifications in admin: webhook endpoints, and every delivery with its attempts
(filter by state, "retry now")."""

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from bookings.models import OutboxEvent
from bookings_project.admin import ReadOnlyAdmin
from notifications import services, tasks
from notifications.models import Delivery, DeliveryAttempt, WebhookEndpoint, lane_of
from notifications.urlsafety import UnsafeURL, check_url


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=OutboxEvent.Type.choices, widget=forms.CheckboxSelectMultiple, required=True
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "events", "description", "is_active"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            check_url(url)
        except UnsafeURL as error:
            raise forms.ValidationError(str(error)) from None
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["id", "url", "description", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["url", "description"]
    readonly_fields = ["secret", "created_by", "created_at", "updated_at"]

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "duration_ms", "succeeded", "status_code", "error"]
    readonly_fields = fields
    verbose_name_plural = "attempts"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "event_type",
        "target",
        "state",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
        "created_at",
    ]
    list_filter = ["state", "channel", "event__type", "endpoint"]
    search_fields = ["event__public_id", "recipient", "endpoint__url"]
    list_select_related = ["event", "endpoint"]
    readonly_fields = [
        "event",
        "channel",
        "endpoint",
        "recipient",
        "state",
        "attempts",
        "failures",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
        "body",
    ]
    fields = readonly_fields
    inlines = [DeliveryAttemptInline]
    actions = ["retry_now"]

    @admin.display(description="event", ordering="event__type")
    def event_type(self, delivery: Delivery) -> str:
        return f"{delivery.event.type} (booking {delivery.event.booking_id})"

    @admin.display(description="to")
    def target(self, delivery: Delivery) -> str:
        return delivery.endpoint.url if delivery.endpoint_id else delivery.recipient

    @admin.display(description="body sent")
    def body(self, delivery: Delivery) -> str:
        return delivery.event.body

    @admin.action(description="Retry now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        retried = services.delivery_retry_now(delivery_ids=ids)
        for delivery_id, endpoint_id in retried:
            tasks.deliver.enqueue(delivery_id, lane_of(endpoint_id))
        skipped = len(ids) - len(retried)
        self.message_user(
            request,
            f"{len(retried)} deliver{'y' if len(retried) == 1 else 'ies'} queued for an attempt now"
            + (f"; {skipped} already delivered, left alone." if skipped else "."),
            messages.SUCCESS,
        )
