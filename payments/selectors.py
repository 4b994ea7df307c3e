"""Payment reads, scoped to what the caller may see (docs/api.md#auth)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from bookings.models import Booking
from bookings_project.exceptions import NotFound
from bookings_project.http_client import timeouts
from payments.models import IdempotencyKey, Payment


class PaymentSummary(NamedTuple):
    """What a booking's answer says of its latest payment (`payment`)."""

    id: int
    status: str
    amount: Decimal
    currency: str
    refunded_at: dt.datetime | None

    @classmethod
    def of(cls, payment: Payment) -> PaymentSummary:
        return cls(payment.pk, payment.status, payment.amount, payment.currency, payment.refunded_at)


# The attribute `attach_latest_payments` gives each booking: a `PaymentSummary`, or None.
LATEST_PAYMENT = "latest_payment"


def attach_latest_payments(bookings: Sequence[Booking]) -> None:
    """Give each booking its latest payment's summary (None if it has none), in one query for
    them all: a page of bookings costs one statement more, whatever its size. Plain rows, not
    models: a page's answer builds no Payment."""
    latest: dict[int, PaymentSummary] = {}
    if bookings:
        rows = (
            Payment.objects.filter(booking_id__in=[booking.pk for booking in bookings])
            .order_by("booking_id", "-created_at", "-id")
            .values_list("booking_id", "id", "status", "amount", "currency", "refunded_at")
        )
        for booking_id, *summary in rows:
            latest.setdefault(booking_id, PaymentSummary(*summary))
    for booking in bookings:
        setattr(booking, LATEST_PAYMENT, latest.get(booking.pk))


def attach_no_payment(booking: Booking) -> None:
    """A booking just created has none: no query to learn it."""
    setattr(booking, LATEST_PAYMENT, None)


def payment_list(*, user: AbstractBaseUser) -> QuerySet[Payment]:
    """Newest first. Staff see every payment; anyone else only their own."""
    payments = Payment.objects.order_by("-created_at", "-id")
    return payments if user.is_staff else payments.filter(user=user)


def payment_get(*, user: AbstractBaseUser, payment_id: int) -> Payment:
    """Another user's payment is as unknown as a missing one: 404, never 403."""
    payment = payment_list(user=user).filter(pk=payment_id).first()
    if payment is None:
        raise NotFound(f"Payment {payment_id} does not exist.")
    return payment


def gateway_call_seconds() -> float:
    """The longest the gateway's calls for one charge can take: its connect and read timeouts,
    once per call (Stripe's adapter makes two: create the intent, then confirm it)."""
    connect, read = timeouts(settings.PAYMENT_GATEWAY_TIMEOUT)
    return (connect + read) * (2 if settings.PAYMENT_GATEWAY == "stripe" else 1)


def payment_attempt_window() -> dt.timedelta:
    """How long a payment attempt can last: the gateway's calls plus a margin for lock waits
    and slow workers. Past it, the request that made it is over."""
    return dt.timedelta(seconds=gateway_call_seconds() + settings.PAYMENT_ATTEMPT_MARGIN_SECONDS)


# The waits before each new try of recording a charge's answer when the database fails (a
# restart, a dropped connection): the money is decided, and a blip must not leave it to cleanup.
RECORD_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)


def payment_request_duration() -> dt.timedelta:
    """The longest a live payment request runs: the gateway's timeouts, then the retries of
    recording its answer. A request that claimed a key longer ago than this has ended."""
    return dt.timedelta(seconds=gateway_call_seconds() + sum(RECORD_RETRY_DELAYS) + 1)


def payment_in_flight(*, booking_id: int, lock: bool = False) -> Payment | None:
    """The booking's payment attempt not settled yet (PROCESSING, or REQUIRES_ACTION), if any
    (there is at most one); with `lock`, its row locked for the caller's transaction."""
    payments = Payment.objects.select_for_update() if lock else Payment.objects.all()
    return payments.filter(booking_id=booking_id, status__in=Payment.IN_FLIGHT).first()


def payment_of_key(*, booking_id: int, caller: AbstractBaseUser, idempotency_key: str) -> Payment | None:
    """The payment the caller made for the booking under this idempotency key (the latest,
    if a decline let the key pay again)."""
    return (
        Payment.objects.filter(booking_id=booking_id, created_by=caller, idempotency_key=idempotency_key)
        .order_by("-id")
        .first()
    )


def idempotency_key_of(*, user: AbstractBaseUser, key: str) -> IdempotencyKey | None:
    return IdempotencyKey.objects.filter(user=user, key=key).first()


def booking_has_standing_charge(*, booking_id: int) -> bool:
    """Money was taken for the booking and not given back."""
    return Payment.objects.filter(booking_id=booking_id, status=Payment.Status.SUCCEEDED).exists()


def payments_stranded_on_cancelled_bookings(*, updated_before: dt.datetime) -> QuerySet[Payment]:
    """Money taken for a booking that is cancelled, left unrefunded (a late charge whose
    refund was cut short). `updated_before` leaves alone one a live request is refunding.
    Money reaches a cancelled booking only by a late charge, and every path that records one
    marks it (`late_charge_at`): the look-up reads that small index, not every payment."""
    return Payment.objects.filter(
        status=Payment.Status.SUCCEEDED,
        late_charge_at__isnull=False,
        booking__status=Booking.Status.CANCELLED,
        updated_at__lte=updated_before,
    )


def expired_idempotency_keys(*, now: dt.datetime) -> QuerySet[IdempotencyKey]:
    """Keys past their TTL (already treated as unknown), but for one a live request holds."""
    return IdempotencyKey.objects.filter(expires_at__lte=now).exclude(
        state=IdempotencyKey.State.IN_PROGRESS, locked_until__gt=now
    )


def payments_to_watch_for_late_charges(*, reconciled_after: dt.datetime) -> QuerySet[Payment]:
    """Payments reconciliation found not charged since `reconciled_after`: a gateway that
    was still working on the charge when we looked may apply it later."""
    return Payment.objects.filter(status=Payment.Status.FAILED, reconciled_at__gt=reconciled_after)
