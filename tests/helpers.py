"""Assertions shared by the tests."""

from django.db.models import Sum

from flights.models import Flight, SeatHold


def assert_problem(response, status: int, code: str) -> dict:
    """The response is RFC 9457 problem details with this status and code."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"] == "application/problem+json", response["Content-Type"]
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert body["title"] and body["detail"]
    return body


def assert_ledger_invariant(flight: Flight) -> None:
    """DESIGN §6, inventory side: capacity - available = seats held by live holds."""
    flight.refresh_from_db()
    held = SeatHold.objects.filter(flight=flight, state=SeatHold.State.HELD).aggregate(total=Sum("seats"))["total"] or 0
    assert 0 <= flight.available_seats <= flight.capacity
    assert flight.capacity - flight.available_seats == held, (flight.capacity, flight.available_seats, held)


def assert_bookings_match_ledger(flight: Flight) -> None:
    """DESIGN §6 in full: capacity - available = live holds = seats of bookings holding seats."""
    from bookings.models import Booking

    assert_ledger_invariant(flight)
    reserved = (
        Booking.objects.filter(flight_id=flight.pk, seats_state=Booking.SeatsState.RESERVED).aggregate(
            total=Sum("seats")
        )["total"]
        or 0
    )
    assert flight.capacity - flight.available_seats == reserved, (flight.capacity, flight.available_seats, reserved)
