"""Calls to the HTTP API the way a client makes them."""

from __future__ import annotations

from bookings.models import Booking


def pay_over_api(client, booking: Booking, key: str = "k1"):
    body = {"bookingId": booking.pk, "amount": str(booking.total_cost)}
    return client.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
