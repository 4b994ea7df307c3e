"""Webhooks end to end (docs/design.md#notifications): changes made through the API, the real
worker (`db_worker`) sending them over HTTP to a receiver on a real socket, each request
verified with the Standard Webhooks library."""

import base64
import datetime as dt
import hashlib
import hmac
import json

import pytest
from django.db import transaction
from standardwebhooks import Webhook

from bookings.models import Booking, OutboxEvent
from bookings.services import booking_create
from notifications.models import Delivery, DeliveryAttempt
from notifications.services import RETRY_DELAYS
from tests.notifications.conftest import register, run_worker
from tests.support.cleanup import command

pytestmark = pytest.mark.django_db(transaction=True)

Type = OutboxEvent.Type


def verified(receiver, endpoint) -> list[dict]:
    """Every request the receiver got, checked with the library as a receiver would."""
    return [Webhook(endpoint.secret).verify(request.body, request.headers) for request in receiver.received]


def book(client, flight, seats: int = 2) -> dict:
    response = client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": seats}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def pay(client, booking: dict, key: str = "k1"):
    return client.post(
        "/api/v1/payments",
        {"bookingId": booking["id"], "amount": booking["totalCost"]},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_each_event_type_arrives_signed_with_the_booking_as_get_answers_it(user_client, flight, receiver, settings):
    endpoint = register(receiver.url)
    booking = book(user_client, flight)
    created = user_client.get(f"/api/v1/bookings/{booking['id']}").json()
    run_worker()
    payment = pay(user_client, booking).json()
    payment = user_client.get(f"/api/v1/payments/{payment['id']}").json()
    confirmed = user_client.get(f"/api/v1/bookings/{booking['id']}").json()
    run_worker()
    cancelled = user_client.post(f"/api/v1/bookings/{booking['id']}/cancel").json()
    refunded = user_client.get(f"/api/v1/payments/{payment['id']}").json()
    run_worker()
    settings.BOOKING_HOLD_MINUTES = 0  # Its hold ends at once (the real clock: the library checks the timestamps).
    expiring = book(user_client, flight, 1)
    run_worker()
    command()
    expired = user_client.get(f"/api/v1/bookings/{expiring['id']}").json()
    run_worker()

    bodies = verified(receiver, endpoint)
    assert [body["type"] for body in bodies] == [
        "booking.created",
        "booking.confirmed",
        "payment.refunded",
        "booking.cancelled",
        "booking.created",
        "booking.cancelled",
    ]
    assert [body["data"] for body in bodies[:4]] == [
        {"booking": created, "payment": None},
        {"booking": confirmed, "payment": payment},
        {"booking": cancelled, "payment": refunded},
        {"booking": cancelled, "payment": refunded},
    ]
    assert (bodies[4]["data"]["booking"]["id"], bodies[4]["data"]["booking"]["status"]) == (expiring["id"], "INITIATED")
    assert bodies[5]["data"] == {"booking": expired, "payment": None}
    assert bodies[5]["data"]["booking"]["cancelReason"] == "expired"
    events = list(OutboxEvent.objects.order_by("id"))
    assert [body["id"] for body in bodies] == [event.public_id for event in events]
    assert all(body["id"].startswith("evt_") for body in bodies)
    assert [request.headers["webhook-id"] for request in receiver.received] == [event.public_id for event in events]
    assert {request.headers["content-type"] for request in receiver.received} == {"application/json"}
    assert set(Delivery.objects.values_list("state", flat=True)) == {Delivery.State.DELIVERED}


def test_the_signature_is_the_specifications_hmac_of_id_timestamp_and_body(user, flight, receiver):
    endpoint = register(receiver.url)
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()

    (request,) = receiver.received
    key = base64.b64decode(endpoint.secret.removeprefix("whsec_"))
    assert len(key) >= 24
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.{request.body}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert request.headers["webhook-signature"] == f"v1,{expected}"
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(endpoint.secret).verify(request.body.replace("INITIATED", "BOOKED"), request.headers)


def test_a_500_is_retried_after_5_seconds_with_the_same_webhook_id_and_body(user, flight, receiver, clock):
    endpoint = register(receiver.url)
    receiver.answer(500)
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()

    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == (Delivery.State.PENDING, 1, 500)
    assert delivery.next_attempt_at == clock.now + dt.timedelta(seconds=5)
    run_worker()  # Not due yet: nothing is sent.
    assert len(receiver.received) == 1

    clock.advance(seconds=5)
    run_worker()

    first, second = receiver.received
    assert first.webhook_id == second.webhook_id
    assert first.body == second.body
    verified(receiver, endpoint)
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == (Delivery.State.DELIVERED, 2, 200)
    assert list(DeliveryAttempt.objects.order_by("number").values_list("number", "status_code", "succeeded")) == [
        (1, 500, False),
        (2, 200, True),
    ]


def test_retries_follow_the_schedule_then_the_delivery_is_failed(user, flight, receiver, clock):
    register(receiver.url)
    receiver.always = 503
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()
    waits = []
    for _ in range(7):
        delivery = Delivery.objects.get()
        waits.append(delivery.next_attempt_at - clock.now)
        clock.now = delivery.next_attempt_at
        run_worker()

    assert waits == [
        dt.timedelta(seconds=5),
        dt.timedelta(minutes=5),
        dt.timedelta(minutes=30),
        dt.timedelta(hours=2),
        dt.timedelta(hours=5),
        dt.timedelta(hours=10),
        dt.timedelta(hours=10),
    ]
    assert len(RETRY_DELAYS) == 7
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == (Delivery.State.FAILED, 8, None)
    assert len(receiver.received) == 8
    assert len({request.webhook_id for request in receiver.received}) == 1


def test_an_endpoint_subscribed_to_one_type_gets_only_that_type(user, flight, receiver, second_receiver):
    register(receiver.url, events=["booking.confirmed"])
    register(second_receiver.url)
    from tests.factories import paid

    paid(user, flight)
    run_worker()

    assert receiver.types() == ["booking.confirmed"]
    assert second_receiver.types() == ["booking.created", "booking.confirmed"]


def test_a_change_that_rolls_back_sends_nothing(user, flight, receiver):
    register(receiver.url)

    with pytest.raises(ZeroDivisionError), transaction.atomic():
        booking_create(user=user, flight_id=flight.pk, seats=1)
        1 / 0  # noqa: B018
    booking_create(user=user, flight_id=flight.pk, seats=2)
    run_worker()

    (request,) = receiver.received
    assert json.loads(request.body)["data"]["booking"]["numberOfSeats"] == 2
    assert Booking.objects.count() == OutboxEvent.objects.count() == 1


def test_an_endpoint_gets_the_events_written_after_it_was_registered_only(user, flight, receiver, clock):
    booking_create(user=user, flight_id=flight.pk, seats=1)
    clock.advance(seconds=1)
    register(receiver.url)
    clock.advance(seconds=1)
    booking_create(user=user, flight_id=flight.pk, seats=2)
    run_worker()

    (request,) = receiver.received
    assert json.loads(request.body)["data"]["booking"]["numberOfSeats"] == 2


def test_an_inactive_endpoint_gets_nothing(user, flight, receiver):
    endpoint = register(receiver.url)
    endpoint.is_active = False
    endpoint.save()
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()

    assert receiver.received == []
    assert not Delivery.objects.exists()


def test_an_endpoint_deactivated_after_its_deliveries_were_made_is_sent_nothing(user, flight, receiver, clock):
    endpoint = register(receiver.url)
    receiver.answer(500)
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()
    endpoint.is_active = False
    endpoint.save()

    clock.advance(seconds=5)
    run_worker()

    assert len(receiver.received) == 1  # Only the first attempt, before it was deactivated.
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_error) == (
        Delivery.State.PENDING,
        2,
        "The endpoint is deactivated: not sent.",
    )


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(user, flight, receiver):
    register(receiver.url)
    receiver.answer(307)
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()

    assert [request.path for request in receiver.received] == ["/hook"]  # Never /hook/redirected.
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.last_status_code) == (Delivery.State.PENDING, 307)
    assert delivery.last_error == "Redirects are not followed."


def test_no_answer_within_the_timeout_is_a_failed_attempt(user, flight, receiver, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    register(receiver.url)
    receiver.hold()
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()
    receiver.release()

    attempt = DeliveryAttempt.objects.get()
    assert (attempt.succeeded, attempt.status_code) == (False, None)
    assert attempt.error == "No answer within 0.3 s."
    assert 300 <= attempt.duration_ms < 5000


def test_the_schema_documents_the_body_the_worker_sends(user, flight, receiver, staff_client):
    register(receiver.url)
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()
    (request,) = receiver.received
    body = json.loads(request.body)

    schema = staff_client.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    callback = schema["paths"]["/api/v1/webhooks"]["post"]["callbacks"]["bookingEvent"]["{$request.body#/url}"]
    assert callback["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WebhookEvent"
    }
    event = components["WebhookEvent"]
    assert set(event["properties"]) == set(body) and set(event["required"]) == set(body)
    data = components[event["properties"]["data"]["allOf"][0]["$ref"].split("/")[-1]]
    assert set(data["properties"]) == set(body["data"])
    assert set(components["BookingAnswer"]["properties"]) == set(body["data"]["booking"])
