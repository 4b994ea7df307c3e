import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from bookings import references
from flights.models import default_currency


class Booking(models.Model):
    """One customer's seats on one flight, and where its saga with the Flights service stands.

    `status` is the state machine clients see (docs/design.md#state-machine). `seats_state` records what the
    Flights service holds for this booking, so that seats are released exactly once
    whatever crashes or retries happen.
    """

    class Status(models.TextChoices):
        INITIATED = "INITIATED", "Initiated"
        PENDING = "PENDING", "Pending payment"
        BOOKED = "BOOKED", "Booked"
        CANCELLED = "CANCELLED", "Cancelled"

    class SeatsState(models.TextChoices):
        # The reserve was sent (or is about to be) and its outcome is not known yet.
        UNCONFIRMED = "unconfirmed", "Reserve sent, outcome unknown"
        RESERVED = "reserved", "Reserved"
        # A release is in flight on a Flights service that keeps no holds (see services).
        RELEASING = "releasing", "Release in flight (service without holds)"
        RELEASED = "released", "Released"
        # Nothing is held: the reserve was refused outright.
        NONE = "none", "Not reserved"
        # Outcome unknown on a service that keeps no holds: a blind release could give back
        # seats that were never taken, so a person must look.
        RECONCILE = "reconcile", "Needs reconciliation by ops"

    class CancelReason(models.TextChoices):
        USER = "user", "Cancelled by the customer"
        STAFF = "staff", "Cancelled by staff"
        EXPIRED = "expired", "Hold expired unpaid"
        RESERVATION_FAILED = "reservation_failed", "Seats could not be reserved"
        FLIGHT_SERVICE_UNAVAILABLE = "flight_service_unavailable", "Flights service unavailable"

    # The seats are (or may be) held by the Flights service and nobody has given them back.
    SEATS_OWED = (SeatsState.UNCONFIRMED, SeatsState.RESERVED)

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="bookings")
    # An id in the Flights bounded context, which may be another service: not a foreign key.
    flight_id = models.BigIntegerField()
    seats = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    total_cost = models.DecimalField(max_digits=12, decimal_places=2)
    # The flight's currency when it was booked, as its price.
    currency = models.CharField(max_length=3, default=default_currency)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.INITIATED)
    seats_state = models.CharField(max_length=12, choices=SeatsState.choices, default=SeatsState.UNCONFIRMED)
    # Whether the Flights service keeps a hold per reference (ours does; the seed's does
    # not). Only then is a release by reference safe to repeat after an unknown outcome.
    flight_keeps_holds = models.BooleanField(default=True)
    cancel_reason = models.CharField(max_length=32, choices=CancelReason.choices, blank=True)
    # The last failure talking to the Flights service about this booking's seats, for ops.
    flight_service_error = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField()
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # Set before a paid booking's refund is asked for, with `cancel_reason`: if the cancel
    # is cut short (a crash, or the gateway down), cleanup finishes it.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    seats_released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at", "-id"], name="booking_user_recent_idx"),
            # Staff's list (and the admin's) walk every booking newest first.
            models.Index(fields=["-created_at", "-id"], name="booking_recent_idx"),
            # The list filtered by flight (`flightId`), newest first.
            models.Index(fields=["flight_id", "-created_at", "-id"], name="booking_flight_recent_idx"),
            models.Index(fields=["status", "expires_at"], name="booking_status_expiry_idx"),
            # Unpaid bookings, on the id that cleanup's keyset batches walk: with the history
            # settled and the stale ones the newest, the planner would otherwise walk the
            # primary key through every settled booking to reach them.
            models.Index(fields=["id"], name="booking_unpaid_idx", condition=Q(status__in=["INITIATED", "PENDING"])),
            # Paid bookings whose cancel was cut short: rare, so partial.
            # On the id, which cleanup's keyset batches walk: the planner cannot tell how few
            # rows the condition leaves, and would walk the primary key instead.
            models.Index(
                fields=["id"],
                name="booking_cancel_unfinished_idx",
                condition=Q(status="BOOKED", cancel_requested_at__isnull=False),
            ),
            # Cancelled bookings whose seats still have to go back: small, so partial (on the id,
            # as above).
            models.Index(
                fields=["id"],
                name="booking_release_owed_idx",
                condition=Q(status="CANCELLED", seats_state__in=["unconfirmed", "reserved", "releasing"]),
            ),
            # Seat outcomes left to a person: rare, so partial.
            models.Index(fields=["updated_at"], name="booking_reconcile_idx", condition=Q(seats_state="reconcile")),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(seats__gte=1), name="booking_seats_positive"),
            models.CheckConstraint(condition=Q(total_cost__gte=0), name="booking_total_cost_not_negative"),
        ]

    def __str__(self) -> str:
        return f"Booking {self.pk} ({self.status}, flight {self.flight_id}, {self.seats} seat(s))"

    @property
    def reference(self) -> str:
        """The 6-character code a person reads out (a PNR), derived from the id (bookings.references)."""
        return references.reference_of(self.pk)

    @property
    def hold_ref(self) -> str:
        """The reservation reference sent with every seat change for this booking."""
        return f"booking-{self.pk}"

    @property
    def release_owed(self) -> bool:
        return self.status == self.Status.CANCELLED and self.seats_state in self.SEATS_OWED


class CleanupRun(models.Model):
    """One run of `cleanup_stale_bookings` (dry runs are not recorded).

    Kept so that ops can see in admin when cron last ran, where, and what it did.
    """

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    host = models.CharField(max_length=255)
    # The request id its log lines, Flights calls and audit events carry.
    run_id = models.CharField(max_length=64, blank=True)
    counts = models.JSONField(help_text="The summary line's counts.")
    failed = models.PositiveIntegerField(default=0)
    # What failed, one line each (the first 100), as the command printed them.
    failures = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["-started_at"], name="cleanup_run_recent_idx")]

    def __str__(self) -> str:
        return f"Cleanup run at {self.started_at:%Y-%m-%d %H:%M:%S} on {self.host}"


class BookingEvent(models.Model):
    """One change of a booking's status (docs/design.md#state-machine), written in the same transaction as
    the change: who or what made it, why, and in which request. Never edited."""

    class Actor(models.TextChoices):
        USER = "user", "The customer"
        STAFF = "staff", "Staff"
        CLEANUP = "cleanup", "cleanup_stale_bookings"
        GATEWAY = "gateway", "The payment gateway's answer"
        # Neither a request nor cleanup: a shell, a data migration.
        SYSTEM = "system", "System"

    class Reason(models.TextChoices):
        CREATED = "created", "Booked, seats being reserved"
        PAYMENT_STARTED = "payment_started", "Payment started"
        PAYMENT_SUCCEEDED = "payment_succeeded", "Payment succeeded"
        PAYMENT_DECLINED = "payment_declined", "Payment declined"
        PAYMENT_FAILED = "payment_failed", "Payment failed, nothing charged"
        RECONCILED_CHARGED = "reconciled_charged", "Reconciled: the gateway had charged"
        # Cancels carry the booking's cancel reason.
        USER = "user", "Cancelled by the customer"
        STAFF = "staff", "Cancelled by staff"
        EXPIRED = "expired", "Hold expired unpaid"
        RESERVATION_FAILED = "reservation_failed", "Seats could not be reserved"
        FLIGHT_SERVICE_UNAVAILABLE = "flight_service_unavailable", "Flights service unavailable"

    booking = models.ForeignKey(Booking, on_delete=models.PROTECT, related_name="events")
    from_status = models.CharField(max_length=10, choices=Booking.Status.choices, blank=True)
    to_status = models.CharField(max_length=10, choices=Booking.Status.choices)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    actor = models.CharField(max_length=10, choices=Actor.choices)
    # The signed-in caller whose request made the change (also for the gateway's answer to it).
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    request_id = models.CharField(max_length=128, blank=True)
    # Why, in the words of the person who made the change (staff's cancel page).
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Write order: events are written under the booking's row lock, so ids order them
        # truly, where clocks of different app hosts might not.
        ordering = ["id"]
        indexes = [models.Index(fields=["booking", "id"], name="booking_event_booking_idx")]

    def __str__(self) -> str:
        return f"Booking {self.booking_id}: {self.from_status or '-'} → {self.to_status} ({self.reason})"


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


class OutboxEvent(models.Model):
    """A change that notifications report (docs/design.md#notifications): the transactional outbox.

    Written in the transaction that makes the change, so a change that rolls back has none and
    a committed one always has one. The notifications app delivers it after the commit; this
    row, not the task queue, is the truth of what is owed. It lives here, below payments, so
    that every layer that makes such a change can write it.
    """

    class Type(models.TextChoices):
        BOOKING_CREATED = "booking.created", "Booking created"
        BOOKING_CONFIRMED = "booking.confirmed", "Booking confirmed"
        BOOKING_CANCELLED = "booking.cancelled", "Booking cancelled"
        PAYMENT_REFUNDED = "payment.refunded", "Payment refunded"

    public_id = models.CharField(max_length=40, unique=True, default=new_event_id, editable=False)
    type = models.CharField(max_length=24, choices=Type.choices)
    booking = models.ForeignKey(Booking, on_delete=models.PROTECT, related_name="outbox_events")
    # The payment it is about (payment.refunded); a plain id, as payments sit above bookings.
    payment_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set by the worker when it turns the event into deliveries, with the body every delivery
    # of it sends (the same bytes on every retry, so that its signature can be checked).
    dispatched_at = models.DateTimeField(null=True, blank=True)
    body = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["booking", "id"], name="outbox_event_booking_idx"),
            # Not yet turned into deliveries: few, so partial; cleanup re-queues the old ones.
            models.Index(
                fields=["created_at"], name="outbox_event_undispatched_idx", condition=Q(dispatched_at__isnull=True)
            ),
            # Retention: delivered events older than NOTIFICATION_RETENTION_DAYS are deleted.
            models.Index(fields=["created_at"], name="outbox_event_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type} (booking {self.booking_id})"
