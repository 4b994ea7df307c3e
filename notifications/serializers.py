"""Webhook endpoints and deliveries on the wire (docs/api.md#webhooks)."""

from rest_framework import serializers

from bookings.models import OutboxEvent
from bookings_project.fields import CachedFieldsSerializer
from notifications.models import Delivery, WebhookEndpoint
from notifications.urlsafety import UnsafeURL, check_url
from payments.serializers import BookingAnswerSerializer, PaymentSerializer

EVENT_TYPES = OutboxEvent.Type


class WebhookEndpointSerializer(CachedFieldsSerializer):
    isActive = serializers.BooleanField(source="is_active")
    createdAt = serializers.DateTimeField(source="created_at")
    events = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPES.choices))

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "events", "description", "isActive", "createdAt"]
        read_only_fields = fields


class WebhookEndpointCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(
        help_text="`whsec_` and base64 of the signing key. Shown only in this answer: keep it."
    )

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class _EndpointInput(serializers.Serializer):
    url = serializers.URLField(
        max_length=2000,
        help_text="`https`, on a host whose every address is public (unless WEBHOOK_ALLOW_INSECURE).",
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES.choices),
        allow_empty=False,
        max_length=len(EVENT_TYPES.values) * 2,
        help_text="The event types to receive; all of them if left out.",
    )
    description = serializers.CharField(max_length=255, allow_blank=True)

    def validate_url(self, value: str) -> str:
        try:
            check_url(value)
        except UnsafeURL as error:
            raise serializers.ValidationError(str(error)) from None
        return value


class WebhookEndpointCreateSerializer(_EndpointInput):
    def get_fields(self) -> dict:
        fields = super().get_fields()
        fields["events"].required = False
        fields["description"].required = False
        return fields


class WebhookEndpointUpdateSerializer(_EndpointInput):
    isActive = serializers.BooleanField(source="is_active")

    def get_fields(self) -> dict:
        fields = super().get_fields()
        for field in fields.values():
            field.required = False
        return fields


class DeliverySerializer(CachedFieldsSerializer):
    eventId = serializers.CharField(source="event.public_id")
    eventType = serializers.ChoiceField(source="event.type", choices=EVENT_TYPES.choices)
    state = serializers.ChoiceField(choices=Delivery.State.choices)
    lastStatusCode = serializers.IntegerField(source="last_status_code", allow_null=True)
    lastError = serializers.CharField(source="last_error", allow_null=True)
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at", allow_null=True)
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Delivery
        fields = [
            "id",
            "eventId",
            "eventType",
            "state",
            "attempts",
            "lastStatusCode",
            "lastError",
            "nextAttemptAt",
            "deliveredAt",
            "createdAt",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Delivery) -> dict:
        data = super().to_representation(instance)
        data["lastError"] = instance.last_error or None
        return data


class _EventDataSerializer(serializers.Serializer):
    booking = BookingAnswerSerializer()
    payment = PaymentSerializer(
        allow_null=True, help_text="The refunded payment, or the one that took the booking's money; null if none did."
    )


class WebhookEventSerializer(serializers.Serializer):
    """The body of every delivery (for the schema; the worker renders it in notifications.selectors.event_body)."""

    id = serializers.CharField(help_text="`evt_...`: the same as the `webhook-id` header, on every retry.")
    type = serializers.ChoiceField(choices=EVENT_TYPES.choices)
    createdAt = serializers.DateTimeField(help_text="When the change was committed.")
    data = _EventDataSerializer(help_text="The booking as `GET /bookings/{id}` answers it, and its payment.")
