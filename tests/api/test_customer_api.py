"""The customer API's additions (docs/api.md): flight search, unknown query parameters refused,
the payments list, a booking's reference, currency and payment, and `Location` on 201."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bookings import references
from bookings.models import Booking
from tests.factories import initiated, make_flight, paid
from tests.helpers import assert_problem
from tests.support.api import patch_cancel, post_booking, post_payment

FLIGHTS = "/api/v1/flights"


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2027, 3, day, hour, minute, tzinfo=dt.UTC)


def flight_at(departure: dt.datetime, origin: str = "BOM", destination: str = "DEL", **fields):
    return make_flight(
        departure_airport=origin,
        arrival_airport=destination,
        departure_time=departure,
        arrival_time=departure + dt.timedelta(hours=2),
        **fields,
    )


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


class TestFlightSearch:
    @pytest.fixture
    def timetable(self, db):
        return {
            # Out of departure order on purpose: the answer sorts them.
            "late_bom_del": flight_at(at(1, 23, 59), capacity=10),
            "bom_del": flight_at(at(1, 8)),
            "bom_del_next_day": flight_at(at(2, 0, 0)),
            "del_bom": flight_at(at(1, 9), "DEL", "BOM"),
            "bom_blr": flight_at(at(1, 10), "BOM", "BLR"),
            "day_before": flight_at(at(1, 0) - dt.timedelta(minutes=1)),
        }

    def test_every_filter_alone_and_combined(self, user_client, timetable):
        t = {name: flight.pk for name, flight in timetable.items()}
        search = lambda query: ids(user_client.get(f"{FLIGHTS}?{query}"))  # noqa: E731

        assert search("") == [
            t["day_before"],
            t["bom_del"],
            t["del_bom"],
            t["bom_blr"],
            t["late_bom_del"],
            t["bom_del_next_day"],
        ]
        assert search("departureAirport=DEL") == [t["del_bom"]]
        assert search("arrivalAirport=DEL") == [t["day_before"], t["bom_del"], t["late_bom_del"], t["bom_del_next_day"]]
        # The UTC date of departureTime: 00:00 is that day, 23:59 too, the minute before is not.
        assert search("departureDate=2027-03-01") == [t["bom_del"], t["del_bom"], t["bom_blr"], t["late_bom_del"]]
        assert search("departureAirport=BOM&arrivalAirport=DEL&departureDate=2027-03-01") == [
            t["bom_del"],
            t["late_bom_del"],
        ]
        assert search("departureAirport=BOM&arrivalAirport=DEL&departureDate=2027-03-01&minSeats=11") == [t["bom_del"]]

    def test_airports_are_case_insensitive(self, user_client, timetable):
        assert ids(user_client.get(f"{FLIGHTS}?departureAirport=del&arrivalAirport=Bom")) == [timetable["del_bom"].pk]

    def test_min_seats_counts_the_seats_still_available(self, user, user_client, timetable):
        small = timetable["late_bom_del"]  # 10 seats
        initiated(user, small, seats=3)  # 7 left

        assert small.pk in ids(user_client.get(f"{FLIGHTS}?minSeats=7&departureDate=2027-03-01"))
        assert small.pk not in ids(user_client.get(f"{FLIGHTS}?minSeats=8&departureDate=2027-03-01"))

    def test_equal_departures_are_ordered_by_id(self, user_client, db):
        first, second = flight_at(at(5, 12)), flight_at(at(5, 12))
        assert ids(user_client.get(f"{FLIGHTS}?departureDate=2027-03-05")) == [first.pk, second.pk]

    @pytest.mark.parametrize(
        "query, field",
        [
            ("departureAirport=DE", "departureAirport"),
            ("departureAirport=DELH", "departureAirport"),
            ("arrivalAirport=D3L", "arrivalAirport"),
            ("departureDate=2027-02-30", "departureDate"),
            ("departureDate=03/01/2027", "departureDate"),
            ("departureDate=2027-03-01T10:00:00Z", "departureDate"),
            ("minSeats=0", "minSeats"),
            ("minSeats=1.5", "minSeats"),
            ("minSeats=many", "minSeats"),
            ("minSeats=1001", "minSeats"),
            ("departureAirport=BOM&departureAirport=DEL", "departureAirport"),
        ],
    )
    def test_a_malformed_filter_is_a_400_naming_it(self, user_client, db, query, field):
        body = assert_problem(user_client.get(f"{FLIGHTS}?{query}"), 400, "validation_error")
        assert [error["field"] for error in body["errors"]] == [field]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/flights",
        "/api/v1/bookings",
        "/api/v1/bookings/{booking}/events",
        "/api/v1/payments",
        "/api/v1/webhooks",
        "/api/v1/webhooks/{webhook}/deliveries",
    ],
)
def test_every_list_refuses_a_parameter_it_does_not_know(staff_client, staff_user, flight, path):
    booking = initiated(staff_user, flight)
    webhook = staff_client.post(
        "/api/v1/webhooks", {"url": "https://hooks.example.com/x"}, format="json", REMOTE_ADDR="127.0.0.1"
    )
    url = path.format(booking=booking.pk, webhook=webhook.json().get("id", 0))
    assert staff_client.get(url).status_code == 200

    # A typo of a real filter, and a parameter nobody documents, each named.
    body = assert_problem(staff_client.get(f"{url}?departureAirpot=DEL&foo=1"), 400, "validation_error")
    assert sorted(error["field"] for error in body["errors"]) == ["departureAirpot", "foo"]
    assert "pageSize" in body["errors"][0]["message"]


def test_a_typo_in_a_bookings_filter_no_longer_answers_everything(user_client, user, flight):
    initiated(user, flight)
    assert_problem(user_client.get("/api/v1/bookings?stauts=CANCELLED"), 400, "validation_error")
    assert len(ids(user_client.get("/api/v1/bookings?status=CANCELLED"))) == 0


class TestPaymentsList:
    def test_own_newest_first_with_filters(self, user, other_user, user_client, flight):
        first, second = paid(user, flight), paid(user, flight, key="k2")
        paid(other_user, flight)
        cancelled = initiated(user, flight)
        assert post_payment(user_client, cancelled, "k3").status_code == 201
        assert patch_cancel(user_client, cancelled).status_code == 200
        third = cancelled.payments.get()

        assert ids(user_client.get("/api/v1/payments")) == [third.pk, second.payment.pk, first.payment.pk]
        assert ids(user_client.get(f"/api/v1/payments?bookingId={first.booking.pk}")) == [first.payment.pk]
        assert ids(user_client.get("/api/v1/payments?status=REFUNDED")) == [third.pk]
        assert ids(user_client.get("/api/v1/payments?status=SUCCEEDED&pageSize=1")) == [second.payment.pk]
        # Another user's booking is as unknown as a missing one: an empty page, not theirs.
        theirs = Booking.objects.get(user=other_user)
        assert ids(user_client.get(f"/api/v1/payments?bookingId={theirs.pk}")) == []

    def test_staff_see_everyones(self, user, other_user, staff_client, flight):
        mine, theirs = paid(user, flight), paid(other_user, flight)
        assert ids(staff_client.get("/api/v1/payments")) == [theirs.payment.pk, mine.payment.pk]

    def test_each_answer_is_the_payment_resource(self, user, user_client, flight):
        payment = paid(user, flight).payment
        row = user_client.get("/api/v1/payments").json()["results"][0]
        assert row == user_client.get(f"/api/v1/payments/{payment.pk}").json()

    @pytest.mark.parametrize("query", ["status=PAID", "bookingId=x", "bookingId=0", "status=SUCCEEDED&status=FAILED"])
    def test_a_malformed_filter_is_a_400(self, user_client, db, query):
        assert_problem(user_client.get(f"/api/v1/payments?{query}"), 400, "validation_error")

    def test_needs_credentials(self, client, db):
        assert_problem(client.get("/api/v1/payments"), 401, "not_authenticated")


class TestBookingReference:
    def test_six_characters_of_the_alphabet_unique_and_found_by_the_filter(self, user, user_client, flight):
        bookings = [initiated(user, flight, seats=1) for _ in range(5)]
        answers = [user_client.get(f"/api/v1/bookings/{booking.pk}").json() for booking in bookings]
        found = {answer["reference"] for answer in answers}

        assert len(found) == 5
        assert all(len(code) == 6 and set(code) <= set(references.ALPHABET) for code in found)
        for booking, answer in zip(bookings, answers, strict=True):
            assert ids(user_client.get(f"/api/v1/bookings?reference={answer['reference']}")) == [booking.pk]
            assert ids(user_client.get(f"/api/v1/bookings?reference={answer['reference'].lower()}")) == [booking.pk]

    def test_every_id_has_its_own_reference_and_back(self):
        codes = {references.reference_of(booking_id) for booking_id in range(1, 50_001)}
        assert len(codes) == 50_000
        for booking_id in (1, 2, 999_999, references.MAX_ID):
            assert references.booking_id_of(references.reference_of(booking_id)) == booking_id
        assert references.booking_id_of("VPTX4") is None and references.booking_id_of("VPTX4O") is None

    def test_another_users_reference_finds_nothing(self, user, other_user, user_client, flight):
        theirs = initiated(other_user, flight)
        assert ids(user_client.get(f"/api/v1/bookings?reference={theirs.reference}")) == []

    @pytest.mark.parametrize("value", ["ABC", "ABCDEFG", "ABCDE0", "ABCDEI", "ABCDE!"])
    def test_a_malformed_reference_is_a_400(self, user_client, db, value):
        body = assert_problem(user_client.get(f"/api/v1/bookings?reference={value}"), 400, "validation_error")
        assert [error["field"] for error in body["errors"]] == ["reference"]


class TestCurrencyAndPayment:
    def test_flights_and_bookings_say_their_currency(self, user_client, db):
        dollars = make_flight(currency="USD", price="120.00")
        assert user_client.get(f"{FLIGHTS}/{dollars.pk}").json()["currency"] == "USD"
        booking = post_booking(user_client, dollars, 2).json()
        assert (booking["totalCost"], booking["currency"]) == ("240.00", "USD")

    def test_a_booking_in_another_currency_is_paid_in_it(self, user_client, db):
        dollars = make_flight(currency="USD", price="120.00")
        booking = Booking.objects.get(pk=post_booking(user_client, dollars, 1).json()["id"])

        payment = post_payment(user_client, booking, "usd-1").json()

        assert (payment["status"], payment["amount"], payment["currency"]) == ("SUCCEEDED", "120.00", "USD")

    def test_the_payment_summary_follows_the_booking_to_its_refund(self, user, user_client, flight):
        booking_id = post_booking(user_client, flight, 2).json()["id"]
        url = f"/api/v1/bookings/{booking_id}"
        assert user_client.get(url).json()["payment"] is None

        payment = post_payment(user_client, Booking.objects.get(pk=booking_id), "k1").json()
        summary = {"id": payment["id"], "status": "SUCCEEDED", "amount": "11000.00", "currency": "INR"}
        assert user_client.get(url).json()["payment"] == {**summary, "refundedAt": None}

        cancelled = patch_cancel(user_client, booking_id).json()
        assert cancelled["payment"]["status"] == "REFUNDED" and cancelled["payment"]["refundedAt"]
        assert user_client.get(url).json()["payment"] == cancelled["payment"]
        listed = user_client.get("/api/v1/bookings").json()["results"]
        assert [row["payment"] for row in listed] == [cancelled["payment"]]

    def test_the_latest_payment_is_the_one_shown(self, user, user_client, flight, settings):
        booking = initiated(user, flight)
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        declined = post_payment(user_client, booking, "first")
        assert declined.status_code == 402
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        second = post_payment(user_client, booking, "second").json()

        shown = user_client.get(f"/api/v1/bookings/{booking.pk}").json()["payment"]
        assert (shown["id"], shown["status"]) == (second["id"], "SUCCEEDED")

    def test_a_page_of_bookings_reads_its_payments_in_one_query(self, user, user_client, flight):
        for key in ("a", "b", "c"):
            paid(user, flight, key=key)
        with CaptureQueriesContext(connection) as one_page:
            assert len(ids(user_client.get("/api/v1/bookings"))) == 3
        for key in ("d", "e", "f"):
            paid(user, flight, key=key)
        with CaptureQueriesContext(connection) as bigger_page:
            assert len(ids(user_client.get("/api/v1/bookings"))) == 6
        assert len(bigger_page) == len(one_page)


class TestLocation:
    def test_a_created_booking(self, user_client, flight):
        response = post_booking(user_client, flight, 1)
        assert response.status_code == 201
        assert response["Location"] == f"http://testserver/api/v1/bookings/{response.json()['id']}"
        assert user_client.get(response["Location"]).json() == response.json()

    def test_a_payment_and_its_replay(self, user, user_client, flight):
        booking = initiated(user, flight)
        first = post_payment(user_client, booking, "k1")
        replay = post_payment(user_client, booking, "k1")
        expected = f"http://testserver/api/v1/payments/{first.json()['id']}"
        assert (first.status_code, first["Location"]) == (201, expected)
        assert (replay.status_code, replay["Idempotent-Replayed"], replay["Location"]) == (201, "true", expected)

    def test_no_location_on_a_refusal(self, user, user_client, flight):
        booking = initiated(user, flight)
        refused = post_payment(user_client, booking, "k1", amount="1.00")
        assert refused.status_code == 422 and "Location" not in refused

    def test_a_created_flight_and_webhook(self, staff_client, db):
        flight = staff_client.post(
            FLIGHTS,
            {
                "flightNumber": "AI202",
                "departureAirport": "DEL",
                "arrivalAirport": "BOM",
                "departureTime": "2027-04-01T07:00:00Z",
                "arrivalTime": "2027-04-01T09:00:00Z",
                "price": "100.00",
                "currency": "usd",
                "capacity": 5,
            },
            format="json",
        )
        assert flight.status_code == 201, flight.content
        assert flight["Location"] == f"http://testserver/api/v1/flights/{flight.json()['id']}"
        assert flight.json()["currency"] == "USD"
        webhook = staff_client.post("/api/v1/webhooks", {"url": "https://hooks.example.com/x"}, format="json")
        assert webhook.status_code == 201, webhook.content
        assert webhook["Location"] == f"http://testserver/api/v1/webhooks/{webhook.json()['id']}"

    def test_behind_a_tls_proxy_the_location_is_https(self, user_client, flight, settings):
        settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        settings.ALLOWED_HOSTS = ["api.example.com"]
        response = post_booking(
            user_client, flight, 1, HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="api.example.com", SERVER_PORT="443"
        )
        assert response["Location"] == f"https://api.example.com/api/v1/bookings/{response.json()['id']}"
