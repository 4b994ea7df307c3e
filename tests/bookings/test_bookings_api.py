"""Bookings API (docs/api.md#auth, docs/api.md#bookings) with the default in-process Flights adapter."""

import datetime as dt

import pytest
from django.test import override_settings
from django.utils import timezone

from bookings.models import Booking
from flights.models import SeatHold
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, assert_problem
from tests.support.api import post_booking

pytestmark = pytest.mark.django_db


class TestCreate:
    def test_books_seats_and_holds_them_under_the_bookings_reference(self, user_client, user, flight):
        before = timezone.now()
        response = post_booking(user_client, flight.pk, 2)

        assert response.status_code == 201, response.content
        body = response.json()
        assert set(body) == {
            "id",
            "reference",
            "flightId",
            "userId",
            "numberOfSeats",
            "totalCost",
            "currency",
            "status",
            "createdAt",
            "updatedAt",
            "expiresAt",
            "cancelReason",
            "payment",
        }
        assert (body["currency"], body["payment"]) == ("INR", None)
        assert body["flightId"] == flight.pk
        assert body["userId"] == user.pk
        assert body["numberOfSeats"] == 2
        assert body["totalCost"] == "11000.00"  # 5500.00 x 2, the seed's example
        assert body["status"] == "INITIATED"
        assert body["cancelReason"] is None
        booking = Booking.objects.get(pk=body["id"])
        assert booking.seats_state == Booking.SeatsState.RESERVED
        expected_expiry = before + dt.timedelta(minutes=10)
        assert abs(booking.expires_at - expected_expiry) < dt.timedelta(seconds=5)
        hold = SeatHold.objects.get(ref=f"booking-{booking.pk}")
        assert (hold.seats, hold.state, hold.flight_id) == (2, "held", flight.pk)
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 18

    def test_total_cost_is_the_price_at_booking_time(self, user_client):
        flight = make_flight(capacity=10, price="1234.55")
        response = post_booking(user_client, flight.pk, 3)
        assert response.json()["totalCost"] == "3703.65"

    def test_older_clients_alias_noOfSeats(self, user_client, flight):
        response = user_client.post("/api/v1/bookings", {"flightId": flight.pk, "noOfSeats": 3}, format="json")
        assert response.status_code == 201, response.content
        assert response.json()["numberOfSeats"] == 3

    def test_alias_disagreeing_with_the_name_is_refused(self, user_client, flight):
        response = user_client.post(
            "/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 2, "noOfSeats": 3}, format="json"
        )
        body = assert_problem(response, 400, "validation_error")
        assert body["errors"] == [{"field": "noOfSeats", "message": "Must equal numberOfSeats when both are given."}]

    @pytest.mark.parametrize(
        "payload, field",
        [
            ({"flightId": 1}, "numberOfSeats"),
            ({"numberOfSeats": 1}, "flightId"),
            ({"flightId": 1, "numberOfSeats": 0}, "numberOfSeats"),
            ({"flightId": 1, "numberOfSeats": 11}, "numberOfSeats"),
            ({"flightId": 1, "numberOfSeats": "2"}, "numberOfSeats"),
            ({"flightId": 1, "numberOfSeats": 1.5}, "numberOfSeats"),
            ({"flightId": "1", "numberOfSeats": 1}, "flightId"),
            ({"flightId": 10**19, "numberOfSeats": 1}, "flightId"),
            ({"flightId": 0, "numberOfSeats": 1}, "flightId"),
            ({"flightId": 1, "numberOfSeats": 1, "userId": "me"}, "userId"),
        ],
    )
    def test_bad_input_is_a_validation_problem_and_writes_nothing(self, user_client, payload, field):
        body = assert_problem(user_client.post("/api/v1/bookings", payload, format="json"), 400, "validation_error")
        assert field in {error["field"] for error in body["errors"]}
        assert not Booking.objects.exists()

    @override_settings(MAX_SEATS_PER_BOOKING=4)
    def test_seat_limit_comes_from_settings(self, user_client, flight):
        body = assert_problem(post_booking(user_client, flight.pk, 5), 400, "validation_error")
        assert body["errors"][0]["field"] == "numberOfSeats"
        assert post_booking(user_client, flight.pk, 4).status_code == 201

    def test_unknown_flight_is_404_and_writes_nothing(self, user_client):
        assert_problem(post_booking(user_client, 999_999), 404, "not_found")
        assert not Booking.objects.exists()

    def test_too_few_seats_is_409_and_writes_nothing(self, user_client):
        flight = make_flight(capacity=1)
        assert_problem(post_booking(user_client, flight.pk, 2), 409, "insufficient_seats")
        assert not Booking.objects.exists()
        flight.refresh_from_db()
        assert flight.available_seats == 1

    def test_not_json_is_415(self, user_client, flight):
        response = user_client.post(
            "/api/v1/bookings", f"flightId={flight.pk}&numberOfSeats=1", content_type="text/plain"
        )
        assert_problem(response, 415, "unsupported_media_type")


class TestActingForSomeone:
    def test_own_user_id_is_accepted(self, user_client, user, flight):
        response = post_booking(user_client, flight.pk, fields={"userId": user.pk})
        assert response.status_code == 201
        assert response.json()["userId"] == user.pk

    def test_someone_elses_user_id_is_403_user_mismatch(self, user_client, other_user, flight):
        assert_problem(post_booking(user_client, flight.pk, fields={"userId": other_user.pk}), 403, "user_mismatch")
        assert not Booking.objects.exists()
        flight.refresh_from_db()
        assert flight.available_seats == flight.capacity

    def test_staff_books_for_a_customer(self, staff_client, user, user_client, flight):
        response = post_booking(staff_client, flight.pk, fields={"userId": user.pk})
        assert response.status_code == 201
        assert response.json()["userId"] == user.pk
        # The customer sees it as theirs.
        assert user_client.get(f"/api/v1/bookings/{response.json()['id']}").status_code == 200

    def test_staff_for_an_unknown_user_is_404(self, staff_client, flight):
        assert_problem(post_booking(staff_client, flight.pk, fields={"userId": 987_654}), 404, "not_found")


class TestReadAndList:
    def test_owner_reads_their_booking(self, user_client, flight):
        created = post_booking(user_client, flight.pk).json()
        response = user_client.get(f"/api/v1/bookings/{created['id']}")
        assert response.status_code == 200
        assert response.json() == created

    def test_another_users_booking_is_404_on_get_cancel_and_list(self, user_client, other_user, flight):
        from tests.conftest import _client_for

        created = post_booking(user_client, flight.pk).json()
        stranger = _client_for(other_user)

        assert_problem(stranger.get(f"/api/v1/bookings/{created['id']}"), 404, "not_found")
        assert_problem(stranger.patch(f"/api/v1/bookings/{created['id']}/cancel"), 404, "not_found")
        assert_problem(stranger.post(f"/api/v1/bookings/{created['id']}/cancel"), 404, "not_found")
        assert stranger.get("/api/v1/bookings").json()["count"] == 0
        assert stranger.get(f"/api/v1/bookings?userId={created['userId']}").json()["count"] == 0
        assert Booking.objects.get(pk=created["id"]).status == "INITIATED"

    def test_unknown_id_is_404(self, user_client):
        assert_problem(user_client.get("/api/v1/bookings/424242"), 404, "not_found")

    def test_list_is_own_newest_first_and_filters(self, user_client, staff_client, other_user, flight):
        from tests.conftest import _client_for

        second_flight = make_flight(capacity=5)
        first = post_booking(user_client, flight.pk, 1).json()
        second = post_booking(user_client, second_flight.pk, 1).json()
        third = post_booking(user_client, flight.pk, 1).json()
        user_client.patch(f"/api/v1/bookings/{third['id']}/cancel")
        theirs = post_booking(_client_for(other_user), flight.pk, 1).json()

        ids = [b["id"] for b in user_client.get("/api/v1/bookings").json()["results"]]
        assert ids == [third["id"], second["id"], first["id"]]
        by_flight = user_client.get(f"/api/v1/bookings?flightId={flight.pk}").json()["results"]
        assert [b["id"] for b in by_flight] == [third["id"], first["id"]]
        cancelled = user_client.get("/api/v1/bookings?status=CANCELLED").json()["results"]
        assert [b["id"] for b in cancelled] == [third["id"]]

        everyone = [b["id"] for b in staff_client.get("/api/v1/bookings").json()["results"]]
        assert everyone == [theirs["id"], third["id"], second["id"], first["id"]]
        one_user = staff_client.get(f"/api/v1/bookings?userId={theirs['userId']}").json()["results"]
        assert [b["id"] for b in one_user] == [theirs["id"]]

    def test_list_is_paginated(self, user_client, flight):
        for _ in range(3):
            post_booking(user_client, flight.pk, 1)
        page = user_client.get("/api/v1/bookings?pageSize=2").json()
        assert page["count"] == 3
        assert len(page["results"]) == 2
        assert page["next"]

    @pytest.mark.parametrize("query", ["status=bogus", "flightId=abc", "flightId=1.5", "userId=-1", "pageSize=0"])
    def test_bad_filters_are_400(self, user_client, query):
        assert_problem(user_client.get(f"/api/v1/bookings?{query}"), 400, "validation_error")


class TestCancel:
    @pytest.mark.parametrize("method", ["patch", "post"])
    def test_cancel_releases_seats_once(self, user_client, flight, method):
        created = post_booking(user_client, flight.pk, 3).json()
        response = getattr(user_client, method)(f"/api/v1/bookings/{created['id']}/cancel")

        assert response.status_code == 200, response.content
        body = response.json()
        assert body["status"] == "CANCELLED"
        assert body["cancelReason"] == "user"
        booking = Booking.objects.get(pk=created["id"])
        assert booking.seats_state == Booking.SeatsState.RELEASED
        assert SeatHold.objects.get(ref=f"booking-{booking.pk}").state == "released"
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == flight.capacity

        again = user_client.patch(f"/api/v1/bookings/{created['id']}/cancel")
        assert again.status_code == 200
        assert again.json() == body
        flight.refresh_from_db()
        assert flight.available_seats == flight.capacity

    def test_staff_cancel_is_recorded_as_staff(self, user_client, staff_client, flight):
        created = post_booking(user_client, flight.pk).json()
        response = staff_client.patch(f"/api/v1/bookings/{created['id']}/cancel")
        assert response.status_code == 200
        assert response.json()["cancelReason"] == "staff"

    def test_pending_booking_cannot_be_cancelled(self, user_client, flight):
        created = post_booking(user_client, flight.pk).json()
        Booking.objects.filter(pk=created["id"]).update(status=Booking.Status.PENDING)

        response = user_client.patch(f"/api/v1/bookings/{created['id']}/cancel")

        assert_problem(response, 409, "payment_in_progress")
        assert response["Retry-After"]
        assert Booking.objects.get(pk=created["id"]).status == "PENDING"
        flight.refresh_from_db()
        assert flight.available_seats == flight.capacity - 2


class TestAccess:
    @pytest.mark.parametrize(
        "method, path",
        [
            ("get", "/api/v1/bookings"),
            ("post", "/api/v1/bookings"),
            ("get", "/api/v1/bookings/1"),
            ("patch", "/api/v1/bookings/1/cancel"),
            ("post", "/api/v1/bookings/1/cancel"),
        ],
    )
    def test_anonymous_is_401(self, anon_client, method, path):
        assert_problem(getattr(anon_client, method)(path, format="json"), 401, "not_authenticated")

    @override_settings(FLIGHT_SERVICE_TOKEN="a-service-token")
    def test_the_flights_service_token_is_not_a_customer(self, anon_client, flight):
        anon_client.credentials(HTTP_AUTHORIZATION="Bearer a-service-token")
        assert_problem(anon_client.get("/api/v1/bookings"), 401, "not_authenticated")
        assert_problem(post_booking(anon_client, flight.pk), 401, "not_authenticated")

    def test_request_id_is_echoed_or_generated(self, user_client):
        response = user_client.get("/api/v1/bookings", HTTP_X_REQUEST_ID="trace-123")
        assert response["X-Request-ID"] == "trace-123"
        generated = user_client.get("/api/v1/bookings", HTTP_X_REQUEST_ID="bad id with spaces")
        assert generated["X-Request-ID"] != "bad id with spaces"
        assert len(generated["X-Request-ID"]) == 32
