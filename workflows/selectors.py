"""Reads that need both bookings and payments: what cleanup reconciles."""

from __future__ import annotations

import datetime as dt

from django.db.models import Exists, OuterRef, QuerySet

from bookings.models import Booking
from payments.models import Payment


def bookings_to_reconcile(*, expired_before: dt.datetime, attempted_before: dt.datetime) -> QuerySet[Booking]:
    """PENDING bookings whose hold ended, once their payment attempt is over (older than
    `attempted_before`): the gateway then says whether the money was taken."""
    live_attempt = Payment.objects.filter(
        booking=OuterRef("pk"), status__in=Payment.IN_FLIGHT, attempted_at__gt=attempted_before
    )
    return Booking.objects.filter(status=Booking.Status.PENDING, expires_at__lte=expired_before).exclude(
        Exists(live_attempt)
    )
