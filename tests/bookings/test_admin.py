"""Bookings in Django admin: list, filter, search, view-only pages, the cancel action and the
cancel button (a confirmation page with a reason, then the service), links, history,
highlights and the CSV export."""

import csv
import datetime as dt
import io

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from bookings import audit
from bookings.models import Booking, BookingEvent
from bookings.services import booking_create
from tests.factories import initiated, make_flight, paid, release_owed
from tests.helpers import assert_bookings_match_ledger

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/bookings/booking/"


@pytest.fixture
def ops(client):
    ops_user = get_user_model().objects.create_superuser("root", "root@example.com", "root-password")
    client.force_login(ops_user)
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def cancel(client, booking_ids, reason="customer called", **extra):
    """The action's two steps: run it (the confirmation page), then confirm with a reason."""
    first = client.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": booking_ids, "index": 0})
    assert first.status_code == 200
    assert first.templates[0].name == "admin/bookings/booking/cancel_confirmation.html"
    data = {"action": "cancel_selected", "_selected_action": booking_ids, "confirm": "yes", "reason": reason}
    return client.post(CHANGELIST, {**data, **extra}, follow=True)


def test_changelist_shows_filters_and_searches(ops, user, other_user):
    flight, other_flight = make_flight(capacity=10), make_flight(capacity=10)
    alices = booking_create(user=user, flight_id=flight.pk, seats=2)
    bobs = booking_create(user=other_user, flight_id=other_flight.pk, seats=1)

    page = ops.get(CHANGELIST)
    assert page.status_code == 200
    html = page.content.decode()
    for column in ("Reference", "Status", "Flight id", "User", "Seats", "Total cost", "Created at", "Expires at"):
        assert column in html
    assert alices.reference in html
    assert ops.get(CHANGELIST, {"q": "bob"}).context["cl"].result_list[0] == bobs
    assert list(ops.get(CHANGELIST, {"q": str(alices.pk)}).context["cl"].result_list) == [alices]
    # A reference read out on the phone, in any case.
    assert list(ops.get(CHANGELIST, {"q": bobs.reference.lower()}).context["cl"].result_list) == [bobs]
    assert list(ops.get(CHANGELIST, {"flight_id": str(other_flight.pk)}).context["cl"].result_list) == [bobs]
    assert list(ops.get(CHANGELIST, {"status__exact": "CANCELLED"}).context["cl"].result_list) == []


def test_the_booking_page_is_view_only_and_bookings_cannot_be_added_or_deleted(ops, user):
    booking = booking_create(user=user, flight_id=make_flight(capacity=5).pk, seats=1)
    form = ops.get(f"{CHANGELIST}{booking.pk}/change/")
    assert form.status_code == 200
    assert form.context["has_change_permission"] is False
    assert {"total_cost", "status_shown", "seats_state_shown"} <= set(form.context["adminform"].readonly_fields)
    assert 'name="_save"' not in form.content.decode()
    assert ops.post(f"{CHANGELIST}{booking.pk}/change/", {"seats": "5"}).status_code == 403
    assert Booking.objects.get(pk=booking.pk).seats == 1
    assert ops.get(f"{CHANGELIST}add/").status_code == 403
    assert ops.get(f"{CHANGELIST}{booking.pk}/delete/").status_code == 403


def test_the_cancel_action_asks_for_confirmation_before_cancelling_anything(ops, user):
    flight = make_flight(capacity=10)
    first = booking_create(user=user, flight_id=flight.pk, seats=2)
    done = booking_create(user=user, flight_id=flight.pk, seats=1)
    ops.post(f"{CHANGELIST}{done.pk}/cancel/", {"confirm": "yes", "reason": "duplicate"})

    page = ops.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": [first.pk, done.pk], "index": 0})

    assert page.status_code == 200
    [to_cancel, nothing] = page.context["previews"]
    assert (to_cancel.booking, to_cancel.seats_to_release, to_cancel.refund) == (first, 2, None)
    assert nothing.nothing_to_do
    html = page.content.decode()
    assert first.reference in html and "nothing to do: already cancelled" in html
    assert 'name="reason"' in html and "Back" in html
    assert Booking.objects.get(pk=first.pk).status == Booking.Status.INITIATED  # Not yet.


def test_confirming_without_a_reason_cancels_nothing(ops, user):
    booking = booking_create(user=user, flight_id=make_flight(capacity=10).pk, seats=2)

    page = ops.post(
        CHANGELIST, {"action": "cancel_selected", "_selected_action": [booking.pk], "confirm": "yes", "reason": "  "}
    )

    assert page.status_code == 200
    assert page.context["form"].errors == {"reason": ["This field is required."]}
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.INITIATED


def test_cancel_action_cancels_through_the_service_and_reports_seats(ops, user):
    flight = make_flight(capacity=10)
    first = booking_create(user=user, flight_id=flight.pk, seats=2)
    second = booking_create(user=user, flight_id=flight.pk, seats=3)
    already = booking_create(user=user, flight_id=flight.pk, seats=1)
    cancel(ops, [already.pk])

    response = cancel(ops, [first.pk, second.pk, already.pk])

    assert "Cancelled 2 booking(s); released 5 seat(s); 1 already cancelled." in messages_of(response)
    assert set(Booking.objects.values_list("status", "cancel_reason")) == {("CANCELLED", "staff")}
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == 10


def test_the_staffs_reason_is_kept_on_the_cancels_event_only(ops, user):
    flight = make_flight(capacity=10)
    booking = booking_create(user=user, flight_id=flight.pk, seats=2)

    cancel(ops, [booking.pk], reason="Customer phoned: flight no longer needed")

    events = list(BookingEvent.objects.filter(booking=booking).values_list("to_status", "actor", "note"))
    assert events == [
        ("INITIATED", "system", ""),
        ("CANCELLED", "staff", "Customer phoned: flight no longer needed"),
    ]
    # Outside the block nothing is noted.
    later = booking_create(user=user, flight_id=flight.pk, seats=1)
    assert BookingEvent.objects.get(booking=later).note == ""


def test_noting_sets_the_note_only_inside_its_block_and_cuts_it_to_the_fields_size(user):
    flight = make_flight(capacity=10)
    with audit.noting("x" * 600):
        inside = booking_create(user=user, flight_id=flight.pk, seats=1)
    outside = booking_create(user=user, flight_id=flight.pk, seats=1)

    assert BookingEvent.objects.get(booking=inside).note == "x" * 500
    assert BookingEvent.objects.get(booking=outside).note == ""


def test_cancel_action_reports_bookings_it_could_not_cancel(ops, user):
    flight = make_flight(capacity=10)
    paying = booking_create(user=user, flight_id=flight.pk, seats=2)
    Booking.objects.filter(pk=paying.pk).update(status=Booking.Status.PENDING)

    page = ops.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": [paying.pk], "index": 0})
    assert "refused" in page.content.decode()
    assert page.context["to_cancel"] == []
    response = cancel(ops, [paying.pk])

    messages = messages_of(response)
    assert "Cancelled 0 booking(s); released 0 seat(s)." in messages
    assert any(m.startswith(f"Not cancelled: {paying.pk}: ") for m in messages)
    assert Booking.objects.get(pk=paying.pk).status == "PENDING"


def test_the_cancel_button_opens_the_same_confirmation_for_one_booking(ops, user):
    flight = make_flight(capacity=10)
    booking = booking_create(user=user, flight_id=flight.pk, seats=2)
    page = f"{CHANGELIST}{booking.pk}/change/"
    button = f"{CHANGELIST}{booking.pk}/cancel/"
    assert button in ops.get(page).content.decode()

    confirmation = ops.get(button)
    assert confirmation.status_code == 200
    assert [p.booking for p in confirmation.context["previews"]] == [booking]
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.INITIATED

    done = ops.post(button, {"confirm": "yes", "reason": "asked by phone"})
    assert (done.status_code, done["Location"]) == (302, page)
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.CANCELLED
    assert BookingEvent.objects.filter(booking=booking).last().note == "asked by phone"
    assert button not in ops.get(page).content.decode()  # Cancelled: no button.


def test_only_staff_who_may_change_bookings_cancel_them(client, user, staff_user):
    booking = booking_create(user=user, flight_id=make_flight(capacity=10).pk, seats=2)
    staff_user.user_permissions.add(Permission.objects.get(codename="view_booking"))
    client.force_login(staff_user)
    page = client.get(f"{CHANGELIST}{booking.pk}/change/")
    assert page.status_code == 200
    assert f"{booking.pk}/cancel/" not in page.content.decode()
    assert "cancel_selected" not in client.get(CHANGELIST).content.decode()
    assert client.get(f"{CHANGELIST}{booking.pk}/cancel/").status_code == 403
    assert client.post(f"{CHANGELIST}{booking.pk}/cancel/", {"confirm": "yes", "reason": "x"}).status_code == 403
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.INITIATED

    staff_user.user_permissions.add(Permission.objects.get(codename="change_booking"))
    page = client.get(f"{CHANGELIST}{booking.pk}/change/")
    assert f"{booking.pk}/cancel/" in page.content.decode()
    assert 'name="_save"' not in page.content.decode()  # Still nothing to save.
    assert client.post(f"{CHANGELIST}{booking.pk}/cancel/", {"confirm": "yes", "reason": "x"}).status_code == 302
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.CANCELLED


def test_the_list_and_the_page_link_to_the_flight_the_user_and_the_payments(ops, user, flight):
    booking, payment, _ = paid(user, flight)
    flight_page = f"/admin/flights/flight/{flight.pk}/change/"
    user_page = f"/admin/auth/user/{user.pk}/change/"

    listing = ops.get(CHANGELIST).content.decode()
    assert f'href="{flight_page}"' in listing and f'href="{user_page}"' in listing
    page = ops.get(f"{CHANGELIST}{booking.pk}/change/").content.decode()
    assert f'href="{flight_page}"' in page and f'href="{user_page}"' in page
    assert f"/admin/payments/payment/{payment.pk}/change/" in page


def test_the_history_shows_status_changes_with_their_note_and_refunds_in_time_order(ops, user, flight):
    booking, payment, _ = paid(user, flight)
    cancel(ops, [booking.pk], reason="refund agreed with the customer")

    history = ops.get(f"{CHANGELIST}{booking.pk}/change/").context["history"]

    payment.refresh_from_db()
    lines = [
        (entry.event.to_status, entry.event.note) if entry.event else ("refund", entry.refund.refund_reference)
        for entry in history
    ]
    assert lines == [
        ("INITIATED", ""),
        ("PENDING", ""),
        ("BOOKED", ""),
        ("refund", payment.refund_reference),  # The refund comes first, then the cancel.
        ("CANCELLED", "refund agreed with the customer"),
    ]
    html = ops.get(f"{CHANGELIST}{booking.pk}/change/").content.decode()
    assert f"refunded {payment.amount} {payment.currency}" in html
    assert "refund agreed with the customer" in html


def test_overdue_bookings_and_seats_owed_or_to_reconcile_stand_out(ops, user, clock):
    flight = make_flight(capacity=20)
    overdue = initiated(user, flight)
    owed = release_owed(user, flight)
    person = initiated(user, flight)
    Booking.objects.filter(pk=person.pk).update(
        status=Booking.Status.CANCELLED, seats_state=Booking.SeatsState.RECONCILE
    )
    clock.advance(minutes=11)
    fresh = initiated(user, flight)

    rows = {booking.pk: booking for booking in ops.get(CHANGELIST).context["cl"].result_list}
    admin = ops.get(CHANGELIST).context["cl"].model_admin

    assert "overdue" in admin.status_shown(rows[overdue.pk])
    assert "overdue" not in admin.status_shown(rows[fresh.pk])
    assert "release owed" in admin.seats_state_shown(rows[owed.pk])
    assert "reconcile" in admin.seats_state_shown(rows[person.pk])
    assert admin.seats_state_shown(rows[fresh.pk]) == "Reserved"
    assert 'class="ops-badge ops-badge-alert"' in ops.get(CHANGELIST).content.decode()


def test_export_streams_the_selected_bookings_as_csv_with_formulas_defused(ops, flight):
    sly = get_user_model().objects.create_user(username="=HYPERLINK(1)", password="x")
    first = initiated(sly, flight, 2)
    second = initiated(sly, flight, 1)
    initiated(sly, flight, 1)  # Not selected.

    response = ops.post(CHANGELIST, {"action": "export_csv", "_selected_action": [second.pk, first.pk], "index": 0})

    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    today = dt.date.today().isoformat()
    assert response["Content-Disposition"] == f'attachment; filename="bookings-{today}.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == [
        "id",
        "reference",
        "user",
        "flight id",
        "seats",
        "total cost",
        "currency",
        "status",
        "cancel reason",
        "created",
        "expires",
        "cancelled",
    ]
    assert [row[:9] for row in rows[1:]] == [
        [
            str(b.pk),
            b.reference,
            "'=HYPERLINK(1)",
            str(flight.pk),
            str(b.seats),
            str(b.total_cost),
            "INR",
            "INITIATED",
            "",
        ]
        for b in (first, second)
    ]
    assert rows[1][9] == first.created_at.isoformat() and rows[1][11] == ""


def test_the_cancel_page_of_no_booking_is_not_found(ops):
    assert ops.get(f"{CHANGELIST}999999/cancel/").status_code == 404
    assert ops.get(f"{CHANGELIST}not-a-number/cancel/").status_code == 404
