"""Bookings talking to the Flights API over real HTTP (`HttpFlightGateway`).

The remote service is our own flights API served by pytest-django's `live_server`, so every
happy-path call is a real HTTP round trip: test client -> booking view -> requests ->
live_server -> flights view -> database. Faults are injected with `responses` in front of
that server: registered calls are faked, everything else passes through to the real one.
Nothing in `bookings` or `flights` is mocked; the only fake is the network.

Call recording: `responses` does not record calls that pass through by prefix
(`add_passthru`), only calls that hit a registered response. Where a test must see a
real call (its headers, or that it happened at all), it registers a `PassthroughResponse`,
which forwards to the live server and is recorded.

After every compensation has run, the invariants (docs/design.md#invariants) must hold (`assert_bookings_match_ledger`):
capacity - available == seats of held ledger rows == seats of bookings in state "reserved".
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from decimal import Decimal

import pytest
import requests
import responses
from django.test import override_settings
from responses import matchers

from bookings.models import Booking
from bookings.services import booking_release_seats
from bookings_project.exceptions import ReservationConflict
from flights.models import Flight, SeatHold
from flights.services import flight_seats_change
from tests.factories import make_flight
from tests.helpers import (
    SERVICE_TOKEN,
    assert_bookings_match_ledger,
    assert_problem,
    close_cached_flight_gateway,
    closed_port,
    flight_faults,
)
from tests.support import http_faults
from tests.support.api import patch_cancel, post_booking

pytestmark = [pytest.mark.django_db(transaction=True)]

SEATS = 2
CAPACITY = 20

# A seat change is told apart by its body: the reserve takes seats, the release gives them back.
RESERVE = matchers.json_params_matcher({"dec": True}, strict_match=False)
RELEASE = matchers.json_params_matcher({"dec": False}, strict_match=False)


# Fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def plane(db) -> Flight:
    return make_flight(capacity=CAPACITY, price="5500.00")


def flight_url(base_url: str, flight: Flight) -> str:
    return f"{base_url}/api/v1/flights/{flight.pk}"


def seats_url(base_url: str, flight: Flight) -> str:
    return f"{base_url}/api/v1/flights/{flight.pk}/seats"


def only_booking() -> Booking:
    (booking,) = Booking.objects.all()
    return booking


def applied_then(error: Exception):
    """A seat-change callback that really applies the change on the Flights side, then
    loses the answer: the outcome the booking service cannot know."""

    def callback(request):
        body = json.loads(request.body)
        flight_id = int(re.search(r"/flights/(\d+)/seats", request.url).group(1))
        flight_seats_change(
            flight_id=flight_id, seats=body["seats"], decrease=body["dec"], reservation=body["reservation"]
        )
        raise error

    return callback


def assert_untouched(flight: Flight) -> None:
    flight.refresh_from_db()
    assert flight.available_seats == flight.capacity
    assert not SeatHold.objects.filter(flight=flight).exists()


# 1. End to end over real HTTP -------------------------------------------------------------


def test_book_and_cancel_over_http(remote, user_client, plane):
    response = post_booking(user_client, plane, SEATS)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["numberOfSeats"], body["totalCost"]) == ("INITIATED", SEATS, "11000.00")
    booking = Booking.objects.get(pk=body["id"])
    assert booking.seats_state == Booking.SeatsState.RESERVED
    assert booking.flight_keeps_holds  # Our service answers with its hold.
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY - SEATS
    hold = SeatHold.objects.get(ref=f"booking-{booking.pk}")
    assert (hold.flight_id, hold.seats, hold.state) == (plane.pk, SEATS, SeatHold.State.HELD)
    assert_bookings_match_ledger(plane)

    cancelled = patch_cancel(user_client, booking.pk)

    assert cancelled.status_code == 200, cancelled.content
    assert (cancelled.json()["status"], cancelled.json()["cancelReason"]) == ("CANCELLED", "user")
    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RELEASED and not booking.release_owed
    hold.refresh_from_db()
    assert hold.state == SeatHold.State.RELEASED
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY
    assert_bookings_match_ledger(plane)

    # Cancelling again answers the same booking and gives nothing back a second time.
    again = patch_cancel(user_client, booking.pk)

    assert again.status_code == 200
    assert again.json() == cancelled.json()
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY
    assert_bookings_match_ledger(plane)


def test_request_id_and_service_token_reach_the_flights_service(remote, user_client, plane):
    # PassthroughResponse forwards to the live server *and* records the call.
    with flight_faults(remote) as rsps:
        get = rsps.add(responses.PassthroughResponse(responses.GET, flight_url(remote, plane)))
        change = rsps.add(responses.PassthroughResponse(responses.PATCH, seats_url(remote, plane)))
        created = post_booking(user_client, plane, SEATS, HTTP_X_REQUEST_ID="trace-create-1")
        cancelled = user_client.patch(
            f"/api/v1/bookings/{created.json()['id']}/cancel", HTTP_X_REQUEST_ID="trace-cancel-2"
        )
        calls = list(rsps.calls)  # The mock forgets its calls on exit.

    assert (created.status_code, cancelled.status_code) == (201, 200)
    assert created["X-Request-ID"] == "trace-create-1"
    assert (get.call_count, change.call_count) == (1, 2)  # GET; reserve + release.
    expected_ids = ["trace-create-1", "trace-create-1", "trace-cancel-2"]
    assert [call.request.method for call in calls] == ["GET", "PATCH", "PATCH"]
    for call, request_id in zip(calls, expected_ids, strict=True):
        assert call.request.headers["Authorization"] == f"Bearer {SERVICE_TOKEN}"
        assert call.request.headers["X-Request-ID"] == request_id
        # The flights service echoes the id it received: proof that it arrived.
        assert call.response.headers["X-Request-ID"] == request_id
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY
    assert_bookings_match_ledger(plane)


def test_outbound_calls_outside_a_request_get_a_fresh_request_id(remote, user_client, plane):
    # Cleanup runs outside any request: each call still carries an id, and the token.
    booking_id = post_booking(user_client, plane, SEATS).json()["id"]
    with flight_faults(remote) as rsps:
        refused = http_faults.refused()
        rsps.add(responses.PATCH, seats_url(remote, plane), body=refused)
        assert patch_cancel(user_client, booking_id).status_code == 200
    with flight_faults(remote) as rsps:
        change = rsps.add(responses.PassthroughResponse(responses.PATCH, seats_url(remote, plane)))
        assert booking_release_seats(booking_id=booking_id).seats == SEATS

    (call,) = change.calls
    assert call.request.headers["Authorization"] == f"Bearer {SERVICE_TOKEN}"
    assert re.fullmatch(r"[0-9a-f]{32}", call.request.headers["X-Request-ID"])
    assert call.response.headers["X-Request-ID"] == call.request.headers["X-Request-ID"]


# 1b. Booking on the flight as last answered ------------------------------------------------
# Within FLIGHT_SERVICE_REMEMBER_SECONDS a booking goes on the flight as the Flights service
# last answered it (a read, or a seat change's answer) instead of reading it again; the seat
# change's own answer then prices the booking. What is remembered never refuses a booking.


@contextlib.contextmanager
def recording_calls(remote: str, plane: Flight):
    """Every GET of the flight and every seat change reaches the live server, counted."""
    with flight_faults(remote) as rsps:
        get = rsps.add(responses.PassthroughResponse(responses.GET, flight_url(remote, plane)))
        change = rsps.add(responses.PassthroughResponse(responses.PATCH, seats_url(remote, plane)))
        yield get, change


@pytest.mark.parametrize(
    ("remember_seconds", "pause", "reads"),
    [(10, 0, 1), (0, 0, 2), (0.2, 0.3, 2)],
    ids=["within the window", "window off", "window passed"],
)
def test_a_second_booking_within_the_window_reads_no_flight(remote, user_client, plane, remember_seconds, pause, reads):
    with override_settings(FLIGHT_SERVICE_REMEMBER_SECONDS=remember_seconds), recording_calls(remote, plane) as calls:
        first = post_booking(user_client, plane, SEATS)
        time.sleep(pause)
        second = post_booking(user_client, plane, SEATS)
        close_cached_flight_gateway()  # This window's gateway, before the settings change back.

    get, change = calls
    assert (first.status_code, second.status_code) == (201, 201)
    assert (get.call_count, change.call_count) == (reads, 2)
    assert [first.json()["totalCost"], second.json()["totalCost"]] == ["11000.00", "11000.00"]
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY - 2 * SEATS
    assert_bookings_match_ledger(plane)


def test_the_booking_is_priced_as_its_seats_were_taken(remote, user_client, plane):
    with recording_calls(remote, plane) as (get, change):
        first = post_booking(user_client, plane, SEATS)
        Flight.objects.filter(pk=plane.pk).update(price="6000.00")  # Repriced after the first answer.
        second = post_booking(user_client, plane, SEATS)

    assert (get.call_count, change.call_count) == (1, 2)  # The second was written at the remembered 5500.00,
    assert second.status_code == 201, second.content
    assert (first.json()["totalCost"], second.json()["totalCost"]) == ("11000.00", "12000.00")
    assert Booking.objects.get(pk=second.json()["id"]).total_cost == Decimal("12000.00")  # and repriced.
    assert_bookings_match_ledger(plane)


def test_too_few_seats_remembered_reads_again_and_writes_nothing(remote, user_client, db):
    small = make_flight(capacity=3, price="100.00")
    with recording_calls(remote, small) as (get, change):
        first = post_booking(user_client, small, 2)  # Remembered: 1 seat left.
        second = post_booking(user_client, small, 2)

    assert first.status_code == 201
    assert_problem(second, 409, "insufficient_seats")
    assert (get.call_count, change.call_count) == (2, 1)  # Read again; refused before any seat change.
    assert Booking.objects.count() == 1


def test_a_remembered_flight_sold_out_since_is_refused_then_read_again(remote, user_client, db):
    small = make_flight(capacity=4, price="100.00")
    with recording_calls(remote, small) as (get, change):
        assert post_booking(user_client, small, 2).status_code == 201  # Remembered: 2 left.
        # Another Bookings host takes the last two.
        flight_seats_change(flight_id=small.pk, seats=2, decrease=True, reservation="booking-elsewhere")
        refused = post_booking(user_client, small, 2)
        again = post_booking(user_client, small, 2)

    assert_problem(refused, 409, "insufficient_seats")
    assert_problem(again, 409, "insufficient_seats")
    # The refused reserve leaves its booking behind, cancelled; the next one reads first.
    assert (get.call_count, change.call_count) == (2, 2)
    assert list(Booking.objects.order_by("pk").values_list("status", "cancel_reason")) == [
        (Booking.Status.INITIATED, ""),
        (Booking.Status.CANCELLED, Booking.CancelReason.RESERVATION_FAILED),
    ]
    small.refresh_from_db()
    assert small.available_seats == 0


# 2. Faults --------------------------------------------------------------------------------

THIS, OTHER = "<this flight's id>", "<another flight's id>"  # Filled in per test.

# Reading the flight fails: nothing may be written or taken. `calls` is how many GETs the
# gateway may send: 1 + 2 retries for 502/503/504 (responses replays urllib3's Retry for
# statuses; it does not replay connection-level retries, so those show one call here).
GET_FAULTS = [
    pytest.param({"body": http_faults.refused()}, 1, id="refused"),
    pytest.param({"body": requests.exceptions.ReadTimeout("read timed out")}, 1, id="read-timeout"),
    pytest.param({"status": 503, "json": {"detail": "down"}}, 3, id="503-retried-twice"),
    pytest.param({"status": 502, "body": "bad gateway"}, 3, id="502-retried-twice"),
    pytest.param({"status": 504, "body": "gateway timeout"}, 3, id="504-retried-twice"),
    pytest.param({"status": 500, "json": {"detail": "boom"}}, 1, id="500-not-retried"),
    pytest.param({"status": 200, "body": "<html>not json</html>", "content_type": "text/html"}, 1, id="not-json"),
    pytest.param({"status": 200, "json": {"flightNumber": "UK1"}}, 1, id="missing-fields"),
    pytest.param({"status": 200, "json": {"id": THIS, "price": "5500.00", "totalSeats": "20"}}, 1, id="bad-types"),
    pytest.param({"status": 200, "json": {"id": OTHER, "price": "5500.00", "totalSeats": 20}}, 1, id="other-flight"),
]


@pytest.mark.parametrize(("fault", "calls"), GET_FAULTS)
def test_flight_read_fails_answers_503_and_writes_nothing(remote, user_client, plane, fault, calls):
    if isinstance(fault.get("json"), dict) and fault["json"].get("id") in (THIS, OTHER):
        ids = {THIS: plane.pk, OTHER: plane.pk + 1000}
        fault = {**fault, "json": {**fault["json"], "id": ids[fault["json"]["id"]]}}
    with flight_faults(remote) as rsps:
        get = rsps.add(responses.GET, flight_url(remote, plane), **fault)
        change = rsps.add(responses.PassthroughResponse(responses.PATCH, seats_url(remote, plane)))
        response = post_booking(user_client, plane, SEATS)

    assert_problem(response, 503, "flight_service_unavailable")
    assert response["Retry-After"] == "5"
    assert get.call_count == calls  # Retries are bounded.
    assert change.call_count == 0
    assert not Booking.objects.exists()
    assert_untouched(plane)


def test_reserve_applied_but_answer_lost_is_released(remote, user_client, plane):
    with flight_faults(remote) as rsps:
        reserve = rsps.add_callback(
            responses.PATCH,
            seats_url(remote, plane),
            callback=applied_then(requests.exceptions.ReadTimeout("read timed out")),
            match=[RESERVE],
        )
        release = rsps.add(responses.PassthroughResponse(responses.PATCH, seats_url(remote, plane), match=[RELEASE]))
        response = post_booking(user_client, plane, SEATS)

    assert_problem(response, 503, "flight_service_unavailable")
    assert response["Retry-After"] == "5"
    assert reserve.call_count == 1  # A seat change is never resent blindly.
    assert release.call_count == 1
    booking = only_booking()
    assert booking.status == Booking.Status.CANCELLED
    assert booking.cancel_reason == Booking.CancelReason.FLIGHT_SERVICE_UNAVAILABLE
    assert booking.seats_state == Booking.SeatsState.RELEASED and not booking.release_owed
    hold = SeatHold.objects.get(ref=booking.hold_ref)
    assert (hold.seats, hold.state) == (SEATS, SeatHold.State.RELEASED)
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY
    assert_bookings_match_ledger(plane)


# The reserve never took effect: one PATCH only (never retried, whatever the status), then a
# release by reference that moves nothing but leaves a tombstone against a late reserve.
RESERVE_NOT_APPLIED = [
    pytest.param({"status": 502, "body": "bad gateway"}, id="502"),
    pytest.param({"status": 503, "json": {"detail": "down"}}, id="503"),
    pytest.param({"status": 504, "body": "gateway timeout"}, id="504"),
    pytest.param({"body": requests.exceptions.ReadTimeout("read timed out")}, id="read-timeout"),
    pytest.param({"body": http_faults.refused()}, id="refused"),
]


@pytest.mark.parametrize("fault", RESERVE_NOT_APPLIED)
def test_reserve_fails_is_never_retried_and_leaves_a_tombstone(remote, user_client, plane, fault):
    with flight_faults(remote) as rsps:
        reserve = rsps.add(responses.PATCH, seats_url(remote, plane), match=[RESERVE], **fault)
        release = rsps.add(responses.PassthroughResponse(responses.PATCH, seats_url(remote, plane), match=[RELEASE]))
        response = post_booking(user_client, plane, SEATS)

    assert_problem(response, 503, "flight_service_unavailable")
    assert reserve.call_count == 1
    assert release.call_count == 1
    assert release.calls[0].response.status_code == 200
    booking = only_booking()
    assert (booking.status, booking.seats_state) == (Booking.Status.CANCELLED, Booking.SeatsState.RELEASED)
    tombstone = SeatHold.objects.get(ref=booking.hold_ref)
    assert (tombstone.seats, tombstone.state) == (0, SeatHold.State.RELEASED)
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY
    assert_bookings_match_ledger(plane)

    # The reserve arriving late (a slow proxy delivering it after all) is refused.
    with pytest.raises(ReservationConflict):
        flight_seats_change(flight_id=plane.pk, seats=SEATS, decrease=True, reservation=booking.hold_ref)
    assert_bookings_match_ledger(plane)


def test_reserve_refused_answers_409_and_sends_no_release(remote, user_client, plane):
    refusal = {
        "type": "https://flight-bookings.example/problems/insufficient_seats",
        "title": "Not enough seats",
        "status": 409,
        "detail": "Only 1 seat left.",
        "code": "insufficient_seats",
    }
    with flight_faults(remote) as rsps:
        reserve = rsps.add(
            responses.PATCH,
            seats_url(remote, plane),
            status=409,
            json=refusal,
            content_type="application/problem+json",
            match=[RESERVE],
        )
        release = rsps.add(responses.PassthroughResponse(responses.PATCH, seats_url(remote, plane), match=[RELEASE]))
        response = post_booking(user_client, plane, SEATS)

    assert_problem(response, 409, "insufficient_seats")
    assert reserve.call_count == 1
    assert release.call_count == 0  # A definite no: nothing to give back.
    booking = only_booking()
    assert booking.status == Booking.Status.CANCELLED
    assert booking.cancel_reason == Booking.CancelReason.RESERVATION_FAILED
    assert booking.seats_state == Booking.SeatsState.NONE and not booking.release_owed
    assert_untouched(plane)  # Not even a tombstone: no release reached the service.
    assert_bookings_match_ledger(plane)


def test_reserve_and_release_both_fail_then_cleanup_gives_seats_back(remote, user_client, plane):
    with flight_faults(remote) as rsps:
        reserve = rsps.add_callback(
            responses.PATCH,
            seats_url(remote, plane),
            callback=applied_then(requests.exceptions.ReadTimeout("read timed out")),
            match=[RESERVE],
        )
        release = rsps.add(
            responses.PATCH,
            seats_url(remote, plane),
            body=http_faults.refused(),
            match=[RELEASE],
        )
        response = post_booking(user_client, plane, SEATS)

    assert_problem(response, 503, "flight_service_unavailable")
    assert (reserve.call_count, release.call_count) == (1, 1)
    booking = only_booking()
    assert booking.status == Booking.Status.CANCELLED
    assert booking.seats_state == Booking.SeatsState.UNCONFIRMED and booking.release_owed
    assert booking.flight_service_error  # Recorded for ops.
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY - SEATS  # Taken by the reserve whose answer was lost.
    assert SeatHold.objects.get(ref=booking.hold_ref).state == SeatHold.State.HELD

    # The service is back (no more faults): cleanup finishes the job, exactly once.
    assert booking_release_seats(booking_id=booking.pk).seats == SEATS
    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RELEASED and not booking.release_owed
    assert_bookings_match_ledger(plane)
    assert plane.available_seats == CAPACITY

    assert booking_release_seats(booking_id=booking.pk).seats == 0
    assert_bookings_match_ledger(plane)
    assert plane.available_seats == CAPACITY


def test_release_fails_after_cancel_then_cleanup_gives_seats_back(remote, user_client, plane):
    created = post_booking(user_client, plane, SEATS)
    assert created.status_code == 201, created.content
    booking_id = created.json()["id"]

    with flight_faults(remote) as rsps:
        release = rsps.add(
            responses.PATCH,
            seats_url(remote, plane),
            body=http_faults.refused(),
            match=[RELEASE],
        )
        response = patch_cancel(user_client, booking_id)

    # The customer's cancel succeeds; the seats are owed, for cleanup.
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "CANCELLED"
    assert release.call_count == 1
    booking = Booking.objects.get(pk=booking_id)
    assert booking.seats_state == Booking.SeatsState.RESERVED and booking.release_owed
    plane.refresh_from_db()
    assert plane.available_seats == CAPACITY - SEATS
    assert_bookings_match_ledger(plane)  # Still held on both sides: consistent, just owed.

    assert booking_release_seats(booking_id=booking_id).seats == SEATS
    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RELEASED and not booking.release_owed
    assert_bookings_match_ledger(plane)
    assert plane.available_seats == CAPACITY

    assert booking_release_seats(booking_id=booking_id).seats == 0
    assert_bookings_match_ledger(plane)
    assert plane.available_seats == CAPACITY


def test_release_refused_as_busy_stays_owed_for_cleanup(remote, user_client, plane):
    created = post_booking(user_client, plane, SEATS)
    assert created.status_code == 201, created.content
    booking_id = created.json()["id"]
    busy = {
        "type": "https://flight-bookings.example/problems/resource_busy",
        "title": "Resource busy",
        "status": 409,
        "detail": "Another request holds this resource. Retry shortly.",
        "code": "resource_busy",
    }

    # The flight's row lock was held too long on the Flights side: nothing changed there.
    with flight_faults(remote) as rsps:
        rsps.add(
            responses.PATCH,
            seats_url(remote, plane),
            status=409,
            json=busy,
            headers={"Retry-After": "1"},
            content_type="application/problem+json",
            match=[RELEASE],
        )
        response = patch_cancel(user_client, booking_id)

    assert response.status_code == 200, response.content
    booking = Booking.objects.get(pk=booking_id)
    assert booking.seats_state == Booking.SeatsState.RESERVED and booking.release_owed  # Retry later, not ops.
    assert booking_release_seats(booking_id=booking_id).seats == SEATS
    assert_bookings_match_ledger(plane)
    assert plane.available_seats == CAPACITY


# 3. Readiness ------------------------------------------------------------------------------


def test_readyz_checks_the_flights_service(remote, client):
    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "clock": "ok", "flights": "ok"}}


def test_readyz_fails_when_flights_refuses_connections(remote, client):
    with override_settings(FLIGHT_SERVICE_URL=f"http://127.0.0.1:{closed_port()}"):
        response = client.get("/readyz")
        close_cached_flight_gateway()

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "clock": "ok", "flights": "failing"},
    }


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"body": http_faults.refused()}, id="refused"),
        pytest.param({"status": 503, "body": "down"}, id="503"),
    ],
)
def test_readyz_fails_when_flights_is_down(remote, client, fault):
    with flight_faults(remote) as rsps:
        rsps.add(responses.GET, f"{remote}/api/v1/flights", **fault)
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "clock": "ok", "flights": "failing"}
