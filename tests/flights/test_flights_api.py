import pytest
from django.test import override_settings

from flights.models import Flight, SeatHold
from tests.factories import make_flight
from tests.helpers import assert_ledger_invariant, assert_problem

pytestmark = pytest.mark.django_db

NEW_FLIGHT = {
    "flightNumber": "UK808",
    "departureAirport": "BOM",
    "arrivalAirport": "DEL",
    "departureTime": "2027-01-10T10:00:00Z",
    "arrivalTime": "2027-01-10T12:10:00Z",
    "price": 5000,
    "capacity": 120,
}


def seats_url(flight_id) -> str:
    return f"/api/v1/flights/{flight_id}/seats"


# Reads -------------------------------------------------------------------------------------


def test_list_is_paginated_and_uses_the_seed_field_names(user_client):
    first = make_flight(capacity=50)
    make_flight(capacity=60)

    response = user_client.get("/api/v1/flights")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2 and body["next"] is None
    item = body["results"][0]
    assert item == {
        "id": first.pk,
        "flightNumber": first.flight_number,
        "departureAirport": "BOM",
        "arrivalAirport": "DEL",
        "departureTime": first.departure_time.isoformat().replace("+00:00", "Z"),
        "arrivalTime": first.arrival_time.isoformat().replace("+00:00", "Z"),
        "price": "5500.00",
        "currency": "INR",
        "capacity": 50,
        "totalSeats": 50,
    }


def test_list_page_size_is_capped(user_client):
    for _ in range(3):
        make_flight()
    response = user_client.get("/api/v1/flights", {"pageSize": 2})
    assert len(response.json()["results"]) == 2
    assert response.json()["next"] is not None
    assert_problem(user_client.get("/api/v1/flights", {"page": 99}), 404, "not_found")
    for bad in ["null", "0", "101", "-1", "2.5", "٣"]:
        body = assert_problem(user_client.get("/api/v1/flights", {"pageSize": bad}), 400, "validation_error")
        assert body["errors"][0]["field"] == "pageSize"


def test_retrieve(user_client, flight):
    response = user_client.get(f"/api/v1/flights/{flight.pk}")
    assert response.status_code == 200
    assert response.json()["totalSeats"] == 20
    body = assert_problem(user_client.get(f"/api/v1/flights/{flight.pk + 1}"), 404, "not_found")
    assert body["detail"] == f"Flight {flight.pk + 1} does not exist."


@pytest.mark.parametrize("flight_id", ["999999", "9" * 19, "abc", "-1"])
def test_unknown_flight_is_404_problem(user_client, staff_client, flight_id):
    assert_problem(user_client.get(f"/api/v1/flights/{flight_id}"), 404, "not_found")
    assert_problem(staff_client.patch(seats_url(flight_id), {"seats": 1}, format="json"), 404, "not_found")


def test_reads_need_authentication(anon_client, flight):
    for url in ["/api/v1/flights", f"/api/v1/flights/{flight.pk}"]:
        response = anon_client.get(url)
        assert_problem(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"] == "Token"


def test_bad_token_is_401(anon_client, flight):
    anon_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_problem(anon_client.get("/api/v1/flights"), 401, "not_authenticated")


# Create ------------------------------------------------------------------------------------


def test_staff_creates_a_flight_with_all_seats_available(staff_client):
    response = staff_client.post("/api/v1/flights", {**NEW_FLIGHT, "departureAirport": "bom"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["totalSeats"] == body["capacity"] == 120
    assert body["price"] == "5000.00"
    assert body["departureAirport"] == "BOM"
    flight = Flight.objects.get(pk=body["id"])
    assert (flight.capacity, flight.available_seats) == (120, 120)


def test_non_staff_cannot_create(user_client):
    assert_problem(user_client.post("/api/v1/flights", NEW_FLIGHT, format="json"), 403, "permission_denied")
    assert not Flight.objects.exists()


def test_anonymous_cannot_create(anon_client):
    assert_problem(anon_client.post("/api/v1/flights", NEW_FLIGHT, format="json"), 401, "not_authenticated")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": 10**12}, "capacity"),
        ({"price": "-1"}, "price"),
        ({"price": "1.001"}, "price"),
        ({"price": "NaN"}, "price"),
        ({"price": "1e400"}, "price"),
        ({"price": "."}, "price"),
        ({"price": ""}, "price"),
        ({"price": True}, "price"),
        ({"price": 100000000}, "price"),
        ({"capacity": "120"}, "capacity"),
        ({"capacity": 1.5}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"flightNumber": 808}, "flightNumber"),
        ({"departureAirport": "BOMBAY"}, "departureAirport"),
        ({"arrivalAirport": "BOM"}, "arrivalAirport"),
        ({"arrivalTime": "2027-01-10T09:00:00Z"}, "arrivalTime"),
        ({"departureTime": "yesterday"}, "departureTime"),
        ({"flightNumber": ""}, "flightNumber"),
        ({"flightNumber": "X" * 11}, "flightNumber"),
    ],
)
def test_create_rejects_bad_input(staff_client, change, field):
    body = assert_problem(
        staff_client.post("/api/v1/flights", {**NEW_FLIGHT, **change}, format="json"), 400, "validation_error"
    )
    assert field in {error["field"] for error in body["errors"]}, body
    assert not Flight.objects.exists()


@pytest.mark.parametrize("price", [5000, 5000.5, "5000", "5000.50", 0])
def test_price_may_be_a_json_number_or_a_decimal_string(staff_client, price):
    response = staff_client.post("/api/v1/flights", {**NEW_FLIGHT, "price": price}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["price"] == f"{float(price):.2f}"


def test_missing_fields_are_listed(staff_client):
    body = assert_problem(staff_client.post("/api/v1/flights", {}, format="json"), 400, "validation_error")
    assert {error["field"] for error in body["errors"]} == set(NEW_FLIGHT)


def test_malformed_json_is_400(staff_client):
    response = staff_client.generic("POST", "/api/v1/flights", "{not json", content_type="application/json")
    body = assert_problem(response, 400, "validation_error")
    assert body["errors"][0]["field"] is None


def test_a_json_array_body_is_400(staff_client):
    assert_problem(staff_client.post("/api/v1/flights", [1, 2], format="json"), 400, "validation_error")


def test_form_bodies_are_refused(staff_client):
    assert_problem(staff_client.post("/api/v1/flights", NEW_FLIGHT), 415, "unsupported_media_type")
    assert not Flight.objects.exists()


def test_unsupported_method_is_405(staff_client, flight):
    assert_problem(staff_client.delete(f"/api/v1/flights/{flight.pk}"), 405, "method_not_allowed")


# Seat changes, seed style --------------------------------------------------------------------


def test_decrement_answers_the_flight_after_the_change(staff_client, flight):
    response = staff_client.patch(seats_url(flight.pk), {"seats": 3, "dec": True}, format="json")

    assert response.status_code == 200
    assert response.json()["totalSeats"] == 17
    assert response.json()["reservation"] is None
    flight.refresh_from_db()
    assert flight.available_seats == 17


def test_dec_defaults_to_true(staff_client, flight):
    assert staff_client.patch(seats_url(flight.pk), {"seats": 2}, format="json").json()["totalSeats"] == 18


@pytest.mark.parametrize("dec, expected", [(1, 14), ("true", 14), (True, 14), (0, 20), ("false", 20), (False, 20)])
def test_dec_understands_the_seed_spellings(staff_client, flight, dec, expected):
    assert staff_client.patch(seats_url(flight.pk), {"seats": 3}, format="json").json()["totalSeats"] == 17
    response = staff_client.patch(seats_url(flight.pk), {"seats": 3, "dec": dec}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["totalSeats"] == expected


def test_increment_gives_seats_back(staff_client, flight):
    staff_client.patch(seats_url(flight.pk), {"seats": 5, "dec": True}, format="json")
    response = staff_client.patch(seats_url(flight.pk), {"seats": 5, "dec": False}, format="json")
    assert response.json()["totalSeats"] == 20


def test_not_enough_seats_is_409_and_changes_nothing(staff_client, flight):
    body = assert_problem(
        staff_client.patch(seats_url(flight.pk), {"seats": 21}, format="json"), 409, "insufficient_seats"
    )
    assert "20" in body["detail"]
    flight.refresh_from_db()
    assert flight.available_seats == 20


def test_giving_back_more_than_capacity_is_409(staff_client, flight):
    assert_problem(
        staff_client.patch(seats_url(flight.pk), {"seats": 1, "dec": False}, format="json"), 409, "capacity_exceeded"
    )
    flight.refresh_from_db()
    assert flight.available_seats == 20


@pytest.mark.parametrize(
    "body",
    [
        {"seats": 0},
        {"seats": -1},
        {"seats": 10**20},
        {"seats": "many"},
        {"seats": "3"},
        {"seats": None},
        {"seats": 2.5},
        {},
        {"seats": 1, "dec": "maybe"},
        {"seats": 1, "dec": "yes"},
        {"seats": 1, "dec": 2},
        {"seats": 1, "dec": None},
        {"seats": 1, "reservation": "no spaces"},
        {"seats": 1, "reservation": 123},
        {"seats": 1, "reservation": ""},
    ],
)
def test_bad_seat_change_is_400(staff_client, flight, body):
    assert_problem(staff_client.patch(seats_url(flight.pk), body, format="json"), 400, "validation_error")
    flight.refresh_from_db()
    assert flight.available_seats == 20


def test_customers_cannot_change_seats(user_client, flight):
    assert_problem(user_client.patch(seats_url(flight.pk), {"seats": 1}, format="json"), 403, "permission_denied")
    flight.refresh_from_db()
    assert flight.available_seats == 20


def test_anonymous_cannot_change_seats(anon_client, flight):
    assert_problem(anon_client.patch(seats_url(flight.pk), {"seats": 1}, format="json"), 401, "not_authenticated")


# The service token ---------------------------------------------------------------------------------


@override_settings(FLIGHT_SERVICE_TOKEN="s3cret-service-token")
def test_service_token_may_change_seats_and_read(anon_client, flight):
    anon_client.credentials(HTTP_AUTHORIZATION="Bearer s3cret-service-token")
    assert anon_client.get(f"/api/v1/flights/{flight.pk}").status_code == 200
    response = anon_client.patch(seats_url(flight.pk), {"seats": 2, "reservation": "booking-1"}, format="json")
    assert response.status_code == 200
    assert response.json()["totalSeats"] == 18


@override_settings(FLIGHT_SERVICE_TOKEN="s3cret-service-token")
def test_service_token_cannot_create_flights(anon_client):
    anon_client.credentials(HTTP_AUTHORIZATION="Bearer s3cret-service-token")
    assert_problem(anon_client.post("/api/v1/flights", NEW_FLIGHT, format="json"), 403, "permission_denied")


@override_settings(FLIGHT_SERVICE_TOKEN="s3cret-service-token")
def test_wrong_service_token_is_401(anon_client, flight):
    anon_client.credentials(HTTP_AUTHORIZATION="Bearer wrong")
    assert_problem(anon_client.patch(seats_url(flight.pk), {"seats": 1}, format="json"), 401, "not_authenticated")


@override_settings(FLIGHT_SERVICE_TOKEN="")
def test_no_service_token_configured_accepts_no_bearer(anon_client, flight):
    anon_client.credentials(HTTP_AUTHORIZATION="Bearer ")
    assert_problem(anon_client.patch(seats_url(flight.pk), {"seats": 1}, format="json"), 401, "not_authenticated")


# Holds (our extension) -----------------------------------------------------------------------


def reserve(client, flight, ref, seats=2):
    return client.patch(seats_url(flight.pk), {"seats": seats, "dec": True, "reservation": ref}, format="json")


def release(client, flight, ref, seats=2):
    return client.patch(seats_url(flight.pk), {"seats": seats, "dec": False, "reservation": ref}, format="json")


def test_a_hold_reserved_twice_is_applied_once(staff_client, flight):
    first = reserve(staff_client, flight, "booking-7")
    second = reserve(staff_client, flight, "booking-7")

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["reservation"] == {"ref": "booking-7", "seats": 2, "state": "held"}
    assert first.json()["totalSeats"] == 18
    assert SeatHold.objects.count() == 1
    assert_ledger_invariant(flight)


def test_a_hold_released_twice_is_applied_once(staff_client, flight):
    reserve(staff_client, flight, "booking-7")
    first = release(staff_client, flight, "booking-7")
    second = release(staff_client, flight, "booking-7")

    assert first.status_code == second.status_code == 200
    assert first.json()["reservation"] == {"ref": "booking-7", "seats": 2, "state": "released"}
    assert first.json()["totalSeats"] == second.json()["totalSeats"] == 20
    assert_ledger_invariant(flight)


def test_releasing_a_hold_that_never_existed_is_a_no_op(staff_client, flight):
    reserve(staff_client, flight, "booking-1", seats=4)

    response = release(staff_client, flight, "booking-never")

    assert response.status_code == 200
    assert response.json()["totalSeats"] == 16
    assert response.json()["reservation"] == {"ref": "booking-never", "seats": 0, "state": "released"}
    assert_ledger_invariant(flight)


def test_a_reserve_arriving_after_its_release_is_refused(staff_client, flight):
    """The reserve timed out on the client, which released; then the reserve ran late."""
    release(staff_client, flight, "booking-late")

    assert_problem(reserve(staff_client, flight, "booking-late"), 409, "reservation_conflict")
    flight.refresh_from_db()
    assert flight.available_seats == 20
    assert_ledger_invariant(flight)


def test_a_reference_cannot_change_its_seat_count(staff_client, flight):
    reserve(staff_client, flight, "booking-7", seats=2)
    assert_problem(reserve(staff_client, flight, "booking-7", seats=3), 409, "reservation_conflict")
    assert_problem(release(staff_client, flight, "booking-7", seats=3), 409, "reservation_conflict")
    assert_ledger_invariant(flight)


def test_a_reference_belongs_to_one_flight(staff_client, flight):
    other = make_flight(capacity=10)
    reserve(staff_client, flight, "booking-7")
    assert_problem(reserve(staff_client, other, "booking-7"), 409, "reservation_conflict")
    assert_problem(release(staff_client, other, "booking-7"), 409, "reservation_conflict")
    other.refresh_from_db()
    assert other.available_seats == 10
    assert_ledger_invariant(flight)


def test_a_hold_larger_than_the_seats_left_is_refused_without_a_trace(staff_client, flight):
    assert_problem(reserve(staff_client, flight, "booking-big", seats=21), 409, "insufficient_seats")
    assert not SeatHold.objects.exists()
    # Nothing was held, so the same reference may try again with fewer seats.
    assert reserve(staff_client, flight, "booking-big", seats=20).status_code == 200
    assert_ledger_invariant(flight)
