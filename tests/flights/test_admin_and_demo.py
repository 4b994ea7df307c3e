import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from flights.models import Flight
from tests.factories import make_flight

pytestmark = pytest.mark.django_db


def test_demo_data_loads_once_and_prints_working_credentials(client):
    first, second = io.StringIO(), io.StringIO()
    call_command("load_demo_data", stdout=first)
    flights = Flight.objects.count()
    call_command("load_demo_data", stdout=second)

    assert flights >= 3
    assert Flight.objects.count() == flights
    assert get_user_model().objects.filter(username__in=["demo", "staff"]).count() == 2
    assert all(flight.available_seats == flight.capacity for flight in Flight.objects.all())
    demo_line = next(line for line in second.getvalue().splitlines() if "username=demo " in line)
    token = demo_line.split("token=")[1]
    assert client.get("/api/v1/flights", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200
    login = client.post("/admin/login/", {"username": "staff", "password": "staff-password", "next": "/admin/"})
    assert (login.status_code, login["Location"]) == (302, "/admin/")


@pytest.fixture
def admin_client_(client):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "root-password")
    client.force_login(admin)
    return client


def test_admin_lists_and_searches_flights(admin_client_):
    flight = make_flight(capacity=10)
    response = admin_client_.get("/admin/flights/flight/", {"q": flight.flight_number})
    assert response.status_code == 200
    assert flight.flight_number in response.content.decode()
    assert admin_client_.get(f"/admin/flights/flight/{flight.pk}/change/").status_code == 200


def test_admin_adds_a_flight_with_every_seat_available(admin_client_):
    response = admin_client_.post(
        "/admin/flights/flight/add/",
        {
            "flight_number": "AI101",
            "departure_airport": "DEL",
            "arrival_airport": "BOM",
            "departure_time_0": "2027-02-01",
            "departure_time_1": "07:00:00",
            "arrival_time_0": "2027-02-01",
            "arrival_time_1": "09:05:00",
            "price": "6200.00",
            "currency": "INR",
            "capacity": "150",
            "holds-TOTAL_FORMS": "0",
            "holds-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    flight = Flight.objects.get(flight_number="AI101")
    assert (flight.capacity, flight.available_seats) == (150, 150)


def test_admin_refuses_a_flight_that_lands_before_it_leaves(admin_client_):
    response = admin_client_.post(
        "/admin/flights/flight/add/",
        {
            "flight_number": "AI101",
            "departure_airport": "del",
            "arrival_airport": "BOM",
            "departure_time_0": "2027-02-01",
            "departure_time_1": "07:00:00",
            "arrival_time_0": "2027-02-01",
            "arrival_time_1": "06:00:00",
            "price": "6200.00",
            "capacity": "0",
            "holds-TOTAL_FORMS": "0",
            "holds-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert {"departure_airport", "capacity", "__all__"} <= set(errors), errors
    assert not Flight.objects.exists()
