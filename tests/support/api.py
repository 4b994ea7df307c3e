"""Calls to the HTTP API the way a client makes them. Each answers the response, unchecked:
the test asserts what it expects. `extra` goes to the test client (headers as
`HTTP_X_REQUEST_ID=...`)."""

from __future__ import annotations

from decimal import Decimal

from bookings.models import Booking
from flights.models import Flight

BOOKINGS = "/api/v1/bookings"
PAYMENTS = "/api/v1/payments"


def post_booking(client, flight: Flight | int, seats: int = 2, *, fields: dict | None = None, **extra):
    """POST /bookings for `seats` seats of the flight (a `Flight`, or a flight id); `fields`
    are more body fields (`{"userId": ...}`)."""
    flight_id = flight if isinstance(flight, int) else flight.pk
    body = {"flightId": flight_id, "numberOfSeats": seats, **(fields or {})}
    return client.post(BOOKINGS, body, format="json", **extra)


def post_payment(
    client,
    booking: Booking | int,
    key: str,
    amount: Decimal | str | None = None,
    *,
    payment_method: str | None = None,
    **extra,
):
    """POST /payments under the Idempotency-Key `key`, for `amount` (default: the booking's total),
    with a Stripe `paymentMethod` if given."""
    if isinstance(booking, int):
        booking_id = booking
    else:
        booking_id, amount = booking.pk, booking.total_cost if amount is None else amount
    assert amount is not None, "a booking id needs its amount"
    body = {"bookingId": booking_id, "amount": str(amount)}
    if payment_method is not None:
        body["paymentMethod"] = payment_method
    return client.post(PAYMENTS, body, format="json", HTTP_IDEMPOTENCY_KEY=key, **extra)


def patch_cancel(client, booking: Booking | int, **extra):
    """PATCH /bookings/{id}/cancel."""
    booking_id = booking if isinstance(booking, int) else booking.pk
    return client.patch(f"{BOOKINGS}/{booking_id}/cancel", **extra)
