import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q


def new_payment_reference() -> str:
    return f"pay_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class CustomerAction:
    """What the customer must do before the gateway can charge (3-D Secure): the client
    hands `client_secret` to Stripe.js, which performs `next_action`. Never stored on the
    payment; only the idempotency key's stored answer keeps it, for its replay."""

    client_secret: str
    next_action: dict[str, Any]


class Payment(models.Model):
    """One attempt to charge a booking's totalCost (docs/api.md#payments).

    `reference` is ours, unique and sent to the gateway both as the charge's reference and
    as its idempotency key: resending a charge for this payment can never charge twice,
    and reconciliation finds the charge by it.
    """

    class Status(models.TextChoices):
        # The gateway was (or is being) asked; its answer is not recorded yet.
        PROCESSING = "PROCESSING", "Processing"
        # The gateway waits for the customer to authenticate (3-D Secure); the booking stays
        # PENDING until its webhook, or cleanup, settles it.
        REQUIRES_ACTION = "REQUIRES_ACTION", "Requires action"
        SUCCEEDED = "SUCCEEDED", "Succeeded"
        DECLINED = "DECLINED", "Declined"
        # Definitely not charged: the gateway was unreachable or refused the request.
        FAILED = "FAILED", "Failed"
        REFUNDED = "REFUNDED", "Refunded"

    booking = models.ForeignKey("bookings.Booking", on_delete=models.PROTECT, related_name="payments")
    # The booking's customer: whose payment it is.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments")
    # Who sent the request (the customer, or staff acting for them): the key's owner.
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    idempotency_key = models.CharField(max_length=255, help_text="The client's Idempotency-Key for this payment.")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROCESSING)
    reference = models.CharField(max_length=64, unique=True, default=new_payment_reference, editable=False)
    gateway_reference = models.CharField(
        max_length=128, blank=True, help_text="The gateway's charge id (Stripe: the PaymentIntent's)."
    )
    # Why it was declined or failed, or the last error of an attempt whose outcome is unknown.
    failure_reason = models.CharField(max_length=255, blank=True)
    refund_reference = models.CharField(max_length=128, blank=True)
    # The customer's Stripe PaymentMethod (`pm_...`), as the request gave it; empty elsewhere.
    payment_method = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When the gateway was last asked to charge: reconciliation waits until that call is over.
    attempted_at = models.DateTimeField()
    # Charge requests sent: more than one when a retry with the same key resumed it.
    attempts = models.PositiveSmallIntegerField(default=1)
    completed_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    # When cleanup settled it from the gateway's books (its answer had been lost). One it
    # found not charged is looked up again for a while, in case a late charge lands.
    reconciled_at = models.DateTimeField(null=True, blank=True)
    # When a charge was recorded on a booking already settled as unpaid (cancelled): its money
    # is owed back. Set by each late-money path, so that cleanup finds the ones whose refund
    # was cut short in a small index instead of joining every payment to its booking.
    late_charge_at = models.DateTimeField(null=True, blank=True)

    # Not settled yet: the gateway may still charge it. At most one per booking.
    IN_FLIGHT = (Status.PROCESSING, Status.REQUIRES_ACTION)

    # Set by `payments.services.payment_create` when the gateway asks the customer to act.
    action: CustomerAction | None = None

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Stripe's webhooks name the PaymentIntent (docs/design.md#stripe).
            models.Index(
                fields=["gateway_reference"], name="payment_gateway_ref_idx", condition=~Q(gateway_reference="")
            ),
            # The payments list (docs/api.md#payments), a customer's and staff's, newest first.
            models.Index(fields=["user", "-created_at", "-id"], name="payment_user_recent_idx"),
            models.Index(fields=["-created_at", "-id"], name="payment_recent_idx"),
            # Reconciliation: attempts still processing, oldest first.
            models.Index(fields=["attempted_at"], name="payment_processing_idx", condition=Q(status="PROCESSING")),
            # Settled as not charged by reconciliation: watched for a late charge.
            models.Index(fields=["reconciled_at"], name="payment_reconciled_failed_idx", condition=Q(status="FAILED")),
            # Late charges not refunded yet (cleanup refunds them).
            models.Index(
                fields=["updated_at"],
                name="payment_late_charge_idx",
                condition=Q(status="SUCCEEDED", late_charge_at__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="payment_amount_not_negative"),
            # At most one payment per booking is in flight or holds its money: a second charge
            # for one booking cannot be recorded, whatever a bug upstream does.
            models.UniqueConstraint(
                fields=["booking"],
                condition=Q(status__in=["PROCESSING", "REQUIRES_ACTION", "SUCCEEDED"]),
                name="payment_one_live_per_booking",
            ),
        ]

    def __str__(self) -> str:
        return f"Payment {self.pk} ({self.status}, booking {self.booking_id}, {self.amount} {self.currency})"


class IdempotencyKey(models.Model):
    """A client's Idempotency-Key, scoped to its user, and the final answer it got.

    The unique (user, key) constraint decides which of two racing requests runs; the other
    answers 409 `idempotency_key_in_use` or, once the first is done, its stored answer.
    """

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    # SHA-256 of method, path and the normalised JSON body.
    fingerprint = models.CharField(max_length=64)
    state = models.CharField(max_length=12, choices=State.choices, default=State.IN_PROGRESS)
    # The request running the key holds this lease; one that died is taken over once it runs out.
    lease = models.UUIDField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_unique_per_user")]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_key_expiry_idx")]

    def __str__(self) -> str:
        return f"{self.key} ({self.state})"


class SimulatedCharge(models.Model):
    """The simulated gateway's own books: what it charged, declined and refunded.

    Kept apart from `Payment` on purpose, as a real gateway's records would be, so that
    reconciliation and refunds are tested against a second source of truth.
    """

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        DECLINED = "declined", "Declined"
        REFUNDED = "refunded", "Refunded"

    charge_id = models.CharField(max_length=64, unique=True)
    idempotency_key = models.CharField(max_length=255, unique=True)
    reference = models.CharField(max_length=64, db_index=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=10, choices=Status.choices)
    decline_reason = models.CharField(max_length=255, blank=True)
    refund_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    refunded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.charge_id} ({self.status}, {self.amount} {self.currency})"


class StripeEvent(models.Model):
    """A Stripe webhook event we acted on: each event id is handled once, however often
    Stripe sends it (docs/design.md#stripe)."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=64)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    # What handling it came to, for ops: "booked", "declined", "refunded", "ignored: ...".
    outcome = models.CharField(max_length=255, blank=True)
    # When Stripe created it (its `created`), and when we handled it.
    created = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event_id} ({self.type})"
