"""Notifications in admin: endpoints registered with the same URL check as the API, deliveries
filtered by state with their attempts, and "retry now"."""

import pytest

from bookings.models import OutboxEvent
from bookings.services import booking_create
from notifications.models import Delivery, WebhookEndpoint
from notifications.services import RETRY_DELAYS
from tests.notifications.conftest import register, run_worker

pytestmark = pytest.mark.django_db(transaction=True)

DELIVERIES = "/admin/notifications/delivery/"


@pytest.fixture
def ops(client, staff_user):
    staff_user.is_superuser = True
    staff_user.save()
    client.force_login(staff_user)
    return client


def failed_delivery(user, flight, receiver, clock) -> Delivery:
    register(receiver.url)
    receiver.always = 500
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()
    for _ in RETRY_DELAYS:
        clock.now = Delivery.objects.get().next_attempt_at
        run_worker()
    delivery = Delivery.objects.get()
    assert delivery.state == Delivery.State.FAILED
    return delivery


def test_an_endpoint_added_in_admin_gets_its_url_checked(ops, settings):
    settings.WEBHOOK_ALLOW_INSECURE = False
    form = {"url": "https://10.0.0.5/hook", "events": ["booking.confirmed"], "description": "", "is_active": "on"}

    refused = ops.post("/admin/notifications/webhookendpoint/add/", form)

    assert refused.status_code == 200
    assert "which is not a public address" in refused.content.decode()
    assert not WebhookEndpoint.objects.exists()
    accepted = ops.post("/admin/notifications/webhookendpoint/add/", {**form, "url": "https://93.184.215.14/hook"})
    assert accepted.status_code == 302
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.events, endpoint.secret[:6]) == (["booking.confirmed"], "whsec_")


def test_deliveries_filter_by_state_and_show_their_attempts(ops, user, flight, receiver, clock):
    failed = failed_delivery(user, flight, receiver, clock)
    receiver.always = 200
    booking_create(user=user, flight_id=flight.pk, seats=2)
    run_worker()

    listed = ops.get(DELIVERIES, {"state__exact": "failed"})

    assert listed.status_code == 200
    assert [row.pk for row in listed.context["cl"].result_list] == [failed.pk]
    page = ops.get(f"{DELIVERIES}{failed.pk}/change/").content.decode()
    assert page.count("HTTP 500") >= 8  # Each attempt, and the last error.
    assert OutboxEvent.objects.get(booking__seats=1).public_id in page  # The body sent.


def test_retry_now_gives_a_failed_delivery_one_more_attempt(ops, user, flight, receiver, clock):
    failed = failed_delivery(user, flight, receiver, clock)
    receiver.always = 200

    response = ops.post(DELIVERIES, {"action": "retry_now", "_selected_action": [failed.pk]}, follow=True)

    assert "1 delivery queued for an attempt now." in response.content.decode()
    run_worker()
    failed.refresh_from_db()
    assert (failed.state, failed.attempts, failed.last_status_code) == (Delivery.State.DELIVERED, 9, 200)
    assert len({request.webhook_id for request in receiver.received}) == 1
