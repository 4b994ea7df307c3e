"""Assertions and concurrency tools shared by the tests."""

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from django.db import connections, transaction
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


def race(count: int, task: Callable[[int], object]) -> list:
    """Run `task(i)` in `count` threads released at the same moment, each with its own
    database connection (closed afterwards), as concurrent requests on app workers are."""
    start = threading.Barrier(count)

    def run(index):
        try:
            start.wait()
            return task(index)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


@contextlib.contextmanager
def flight_row_locked(flight: Flight) -> Iterator[None]:
    """Another transaction holds the flight's row lock for the duration of the block."""
    locked, done = threading.Event(), threading.Event()

    def hold_the_row():
        try:
            with transaction.atomic():
                Flight.objects.select_for_update().get(pk=flight.pk)
                locked.set()
                done.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        done.set()
        holder.join()
