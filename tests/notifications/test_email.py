"""E-mail to the booking's user (docs/design.md#notifications): confirmed and cancelled, in
plain text and HTML, sent by the worker, recorded, retried when the mail server fails."""

import datetime as dt

import pytest
from django.core import mail

from bookings.models import Booking
from notifications.models import Delivery, DeliveryAttempt
from tests.factories import initiated, paid
from tests.helpers import closed_port
from tests.notifications.conftest import run_worker
from tests.support.cleanup import command
from workflows.services import booking_cancel

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def customer(user):
    user.email = "alice@example.com"
    user.save()
    return user


def test_a_confirmed_booking_is_emailed_in_text_and_html(customer, flight):
    booking, payment, _ = paid(customer, flight, 2)
    run_worker()

    (message,) = mail.outbox
    assert message.to == ["alice@example.com"]
    assert message.subject == f"Booking {booking.pk} confirmed: 2 seats on flight {flight.pk}"
    assert f"Your booking {booking.pk} is confirmed." in message.body
    assert f"Paid:    {payment.amount} {payment.currency}" in message.body
    ((html, kind),) = message.alternatives
    assert kind == "text/html"
    assert f"<h1>Your booking {booking.pk} is confirmed</h1>" in html
    assert message.extra_headers["X-Event-Id"].startswith("evt_")
    delivery = Delivery.objects.get(channel=Delivery.Channel.EMAIL)
    assert (delivery.state, delivery.recipient, delivery.attempts) == (Delivery.State.DELIVERED, "alice@example.com", 1)


def test_a_cancelled_paid_booking_says_what_was_refunded(customer, flight):
    booking, payment, _ = paid(customer, flight, 2)
    booking_cancel(booking_id=booking.pk, reason=Booking.CancelReason.USER)
    run_worker()

    _confirmed, cancelled = mail.outbox
    assert cancelled.subject == f"Booking {booking.pk} cancelled: {payment.amount} {payment.currency} refunded"
    assert f"Your booking {booking.pk} is cancelled: you cancelled it." in cancelled.body
    assert f"Refunded: {payment.amount} {payment.currency}, to the card you paid with" in cancelled.body
    assert f"{payment.amount} {payment.currency}, to the card you paid with" in cancelled.alternatives[0][0]


def test_an_unpaid_booking_that_expired_says_nothing_was_charged(customer, flight, clock):
    booking = initiated(customer, flight)
    clock.advance(hours=1)
    command()
    run_worker()

    (message,) = mail.outbox  # booking.created is not e-mailed.
    assert message.subject == f"Booking {booking.pk} cancelled"
    assert "it was not paid before its seats' hold ended" in message.body
    assert "Refunded: nothing (nothing was charged)" in message.body


def test_a_user_without_an_address_gets_no_mail_and_no_delivery(user, flight):
    paid(user, flight)
    run_worker()

    assert mail.outbox == []
    assert not Delivery.objects.filter(channel=Delivery.Channel.EMAIL).exists()


def test_a_mail_server_that_fails_is_tried_again_on_the_schedule(customer, flight, clock, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 1
    paid(customer, flight)
    run_worker()

    attempt = DeliveryAttempt.objects.get()
    assert not attempt.succeeded
    assert "ConnectionRefusedError" in attempt.error
    delivery = attempt.delivery
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == clock.now + dt.timedelta(seconds=5)

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    clock.advance(seconds=5)
    run_worker()

    assert len(mail.outbox) == 1
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == (Delivery.State.DELIVERED, 2)
