"""Payments over the `http` gateway adapter (`payments.gateway.HttpPaymentGateway`).

The remote payment gateway is `FakeGateway` (`tests.support.payment_gateway`), a small
stateful implementation of the HTTP gateway's contract (docs/design.md#payments-exactly-once): charges by id, by
idempotency key and by reference, and refunds. It is used two ways:

- served over real HTTP by a `ThreadingHTTPServer` on 127.0.0.1 (`served_gateway` fixture): the
  end-to-end tests go test client -> payment view -> requests -> socket -> stub, with no
  `responses` anywhere;
- as `responses` callbacks (`mocked(...)`), where each endpoint first plays a scripted
  fault (a timeout after or before the charge was applied, a refused connection, a 5xx,
  a garbage body, ...) and then answers as the healthy gateway does.

Nothing in the project is mocked; the only fakes are the gateway and the network. After
every scenario the money side of the invariants (docs/design.md#invariants) is checked against the stub's own books
(`assert_money_matches_bookings(standing=fake.standing())`), and the seat side against
the flights ledger.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import pytest
import requests

from bookings_project.exceptions import PaymentGatewayUnavailable
from payments.gateway import HttpPaymentGateway, get_payment_gateway
from payments.models import Payment
from tests.helpers import (
    assert_bookings_match_ledger,
    assert_money_matches_bookings,
    assert_problem,
    seats_left,
    states,
)
from tests.support import http_faults
from tests.support.api import patch_cancel, post_booking, post_payment
from tests.support.payment_gateway import (
    MOCK_BASE,
    PREFIX,
    TOKEN,
    FakeGateway,
    answers,
    close_gateway,
    dead_url,
    lost,
    mocked,
    serving,
    tampered,
)

SEATS = 2
TOTAL = "11000.00"  # 2 seats x 5500.00, the `flight` fixture's price.
CAPACITY = 20

pytestmark = pytest.mark.usefixtures("fresh_gateway_cache")


# 1. End to end over real HTTP ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_pay_replay_refund_and_look_up_over_real_http(served_gateway, fake, user_client, flight):
    booking = book(user_client, flight)

    paid = post_payment(user_client, booking["id"], "client-key-1", TOTAL, HTTP_X_REQUEST_ID="trace-pay-1")

    assert paid.status_code == 201, paid.content
    body = paid.json()
    payment = Payment.objects.get()
    assert (body["id"], body["status"], body["amount"], body["currency"]) == (payment.pk, "SUCCEEDED", TOTAL, "INR")
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    (charge_request,) = fake.seen("POST", "charge")
    assert charge_request.status == 201
    assert charge_request.headers["authorization"] == f"Bearer {TOKEN}"
    assert charge_request.headers["idempotency-key"] == payment.reference
    assert charge_request.headers["x-request-id"] == "trace-pay-1"
    assert charge_request.body == {"amount": TOTAL, "currency": "INR", "reference": payment.reference}
    (charge,) = fake.charges.values()
    assert (charge["status"], charge["amount"], charge["reference"]) == (
        "succeeded",
        TOTAL,
        payment.reference,
    )
    assert body["gatewayReference"] == payment.gateway_reference == charge["id"]
    assert fake.standing() == {payment.reference}
    assert seats_left(flight) == CAPACITY - SEATS
    assert_consistent(fake, flight)

    # The same client key replays the answer: the gateway hears nothing.
    replay = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == body
    assert len(fake.received) == 1
    assert Payment.objects.count() == 1

    # Reconciliation's look-up finds the charge by our reference, and nothing for another.
    gateway = get_payment_gateway()
    found = gateway.find_charge(reference=payment.reference)
    assert (found.gateway_reference, found.status, found.amount, found.currency) == (
        charge["id"],
        "succeeded",
        Decimal(TOTAL),
        "INR",
    )
    assert gateway.find_charge(reference="pay_nobody") is None
    lookups = fake.seen("GET", "lookup")
    assert [r.query for r in lookups] == [{"reference": [payment.reference]}, {"reference": ["pay_nobody"]}]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" and r.headers["x-request-id"] for r in lookups)

    # Cancelling refunds first, with the refund key, then gives the seats back.
    cancelled = patch_cancel(user_client, booking["id"], HTTP_X_REQUEST_ID="trace-cancel-1")

    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["status"] == "CANCELLED"
    (refund_request,) = fake.seen("POST", "refund")
    assert refund_request.path == f"{PREFIX}/charges/{charge['id']}/refunds"
    assert refund_request.headers["idempotency-key"] == f"refund-{payment.reference}"
    assert refund_request.headers["authorization"] == f"Bearer {TOKEN}"
    assert refund_request.headers["x-request-id"] == "trace-cancel-1"
    assert refund_request.body == {"amount": TOTAL}
    (refund,) = fake.refunds.values()
    payment.refresh_from_db()
    assert (payment.status, payment.refund_reference) == (Payment.Status.REFUNDED, refund["id"])
    assert states(booking["id"]) == ("CANCELLED", ["REFUNDED"])
    assert fake.standing() == set()
    assert seats_left(flight) == CAPACITY
    assert_consistent(fake, flight)

    # Cancelling again is a no-op: no second refund is even asked for.
    again = patch_cancel(user_client, booking["id"])

    assert again.status_code == 200
    assert again.json()["status"] == "CANCELLED"
    assert len(fake.seen("POST", "refund")) == 1
    assert seats_left(flight) == CAPACITY
    assert_consistent(fake, flight)


@pytest.mark.django_db(transaction=True)
def test_charge_applied_but_answer_too_late_over_real_http(served_gateway, fake, user_client, flight):
    booking = book(user_client, flight)
    fake.late_answers = [1.5]  # Three times the read timeout: the socket times out for real.

    started = time.monotonic()
    response = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

    assert time.monotonic() - started < 1.4  # Gave up at the read timeout, did not wait.
    assert_unavailable(response)
    assert states(booking["id"]) == ("PENDING", ["PROCESSING"])
    payment = Payment.objects.get()
    assert fake.standing() == {payment.reference}  # Charged, though we do not know it yet.
    assert seats_left(flight) == CAPACITY - SEATS
    assert_consistent(fake, flight)

    retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

    assert retried.status_code == 201, retried.content
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    payment.refresh_from_db()
    assert payment.attempts == 2
    charge_requests = fake.seen("POST", "charge")
    assert [r.status for r in charge_requests] == [201, 200]  # The repeat answered the first charge.
    assert {r.headers["idempotency-key"] for r in charge_requests} == {payment.reference}
    (charge,) = fake.charges.values()
    assert payment.gateway_reference == charge["id"]
    assert_consistent(fake, flight)


@pytest.mark.django_db(transaction=True)
def test_gateway_refusing_connections_then_back_over_real_http(served_gateway, fake, point_at, user_client, flight):
    booking = book(user_client, flight)
    point_at(dead_url())

    response = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

    assert_unavailable(response)
    assert states(booking["id"]) == ("INITIATED", ["FAILED"])  # Never arrived: definitely not charged.
    assert fake.received == []
    assert_consistent(fake, flight)

    point_at(served_gateway)
    retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

    assert retried.status_code == 201, retried.content
    assert states(booking["id"]) == ("BOOKED", ["FAILED", "SUCCEEDED"])  # A new payment.
    succeeded = Payment.objects.get(status=Payment.Status.SUCCEEDED)
    assert [r.headers["idempotency-key"] for r in fake.seen("POST", "charge")] == [succeeded.reference]
    assert len(fake.charges) == 1
    assert_consistent(fake, flight)


@pytest.mark.django_db(transaction=True)
def test_wrong_token_is_refused_by_the_gateway_over_real_http(served_gateway, fake, point_at, user_client, flight):
    booking = book(user_client, flight)
    point_at(served_gateway, token="not-the-secret")
    wrong = get_payment_gateway()

    response = post_payment(user_client, booking["id"], "client-key-1", TOTAL)
    close_gateway(wrong)

    assert_unavailable(response)
    (refused,) = fake.received
    assert (refused.status, refused.headers["authorization"]) == (401, "Bearer not-the-secret")
    assert states(booking["id"]) == ("INITIATED", ["FAILED"])
    assert fake.charges == {}

    point_at(served_gateway)
    retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

    assert retried.status_code == 201, retried.content
    assert states(booking["id"]) == ("BOOKED", ["FAILED", "SUCCEEDED"])
    assert len(fake.charges) == 1
    assert_consistent(fake, flight)


# 2. Charge faults: the outcome is unknown ------------------------------------------------------

UNKNOWN_OUTCOMES = [
    pytest.param(
        lost(requests.exceptions.ReadTimeout("read timed out"), applied=True), True, id="timeout-after-charge"
    ),
    pytest.param(lost(requests.exceptions.ReadTimeout("read timed out"), applied=False), False, id="timeout-before"),
    pytest.param(answers(500, {"error": "boom"}, applied=True), True, id="500-charged"),
    pytest.param(answers(500, {"error": "boom"}, applied=False), False, id="500-not-charged"),
    pytest.param(answers(502, "Bad Gateway", applied=True, content_type="text/html"), True, id="502-charged"),
    pytest.param(answers(502, "Bad Gateway", applied=False, content_type="text/html"), False, id="502-not-charged"),
    pytest.param(answers(503, {"error": "down"}, applied=True), True, id="503-charged"),
    pytest.param(answers(503, {"error": "down"}, applied=False), False, id="503-not-charged"),
    pytest.param(answers(200, "<html>ok</html>", applied=True, content_type="text/html"), True, id="200-not-json"),
    pytest.param(answers(200, {"ok": True}, applied=True), True, id="200-json-without-id-and-status"),
    pytest.param(answers(201, ["ch_1"], applied=True), True, id="201-json-not-an-object"),
    pytest.param(tampered(amount="1.00"), True, id="200-another-amount"),
    pytest.param(tampered(currency="USD"), True, id="200-another-currency"),
    pytest.param(tampered(status="pending"), True, id="200-unknown-status"),
    pytest.param(answers(409, {"error": "request_in_flight"}, applied=True), True, id="409-in-flight"),
    pytest.param(answers(429, {"error": "slow_down"}, applied=False), False, id="429"),
    pytest.param(answers(408, {"error": "timeout"}, applied=False), False, id="408"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("fault", "charged"), UNKNOWN_OUTCOMES)
def test_unknown_charge_outcome_stays_pending_and_the_same_key_charges_once(
    mock_gateway, fake, user_client, flight, fault, charged
):
    booking = book(user_client, flight)
    gateway = mocked(fake, charge=(fault,))

    with gateway.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL)
        assert gateway.charge.call_count == 1  # One API call, one charge request: never resent by the adapter.
        assert_unavailable(response)
        assert states(booking["id"]) == ("PENDING", ["PROCESSING"])
        payment = Payment.objects.get()
        assert payment.failure_reason  # The error is kept for ops.
        assert fake.standing() == ({payment.reference} if charged else set())
        assert seats_left(flight) == CAPACITY - SEATS
        assert_consistent(fake, flight)

        # The gateway is healthy again: the client retries with the same key.
        retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

        assert gateway.charge.call_count == 2
        assert retried.status_code == 201, retried.content
        assert "Idempotent-Replayed" not in retried

    assert retried.json()["id"] == payment.pk  # The same payment, resumed.
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    payment.refresh_from_db()
    assert payment.attempts == 2
    sent = [call.request.headers["Idempotency-Key"] for call in gateway.charge.calls]
    assert sent == [payment.reference, payment.reference]
    (charge,) = fake.charges.values()  # The gateway deduplicated by the forwarded key.
    assert (charge["status"], charge["reference"]) == ("succeeded", payment.reference)
    assert payment.gateway_reference == charge["id"]
    # The retry is answered by the first charge if it was applied, else it makes it.
    assert fake.seen("POST", "charge")[-1].status == (200 if charged else 201)
    assert seats_left(flight) == CAPACITY - SEATS
    assert_consistent(fake, flight)

    # A further retry with the same key replays the stored answer without asking the gateway.
    with mocked(fake).rsps as rsps:
        replay = post_payment(user_client, booking["id"], "client-key-1", TOTAL)
        assert len(rsps.calls) == 0
    assert (replay.status_code, replay["Idempotent-Replayed"]) == (201, "true")
    assert len(fake.charges) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "second_fault",
    [
        lost(http_faults.refused(), applied=False),
        answers(401, {"error": "invalid_token"}, applied=False),
    ],
    ids=["then-refused", "then-401"],
)
def test_a_definite_failure_on_a_resumed_attempt_cannot_clear_an_earlier_charge(
    mock_gateway, fake, user_client, flight, second_fault
):
    booking = book(user_client, flight)
    first_fault = lost(requests.exceptions.ReadTimeout("read timed out"), applied=True)
    gateway = mocked(fake, charge=(first_fault, second_fault))

    with gateway.rsps:
        assert_unavailable(post_payment(user_client, booking["id"], "client-key-1", TOTAL))
        # The retry does not reach the gateway (or is refused): that says nothing about the
        # first attempt, which did charge. The payment must stay open, not FAILED.
        assert_unavailable(post_payment(user_client, booking["id"], "client-key-1", TOTAL))

        assert gateway.charge.call_count == 2
        assert states(booking["id"]) == ("PENDING", ["PROCESSING"])
        payment = Payment.objects.get()
        assert fake.standing() == {payment.reference}
        assert_consistent(fake, flight)

        retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

        assert gateway.charge.call_count == 3

    assert retried.status_code == 201, retried.content
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    payment.refresh_from_db()
    assert payment.attempts == 3
    assert len(fake.charges) == 1
    assert_consistent(fake, flight)


# 3. Charge faults: definitely not charged ------------------------------------------------------

NOT_CHARGED = [
    pytest.param(lost(http_faults.refused(), applied=False), id="refused"),
    pytest.param(lost(requests.exceptions.ConnectTimeout("connect timed out"), applied=False), id="connect-timeout"),
    pytest.param(answers(401, {"error": "invalid_token"}, applied=False), id="401-bad-token"),
    pytest.param(answers(400, {"error": "bad_request"}, applied=False), id="400"),
    pytest.param(answers(403, {"error": "forbidden"}, applied=False), id="403"),
    pytest.param(answers(404, {"error": "not_found"}, applied=False), id="404"),
    pytest.param(answers(422, {"error": "unprocessable"}, applied=False), id="422"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("fault", NOT_CHARGED)
def test_definite_failure_frees_the_booking_and_a_retry_pays_with_a_new_payment(
    mock_gateway, fake, user_client, flight, fault
):
    booking = book(user_client, flight)
    gateway = mocked(fake, charge=(fault,))

    with gateway.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL)
        assert gateway.charge.call_count == 1
        assert_unavailable(response)
        assert states(booking["id"]) == ("INITIATED", ["FAILED"])
        failed = Payment.objects.get()
        assert failed.failure_reason
        assert fake.charges == {}
        assert seats_left(flight) == CAPACITY - SEATS
        assert_consistent(fake, flight)

        retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

        assert gateway.charge.call_count == 2
        assert retried.status_code == 201, retried.content

    assert states(booking["id"]) == ("BOOKED", ["FAILED", "SUCCEEDED"])
    succeeded = Payment.objects.get(status=Payment.Status.SUCCEEDED)
    assert retried.json()["id"] == succeeded.pk != failed.pk
    sent = [call.request.headers["Idempotency-Key"] for call in gateway.charge.calls]
    assert sent == [failed.reference, succeeded.reference]
    (charge,) = fake.charges.values()
    assert (charge["reference"], succeeded.gateway_reference) == (succeeded.reference, charge["id"])
    assert_consistent(fake, flight)


# 4. Declines -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("decline", ["402", "200"], ids=["402", "200-status-declined"])
def test_decline_answers_402_replays_it_and_a_new_key_pays(mock_gateway, fake, user_client, flight, decline):
    booking = book(user_client, flight)
    fake.decline = decline
    gateway = mocked(fake)

    with gateway.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

        assert gateway.charge.call_count == 1
        body = assert_problem(response, 402, "payment_declined")
        assert "Insufficient funds." in body["detail"]
        assert states(booking["id"]) == ("INITIATED", ["DECLINED"])
        declined = Payment.objects.get()
        assert declined.failure_reason == "Insufficient funds."
        assert fake.standing() == set()
        assert_consistent(fake, flight)

        # The same key replays the decline, even though the gateway would now approve.
        fake.decline = None
        replay = post_payment(user_client, booking["id"], "client-key-1", TOTAL)

        assert gateway.charge.call_count == 1
        assert replay["Idempotent-Replayed"] == "true"
        assert replay.json() == body
        assert states(booking["id"]) == ("INITIATED", ["DECLINED"])

        # A new key is a new payment, and pays.
        paid = post_payment(user_client, booking["id"], "client-key-2", TOTAL)

        assert gateway.charge.call_count == 2

    assert paid.status_code == 201, paid.content
    assert states(booking["id"]) == ("BOOKED", ["DECLINED", "SUCCEEDED"])
    succeeded = Payment.objects.get(status=Payment.Status.SUCCEEDED)
    assert sorted(c["status"] for c in fake.charges.values()) == ["declined", "succeeded"]
    assert fake.standing() == {succeeded.reference}
    assert seats_left(flight) == CAPACITY - SEATS
    assert_consistent(fake, flight)


# 5. Refund faults --------------------------------------------------------------------------------

REFUND_FAULTS = [
    pytest.param(
        lost(requests.exceptions.ReadTimeout("read timed out"), applied=True), True, id="timeout-after-refund"
    ),
    pytest.param(lost(requests.exceptions.ReadTimeout("read timed out"), applied=False), False, id="timeout-before"),
    pytest.param(lost(http_faults.refused(), applied=False), False, id="refused"),
    pytest.param(answers(500, {"error": "boom"}, applied=True), True, id="500-refunded"),
    pytest.param(answers(502, "Bad Gateway", applied=False, content_type="text/html"), False, id="502"),
    pytest.param(answers(503, {"error": "down"}, applied=False), False, id="503"),
    pytest.param(answers(200, "<html>ok</html>", applied=True, content_type="text/html"), True, id="200-not-json"),
    pytest.param(answers(401, {"error": "invalid_token"}, applied=False), False, id="401"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("fault", "refunded"), REFUND_FAULTS)
def test_refund_fault_keeps_the_booking_booked_and_a_second_cancel_refunds_once(
    mock_gateway, fake, user_client, flight, fault, refunded
):
    booking = book(user_client, flight)
    gateway = mocked(fake, refund=(fault,))

    with gateway.rsps:
        assert post_payment(user_client, booking["id"], "client-key-1", TOTAL).status_code == 201
        payment = Payment.objects.get()

        response = patch_cancel(user_client, booking["id"])

        assert gateway.refund.call_count == 1
        assert_unavailable(response)
        assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
        assert seats_left(flight) == CAPACITY - SEATS  # Still held: nothing was cancelled.
        assert_bookings_match_ledger(flight)
        assert len(fake.refunds) == (1 if refunded else 0)
        if not refunded:
            assert_money_matches_bookings(standing=fake.standing())
        # (If the gateway refunded but its answer was lost, the books disagree until the retry.)

        again = patch_cancel(user_client, booking["id"])

        assert gateway.refund.call_count == 2

    assert again.status_code == 200, again.content
    assert again.json()["status"] == "CANCELLED"
    assert states(booking["id"]) == ("CANCELLED", ["REFUNDED"])
    sent = [call.request.headers["Idempotency-Key"] for call in gateway.refund.calls]
    assert sent == [f"refund-{payment.reference}"] * 2
    (refund,) = fake.refunds.values()  # One refund, whether the first try reached the gateway or not.
    payment.refresh_from_db()
    assert payment.refund_reference == refund["id"]
    assert fake.seen("POST", "refund")[-1].status == (200 if refunded else 201)
    assert fake.standing() == set()
    assert seats_left(flight) == CAPACITY
    assert_consistent(fake, flight)


# 6. The adapter on its own: reading answers ------------------------------------------------------


@pytest.fixture
def adapter():
    gateway = HttpPaymentGateway(base_url=MOCK_BASE + "/", token=TOKEN, timeout=0.5)
    yield gateway
    close_gateway(gateway)


def charge_with(gateway: HttpPaymentGateway, reference: str = "pay_abc"):
    return gateway.charge(amount=Decimal(TOTAL), currency="INR", reference=reference, idempotency_key=reference)


def test_adapter_sends_the_contract_and_reads_a_charge(adapter, fake):
    with mocked(fake).rsps as rsps:
        charge = charge_with(adapter)
        (call,) = rsps.calls

    assert call.request.url == f"{MOCK_BASE}/charges"
    assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert call.request.headers["Idempotency-Key"] == "pay_abc"
    assert re.fullmatch(r"[0-9a-f]{32}", call.request.headers["X-Request-ID"])  # Outside a request: a fresh id.
    assert json.loads(call.request.body) == {"amount": TOTAL, "currency": "INR", "reference": "pay_abc"}
    (stored,) = fake.charges.values()
    assert (charge.gateway_reference, charge.status, charge.amount, charge.currency) == (
        stored["id"],
        "succeeded",
        Decimal(TOTAL),
        "INR",
    )
    assert charge.money_taken


GARBAGE_CHARGES = [
    pytest.param(200, "<html>ok</html>", id="not-json"),
    pytest.param(200, "", id="empty"),
    pytest.param(201, [], id="a-list"),
    pytest.param(200, {"amount": TOTAL, "currency": "INR"}, id="no-id-no-status"),
    pytest.param(200, {"status": "succeeded", "amount": TOTAL, "currency": "INR"}, id="no-id"),
    pytest.param(200, {"id": "ch_1", "amount": TOTAL, "currency": "INR"}, id="no-status"),
    pytest.param(200, {"id": "ch_1", "status": "pending", "amount": TOTAL, "currency": "INR"}, id="unknown-status"),
    pytest.param(200, {"id": 7, "status": "succeeded", "amount": TOTAL, "currency": "INR"}, id="id-not-a-string"),
    pytest.param(200, {"id": "ch_1", "status": "succeeded", "currency": "INR"}, id="no-amount"),
    pytest.param(200, {"id": "ch_1", "status": "succeeded", "amount": "lots", "currency": "INR"}, id="bad-amount"),
    pytest.param(200, {"id": "ch_1", "status": "succeeded", "amount": "NaN", "currency": "INR"}, id="nan-amount"),
    pytest.param(200, {"id": "ch_1", "status": "succeeded", "amount": TOTAL}, id="no-currency"),
    pytest.param(200, {"id": "ch_1", "status": "succeeded", "amount": "1.00", "currency": "INR"}, id="other-amount"),
    pytest.param(200, {"id": "ch_1", "status": "succeeded", "amount": TOTAL, "currency": "USD"}, id="other-currency"),
]


@pytest.mark.parametrize(("status", "body"), GARBAGE_CHARGES)
def test_adapter_garbage_charge_answer_is_an_unknown_outcome(adapter, fake, status, body):
    gateway = mocked(fake, charge=(answers(status, body, applied=False),))
    with gateway.rsps, pytest.raises(PaymentGatewayUnavailable) as raised:
        charge_with(adapter)

    assert raised.value.maybe_charged is True
    assert gateway.charge.call_count == 1


@pytest.mark.parametrize(
    ("status", "maybe_charged"),
    [
        *((status, False) for status in (400, 401, 403, 404, 422)),  # The gateway refused our request.
        *((status, True) for status in (408, 409, 429, 500, 502, 503, 504)),  # Unclear.
    ],
)
def test_adapter_error_statuses_are_refusals_or_unknown_and_never_resent(adapter, fake, status, maybe_charged):
    gateway = mocked(fake, charge=(answers(status, {"error": "x"}, applied=False),))
    with gateway.rsps, pytest.raises(PaymentGatewayUnavailable) as raised:
        charge_with(adapter)

    assert raised.value.maybe_charged is maybe_charged
    assert gateway.charge.call_count == 1  # A POST is never retried by the adapter, not even on 502/503/504.


@pytest.mark.parametrize(
    ("error", "maybe_charged"),
    [
        (http_faults.refused(), False),
        (requests.exceptions.ConnectTimeout("connect timed out"), False),
        (requests.exceptions.ReadTimeout("read timed out"), True),
        (requests.exceptions.ConnectionError("Connection reset by peer"), True),  # Dropped mid-answer.
    ],
    ids=["refused", "connect-timeout", "read-timeout", "reset"],
)
def test_adapter_network_failures(adapter, fake, error, maybe_charged):
    gateway = mocked(fake, charge=(lost(error, applied=False),))
    with gateway.rsps, pytest.raises(PaymentGatewayUnavailable) as raised:
        charge_with(adapter)

    assert raised.value.maybe_charged is maybe_charged
    assert gateway.charge.call_count == 1


def test_adapter_real_refused_connection_is_not_charged():
    gateway = HttpPaymentGateway(base_url=dead_url(), token=TOKEN, timeout=0.5)
    try:
        with pytest.raises(PaymentGatewayUnavailable) as raised:
            charge_with(gateway)
    finally:
        close_gateway(gateway)

    assert raised.value.maybe_charged is False


def test_adapter_real_401_from_the_stub_is_not_charged(fake):
    fake.token = "rotated"  # The gateway no longer accepts our token.
    with serving(fake) as base:
        gateway = HttpPaymentGateway(base_url=base, token=TOKEN, timeout=0.5)
        try:
            with pytest.raises(PaymentGatewayUnavailable) as raised:
                charge_with(gateway)
        finally:
            close_gateway(gateway)

    assert raised.value.maybe_charged is False
    assert [r.status for r in fake.received] == [401]
    assert fake.charges == {}


@pytest.mark.parametrize(
    "body",
    [{"status": "declined", "declineReason": "Card expired."}, "<html>declined</html>"],
    ids=["json", "not-json"],
)
def test_adapter_402_is_a_decline_whatever_the_body(adapter, fake, body):
    content_type = "application/json" if isinstance(body, dict) else "text/html"
    gateway = mocked(fake, charge=(answers(402, body, applied=False, content_type=content_type),))
    with gateway.rsps:
        charge = charge_with(adapter)

    assert (charge.status, charge.money_taken, charge.gateway_reference) == ("declined", False, "")
    assert charge.decline_reason == ("Card expired." if isinstance(body, dict) else "Declined by the payment gateway.")


def test_adapter_repeat_key_answers_the_first_charge(adapter, fake):
    with mocked(fake).rsps:
        first = charge_with(adapter)
        second = charge_with(adapter)

    assert first == second
    assert [r.status for r in fake.seen("POST", "charge")] == [201, 200]
    assert len(fake.charges) == 1


# Look-ups are retried on 502/503/504 only, twice at most (3 calls).


@pytest.mark.parametrize(("status", "calls"), [(502, 3), (503, 3), (504, 3), (500, 1)])
def test_adapter_look_up_retries_are_bounded(adapter, fake, status, calls):
    failing = answers(status, {"error": "x"}, applied=False)
    gateway = mocked(fake, lookup=(failing,) * 5)
    with gateway.rsps, pytest.raises(PaymentGatewayUnavailable) as raised:
        adapter.find_charge(reference="pay_abc")

    assert gateway.lookup.call_count == calls
    assert raised.value.maybe_charged is False  # A look-up moves no money.


def test_adapter_look_up_recovers_within_its_retries(adapter, fake):
    with mocked(fake).rsps:
        made = charge_with(adapter)
    unavailable = answers(503, {"error": "down"}, applied=False)
    gateway = mocked(fake, lookup=(unavailable, unavailable))
    with gateway.rsps:
        found = adapter.find_charge(reference="pay_abc")

    assert gateway.lookup.call_count == 3
    assert found == made
    assert gateway.lookup.calls[-1].request.url == f"{MOCK_BASE}/charges?reference=pay_abc"


@pytest.mark.parametrize(
    "body",
    ["<html></html>", {"charges": []}, {"data": {"id": "ch_1"}}, {"data": [{"id": "ch_1", "status": "weird"}]}],
    ids=["not-json", "no-data", "data-not-a-list", "bad-charge"],
)
def test_adapter_look_up_garbage_raises(adapter, fake, body):
    gateway = mocked(fake, lookup=(answers(200, body, applied=False),))
    with gateway.rsps, pytest.raises(PaymentGatewayUnavailable):
        adapter.find_charge(reference="pay_abc")
    assert gateway.lookup.call_count == 1


def test_adapter_look_up_prefers_the_charge_that_took_money(adapter, fake):
    with mocked(fake).rsps:
        fake.decline = "200"
        declined = adapter.charge(amount=Decimal(TOTAL), currency="INR", reference="pay_abc", idempotency_key="k1")
        fake.decline = None
        taken = adapter.charge(amount=Decimal(TOTAL), currency="INR", reference="pay_abc", idempotency_key="k2")
        found = adapter.find_charge(reference="pay_abc")
        nothing = adapter.find_charge(reference="pay_other")

    assert declined.status == "declined" and taken.status == "succeeded"
    assert found == taken
    assert nothing is None


def _paid(reference: str, charge_id: str) -> Payment:
    return Payment(reference=reference, gateway_reference=charge_id, amount=Decimal(TOTAL), currency="INR")


def test_adapter_refund_once_per_key(adapter, fake):
    with mocked(fake).rsps as rsps:
        charge = charge_with(adapter)
        first = adapter.refund(payment=_paid("pay_abc", charge.gateway_reference))
        second = adapter.refund(payment=_paid("pay_abc", charge.gateway_reference))
        refund_calls = [c for c in rsps.calls if c.request.url.endswith("/refunds")]

    assert first == second
    assert first.refund_reference == next(iter(fake.refunds.values()))["id"]
    assert [json.loads(c.request.body) for c in refund_calls] == [{"amount": TOTAL}] * 2
    assert [c.request.headers["Idempotency-Key"] for c in refund_calls] == ["refund-pay_abc"] * 2
    assert [r.status for r in fake.seen("POST", "refund")] == [201, 200]


@pytest.mark.parametrize(
    ("status", "body", "maybe_charged"),
    [
        (200, {"id": "re_1", "status": "pending", "charge": "ch_1"}, True),
        (201, {"status": "succeeded"}, True),
        (200, "<html></html>", True),
        (500, {"error": "boom"}, True),
        (404, {"error": "no_such_charge"}, False),
        (401, {"error": "invalid_token"}, False),
    ],
    ids=["pending", "no-id", "not-json", "500", "404", "401"],
)
def test_adapter_refund_without_a_confirmed_refund_raises(adapter, fake, status, body, maybe_charged):
    gateway = mocked(fake, refund=(answers(status, body, applied=False),))
    with gateway.rsps, pytest.raises(PaymentGatewayUnavailable) as raised:
        adapter.refund(payment=_paid("pay_abc", "ch_1"))

    assert raised.value.maybe_charged is maybe_charged
    assert gateway.refund.call_count == 1  # Never resent by the adapter.


# API helpers ---------------------------------------------------------------------------------


def book(client, flight) -> dict:
    response = post_booking(client, flight, SEATS)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["totalCost"]) == ("INITIATED", TOTAL)
    return body


def assert_unavailable(response) -> None:
    assert_problem(response, 503, "payment_gateway_unavailable")
    assert response["Retry-After"] == "5"
    assert "Idempotent-Replayed" not in response


def assert_consistent(fake: FakeGateway, flight) -> None:
    assert_money_matches_bookings(standing=fake.standing())
    assert_bookings_match_ledger(flight)
