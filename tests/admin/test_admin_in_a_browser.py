"""Staff's admin in a real browser (headless Chromium, tests/admin/conftest.py): cancelling a
paid booking through the confirmation page, the booking page's cancel button, the links
between a booking, its flight and its payment, and the CSV export."""

from __future__ import annotations

import csv
import time
from decimal import Decimal
from pathlib import Path

import pytest

from bookings.models import Booking, BookingEvent
from flights.services import flight_update
from payments.models import Payment
from tests.factories import initiated, make_flight, paid

pytestmark = pytest.mark.django_db(transaction=True)


def _by(css: str):
    from selenium.webdriver.common.by import By

    return (By.CSS_SELECTOR, css)


def find(browser, css: str):
    return browser.find_element(*_by(css))


def run_action(browser, action: str, booking_ids: list[int]) -> None:
    from selenium.webdriver.support.ui import Select

    for booking_id in booking_ids:
        find(browser, f'input.action-select[value="{booking_id}"]').click()
    Select(find(browser, 'select[name="action"]')).select_by_value(action)
    find(browser, 'button[name="index"]').click()


@pytest.fixture
def paid_booking(user):
    flight = make_flight(capacity=10, price="5500.00")
    booking, payment, _ = paid(user, flight, seats=2)
    return booking, payment, flight


def test_staff_cancel_a_paid_booking_through_the_confirmation_page(
    browser, live_server, root, paid_booking, screenshot
):
    booking, payment, _ = paid_booking
    browser.get(f"{live_server.url}/admin/login/?next=/admin/bookings/booking/")
    find(browser, "#id_username").send_keys("root")
    find(browser, "#id_password").send_keys("root-password")
    find(browser, 'input[type="submit"]').click()
    assert browser.current_url.endswith("/admin/bookings/booking/")

    run_action(browser, "cancel_selected", [booking.pk])

    row = find(browser, f"#cancel-preview-{booking.pk}").text
    assert booking.reference in row and f"11000.00 INR (payment {payment.pk})" in row and "refund, then cancel" in row
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.BOOKED  # Nothing done yet.
    find(browser, 'textarea[name="reason"]').send_keys("Customer's trip called off; refund agreed by phone")
    screenshot(browser, "cancel-confirmation")
    find(browser, 'input[name="_confirm"]').click()

    message = find(browser, ".messagelist .success").text
    assert f"refunded 11000.00 INR for booking {booking.pk} (payment {payment.pk})" in message
    assert "Cancelled 1 booking(s); released 2 seat(s)" in message
    booking.refresh_from_db()
    assert (booking.status, booking.cancel_reason) == (Booking.Status.CANCELLED, Booking.CancelReason.STAFF)
    event = BookingEvent.objects.filter(booking=booking).last()
    assert (event.to_status, event.actor, event.actor_user_id) == ("CANCELLED", "staff", root.pk)
    assert event.note == "Customer's trip called off; refund agreed by phone"
    assert Payment.objects.get(pk=payment.pk).status == Payment.Status.REFUNDED

    # The booking's page: its links, and the history with the refund and the note.
    browser.get(f"{live_server.url}/admin/bookings/booking/{booking.pk}/change/")
    history = find(browser, "#booking-history").text
    assert "refunded 11000.00 INR" in history and "refund agreed by phone" in history
    browser.execute_script("document.body.style.zoom = '0.62'")
    screenshot(browser, "booking-page")


def test_the_cancel_button_on_a_booking_page_leads_to_the_confirmation(signed_in, live_server, paid_booking):
    booking, payment, _ = paid_booking
    page = f"{live_server.url}/admin/bookings/booking/{booking.pk}/change/"
    signed_in.get(page)
    assert not signed_in.find_elements(*_by('input[name="_save"]'))  # View-only.

    find(signed_in, "a.ops-cancel-link").click()

    assert signed_in.current_url == f"{page[: -len('change/')]}cancel/"
    assert f"11000.00 INR (payment {payment.pk})" in find(signed_in, f"#cancel-preview-{booking.pk}").text
    find(signed_in, "a.cancel-link").click()  # Back.
    assert signed_in.current_url == page
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.BOOKED


def test_links_lead_from_a_booking_to_its_flight_and_to_its_payment_and_back(
    signed_in, live_server, root, paid_booking, screenshot
):
    booking, payment, flight = paid_booking
    other = initiated(booking.user, flight, 1)
    flight_update(flight_id=flight.pk, changes={"price": Decimal("6000.00")}, changed_by=root)
    page = f"{live_server.url}/admin/bookings/booking/{booking.pk}/change/"
    signed_in.get(page)

    find(signed_in, f'.field-flight_shown a[href="/admin/flights/flight/{flight.pk}/change/"]').click()
    assert signed_in.current_url == f"{live_server.url}/admin/flights/flight/{flight.pk}/change/"
    listed = find(signed_in, "#flight-bookings").text
    assert booking.reference in listed and other.reference in listed
    assert "totalCost does not change" in find(signed_in, "#flight-has-bookings").text
    assert "price: 5500.00 → 6000.00" in find(signed_in, "#flight-edits").text
    signed_in.execute_script("document.body.style.zoom = '0.62'")
    screenshot(signed_in, "flight-page")
    signed_in.execute_script("document.body.style.zoom = '1'")
    find(signed_in, f'#flight-bookings a[href="/admin/bookings/booking/{booking.pk}/change/"]').click()
    assert signed_in.current_url == page

    find(signed_in, f'a[href="/admin/payments/payment/{payment.pk}/change/"]').click()
    assert signed_in.current_url == f"{live_server.url}/admin/payments/payment/{payment.pk}/change/"
    assert payment.gateway_reference in signed_in.page_source
    find(signed_in, f'.field-booking_shown a[href="/admin/bookings/booking/{booking.pk}/change/"]').click()
    assert signed_in.current_url == page


def test_the_csv_export_downloads_the_selected_bookings(signed_in, live_server, paid_booking, browser_downloads):
    booking, _, flight = paid_booking
    unpaid = initiated(booking.user, flight, 1)
    initiated(booking.user, flight, 1)  # Not selected.
    for old in browser_downloads.glob("bookings-*.csv"):
        old.unlink()
    signed_in.get(f"{live_server.url}/admin/bookings/booking/")

    run_action(signed_in, "export_csv", [booking.pk, unpaid.pk])

    rows = list(csv.reader(_downloaded(browser_downloads, "bookings-*.csv").read_text().splitlines()))
    assert rows[0][:4] == ["id", "reference", "user", "flight id"]
    assert [(row[0], row[1], row[2], row[7]) for row in rows[1:]] == [
        (str(booking.pk), booking.reference, "alice", "BOOKED"),
        (str(unpaid.pk), unpaid.reference, "alice", "INITIATED"),
    ]


def _downloaded(folder: Path, pattern: str, timeout: float = 10.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [path for path in folder.glob(pattern) if not path.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} downloaded into {folder}: {list(folder.iterdir())}")
