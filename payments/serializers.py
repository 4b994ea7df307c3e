"""Payment resources on the wire (docs/api.md#payments): camelCase, money as a 2-place decimal string.
Also the booking as the API answers it, with its latest payment: payments know bookings, not
the other way round (docs/design.md#layers)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from bookings.serializers import BookingSerializer
from bookings_project.fields import CachedFieldsSerializer, MoneyField, StrictIntegerField, resolve_alias
from bookings_project.openapi import MAX_ID
from payments.models import Payment
from payments.selectors import LATEST_PAYMENT


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
    paymentMethod = serializers.RegexField(
        r"^pm_[A-Za-z0-9_]{1,250}$",
        required=False,
        help_text=(
            "With Stripe (`PAYMENT_GATEWAY=stripe`), required: the customer's Stripe PaymentMethod id, made by "
            "Stripe.js in the client (`pm_card_visa` in test mode). Other gateways ignore it."
        ),
    )

    def validate(self, attrs: dict) -> dict:
        if settings.PAYMENT_GATEWAY == "stripe" and not attrs.get("paymentMethod"):
            raise serializers.ValidationError(
                {"paymentMethod": "Required: this service takes payments through Stripe."}
            )
        return resolve_alias(attrs, "amount", "totalCost")

    def normalised(self, *, caller_id: int) -> dict:
        """The body as the fingerprint sees it: aliases resolved, money as a 2-place string, and
        `userId` only when it names someone other than the caller (naming yourself is the same
        request as naming nobody)."""
        data = self.validated_data
        body = {"bookingId": data["bookingId"], "amount": f"{data['amount']:.2f}"}
        if data.get("userId") not in (None, caller_id):
            body["userId"] = data["userId"]
        if data.get("paymentMethod"):
            body["paymentMethod"] = data["paymentMethod"]
        return body


class PaymentActionSerializer(PaymentSerializer):
    """A REQUIRES_ACTION payment (202): what the customer's client does next, with Stripe.js."""

    clientSecret = serializers.CharField(
        source="action.client_secret",
        help_text="The PaymentIntent's client secret: give it to Stripe.js (`stripe.handleNextAction`). Keep it "
        "from logs; it is shown in this answer only.",
    )
    nextAction = serializers.JSONField(
        source="action.next_action", help_text="Stripe's `next_action`, as Stripe gave it (`use_stripe_sdk`)."
    )

    class Meta(PaymentSerializer.Meta):
        fields = [*PaymentSerializer.Meta.fields, "clientSecret", "nextAction"]
        read_only_fields = fields


def payment_answer(payment: Payment) -> tuple[int, dict]:
    """The status and body that answer a payment request: 201 with the payment, or 202 with
    what the customer must do (3-D Secure)."""
    if payment.status == Payment.Status.REQUIRES_ACTION and payment.action is not None:
        return 202, dict(PaymentActionSerializer(payment).data)
    return 201, dict(PaymentSerializer(payment).data)


class PaymentSummarySerializer(serializers.Serializer):
    """A `selectors.PaymentSummary` (or a Payment)."""

    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Payment.Status.choices)
    amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField()
    refundedAt = serializers.DateTimeField(
        source="refunded_at", allow_null=True, help_text="When its money was given back; null if it was not."
    )


class BookingAnswerSerializer(BookingSerializer):
    """A booking with its latest payment: give it first (`selectors.attach_latest_payments`).
    One summary serializer, bound with the cached fields, renders every booking's."""

    payment = PaymentSummarySerializer(
        source=LATEST_PAYMENT, allow_null=True, help_text="The latest payment; null if none."
    )

    class Meta(BookingSerializer.Meta):
        fields = [*BookingSerializer.Meta.fields, "payment"]
        read_only_fields = fields
