"""A database blip after the gateway has answered (issue: hardening, item 6).

The money is decided once the gateway answers, so the request tries the recording again over
a few seconds (`RECORD_RETRY_DELAYS`) rather than leaving the key claimed until its lease runs
out and the booking PENDING for cleanup. If the database stays down longer, the client is told
the truth: Retry-After says when the key can be taken over, and a retry then resumes the
payment without charging twice.
"""

from __future__ import annotations

import math

import psycopg
import pytest
from django.db import OperationalError, connection

from bookings.models import Booking
from payments import idempotency
from payments import services as payment_services
from payments.gateway import SimulatedPaymentGateway
from payments.models import IdempotencyKey, Payment, SimulatedCharge
from payments.selectors import payment_attempt_window, payment_request_duration
from tests.helpers import assert_problem
from tests.support.api import post_booking, post_payment

pytestmark = pytest.mark.django_db(transaction=True)


def book(client, flight) -> Booking:
    response = post_booking(client, flight, 2)
    assert response.status_code == 201, response.content
    return Booking.objects.get(pk=response.json()["id"])


class KillsItsConnectionAfterCharging(SimulatedPaymentGateway):
    """Charges, then has PostgreSQL terminate the request's own connection, as a restart or a
    failover would: the recording that follows meets a dead connection."""

    def charge(self, **kwargs):
        charge = super().charge(**kwargs)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        settings = connection.settings_dict
        dsn = f"host={settings['HOST']} port={settings['PORT'] or 5432} user={settings['USER']} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        return charge


@pytest.mark.postgres
def test_a_connection_killed_between_charge_and_record_still_answers_201(user_client, flight, monkeypatch):
    booking = book(user_client, flight)
    monkeypatch.setattr(payment_services, "get_payment_gateway", KillsItsConnectionAfterCharging)

    response = post_payment(user_client, booking, "blip-1")

    assert response.status_code == 201, response.content
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.BOOKED
    assert Payment.objects.get().status == Payment.Status.SUCCEEDED
    assert IdempotencyKey.objects.get().state == IdempotencyKey.State.COMPLETED
    assert SimulatedCharge.objects.count() == 1
    replay = post_payment(user_client, booking, "blip-1")
    assert (replay.status_code, replay["Idempotent-Replayed"]) == (201, "true")


@pytest.fixture
def database_down_after_charging():
    """After the charge, every write of the recording and of the key's let-go fails, as while
    the database is down; `undo()` brings it back (and only it: not the test's clock). Counts
    the recording's tries."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(payment_services.payment_selectors, "RECORD_RETRY_DELAYS", (0.01, 0.01, 0.01))
    tries = []

    def down(*args, **kwargs):
        tries.append(1)
        raise OperationalError("server closed the connection unexpectedly")

    def let_go_down(claim):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(payment_services, "_record_charge", down)
    monkeypatch.setattr(idempotency, "_let_go", let_go_down)
    yield monkeypatch, tries
    monkeypatch.undo()


def test_a_longer_outage_says_when_the_key_can_be_taken_over(user_client, flight, clock, database_down_after_charging):
    outage, tries = database_down_after_charging
    booking = book(user_client, flight)
    window = payment_attempt_window().total_seconds()

    response = post_payment(user_client, booking, "blip-2")

    body = assert_problem(response, 503, "service_unavailable")
    assert len(tries) == 4  # The first try and three more.
    assert int(response["Retry-After"]) == math.ceil(window)  # The lease's end: the clock stands still.
    assert "Retry with the same Idempotency-Key" in body["detail"]
    outage.undo()  # The database is back.

    # At once: the request holding the key might still be running, so "soon".
    soon = post_payment(user_client, booking, "blip-2")
    assert_problem(soon, 409, "idempotency_key_in_use")
    assert soon["Retry-After"] == "1"

    # Once that request must have ended: the truth, the lease's end.
    clock.advance(seconds=payment_request_duration().total_seconds())
    later = post_payment(user_client, booking, "blip-2")
    assert_problem(later, 409, "idempotency_key_in_use")
    left = window - payment_request_duration().total_seconds()
    assert int(later["Retry-After"]) == math.ceil(left)

    # Then the retry takes the key over and resumes the payment: charged once.
    clock.advance(seconds=left + 1)
    resumed = post_payment(user_client, booking, "blip-2")
    assert resumed.status_code == 201, resumed.content
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.BOOKED
    assert SimulatedCharge.objects.count() == 1
