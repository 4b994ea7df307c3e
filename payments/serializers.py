"""Payment resources on the wire (docs/api.md#payments): camelCase, money as a 2-place decimal string."""

from rest_framework import serializers

from bookings_project.fields import CachedFieldsSerializer, MoneyField, StrictIntegerField, resolve_alias
from bookings_project.openapi import MAX_ID
from payments.models import Payment


class PaymentSerializer(CachedFieldsSerializer):
    bookingId = serializers.IntegerField(source="booking_id")
    userId = serializers.IntegerField(source="user_id", help_text="The booking's customer.")
    amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    status = serializers.ChoiceField(choices=Payment.Status.choices)
    gatewayReference = serializers.CharField(
        source="gateway_reference", allow_null=True, help_text="The gateway's charge id; null until it answered."
    )
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Payment
        fields = [
            "id",
            "bookingId",
            "userId",
            "amount",
            "currency",
            "status",
            "gatewayReference",
            "createdAt",
            "updatedAt",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Payment) -> dict:
        data = super().to_representation(instance)
        data["gatewayReference"] = instance.gateway_reference or None
        return data


class PaymentCreateSerializer(serializers.Serializer):
    bookingId = StrictIntegerField(min_value=1, max_value=MAX_ID)
    amount = MoneyField(
        required=False, help_text="Must equal the booking's totalCost. Required, unless given as `totalCost`."
    )
    totalCost = MoneyField(
        required=False, help_text="Deprecated alias of `amount`, as the older course clients send it."
    )
    userId = StrictIntegerField(
        min_value=1,
        max_value=MAX_ID,
        required=False,
        help_text="Optional. Must be your own id, unless you are staff paying for a customer.",
    )

    def validate(self, attrs: dict) -> dict:
        return resolve_alias(attrs, "amount", "totalCost")

    def normalised(self, *, caller_id: int) -> dict:
        """The body as the fingerprint sees it: aliases resolved, money as a 2-place string, and
        `userId` only when it names someone other than the caller (naming yourself is the same
        request as naming nobody)."""
        data = self.validated_data
        body = {"bookingId": data["bookingId"], "amount": f"{data['amount']:.2f}"}
        if data.get("userId") not in (None, caller_id):
            body["userId"] = data["userId"]
        return body
