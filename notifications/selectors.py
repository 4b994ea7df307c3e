"""Notification reads: what an event says (its body), endpoints and their deliveries."""

from __future__ import annotations

import datetime as dt
import json

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Exists, OuterRef, QuerySet
from rest_framework import serializers

from bookings.models import OutboxEvent
from notifications.models import Delivery, WebhookEndpoint
from payments.models import Payment
from payments.selectors import LATEST_PAYMENT, PaymentSummary
from payments.serializers import BookingAnswerSerializer, PaymentSerializer

_TIME = serializers.DateTimeField()


def event_body(*, event: OutboxEvent) -> str:
    """The JSON every delivery of the event sends: `{"id", "type", "createdAt", "data":
    {"booking", "payment"}}`, the booking and payment as GET answers them now (the worker
    renders it once, when it first picks the event up, and keeps it)."""
    booking = event.booking  # Read with the event, under its lock (services.event_dispatch).
    payments = list(Payment.objects.filter(booking_id=booking.pk).order_by("-created_at", "-id"))
    setattr(booking, LATEST_PAYMENT, PaymentSummary.of(payments[0]) if payments else None)
    payment = _payment_of(event, payments)
    body = {
        "id": event.public_id,
        "type": event.type,
        "createdAt": _TIME.to_representation(event.created_at),
        "data": {
            "booking": BookingAnswerSerializer(booking).data,
            "payment": None if payment is None else PaymentSerializer(payment).data,
        },
    }
    return json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":"))


def _payment_of(event: OutboxEvent, payments: list[Payment]) -> Payment | None:
    """The event's own payment, else the latest of its booking's `payments` that took money
    (null if none did)."""
    if event.payment_id is not None:
        return next(payment for payment in payments if payment.pk == event.payment_id)
    took_money = (Payment.Status.SUCCEEDED, Payment.Status.REFUNDED)
    return next((payment for payment in payments if payment.status in took_money), None)


def endpoint_list() -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.order_by("-created_at", "-id")


def endpoint_deliveries(*, endpoint: WebhookEndpoint) -> QuerySet[Delivery]:
    return Delivery.objects.filter(endpoint=endpoint).select_related("event").order_by("-created_at", "-id")


def events_not_dispatched(*, created_before: dt.datetime) -> QuerySet[OutboxEvent]:
    """Committed before `created_before` and not yet turned into deliveries: their task was lost."""
    return OutboxEvent.objects.filter(dispatched_at__isnull=True, created_at__lt=created_before)


def deliveries_forgotten(*, due_before: dt.datetime, now: dt.datetime) -> QuerySet[Delivery]:
    """Pending, due before `due_before`, and held by nobody: their task was lost, or the
    worker attempting them died (its lease ran out)."""
    return Delivery.objects.filter(state=Delivery.State.PENDING, next_attempt_at__lt=due_before, lease_until__lte=now)


def events_to_purge(*, created_before: dt.datetime) -> QuerySet[OutboxEvent]:
    """Older than `created_before` and delivered everywhere (a pending or failed delivery keeps its event)."""
    undelivered = Delivery.objects.filter(event=OuterRef("pk")).exclude(state=Delivery.State.DELIVERED)
    return OutboxEvent.objects.filter(created_at__lt=created_before, dispatched_at__isnull=False).exclude(
        Exists(undelivered)
    )
