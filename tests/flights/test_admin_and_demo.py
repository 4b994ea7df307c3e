import io
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from bookings.services import booking_create
from flights.admin import FlightAdmin
from flights.models import Flight, FlightEdit, SeatHold
from flights.services import flight_update
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger

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


def _edit_form(flight: Flight, **changes) -> dict:
    """The flight's change form as the page posts it, with `changes` made."""
    data = {
        "flight_number": flight.flight_number,
        "departure_airport": flight.departure_airport,
        "arrival_airport": flight.arrival_airport,
        "departure_time_0": f"{flight.departure_time:%Y-%m-%d}",
        "departure_time_1": f"{flight.departure_time:%H:%M:%S}",
        "arrival_time_0": f"{flight.arrival_time:%Y-%m-%d}",
        "arrival_time_1": f"{flight.arrival_time:%H:%M:%S}",
        "price": str(flight.price),
        "currency": flight.currency,
        "holds-TOTAL_FORMS": "0",
        "holds-INITIAL_FORMS": "0",
    }
    return {**data, **changes}


def test_an_edit_is_recorded_with_each_changed_field_and_who_made_it(admin_client_):
    flight = make_flight(capacity=10, price="5500.00")
    url = f"/admin/flights/flight/{flight.pk}/change/"
    number = flight.flight_number

    response = admin_client_.post(url, _edit_form(flight, price="6000.00", flight_number="UK999"))

    assert response.status_code == 302, response.content.decode()[:2000]
    flight.refresh_from_db()
    assert (flight.price, flight.flight_number) == (Decimal("6000.00"), "UK999")
    [edit] = FlightEdit.objects.filter(flight=flight)
    assert edit.changes == {"price": ["5500.00", "6000.00"], "flight_number": [number, "UK999"]}
    assert edit.changed_by.username == "root"
    # Saved unchanged: nothing to record.
    assert admin_client_.post(url, _edit_form(flight)).status_code == 302
    assert FlightEdit.objects.filter(flight=flight).count() == 1
    page = admin_client_.get(url).content.decode()
    assert "History of edits" in page and "5500.00 → 6000.00" in page


def test_an_edit_keeps_the_seats_taken_while_the_form_was_being_saved(admin_client_, user, monkeypatch):
    """The edit writes only what it changed, under the row lock: a booking that takes seats
    after admin read the flight is not undone by the save."""
    flight = make_flight(capacity=10)
    real_save_form = FlightAdmin.save_form

    def read_then_someone_books(self, request, form, change):
        obj = real_save_form(self, request, form, change)  # The flight as admin read it, edited.
        booking_create(user=user, flight_id=flight.pk, seats=3)
        return obj

    monkeypatch.setattr(FlightAdmin, "save_form", read_then_someone_books)
    response = admin_client_.post(f"/admin/flights/flight/{flight.pk}/change/", _edit_form(flight, price="6100.00"))

    assert response.status_code == 302
    flight.refresh_from_db()
    assert (flight.available_seats, flight.price) == (7, Decimal("6100.00"))
    assert_bookings_match_ledger(flight)


def test_flight_update_refuses_what_only_the_ledger_changes():
    flight = make_flight(capacity=10)
    with pytest.raises(ValueError, match="available_seats"):
        flight_update(flight_id=flight.pk, changes={"available_seats": 3}, changed_by=None)
    assert not FlightEdit.objects.exists()


def test_the_flight_page_lists_its_bookings_and_holds_and_warns_that_prices_are_fixed(admin_client_, user):
    flight = make_flight(capacity=10)
    url = f"/admin/flights/flight/{flight.pk}/change/"
    assert 'id="flight-has-bookings"' not in admin_client_.get(url).content.decode()

    booking = booking_create(user=user, flight_id=flight.pk, seats=2)
    page = admin_client_.get(url)

    html = page.content.decode()
    assert 'id="flight-has-bookings"' in html and "totalCost does not change" in html
    assert f'href="/admin/bookings/booking/{booking.pk}/change/"' in html
    assert booking.reference in html and "Initiated" in html
    assert list(page.context["bookings"]) == [booking]
    [holds] = [f for f in page.context["inline_admin_formsets"] if f.opts.model is SeatHold]
    assert [form.original.ref for form in holds] == [booking.hold_ref]
    assert f"?flight_id={flight.pk}" in html


def test_seat_hold_pages_are_view_only(admin_client_, user):
    flight = make_flight(capacity=10)
    booking = booking_create(user=user, flight_id=flight.pk, seats=2)
    hold = SeatHold.objects.get(ref=booking.hold_ref)

    page = admin_client_.get(f"/admin/flights/seathold/{hold.pk}/change/")

    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert admin_client_.post(f"/admin/flights/seathold/{hold.pk}/change/", {"seats": "9"}).status_code == 403
