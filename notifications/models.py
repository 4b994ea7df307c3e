"""Where booking events go (webhook endpoints, the booking's user by e-mail) and how each
delivery went (docs/design.md#notifications)."""

import base64
import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from bookings.models import OutboxEvent

EventType = OutboxEvent.Type


def new_webhook_secret() -> str:
    """`whsec_` and base64 of 32 random bytes, as Standard Webhooks libraries read it."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


EMAIL_LANE = "email"


def lane_of(endpoint_id: int | None) -> str:
    """Deliveries in one lane share a worker's few connections: one endpoint's, or the mail server's."""
    return EMAIL_LANE if endpoint_id is None else f"endpoint-{endpoint_id}"


def endpoint_of(lane: str) -> int | None:
    return None if lane == EMAIL_LANE else int(lane.removeprefix("endpoint-"))


def all_event_types() -> list[str]:
    return list(EventType.values)


class WebhookEndpoint(models.Model):
    """A URL that staff registered to receive booking events, signed with its own secret."""

    url = models.URLField(max_length=2000)
    # The event types it receives (all of them unless it asked for fewer).
    events = models.JSONField(default=all_event_types)
    description = models.CharField(max_length=255, blank=True)
    is_active = models.BooleanField(default=True)
    secret = models.CharField(max_length=64, default=new_webhook_secret, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.url

    def receives(self, event_type: str) -> bool:
        return event_type in self.events


class Delivery(models.Model):
    """One event on its way to one endpoint, or to one person by e-mail: where it stands and
    when it is tried next. Its attempts are `DeliveryAttempt`s."""

    class Channel(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        EMAIL = "email", "E-mail"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (retries used up)"

    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    # The e-mail address, for the e-mail channel.
    recipient = models.EmailField(blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Failed attempts in the current retry schedule (staff's "retry now" of a failed one allows one more).
    failures = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    # The worker sending it holds it until then (a killed one's delivery is taken over after).
    lease_until = models.DateTimeField(default=timezone.now)
    lease_token = models.CharField(max_length=32, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            # An endpoint's deliveries, newest first (the API and admin).
            models.Index(fields=["endpoint", "-created_at", "-id"], name="delivery_endpoint_recent_idx"),
            # Due ones: the worker's next for a lane, and cleanup's re-queue of the forgotten.
            models.Index(fields=["next_attempt_at"], name="delivery_pending_due_idx", condition=Q(state="pending")),
            # Those whose retries ran out: counted by /metrics at every scrape.
            models.Index(fields=["updated_at"], name="delivery_failed_idx", condition=Q(state="failed")),
        ]
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="delivery_one_per_event_endpoint"),
            models.UniqueConstraint(
                fields=["event", "recipient"], condition=Q(channel="email"), name="delivery_one_email_per_event"
            ),
        ]

    def __str__(self) -> str:
        target = self.endpoint.url if self.endpoint_id else self.recipient
        return f"{self.event.type} to {target} ({self.state})"

    @property
    def lane(self) -> str:
        return lane_of(self.endpoint_id)


class DeliveryAttempt(models.Model):
    """One try of a delivery: what the endpoint answered (or what went wrong) and how long it took."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    succeeded = models.BooleanField(default=False)

    class Meta:
        ordering = ["delivery", "number"]
        indexes = [models.Index(fields=["delivery", "number"], name="delivery_attempt_idx")]

    def __str__(self) -> str:
        return f"Attempt {self.number} of delivery {self.delivery_id}"


class WorkerHeartbeat(models.Model):
    """A worker process's (`manage.py db_worker`) latest sign of life, written every
    `WORKER_HEARTBEAT_SECONDS`: /metrics and `check_background` tell from it whether a worker
    is running, which no web probe can. Its row goes when it stops; a killed one's goes when
    the next worker on its host starts."""

    worker_id = models.CharField(max_length=64, unique=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["-beat_at"], name="worker_heartbeat_recent_idx")]

    def __str__(self) -> str:
        return f"Worker {self.worker_id} on {self.host}"
