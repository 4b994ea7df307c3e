"""A query parameter documented as one value is refused when repeated (schemathesis found these
answering 200 with one of the values silently picked); an empty one is the same as leaving it
out, as docs/api.md#query-parameters writes the list's URL (`?status=&flightId=`)."""

import pytest

from bookings.services import booking_create
from tests.helpers import assert_problem


@pytest.mark.parametrize(
    "query, field",
    [
        ("status=BOOKED&status=CANCELLED", "status"),
        ("userId=1&userId=2", "userId"),
        ("page=1&page=2", "page"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=last", "page"),
        ("page=%D9%A1", "page"),  # An Arabic-Indic digit one: a digit to str.isdigit, not to us.
        ("pageSize=5&pageSize=6", "pageSize"),
    ],
)
def test_bookings_list_refuses_a_repeated_or_malformed_parameter(staff_client, query, field):
    response = staff_client.get(f"/api/v1/bookings?{query}")

    body = assert_problem(response, 400, "validation_error")
    assert [error["field"] for error in body["errors"]] == [field]


@pytest.mark.parametrize("query", ["page=2&page=1", "pageSize=1&pageSize=1", "page=-1"])
def test_flights_list_refuses_a_bad_page_parameter(user_client, flight, query):
    assert_problem(user_client.get(f"/api/v1/flights?{query}"), 400, "validation_error")


def test_a_page_past_the_end_is_404(user_client, flight):
    assert_problem(user_client.get("/api/v1/flights?page=2"), 404, "not_found")


def test_one_value_of_each_parameter_still_filters_and_pages(staff_client, user, other_user, flight):
    mine = [booking_create(user=user, flight_id=flight.pk, seats=1) for _ in range(3)]
    booking_create(user=other_user, flight_id=flight.pk, seats=1)

    response = staff_client.get(f"/api/v1/bookings?userId={user.pk}&flightId={flight.pk}&status=INITIATED&pageSize=2")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [row["id"] for row in body["results"]] == [mine[2].pk, mine[1].pk]
    second = staff_client.get(f"/api/v1/bookings?userId={user.pk}&pageSize=2&page=2").json()
    assert [row["id"] for row in second["results"]] == [mine[0].pk]


def test_empty_parameters_are_the_same_as_none_as_design_writes_the_url(user_client, user, flight):
    bookings = [booking_create(user=user, flight_id=flight.pk, seats=1) for _ in range(2)]

    response = user_client.get("/api/v1/bookings?status=&flightId=&userId=&page=&pageSize=")

    assert response.status_code == 200, response.content
    assert response.json() == user_client.get("/api/v1/bookings").json()
    assert [row["id"] for row in response.json()["results"]] == [bookings[1].pk, bookings[0].pk]
    assert user_client.get("/api/v1/flights?page=&pageSize=").json() == user_client.get("/api/v1/flights").json()


def test_the_schema_says_an_empty_query_parameter_is_allowed(user_client):
    schema = user_client.get("/api/schema/?format=json").json()
    query_parameters = [
        parameter
        for path_item in schema["paths"].values()
        for operation in path_item.values()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query"
    ]
    # bookings: status, flightId, userId, reference, page, pageSize; flights: departureAirport,
    # arrivalAirport, departureDate, minSeats, page, pageSize; payments: bookingId, status, page,
    # pageSize; events, webhooks, deliveries: page, pageSize.
    assert len(query_parameters) == 22
    assert all(parameter.get("allowEmptyValue") is True for parameter in query_parameters)
