"""The booking saga against the seed's Node Flights Service over HTTP (docs/design.md#the-flights-service-boundary).

`SeedFlightsService` is a stateful fake of that service, built with `responses`, that
answers as the seed was observed to: every answer wrapped in
`{"success", "message", "data", "error"}`, a numeric price, 500 with "Cannot fetch data of
the flight" for an unknown id, 400 for `{"seats": 0}`, and a seat PATCH that answers the
flight as it was *before* the change, keeps no holds (our `reservation` reference is
ignored) and lets `totalSeats` go below zero. Each test can inject a fault: another
customer taking seats just before our PATCH, a PATCH that times out after the seed
applied it, or a connection refused before the PATCH arrived.

What must hold on top of such a service:
- the booking is not fooled by the pre-change answer: it re-reads, and if it took seats
  past zero it gives them back and refuses the booking;
- a seat change whose outcome is unknown is never resent blindly: the booking is marked
  `reconcile` and shows in admin for a person to settle;
- a release that provably never arrived stays owed, and goes through exactly once later,
  however many callers try.
"""

from __future__ import annotations

import pytest
import requests
from django.contrib.auth.models import Permission
from django.test import Client

from bookings import services
from bookings.flights_gateway import HttpFlightGateway
from bookings.models import Booking
from bookings_project.exceptions import FlightServiceUnavailable
from tests.helpers import assert_problem
from tests.support.api import patch_cancel, post_booking
from tests.support.seed_flights import SEED_URL, SeedFlightsService
from workflows.services import booking_cancel

pytestmark = pytest.mark.django_db

SEED_FLIGHT = 1  # The one flight the seed has (120 seats).


# Happy path ---------------------------------------------------------------------------


def test_book_and_cancel_against_the_seed(seed, user_client, user):
    response = post_booking(user_client, SEED_FLIGHT)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["totalCost"] == "10000.00"  # The seed's numeric price 5000, times 2 seats.
    assert body["status"] == "INITIATED"
    assert body["userId"] == user.pk
    booking = Booking.objects.get(pk=body["id"])
    assert booking.seats_state == Booking.SeatsState.RESERVED
    assert booking.flight_keeps_holds is False  # The seed's envelope: a service without holds.
    assert seed.seats[1] == 118
    # Reserve, then a re-read (the PATCH answered the pre-change flight); our ref rides along.
    assert [r.method for r in seed.requests] == ["GET", "PATCH", "GET"]
    assert seed.patches() == [{"seats": 2, "dec": True, "reservation": booking.hold_ref}]
    assert all(r.headers.get("X-Request-ID") for r in seed.requests)

    response = patch_cancel(user_client, booking.pk)

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "CANCELLED"
    assert response.json()["cancelReason"] == "user"
    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RELEASED
    assert booking.seats_released_at is not None
    assert seed.seats[1] == 120
    assert seed.patches(dec=False) == [{"seats": 2, "dec": False, "reservation": booking.hold_ref}]

    # Cancelling again answers the same booking and sends nothing: the seed would add seats.
    again = patch_cancel(user_client, booking.pk)
    assert again.status_code == 200
    assert again.json()["id"] == booking.pk and again.json()["status"] == "CANCELLED"
    assert services.booking_release_seats(booking_id=booking.pk).seats == 0
    assert len(seed.patches(dec=False)) == 1
    assert seed.seats[1] == 120


# Unknown flight and the seed's 500s -------------------------------------------------------


def test_seed_500_for_an_unknown_flight_is_404(seed, user_client):
    response = post_booking(user_client, 999)

    assert_problem(response, 404, "not_found")
    assert not Booking.objects.exists()
    assert [(r.method, r.flight_id) for r in seed.requests] == [("GET", 999)]  # 500 is not retried.


@pytest.mark.parametrize(
    "answer",
    [
        # The seed's envelope, but a real fault (its database is down), not "no such flight".
        {
            "success": False,
            "message": "Something went wrong",
            "data": {},
            "error": {"explanation": "connect ECONNREFUSED 127.0.0.1:3306", "statusCode": 500},
        },
        "<!DOCTYPE html><html><body><pre>Internal Server Error</pre></body></html>",
    ],
    ids=["seed-envelope", "html"],
)
def test_any_other_seed_500_is_503(seed, user_client, answer):
    seed.get_failures[1] = (500, answer)

    response = post_booking(user_client, SEED_FLIGHT)

    assert_problem(response, 503, "flight_service_unavailable")
    assert response["Retry-After"]
    assert not Booking.objects.exists()
    assert seed.patches() == []
    assert seed.seats[1] == 120


# Not fooled by the pre-change answer ------------------------------------------------------


def test_seats_driven_below_zero_are_given_back_and_the_booking_refused(seed, user_client):
    seed.seats[1] = 2

    def another_customer_takes_one(body):
        seed.seats[1] -= 1  # Between our GET (2 left) and our PATCH of 2.

    seed.before_patch = another_customer_takes_one

    response = post_booking(user_client, SEED_FLIGHT)

    # The PATCH answered totalSeats 1 (before ours): only the re-read shows -1.
    assert_problem(response, 409, "insufficient_seats")
    assert seed.seats[1] == 1  # Only the other customer's seat is gone; ours came back.
    booking = Booking.objects.get()
    assert booking.status == Booking.Status.CANCELLED
    assert booking.cancel_reason == Booking.CancelReason.RESERVATION_FAILED
    assert [r.method for r in seed.requests] == ["GET", "PATCH", "GET", "PATCH"]
    assert [p["dec"] for p in seed.patches()] == [True, False]
    # The gateway gave the seats back itself and answered a definite refusal, so the saga
    # records that nothing is held: "none" (not "reserved"/"unconfirmed", which cleanup
    # would release a second time, nor "reconcile": nothing is left to settle).
    assert booking.seats_state == Booking.SeatsState.NONE
    assert booking.release_owed is False
    assert services.booking_release_seats(booking_id=booking.pk).seats == 0
    assert len(seed.patches()) == 2
    assert seed.seats[1] == 1


def test_a_second_booking_goes_on_the_reread_and_is_priced_by_it(seed, user_client):
    assert post_booking(user_client, SEED_FLIGHT).status_code == 201
    seed.price = 5500  # Repriced after our re-read.

    response = post_booking(user_client, SEED_FLIGHT)

    assert response.status_code == 201, response.content
    # No read before the second reserve (the first one's re-read stands in), and its re-read prices it.
    assert [r.method for r in seed.requests] == ["GET", "PATCH", "GET", "PATCH", "GET"]
    assert response.json()["totalCost"] == "11000.00"
    assert seed.seats[1] == 116


def test_too_few_seats_by_the_first_read_sends_no_patch(seed, user_client):
    seed.seats[1] = 1

    response = post_booking(user_client, SEED_FLIGHT)

    assert_problem(response, 409, "insufficient_seats")
    assert seed.patches() == []
    assert not Booking.objects.exists()
    assert seed.seats[1] == 1


def test_reread_failing_after_the_reserve_is_reconcile_not_a_blind_release(seed, user_client):
    def seed_breaks_after_our_patch(body):
        seed.get_failures[1] = (500, {"success": False, "data": {}, "error": {"explanation": "boom"}})

    seed.before_patch = seed_breaks_after_our_patch

    response = post_booking(user_client, SEED_FLIGHT)

    assert_problem(response, 503, "flight_service_unavailable")
    booking = Booking.objects.get()
    assert booking.status == Booking.Status.CANCELLED
    assert booking.seats_state == Booking.SeatsState.RECONCILE
    assert seed.patches(dec=False) == []
    assert seed.seats[1] == 118  # Taken; a person settles it.


def test_giving_back_seats_past_zero_refused_is_reconcile(seed, user_client):
    seed.seats[1] = 2

    def another_customer_takes_one_then_the_seed_goes_down(body):
        seed.seats[1] -= 1
        seed.patch_fault = "refused"  # For our give-back PATCH.

    seed.before_patch = another_customer_takes_one_then_the_seed_goes_down

    response = post_booking(user_client, SEED_FLIGHT)

    assert_problem(response, 503, "flight_service_unavailable")
    booking = Booking.objects.get()
    assert booking.status == Booking.Status.CANCELLED
    # Conservative: the gateway reports this as "maybe applied", so nobody resends.
    assert booking.seats_state == Booking.SeatsState.RECONCILE
    assert booking.release_owed is False
    assert seed.seats[1] == -1
    assert len(seed.patches(dec=False, arrived_only=True)) == 0


# Reserve with an unknown or refused outcome -------------------------------------------------


def test_reserve_timing_out_after_the_seed_applied_it_is_reconcile(seed, user_client, staff_user):
    other = booked(user_client, seed)  # Healthy, must not be listed for reconciliation.
    seed.patch_fault = "timeout_after_apply"

    response = post_booking(user_client, SEED_FLIGHT)

    assert_problem(response, 503, "flight_service_unavailable")
    booking = Booking.objects.exclude(pk=other.pk).get()
    assert booking.status == Booking.Status.CANCELLED
    assert booking.cancel_reason == Booking.CancelReason.FLIGHT_SERVICE_UNAVAILABLE
    assert booking.seats_state == Booking.SeatsState.RECONCILE
    assert booking.flight_service_error
    assert booking.release_owed is False
    # The seed keeps no holds: a release after an unknown outcome could create seats.
    assert seed.patches(dec=False) == []
    assert seed.seats[1] == 116  # Ours stay taken until a person reconciles.
    # Neither a later cancel nor a cleanup retry sends a release.
    assert patch_cancel(user_client, booking.pk).json()["status"] == "CANCELLED"
    assert services.booking_release_seats(booking_id=booking.pk).seats == 0
    assert seed.patches(dec=False) == []

    html = admin_listing(staff_user, "reconcile")
    assert in_listing(html, booking.pk)
    assert not in_listing(html, other.pk)


def test_reserve_refused_before_arriving_holds_nothing(seed, user_client):
    seed.patch_fault = "refused"

    response = post_booking(user_client, SEED_FLIGHT)

    assert_problem(response, 503, "flight_service_unavailable")
    booking = Booking.objects.get()
    assert booking.status == Booking.Status.CANCELLED
    assert booking.seats_state == Booking.SeatsState.NONE
    assert booking.release_owed is False
    assert seed.patches(dec=False) == []
    assert seed.seats[1] == 120


def test_a_cancelled_booking_whose_reserve_outcome_was_never_recorded_goes_to_reconcile(seed, user):
    # A crash between writing the booking and recording the reserve: cleanup sees it owed,
    # but on the seed we cannot know the seats were taken, so nobody gives them back blindly.
    booking = Booking.objects.create(
        user=user,
        flight_id=1,
        seats=2,
        total_cost="10000.00",
        status=Booking.Status.CANCELLED,
        seats_state=Booking.SeatsState.UNCONFIRMED,
        flight_keeps_holds=False,
        expires_at="2027-01-01T00:00:00Z",
    )

    assert services.booking_release_seats(booking_id=booking.pk).seats == 0

    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RECONCILE
    assert seed.patches() == []


# Release with an unknown or refused outcome -------------------------------------------------


def test_release_timing_out_is_reconcile_and_never_resent(seed, user_client):
    booking = booked(user_client, seed)
    seed.patch_fault = "timeout_after_apply"

    response = patch_cancel(user_client, booking.pk)

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "CANCELLED"
    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RECONCILE
    assert booking.release_owed is False
    assert seed.seats[1] == 120  # It did arrive; only a person can tell.
    assert len(seed.patches(dec=False)) == 1

    assert patch_cancel(user_client, booking.pk).status_code == 200
    assert services.booking_release_seats(booking_id=booking.pk).seats == 0
    assert len(seed.patches(dec=False)) == 1
    assert seed.seats[1] == 120


def test_release_refused_before_arriving_stays_owed_then_goes_through_once(seed, user_client, staff_user):
    booking = booked(user_client, seed)
    seed.patch_fault = "refused"

    response = patch_cancel(user_client, booking.pk)

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "CANCELLED"
    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RESERVED  # Provably not sent: retry is safe.
    assert booking.release_owed is True
    assert booking.flight_service_error
    assert seed.seats[1] == 118
    assert in_listing(admin_listing(staff_user, "release_owed"), booking.pk)

    # The seed is back: cleanup's retry gives the seats back, once.
    assert services.booking_release_seats(booking_id=booking.pk).seats == 2
    assert services.booking_release_seats(booking_id=booking.pk).seats == 0

    booking.refresh_from_db()
    assert booking.seats_state == Booking.SeatsState.RELEASED
    assert seed.seats[1] == 120
    assert len(seed.patches(dec=False, arrived_only=True)) == 1


def test_staff_cancelling_while_the_reserve_is_in_flight_gets_the_seats_back(seed, user_client):
    def staff_cancels_meanwhile(body):
        booking_id = int(body["reservation"].removeprefix("booking-"))
        booking_cancel(booking_id=booking_id, reason=Booking.CancelReason.STAFF)

    seed.before_patch = staff_cancels_meanwhile

    post_booking(user_client, SEED_FLIGHT)

    booking = Booking.objects.get()
    assert booking.status == Booking.Status.CANCELLED
    # The seed answered 200 and the re-read showed our seats taken: the outcome is known,
    # so the saga must give them back (services.py says so), not leave them to a person.
    assert seed.seats[1] == 120
    assert booking.seats_state == Booking.SeatsState.RELEASED
    assert len(seed.patches(dec=False)) == 1


# Releases racing --------------------------------------------------------------------------


@pytest.fixture
def owed_booking(seed, user_client) -> Booking:
    """Cancelled, its seats still taken on the seed, the release owed (the first was refused)."""
    booking = booked(user_client, seed)
    seed.patch_fault = "refused"
    assert patch_cancel(user_client, booking.pk).status_code == 200
    booking.refresh_from_db()
    assert booking.release_owed
    return booking


def test_repeated_releases_send_once(seed, owed_booking):
    sent_before = len(seed.patches())

    results = [services.booking_release_seats(booking_id=owed_booking.pk).seats for _ in range(2)]

    assert results == [2, 0]
    assert len(seed.patches()) == sent_before + 1
    assert seed.seats[1] == 120


def test_a_release_while_another_is_in_flight_sends_nothing(seed, owed_booking):
    sent_before = len(seed.patches())
    racing: list[int] = []
    # The second caller (another cleanup host, a staff cancel) runs while our PATCH is on
    # the wire: the claim taken before sending must stop it.
    seed.before_patch = lambda body: racing.append(services.booking_release_seats(booking_id=owed_booking.pk).seats)

    first = services.booking_release_seats(booking_id=owed_booking.pk).seats

    assert (first, racing) == (2, [0])
    assert len(seed.patches()) == sent_before + 1
    assert seed.seats[1] == 120
    owed_booking.refresh_from_db()
    assert owed_booking.seats_state == Booking.SeatsState.RELEASED


def test_the_seeds_400_for_zero_seats_is_a_definite_refusal(seed):
    # The seed's validation answer: nothing changed, and a retry cannot help.
    response = requests.patch(f"{SEED_URL}/api/v1/flights/1/seats", json={"seats": 0, "dec": True}, timeout=1)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "explanation": ["seats not found in the incoming request in the correct form"],
        "statusCode": 400,
    }

    with pytest.raises(FlightServiceUnavailable) as refused:
        HttpFlightGateway(base_url=SEED_URL).reserve_seats(flight_id=1, seats=0, ref="booking-1")

    assert refused.value.maybe_applied is False
    assert seed.seats[1] == 120


# Helpers ------------------------------------------------------------------------------------


def booked(client, seed: SeedFlightsService) -> Booking:
    """A booking of 2 seats, reserved on the seed (120 -> 118)."""
    response = post_booking(client, SEED_FLIGHT)
    assert response.status_code == 201, response.content
    assert seed.seats[1] == 118
    return Booking.objects.get(pk=response.json()["id"])


def admin_listing(staff_user, attention: str) -> str:
    staff_user.user_permissions.add(Permission.objects.get(codename="view_booking"))
    client = Client()
    client.force_login(staff_user)
    response = client.get(f"/admin/bookings/booking/?attention={attention}")
    assert response.status_code == 200
    return response.content.decode()


def in_listing(html: str, booking_id: int) -> bool:
    return f"/admin/bookings/booking/{booking_id}/change/" in html
