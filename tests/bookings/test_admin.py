"""Bookings in Django admin: list, filter, search, and the cancel action through the service."""

import pytest
from django.contrib.auth import get_user_model

from bookings.models import Booking
from bookings.services import booking_create
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/bookings/booking/"


@pytest.fixture
def ops(client):
    ops_user = get_user_model().objects.create_superuser("root", "root@example.com", "root-password")
    client.force_login(ops_user)
    return client


def test_changelist_shows_filters_and_searches(ops, user, other_user):
    flight, other_flight = make_flight(capacity=10), make_flight(capacity=10)
    alices = booking_create(user=user, flight_id=flight.pk, seats=2)
    bobs = booking_create(user=other_user, flight_id=other_flight.pk, seats=1)

    page = ops.get(CHANGELIST)
    assert page.status_code == 200
    html = page.content.decode()
    for column in ("Status", "Flight id", "User", "Seats", "Total cost", "Created at", "Expires at"):
        assert column in html
    assert ops.get(CHANGELIST, {"q": "bob"}).context["cl"].result_list[0] == bobs
    assert list(ops.get(CHANGELIST, {"q": str(alices.pk)}).context["cl"].result_list) == [alices]
    assert list(ops.get(CHANGELIST, {"flight_id": str(other_flight.pk)}).context["cl"].result_list) == [bobs]
    assert list(ops.get(CHANGELIST, {"status__exact": "CANCELLED"}).context["cl"].result_list) == []


def test_money_and_status_are_read_only_and_bookings_cannot_be_added_or_deleted(ops, user):
    booking = booking_create(user=user, flight_id=make_flight(capacity=5).pk, seats=1)
    form = ops.get(f"{CHANGELIST}{booking.pk}/change/")
    assert form.status_code == 200
    assert {"total_cost", "status", "seats_state"} <= set(form.context["adminform"].readonly_fields)
    assert ops.get(f"{CHANGELIST}add/").status_code == 403
    assert ops.get(f"{CHANGELIST}{booking.pk}/delete/").status_code == 403


def test_cancel_action_cancels_through_the_service_and_reports_seats(ops, user):
    flight = make_flight(capacity=10)
    first = booking_create(user=user, flight_id=flight.pk, seats=2)
    second = booking_create(user=user, flight_id=flight.pk, seats=3)
    already = booking_create(user=user, flight_id=flight.pk, seats=1)
    ops.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": [already.pk]})

    response = ops.post(
        CHANGELIST,
        {"action": "cancel_selected", "_selected_action": [first.pk, second.pk, already.pk]},
        follow=True,
    )

    messages = [str(m) for m in response.context["messages"]]
    assert "Cancelled 3 booking(s); released 5 seat(s)." in messages
    assert set(Booking.objects.values_list("status", "cancel_reason")) == {("CANCELLED", "staff")}
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == 10


def test_cancel_action_reports_bookings_it_could_not_cancel(ops, user):
    flight = make_flight(capacity=10)
    paying = booking_create(user=user, flight_id=flight.pk, seats=2)
    Booking.objects.filter(pk=paying.pk).update(status=Booking.Status.PENDING)

    response = ops.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": [paying.pk]}, follow=True)

    messages = [str(m) for m in response.context["messages"]]
    assert "Cancelled 0 booking(s); released 0 seat(s)." in messages
    assert any(m.startswith(f"Not cancelled: {paying.pk}: ") for m in messages)
    assert Booking.objects.get(pk=paying.pk).status == "PENDING"


def test_needs_attention_filter_lists_releases_still_owed(ops, user):
    flight = make_flight(capacity=10)
    owed = booking_create(user=user, flight_id=flight.pk, seats=2)
    fine = booking_create(user=user, flight_id=flight.pk, seats=1)
    Booking.objects.filter(pk=owed.pk).update(status=Booking.Status.CANCELLED)

    listed = ops.get(CHANGELIST, {"attention": "release_owed"}).context["cl"].result_list
    assert list(listed) == [owed]
    assert fine not in ops.get(CHANGELIST, {"attention": "reconcile"}).context["cl"].result_list
