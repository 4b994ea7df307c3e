"""Paying at once, many times over: one charge per booking, whatever the interleaving.

Real threads, each with its own database connection and its own API client, send real
HTTP requests through the view, the idempotency layer and the service, on PostgreSQL,
whose row locks and partial unique constraints are what production relies on. The
simulated gateway is slowed down (`PAYMENT_SIMULATED_DELAY_MS`) so that the requests
overlap the charge, the window in which a second charge could slip in.
"""

import threading
import time
from collections import Counter

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings.models import Booking
from payments.models import IdempotencyKey, Payment, SimulatedCharge
from tests.factories import initiated, make_flight
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings, assert_problem, race
from tests.support.api import post_payment

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

THREADS = 50
SLOW_CHARGE_MS = 500


class TestSameKey:
    def test_fifty_requests_with_one_key_charge_once_and_overlap_answers_in_use(self, settings, user, flight):
        settings.PAYMENT_SIMULATED_DELAY_MS = SLOW_CHARGE_MS
        booking = initiated(user, flight, 1)
        token = _token(user)

        responses = race(THREADS, lambda _: post_payment(_client(token), booking, "same-key"))

        print("same key, all at once:", dict(Counter(_outcome(response) for response in responses)))
        payment = _assert_one_paid(booking)
        outcomes = _check_same_key_answers(responses, payment)
        # All fifty left the barrier together and the charge took half a second: they overlapped it.
        assert outcomes[(409, "idempotency_key_in_use", False)] >= 1, outcomes
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)

        # A client that got 409 retries with the same key once the first is done: the stored answer.
        retry = post_payment(_client(token), booking, "same-key")
        assert _outcome(retry) == (201, None, True)
        assert retry.json() == IdempotencyKey.objects.get().response_body
        assert SimulatedCharge.objects.count() == 1

    def test_requests_arriving_after_the_first_finished_are_replays(self, settings, user, flight):
        """Half leave the barrier at once (overlap: 409 in use), half wait until the key holds
        its final answer (so each of them is certainly a replay)."""
        settings.PAYMENT_SIMULATED_DELAY_MS = SLOW_CHARGE_MS
        booking = initiated(user, flight, 1)
        token = _token(user)
        late = THREADS // 2

        def send(index):
            if index >= THREADS - late:
                deadline = time.monotonic() + 10
                while not IdempotencyKey.objects.filter(state=IdempotencyKey.State.COMPLETED).exists():
                    assert time.monotonic() < deadline, "the first request never completed"
                    time.sleep(0.02)
            return post_payment(_client(token), booking, "same-key")

        responses = race(THREADS, send)

        print("same key, half late:", dict(Counter(_outcome(response) for response in responses)))
        payment = _assert_one_paid(booking)
        outcomes = _check_same_key_answers(responses, payment)
        assert all(_outcome(response) == (201, None, True) for response in responses[-late:])
        assert outcomes[(201, None, True)] >= late, outcomes
        assert outcomes[(409, "idempotency_key_in_use", False)] >= 1, outcomes
        assert_money_matches_bookings()


class TestManyKeysOneBooking:
    def test_fifty_keys_for_one_booking_charge_once(self, settings, user, flight):
        settings.PAYMENT_SIMULATED_DELAY_MS = SLOW_CHARGE_MS
        booking = initiated(user, flight, 1)
        token = _token(user)

        responses = race(THREADS, lambda index: post_payment(_client(token), booking, f"key-{index}"))

        outcomes = Counter(_outcome(response) for response in responses)
        print("fifty keys, one booking:", dict(outcomes))
        payment = _assert_one_paid(booking)
        assert outcomes[(201, None, False)] == 1, outcomes
        refusals = {outcome: n for outcome, n in outcomes.items() if outcome != (201, None, False)}
        assert set(refusals) <= {
            (409, "payment_in_progress", False),
            (409, "booking_not_payable", False),
            (409, "resource_busy", False),
        }, outcomes
        assert sum(refusals.values()) == THREADS - 1
        # The charge was slow: the requests that came during it found the booking PENDING.
        assert refusals.get((409, "payment_in_progress", False), 0) >= 1, outcomes
        for index, response in enumerate(responses):
            status, code, _ = _outcome(response)
            if status == 201:
                assert response.json()["id"] == payment.pk
                assert payment.idempotency_key == f"key-{index}"
                continue
            assert_problem(response, 409, code)
            retry_after = {"payment_in_progress": "5", "resource_busy": "1", "booking_not_payable": None}[code]
            assert response.get("Retry-After") == retry_after
        # Only final answers are stored under their keys; "in progress" and "busy" let their key go.
        stored = dict(IdempotencyKey.objects.values_list("key", "response_status"))
        not_payable = refusals.get((409, "booking_not_payable", False), 0)
        assert len(stored) == 1 + not_payable
        assert stored[payment.idempotency_key] == 201
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)


class TestCancelRacingPayment:
    PAYERS = CANCELLERS = 10

    @pytest.mark.parametrize("cancels", ["together", "during_the_charge", "after_the_charge"])
    def test_booking_ends_paid_or_cancelled_and_refunded(self, settings, user, flight, cancels):
        settings.PAYMENT_SIMULATED_DELAY_MS = 200
        booking = initiated(user, flight, 2)
        token = _token(user)
        paid = threading.Event()

        def task(index):
            if index < self.PAYERS:
                response = post_payment(_client(token), booking, f"pay-{index}")
                if response.status_code == 201:
                    paid.set()
                return "pay", response
            if cancels == "during_the_charge":
                deadline = time.monotonic() + 10
                while Booking.objects.filter(pk=booking.pk, status=Booking.Status.INITIATED).exists():
                    assert time.monotonic() < deadline, "no payment started"
                    time.sleep(0.005)
            elif cancels == "after_the_charge":
                assert paid.wait(10), "no payment succeeded"
            return "cancel", _cancel(token, booking)

        answers = race(self.PAYERS + self.CANCELLERS, task)

        pays = [response for kind, response in answers if kind == "pay"]
        cancellations = [response for kind, response in answers if kind == "cancel"]
        pay_outcomes = Counter(_outcome(response) for response in pays)
        cancel_outcomes = Counter(_outcome(response) for response in cancellations)
        print(f"cancel {cancels}: pay {dict(pay_outcomes)} cancel {dict(cancel_outcomes)}")
        assert all(response.status_code < 500 for _, response in answers), pay_outcomes + cancel_outcomes
        assert set(pay_outcomes) <= {
            (201, None, False),
            (409, "payment_in_progress", False),
            (409, "booking_not_payable", False),
            (409, "resource_busy", False),
        }, pay_outcomes
        assert set(cancel_outcomes) <= {
            (200, None, False),
            (409, "payment_in_progress", False),
            (409, "resource_busy", False),
        }, cancel_outcomes
        for response in pays + cancellations:
            if response.status_code >= 400:
                assert_problem(response, response.status_code, response.json()["code"])
        assert pay_outcomes[(201, None, False)] <= 1, pay_outcomes

        booking.refresh_from_db()
        charges = list(SimulatedCharge.objects.all())
        payments = list(Payment.objects.filter(booking=booking))
        assert len(charges) == pay_outcomes[(201, None, False)] <= 1
        if booking.status == Booking.Status.BOOKED:
            # Paid, and every cancel came while the payment was in flight.
            assert cancel_outcomes[(200, None, False)] == 0, cancel_outcomes
            assert [(p.status, c.status) for p, c in zip(payments, charges, strict=True)] == [
                ("SUCCEEDED", "succeeded")
            ]
            assert booking.seats_state == Booking.SeatsState.RESERVED
        else:
            assert booking.status == Booking.Status.CANCELLED
            assert cancel_outcomes[(200, None, False)] >= 1, cancel_outcomes
            assert all(
                response.json()["status"] == "CANCELLED" for response in cancellations if response.status_code == 200
            )
            # Never charged, or charged and then given back once.
            assert [p.status for p in payments] == ["REFUNDED"] * len(charges)
            assert [c.status for c in charges] == ["refunded"] * len(charges)
            assert booking.seats_state == Booking.SeatsState.RELEASED
        if cancels == "after_the_charge":
            # Deterministic: paid first, then ten cancels race to refund it: one refund, all 200.
            assert pay_outcomes[(201, None, False)] == 1
            assert cancel_outcomes == {(200, None, False): self.CANCELLERS}, cancel_outcomes
            assert booking.status == Booking.Status.CANCELLED
            assert charges[0].refund_id and payments[0].refund_reference == charges[0].refund_id
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)


def test_twenty_bookings_paid_in_parallel_all_succeed(settings, user):
    """No false contention: distinct bookings of one customer do not wait for each other."""
    delay_ms, count = 300, 20
    settings.PAYMENT_SIMULATED_DELAY_MS = delay_ms
    flight = make_flight(capacity=count)
    bookings = [initiated(user, flight, 1) for _ in range(count)]
    token = _token(user)

    # The slow charges overlap, so a lock or key shared across bookings would show as 409s.
    responses = race(
        count, lambda index: post_payment(_client(token), bookings[index], f"booking-{bookings[index].pk}")
    )

    assert Counter(_outcome(response) for response in responses) == {(201, None, False): count}
    assert [response.json()["bookingId"] for response in responses] == [booking.pk for booking in bookings]
    assert SimulatedCharge.objects.filter(status="succeeded").count() == count
    assert Payment.objects.filter(status=Payment.Status.SUCCEEDED).count() == count
    assert Booking.objects.filter(status=Booking.Status.BOOKED).count() == count
    assert_money_matches_bookings()
    assert_bookings_match_ledger(flight)


# Helpers ------------------------------------------------------------------------------------


def _token(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def _cancel(token: str, booking: Booking):
    return _client(token).patch(f"/api/v1/bookings/{booking.pk}/cancel", format="json")


def _outcome(response) -> tuple[int, str | None, bool]:
    """(status, problem code or None, replayed?) of a payment answer."""
    code = response.json().get("code") if response.status_code >= 400 else None
    return response.status_code, code, response.get("Idempotent-Replayed") == "true"


def _assert_one_paid(booking: Booking) -> Payment:
    """The booking is BOOKED with exactly one charge at the gateway and one SUCCEEDED payment."""
    booking.refresh_from_db()
    books = {
        "booking": booking.status,
        "charges": Counter(SimulatedCharge.objects.values_list("status", flat=True)),
        "payments": Counter(Payment.objects.filter(booking=booking).values_list("status", flat=True)),
    }
    assert booking.status == Booking.Status.BOOKED, books
    assert SimulatedCharge.objects.count() == 1, books
    assert Payment.objects.filter(booking=booking).count() == 1, books
    payment = Payment.objects.get(booking=booking)
    charge = SimulatedCharge.objects.get()
    assert payment.status == Payment.Status.SUCCEEDED
    assert (charge.reference, charge.status, charge.amount) == (payment.reference, "succeeded", booking.total_cost)
    assert payment.gateway_reference == charge.charge_id
    assert payment.attempts == 1
    return payment


def _check_same_key_answers(responses, payment: Payment) -> Counter:
    """One fresh 201; every other answer a faithful replay of it or 409 `idempotency_key_in_use`."""
    outcomes = Counter(_outcome(response) for response in responses)
    fresh = [response for response in responses if response.status_code == 201 and not _outcome(response)[2]]
    assert len(fresh) == 1, outcomes
    fresh_body = fresh[0].json()
    assert fresh_body["id"] == payment.pk
    assert fresh_body["status"] == "SUCCEEDED"
    assert fresh_body["gatewayReference"] == payment.gateway_reference
    for response in responses:
        if response is fresh[0]:
            continue
        if response.status_code == 201:
            assert response["Idempotent-Replayed"] == "true"
            assert response.json() == fresh_body
        else:
            assert_problem(response, 409, "idempotency_key_in_use")
            assert response["Retry-After"] == "1"
            assert "Idempotent-Replayed" not in response
    assert set(outcomes) <= {(201, None, False), (201, None, True), (409, "idempotency_key_in_use", False)}, outcomes
    assert sum(outcomes.values()) == THREADS
    # The key holds the one final answer, and nothing else was stored.
    key = IdempotencyKey.objects.get()
    assert (key.state, key.response_status, key.response_body) == ("completed", 201, fresh_body)
    return outcomes
