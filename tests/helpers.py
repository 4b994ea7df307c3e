"""Assertions and concurrency tools shared by the tests."""

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import responses
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
    """The invariants (docs/design.md#invariants), inventory side: capacity - available = seats held by live holds."""
    flight.refresh_from_db()
    held = SeatHold.objects.filter(flight=flight, state=SeatHold.State.HELD).aggregate(total=Sum("seats"))["total"] or 0
    assert 0 <= flight.available_seats <= flight.capacity
    assert flight.capacity - flight.available_seats == held, (flight.capacity, flight.available_seats, held)


def assert_bookings_match_ledger(flight: Flight) -> None:
    """docs/design.md#invariants in full: capacity - available = live holds = seats of bookings holding seats."""
    from bookings.models import Booking

    assert_ledger_invariant(flight)
    reserved = (
        Booking.objects.filter(flight_id=flight.pk, seats_state=Booking.SeatsState.RESERVED).aggregate(
            total=Sum("seats")
        )["total"]
        or 0
    )
    assert flight.capacity - flight.available_seats == reserved, (flight.capacity, flight.available_seats, reserved)


def seats_left(flight: Flight) -> int:
    """The flight's available seats as the database has them now."""
    flight.refresh_from_db()
    return flight.available_seats


def states(booking_id: int) -> tuple[str, list[str]]:
    """The booking's status and its payments' statuses, oldest first."""
    from bookings.models import Booking
    from payments.models import Payment

    status = Booking.objects.values_list("status", flat=True).get(pk=booking_id)
    return status, list(Payment.objects.filter(booking_id=booking_id).order_by("id").values_list("status", flat=True))


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


def standing_simulated_charges() -> set[str]:
    """References of the simulated gateway's charges that took money and were not refunded."""
    from payments.models import SimulatedCharge

    return set(
        SimulatedCharge.objects.filter(status=SimulatedCharge.Status.SUCCEEDED).values_list("reference", flat=True)
    )


def assert_money_matches_bookings(standing: set[str] | None = None) -> None:
    """docs/design.md#invariants, money side: no booking is BOOKED without a charge, no charge stands without
    a BOOKED booking, and nothing was charged twice.

    `standing` is the gateway's view: references of charges that took money and were not
    refunded (default: the simulated gateway's books). A PENDING booking's outcome may still
    be unknown, so it may or may not have one.
    """
    from bookings.models import Booking
    from payments.models import Payment

    standing = standing_simulated_charges() if standing is None else standing
    references = {}
    for payment in Payment.objects.select_related("booking"):
        references[payment.reference] = payment
        charged = payment.reference in standing
        if payment.status == Payment.Status.SUCCEEDED:
            assert charged, f"payment {payment.pk} SUCCEEDED without a standing charge"
        elif payment.status not in Payment.IN_FLIGHT:  # In flight: its charge may have landed.
            assert not charged, f"payment {payment.pk} is {payment.status} but its charge stands"
    assert standing <= set(references), f"charges for no payment: {standing - set(references)}"
    for booking in Booking.objects.all():
        charges = [ref for ref, payment in references.items() if payment.booking_id == booking.pk and ref in standing]
        if booking.status == Booking.Status.BOOKED:
            assert len(charges) == 1, f"booking {booking.pk} BOOKED with {len(charges)} standing charge(s)"
        elif booking.status == Booking.Status.PENDING:
            assert len(charges) <= 1, f"booking {booking.pk} PENDING with {len(charges)} standing charges"
        else:
            assert not charges, f"booking {booking.pk} {booking.status} while its money is taken"


# The Flights service over HTTP (the `remote` fixture in conftest) -----------------------

SERVICE_TOKEN = "svc-token-for-tests"


def flight_faults(base_url: str) -> responses.RequestsMock:
    """Faults registered on it are injected; whatever is not registered reaches the live server."""
    mock = responses.RequestsMock(assert_all_requests_are_fired=False)
    mock.add_passthru(base_url)
    return mock


def closed_port() -> int:
    """A local port nobody listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def close_cached_flight_gateway() -> None:
    """Close the HTTP Flights gateway's keep-alive connections, then forget the gateway.

    Session.close() is not enough with urllib3 2.x (`Transport.close` closes the pools too):
    a pool kept alive by a logged exception's traceback keeps its socket open. The live
    server's thread then waits on that socket holding a database connection, and PostgreSQL
    refuses to drop the test database at the end.
    """
    from bookings.flights_gateway import _http_gateway, get_flight_gateway

    if _http_gateway.cache_info().currsize:
        get_flight_gateway().transport.close()
    _http_gateway.cache_clear()


def needed(what: str, found: bool, *, checks: str) -> None:
    """Skip without `what` (a tool a test runs), or fail in CI, where it must be installed
    (.ci/run does)."""
    if found:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{checks} cannot run in CI: {what} is missing")
    pytest.skip(f"{what} is missing")
