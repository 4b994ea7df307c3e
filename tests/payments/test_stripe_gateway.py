"""Payments over the Stripe adapter (`payments.stripe_gateway.StripePaymentGateway`), through
POST /api/v1/payments, PATCH /api/v1/bookings/{id}/cancel and the adapter itself.

Stripe is `FakeStripe` (`tests.support.fake_stripe`): PaymentIntents, charges, refunds and
Stripe's idempotency (a key replays its first answer), in the wire shapes of Stripe's API
(/work/notes/stripe-wire.md), spoken to by the real `stripe` library. It is used two ways:

- as `responses` callbacks (`mocked(...)` with the `mock_stripe` fixture): each endpoint
  first plays a scripted fault (an answer lost after or before Stripe applied the request,
  a refused connection, a 5xx, a 429, a 401, a tampered answer) and then answers healthily;
  nothing reaches the network;
- served on a real socket (`served_stripe`): a few end-to-end runs, test client -> view ->
  stripe library -> requests -> socket -> fake, with real timeouts and refusals.

Proven here: each intent outcome (succeeded 201, requires_action 202 and its replay, a
decline 402, paymentMethod missing or malformed 400); what is sent to Stripe (method, path,
form fields, amounts in minor units, `Idempotency-Key` values, the Bearer key); a lost or
failed create or confirm ends in 503 with the right end state (maybe charged: PROCESSING and
PENDING, resumed by the same key onto the same intent; surely not charged: FAILED and
INITIATED), never a 500; refunds are keyed once per payment; `find_charge` and `cancel`
read Stripe's books; /readyz never calls Stripe.

Nothing in the project is mocked: real database, real views, real library. After every
money scenario the invariants are checked against the fake's own books:
`assert_money_matches_bookings(standing=stripe_fake.standing())`, `charged_twice() == {}`,
every POST carried an Idempotency-Key, and the seats ledger matches the bookings.
"""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from django.utils import timezone

from bookings.models import Booking
from bookings_project.exceptions import PaymentGatewayUnavailable
from payments.gateway import ChargeStatus, get_payment_gateway
from payments.models import Payment
from payments.stripe_gateway import from_minor_units, to_minor_units
from tests.factories import initiated, make_flight
from tests.helpers import (
    assert_bookings_match_ledger,
    assert_money_matches_bookings,
    assert_problem,
    closed_port,
    seats_left,
    states,
)
from tests.support import http_faults
from tests.support.api import patch_cancel, post_booking, post_payment
from tests.support.fake_stripe import (
    API_KEY,
    MOCK_BASE,
    FakeStripe,
    answers,
    late,
    lost,
    mocked,
    tampered,
)

SEATS = 2
TOTAL = "11000.00"  # 2 seats x 5500.00, the `flight` fixture's price, in INR.
TOTAL_MINOR = "1100000"  # As Stripe's form carries it: paise.
CAPACITY = 20

VISA = "pm_card_visa"
THREE_D_SECURE = "pm_card_threeDSecure2Required"
DECLINED = "pm_card_chargeDeclined"
INSUFFICIENT_FUNDS = "pm_card_visa_chargeDeclinedInsufficientFunds"

# Stripe's error bodies (docs.stripe.com/api/errors), as it answers them.
API_ERROR = {"error": {"type": "api_error", "message": "An unknown error occurred."}}
RATE_LIMITED = {
    "error": {
        "type": "invalid_request_error",
        "code": "rate_limit",
        "message": "Too many requests hit the API too quickly.",
    }
}
BAD_KEY = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****fake"}}
PROXY_PAGE = "<html><body><h1>502 Bad Gateway</h1></body></html>"


# 1. Each intent outcome through POST /api/v1/payments ------------------------------------------


@pytest.mark.django_db
def test_succeeded_intent_answers_201_books_and_sends_stripe_the_documented_requests(
    mock_stripe, stripe_fake, user_client, flight
):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake)

    with mock.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)
        calls = list(mock.rsps.calls)

    assert response.status_code == 201, response.content
    payment = Payment.objects.get()
    (intent,) = stripe_fake.intents.values()
    body = response.json()
    assert (body["id"], body["status"], body["amount"], body["currency"], body["gatewayReference"]) == (
        payment.pk,
        "SUCCEEDED",
        TOTAL,
        "INR",
        intent["id"],
    )
    assert response["Location"].endswith(f"/api/v1/payments/{payment.pk}")
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    assert (payment.gateway_reference, payment.payment_method) == (intent["id"], VISA)

    # What Stripe heard: a create, then a confirm, each keyed from our reference.
    create, confirm = stripe_fake.received
    assert (create.method, create.path, create.status) == ("POST", "/v1/payment_intents", 200)
    assert create.form == {
        "amount": TOTAL_MINOR,
        "currency": "inr",
        "payment_method": VISA,
        "automatic_payment_methods": {"enabled": "true", "allow_redirects": "never"},
        "metadata": {
            "booking_id": str(booking["id"]),
            "payment_id": str(payment.pk),
            "payment_reference": payment.reference,
        },
    }
    assert create.idempotency_key == f"intent-{payment.reference}"
    assert (confirm.method, confirm.path, confirm.status) == (
        "POST",
        f"/v1/payment_intents/{intent['id']}/confirm",
        200,
    )
    assert confirm.form == {}
    assert confirm.idempotency_key == f"confirm-{payment.reference}"
    assert [call.request.headers["Authorization"] for call in calls] == [f"Bearer {API_KEY}"] * 2
    assert [call.request.url for call in calls] == [
        f"{MOCK_BASE}/v1/payment_intents",
        f"{MOCK_BASE}/v1/payment_intents/{intent['id']}/confirm",
    ]
    assert (intent["status"], intent["amount"], intent["currency"]) == ("succeeded", 1100000, "inr")
    assert stripe_fake.standing() == {payment.reference}
    assert seats_left(flight) == CAPACITY - SEATS
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_three_d_secure_answers_202_with_the_action_and_the_key_replays_it_without_stripe(
    mock_stripe, stripe_fake, user_client, flight
):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake)

    with mock.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=THREE_D_SECURE)
        heard = len(stripe_fake.received)

        assert response.status_code == 202, response.content
        payment = Payment.objects.get()
        (intent,) = stripe_fake.intents.values()
        body = response.json()
        assert (body["id"], body["status"], body["gatewayReference"]) == (payment.pk, "REQUIRES_ACTION", intent["id"])
        assert body["clientSecret"] == intent["client_secret"]
        assert body["clientSecret"].startswith(f"{intent['id']}_secret_")
        assert body["nextAction"] == intent["next_action"]
        assert body["nextAction"]["type"] == "use_stripe_sdk"
        assert response["Location"].endswith(f"/api/v1/payments/{payment.pk}")
        assert "Idempotent-Replayed" not in response
        assert states(booking["id"]) == ("PENDING", ["REQUIRES_ACTION"])
        assert payment.gateway_reference == intent["id"]
        assert intent["status"] == "requires_action"
        assert heard == 2  # create + confirm
        assert stripe_fake.standing() == set()
        assert_consistent(stripe_fake, flight)

        replay = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=THREE_D_SECURE)

        assert len(stripe_fake.received) == heard  # Stripe hears nothing more.
        assert len(mock.rsps.calls) == heard

    assert replay.status_code == 202
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == body
    assert replay["Location"] == response["Location"]
    assert states(booking["id"]) == ("PENDING", ["REQUIRES_ACTION"])
    assert len(stripe_fake.intents) == 1
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payment_method", "message"),
    [(DECLINED, "Your card was declined."), (INSUFFICIENT_FUNDS, "Your card has insufficient funds.")],
    ids=["generic-decline", "insufficient-funds"],
)
def test_a_decline_answers_402_frees_the_booking_and_a_new_key_pays(
    mock_stripe, stripe_fake, user_client, flight, payment_method, message
):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake)

    with mock.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=payment_method)

        body = assert_problem(response, 402, "payment_declined")
        assert message in body["detail"]
        assert states(booking["id"]) == ("INITIATED", ["DECLINED"])
        declined = Payment.objects.get()
        assert declined.failure_reason == message
        (confirm,) = stripe_fake.seen("confirm")
        assert confirm.status == 402
        assert stripe_fake.standing() == set()
        assert_consistent(stripe_fake, flight)

        # The same key replays the decline: Stripe hears nothing.
        heard = len(stripe_fake.received)
        replay = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=payment_method)
        assert (replay.status_code, replay["Idempotent-Replayed"], replay.json()) == (402, "true", body)
        assert len(stripe_fake.received) == heard

        paid = post_payment(user_client, booking["id"], "client-key-2", TOTAL, payment_method=VISA)

    assert paid.status_code == 201, paid.content
    assert states(booking["id"]) == ("BOOKED", ["DECLINED", "SUCCEEDED"])
    succeeded = Payment.objects.get(status=Payment.Status.SUCCEEDED)
    assert succeeded.pk != declined.pk
    assert [r.idempotency_key for r in stripe_fake.seen("create")] == [
        f"intent-{declined.reference}",
        f"intent-{succeeded.reference}",
    ]
    assert sorted(i["status"] for i in stripe_fake.intents.values()) == ["requires_payment_method", "succeeded"]
    assert stripe_fake.standing() == {succeeded.reference}
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_payment_method_is_required_with_stripe_and_nothing_is_written(mock_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)

    with mocked(stripe_fake).rsps as rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL)
        assert len(rsps.calls) == 0

    body = assert_problem(response, 400, "validation_error")
    assert [error["field"] for error in body["errors"]] == ["paymentMethod"]
    assert states(booking["id"]) == ("INITIATED", [])
    assert Payment.objects.count() == 0
    assert stripe_fake.received == []

    # The key was not used up by the refusal: it pays once the field is there.
    with mocked(stripe_fake).rsps:
        paid = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)
    assert paid.status_code == 201, paid.content
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
@pytest.mark.parametrize("payment_method", ["card_visa", "pm_", "pm_card visa", "pm_card-visa", "", "tok_visa"])
def test_a_malformed_payment_method_is_refused_before_stripe(
    mock_stripe, stripe_fake, user_client, flight, payment_method
):
    booking = book(user_client, flight)

    with mocked(stripe_fake).rsps as rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=payment_method)
        assert len(rsps.calls) == 0

    body = assert_problem(response, 400, "validation_error")
    assert [error["field"] for error in body["errors"]] == ["paymentMethod"]
    assert states(booking["id"]) == ("INITIATED", [])


# 2. Amounts in the currency's minor units ------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "units"),
    [
        ("11000.00", "INR", 1100000),
        ("11000.00", "inr", 1100000),
        ("11000.00", "USD", 1100000),
        ("19.99", "USD", 1999),
        ("0.01", "EUR", 1),
        ("11000", "JPY", 11000),
        ("11000.00", "JPY", 11000),
        ("1200", "krw", 1200),
        ("1.25", "KWD", 1250),
    ],
)
def test_to_minor_units(amount, currency, units):
    assert to_minor_units(Decimal(amount), currency) == units


@pytest.mark.parametrize(("amount", "currency"), [("12.50", "JPY"), ("0.5", "KRW"), ("19.999", "USD")])
def test_to_minor_units_refuses_a_fraction_the_currency_cannot_carry(amount, currency):
    with pytest.raises(ValueError, match="not a whole number"):
        to_minor_units(Decimal(amount), currency)


@pytest.mark.parametrize(
    ("units", "currency", "amount"),
    [
        (1100000, "INR", "11000.00"),
        (1999, "usd", "19.99"),
        (1, "USD", "0.01"),
        (11000, "JPY", "11000.00"),
        (11000, "jpy", "11000.00"),
        (1250, "KWD", "1.25"),
    ],
)
def test_from_minor_units(units, currency, amount):
    result = from_minor_units(units, currency)
    assert result == Decimal(amount)
    assert str(result) == amount


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("currency", "price", "total", "minor"),
    [("USD", "5500.00", "11000.00", "1100000"), ("JPY", "5500", "11000.00", "11000")],
    ids=["USD-two-decimals", "JPY-zero-decimals"],
)
def test_a_flight_priced_in_another_currency_is_charged_in_its_minor_units(
    mock_stripe, stripe_fake, user_client, currency, price, total, minor
):
    flight = make_flight(capacity=CAPACITY, price=price, currency=currency)
    booking = book(user_client, flight, total=total)

    with mocked(stripe_fake).rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", total, payment_method=VISA)

    assert response.status_code == 201, response.content
    assert (response.json()["amount"], response.json()["currency"]) == (total, currency)
    (create,) = stripe_fake.seen("create")
    assert (create.form["amount"], create.form["currency"]) == (minor, currency.lower())
    (intent,) = stripe_fake.intents.values()
    assert (intent["amount"], intent["currency"]) == (int(minor), currency.lower())
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    payment = Payment.objects.get()
    assert (payment.amount, payment.currency) == (Decimal(total), currency)
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_a_yen_amount_with_a_fraction_is_refused_without_calling_stripe(mock_stripe, stripe_fake, user_client):
    flight = make_flight(capacity=CAPACITY, price="5500.25", currency="JPY")
    booking = book(user_client, flight, total="11000.50")

    with mocked(stripe_fake).rsps as rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", "11000.50", payment_method=VISA)
        assert len(rsps.calls) == 0

    body = assert_unavailable(response)
    assert "11000.50 JPY" in body["detail"]
    assert states(booking["id"]) == ("INITIATED", ["FAILED"])  # Nothing can have been charged.
    assert stripe_fake.received == []
    assert_consistent(stripe_fake, flight)


# 3. Answers lost: the same key resumes the same payment onto the same intent --------------------


@pytest.mark.django_db
def test_confirm_applied_but_its_answer_lost_then_the_retry_books_on_the_one_intent(
    mock_stripe, stripe_fake, user_client, flight
):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake, confirm=(lost(http_faults.read_timeout(), applied=True),))

    with mock.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)

        assert_unavailable(response)
        assert states(booking["id"]) == ("PENDING", ["PROCESSING"])
        payment = Payment.objects.get()
        (intent,) = stripe_fake.intents.values()
        assert payment.gateway_reference == intent["id"]  # Recorded before the confirm was sent.
        assert payment.failure_reason
        assert intent["status"] == "succeeded"  # Charged, though we do not know it yet.
        assert stripe_fake.standing() == {payment.reference}
        assert_consistent(stripe_fake, flight)

        retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)

    assert retried.status_code == 201, retried.content
    assert "Idempotent-Replayed" not in retried
    assert retried.json()["id"] == payment.pk  # The same payment, resumed.
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    payment.refresh_from_db()
    assert (payment.attempts, payment.gateway_reference) == (2, intent["id"])
    assert len(stripe_fake.intents) == 1
    assert len(stripe_fake.seen("create")) == 1  # The intent id was recorded: no second create.
    confirms = stripe_fake.seen("confirm")
    assert [r.idempotency_key for r in confirms] == [f"confirm-{payment.reference}"] * 2
    assert [(r.status, r.replayed) for r in confirms] == [(200, False), (200, True)]  # Stripe replayed.
    assert stripe_fake.takings() == {payment.reference: 1}
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_a_three_d_secure_confirm_whose_answer_was_lost_is_retried_into_the_202(
    mock_stripe, stripe_fake, user_client, flight
):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake, confirm=(lost(http_faults.read_timeout(), applied=True),))

    with mock.rsps:
        assert_unavailable(post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=THREE_D_SECURE))
        assert states(booking["id"]) == ("PENDING", ["PROCESSING"])

        retried = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=THREE_D_SECURE)

    assert retried.status_code == 202, retried.content
    (intent,) = stripe_fake.intents.values()
    assert (retried.json()["clientSecret"], retried.json()["nextAction"]) == (
        intent["client_secret"],
        intent["next_action"],
    )
    assert states(booking["id"]) == ("PENDING", ["REQUIRES_ACTION"])
    assert [r.replayed for r in stripe_fake.seen("confirm")] == [False, True]
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_create_applied_but_its_answer_lost_is_resumed_onto_the_same_intent(
    mock_stripe, stripe_fake, user_client, flight
):
    """The lost create made an intent that was never confirmed: nothing can have been charged,
    but the payment stays in flight (PROCESSING, no intent recorded), so that the client's
    retry with the same key resumes it: the same create key gets the one intent back, which
    is then confirmed. One payment, one intent."""
    booking = book(user_client, flight)
    mock = mocked(stripe_fake, create=(lost(http_faults.read_timeout(), applied=True),))

    with mock.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)

        assert_unavailable(response)
        assert states(booking["id"]) == ("PENDING", ["PROCESSING"])
        first = Payment.objects.get()
        assert first.gateway_reference == ""
        (intent,) = stripe_fake.intents.values()
        assert intent["status"] == "requires_confirmation"
        assert stripe_fake.seen("confirm") == []
        assert_consistent(stripe_fake, flight)

        retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)

    assert retried.status_code == 201, retried.content
    assert retried.json()["id"] == first.pk
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    assert [(r.idempotency_key, r.replayed) for r in stripe_fake.seen("create")] == [
        (f"intent-{first.reference}", False),
        (f"intent-{first.reference}", True),
    ]
    assert [r.idempotency_key for r in stripe_fake.seen("confirm")] == [f"confirm-{first.reference}"]
    assert list(stripe_fake.intents) == [intent["id"]]
    assert stripe_fake.takings() == {first.reference: 1}
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_the_adapter_resending_a_create_whose_answer_was_lost_gets_the_same_intent(
    mock_stripe, stripe_fake, user, flight
):
    """Stripe's side of the create's key: a payment still PROCESSING with no intent recorded (a
    resumed attempt) sends `intent-<reference>` again, and Stripe replays the one intent."""
    payment = processing_payment(user, flight)
    gateway = get_payment_gateway()
    mock = mocked(stripe_fake, create=(lost(http_faults.read_timeout(), applied=True),))

    with mock.rsps:
        with pytest.raises(PaymentGatewayUnavailable) as raised:
            charge(gateway, payment)
        # An unconfirmed intent cannot have charged, but one may have been made: the outcome is
        # unknown, so that the payment stays in flight and is resumed with the same key.
        assert raised.value.maybe_charged is True
        answer = charge(gateway, payment)

    (intent,) = stripe_fake.intents.values()
    assert (answer.status, answer.gateway_reference, answer.amount, answer.currency) == (
        ChargeStatus.SUCCEEDED,
        intent["id"],
        Decimal(TOTAL),
        "INR",
    )
    creates = stripe_fake.seen("create")
    assert [(r.idempotency_key, r.replayed) for r in creates] == [
        (f"intent-{payment.reference}", False),
        (f"intent-{payment.reference}", True),
    ]
    payment.refresh_from_db()
    assert payment.gateway_reference == intent["id"]
    assert stripe_fake.takings() == {payment.reference: 1}
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lost(http_faults.refused(), applied=False), id="create-refused"),
        pytest.param(answers(401, BAD_KEY, applied=False), id="create-401"),
    ],
)
def test_a_create_that_failed_frees_the_booking(mock_stripe, stripe_fake, user_client, flight, fault):
    booking = book(user_client, flight)

    with mocked(stripe_fake, create=(fault,)).rsps as rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)
        assert len(rsps.calls) == 1  # One create, never resent by the library.

    assert_unavailable(response)
    assert states(booking["id"]) == ("INITIATED", ["FAILED"])
    assert stripe_fake.intents == {}
    assert_consistent(stripe_fake, flight)


# 4. Stripe's errors on create and on confirm: always a 503, the right end state ----------------

# MAYBE_CHARGED: the payment stays in flight with its intent recorded, and the same key resumes
# it. INTENT_UNKNOWN: nothing can have charged (no confirm was sent), but an intent may have
# been made, so the payment stays in flight too and the same key sends the same create again,
# which gets that intent back: still one intent. NOT_CHARGED: Stripe refused, nothing was made:
# the payment FAILED, and the same key pays with a new one.
MAYBE_CHARGED, INTENT_UNKNOWN, NOT_CHARGED = "maybe charged", "intent unknown", "not charged"

FAULTS = [
    # create: an intent that was never confirmed cannot have charged, whatever happened to it.
    pytest.param("create", answers(500, API_ERROR, applied=False), INTENT_UNKNOWN, id="create-500"),
    pytest.param("create", answers(500, API_ERROR, applied=True), INTENT_UNKNOWN, id="create-500-applied"),
    pytest.param(
        "create", answers(502, PROXY_PAGE, applied=False, content_type="text/html"), INTENT_UNKNOWN, id="create-502"
    ),
    pytest.param("create", answers(503, API_ERROR, applied=False), INTENT_UNKNOWN, id="create-503"),
    pytest.param("create", lost(http_faults.read_timeout(), applied=True), INTENT_UNKNOWN, id="create-timeout"),
    pytest.param("create", lost(http_faults.read_timeout(), applied=False), INTENT_UNKNOWN, id="create-timeout-before"),
    pytest.param("create", answers(429, RATE_LIMITED, applied=False), NOT_CHARGED, id="create-429"),
    pytest.param("create", answers(401, BAD_KEY, applied=False), NOT_CHARGED, id="create-401"),
    # confirm: unclear unless Stripe refused it outright (429, 401) or it never left.
    pytest.param("confirm", answers(500, API_ERROR, applied=True), MAYBE_CHARGED, id="confirm-500-applied"),
    pytest.param("confirm", answers(500, API_ERROR, applied=False), MAYBE_CHARGED, id="confirm-500"),
    pytest.param(
        "confirm", answers(502, PROXY_PAGE, applied=True, content_type="text/html"), MAYBE_CHARGED, id="confirm-502"
    ),
    pytest.param("confirm", answers(503, API_ERROR, applied=False), MAYBE_CHARGED, id="confirm-503"),
    pytest.param("confirm", lost(http_faults.read_timeout(), applied=False), MAYBE_CHARGED, id="confirm-timeout"),
    pytest.param(
        "confirm", lost(http_faults.closed_without_answer(), applied=True), MAYBE_CHARGED, id="confirm-hung-up"
    ),
    pytest.param("confirm", tampered(amount=100), MAYBE_CHARGED, id="confirm-another-amount"),
    pytest.param("confirm", tampered(currency="usd"), MAYBE_CHARGED, id="confirm-another-currency"),
    pytest.param("confirm", tampered(status="processing"), MAYBE_CHARGED, id="confirm-processing"),
    pytest.param("confirm", answers(429, RATE_LIMITED, applied=False), NOT_CHARGED, id="confirm-429"),
    pytest.param("confirm", answers(401, BAD_KEY, applied=False), NOT_CHARGED, id="confirm-401"),
    pytest.param("confirm", lost(http_faults.refused(), applied=False), NOT_CHARGED, id="confirm-refused"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("kind", "fault", "outcome"), FAULTS)
def test_stripe_errors_answer_503_with_the_right_end_state_and_the_same_key_then_pays_once(
    mock_stripe, stripe_fake, user_client, flight, kind, fault, outcome
):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake, **{kind: (fault,)})

    with mock.rsps:
        response = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)

        assert mock.endpoints[kind].call_count == 1
        assert_unavailable(response)
        first = Payment.objects.get()
        if outcome == MAYBE_CHARGED:
            assert states(booking["id"]) == ("PENDING", ["PROCESSING"])
            (intent,) = stripe_fake.intents.values()
            assert first.gateway_reference == intent["id"]
        elif outcome == INTENT_UNKNOWN:
            assert states(booking["id"]) == ("PENDING", ["PROCESSING"])
            assert first.gateway_reference == ""  # No intent recorded: no confirm was sent.
            assert stripe_fake.standing() == set()
        else:
            assert states(booking["id"]) == ("INITIATED", ["FAILED"])
            assert stripe_fake.standing() == set()
        assert seats_left(flight) == CAPACITY - SEATS
        assert_consistent(stripe_fake, flight)

        retried = post_payment(user_client, booking["id"], "client-key-1", TOTAL, payment_method=VISA)

    assert retried.status_code == 201, retried.content
    if outcome in (MAYBE_CHARGED, INTENT_UNKNOWN):
        assert retried.json()["id"] == first.pk  # Resumed onto the same intent.
        assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
        assert len(stripe_fake.intents) == 1
        creates = {r.idempotency_key for r in stripe_fake.seen("create")}
        assert creates == {f"intent-{first.reference}"}
        assert {r.idempotency_key for r in stripe_fake.seen("confirm")} == {f"confirm-{first.reference}"}
        assert stripe_fake.takings() == {first.reference: 1}
    else:
        assert states(booking["id"]) == ("BOOKED", ["FAILED", "SUCCEEDED"])  # A new payment.
        succeeded = Payment.objects.get(status=Payment.Status.SUCCEEDED)
        assert succeeded.pk != first.pk
        assert stripe_fake.takings() == {succeeded.reference: 1}
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_a_confirm_refused_on_a_resumed_attempt_cannot_clear_an_earlier_charge(
    mock_stripe, stripe_fake, user_client, flight
):
    booking = book(user_client, flight)
    mock = mocked(
        stripe_fake,
        confirm=(lost(http_faults.read_timeout(), applied=True), answers(429, RATE_LIMITED, applied=False)),
    )

    with mock.rsps:
        assert_unavailable(post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA))
        assert_unavailable(post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA))

        assert states(booking["id"]) == ("PENDING", ["PROCESSING"])  # Charged by the first: not FAILED.
        assert stripe_fake.standing() == {Payment.objects.get().reference}
        assert_consistent(stripe_fake, flight)

        retried = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA)

    assert retried.status_code == 201, retried.content
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    assert len(stripe_fake.intents) == 1
    assert_consistent(stripe_fake, flight)


# 5. Refunds --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancelling_a_booked_booking_refunds_at_stripe_once(mock_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake)

    with mock.rsps:
        assert post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA).status_code == 201
        payment = Payment.objects.get()

        cancelled = patch_cancel(user_client, booking["id"])
        again = patch_cancel(user_client, booking["id"])
        (refund_call,) = [call for call in mock.rsps.calls if call.request.url == f"{MOCK_BASE}/v1/refunds"]

    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["status"] == "CANCELLED"
    assert again.status_code == 200
    (request,) = stripe_fake.seen("refund")  # The second cancel asked for nothing.
    assert (request.method, request.path, request.status) == ("POST", "/v1/refunds", 200)
    assert request.form == {"payment_intent": payment.gateway_reference, "metadata": {"payment_id": str(payment.pk)}}
    assert request.idempotency_key == f"refund-{payment.reference}"
    assert refund_call.request.headers["Authorization"] == f"Bearer {API_KEY}"
    (refund,) = stripe_fake.refunds.values()
    assert (refund["amount"], refund["currency"], refund["payment_intent"]) == (
        1100000,
        "inr",
        payment.gateway_reference,
    )
    payment.refresh_from_db()
    assert (payment.status, payment.refund_reference) == (Payment.Status.REFUNDED, refund["id"])
    assert states(booking["id"]) == ("CANCELLED", ["REFUNDED"])
    assert stripe_fake.standing() == set()
    assert seats_left(flight) == CAPACITY
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_a_refund_whose_answer_was_lost_is_retried_onto_the_one_refund(mock_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake, refund=(lost(http_faults.read_timeout(), applied=True),))

    with mock.rsps:
        assert post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA).status_code == 201
        payment = Payment.objects.get()

        response = patch_cancel(user_client, booking["id"])

        assert_unavailable(response)
        assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
        assert seats_left(flight) == CAPACITY - SEATS
        assert len(stripe_fake.refunds) == 1  # Refunded at Stripe; we do not know yet.
        assert_bookings_match_ledger(flight)

        again = patch_cancel(user_client, booking["id"])

    assert again.status_code == 200, again.content
    assert states(booking["id"]) == ("CANCELLED", ["REFUNDED"])
    refunds = stripe_fake.seen("refund")
    assert [(r.idempotency_key, r.replayed) for r in refunds] == [
        (f"refund-{payment.reference}", False),
        (f"refund-{payment.reference}", True),
    ]
    (refund,) = stripe_fake.refunds.values()
    payment.refresh_from_db()
    assert payment.refund_reference == refund["id"]
    assert seats_left(flight) == CAPACITY
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_a_charge_refunded_by_hand_first_is_treated_as_refunded(mock_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)
    mock = mocked(stripe_fake)
    listing = mock.endpoints["refunds"]  # GET /v1/refunds?payment_intent=...&limit=1

    with mock.rsps:
        assert post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA).status_code == 201
        payment = Payment.objects.get()
        by_hand = refund_by_hand(stripe_fake, payment.gateway_reference)

        cancelled = patch_cancel(user_client, booking["id"])

    assert cancelled.status_code == 200, cancelled.content
    assert states(booking["id"]) == ("CANCELLED", ["REFUNDED"])
    ours = stripe_fake.seen("refund")[-1]
    assert (ours.status, ours.idempotency_key) == (400, f"refund-{payment.reference}")
    assert listing.call_count == 1
    assert parse_qs(urlsplit(listing.calls[0].request.url).query) == {
        "payment_intent": [payment.gateway_reference],
        "limit": ["1"],
    }
    payment.refresh_from_db()
    assert (payment.status, payment.refund_reference) == (Payment.Status.REFUNDED, by_hand)
    assert len(stripe_fake.refunds) == 1
    assert seats_left(flight) == CAPACITY
    assert_consistent(stripe_fake, flight)


# 6. The adapter's look-up and cancel, as reconciliation uses them --------------------------------


@pytest.mark.django_db
def test_find_charge_reads_succeeded_then_refunded(mock_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)
    gateway = get_payment_gateway()

    with mocked(stripe_fake).rsps:
        assert post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA).status_code == 201
        payment = Payment.objects.get()
        found = gateway.find_charge(reference=payment.reference)
        assert patch_cancel(user_client, booking["id"]).status_code == 200
        refunded = gateway.find_charge(reference=payment.reference)

    assert (found.status, found.gateway_reference, found.amount, found.currency, found.open) == (
        ChargeStatus.SUCCEEDED,
        payment.gateway_reference,
        Decimal(TOTAL),
        "INR",
        False,
    )
    assert (refunded.status, refunded.gateway_reference, refunded.money_taken) == (
        ChargeStatus.REFUNDED,
        payment.gateway_reference,
        True,
    )
    retrieves = stripe_fake.seen("retrieve")
    assert [(r.method, r.path, r.query) for r in retrieves] == [
        ("GET", f"/v1/payment_intents/{payment.gateway_reference}", {"expand": ["latest_charge"]})
    ] * 2
    assert all(r.idempotency_key is None for r in retrieves)  # A GET is not keyed.
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_find_charge_of_an_open_intent_then_cancel_stops_it(mock_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)
    gateway = get_payment_gateway()

    with mocked(stripe_fake).rsps:
        response = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=THREE_D_SECURE)
        assert response.status_code == 202
        payment = Payment.objects.get()
        found = gateway.find_charge(reference=payment.reference)
        cancelled = gateway.cancel(reference=payment.reference)
        after = gateway.find_charge(reference=payment.reference)

    intent = stripe_fake.intents[payment.gateway_reference]
    assert (found.status, found.open, found.money_taken, found.amount) == (
        ChargeStatus.REQUIRES_ACTION,
        True,
        False,
        Decimal(TOTAL),
    )
    assert found.action.client_secret == intent["client_secret"]
    assert (cancelled.status, cancelled.open, cancelled.money_taken) == (ChargeStatus.DECLINED, False, False)
    assert (after.status, after.gateway_reference) == (ChargeStatus.DECLINED, intent["id"])
    assert (intent["status"], intent["cancellation_reason"]) == ("canceled", "abandoned")
    (cancel,) = stripe_fake.seen("cancel")
    assert (cancel.path, cancel.form, cancel.idempotency_key, cancel.status) == (
        f"/v1/payment_intents/{intent['id']}/cancel",
        {"cancellation_reason": "abandoned"},
        f"cancel-{payment.reference}",
        200,
    )
    assert stripe_fake.standing() == set()
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_cancel_of_an_intent_that_succeeded_meanwhile_answers_the_charge(mock_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)
    gateway = get_payment_gateway()

    with mocked(stripe_fake).rsps:
        assert post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=THREE_D_SECURE).status_code == 202
        payment = Payment.objects.get()
        stripe_fake.complete_action(payment.gateway_reference, succeed=True)  # The customer finished 3-D Secure.
        answer = gateway.cancel(reference=payment.reference)

    assert (answer.status, answer.gateway_reference, answer.amount, answer.currency) == (
        ChargeStatus.SUCCEEDED,
        payment.gateway_reference,
        Decimal(TOTAL),
        "INR",
    )
    (cancel,) = stripe_fake.seen("cancel")
    assert cancel.status == 400  # payment_intent_unexpected_state, with the succeeded intent.
    assert stripe_fake.intents[payment.gateway_reference]["status"] == "succeeded"
    # (Our books learn of it from Stripe's webhook or reconciliation: the payment is still
    # REQUIRES_ACTION here, which `assert_money_matches_bookings` does not count as in flight.)
    assert states(booking["id"]) == ("PENDING", ["REQUIRES_ACTION"])
    assert stripe_fake.charged_twice() == {}


@pytest.mark.django_db
def test_find_charge_of_a_processing_intent_is_no_answer_yet(mock_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)
    gateway = get_payment_gateway()

    with mocked(stripe_fake, retrieve=(tampered(status="processing"),)).rsps:
        assert post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA).status_code == 201
        payment = Payment.objects.get()
        with pytest.raises(PaymentGatewayUnavailable, match="processing"):
            gateway.find_charge(reference=payment.reference)
        assert gateway.find_charge(reference=payment.reference).status == ChargeStatus.SUCCEEDED
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_find_charge_and_cancel_without_an_intent_recorded_answer_none_without_a_call(
    mock_stripe, stripe_fake, user_client, flight
):
    booking = book(user_client, flight)
    gateway = get_payment_gateway()

    with mocked(stripe_fake, create=(lost(http_faults.refused(), applied=False),)).rsps as rsps:
        assert_unavailable(post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA))
        payment = Payment.objects.get()
        calls = len(rsps.calls)
        assert gateway.find_charge(reference=payment.reference) is None
        assert gateway.cancel(reference=payment.reference) is None
        assert len(rsps.calls) == calls

    assert payment.gateway_reference == ""
    assert stripe_fake.received == []
    assert_consistent(stripe_fake, flight)


# 7. /readyz never calls Stripe ---------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_with_stripe_makes_no_call_to_stripe(mock_stripe, anon_client, settings):
    assert settings.PAYMENT_GATEWAY == "stripe"
    with responses.RequestsMock() as rsps:  # Nothing registered: any request would raise.
        response = anon_client.get("/readyz")
        assert len(rsps.calls) == 0

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "ok"


# 8. End to end over real HTTP ---------------------------------------------------------------------


@pytest.mark.django_db
def test_pay_three_d_secure_and_refund_over_real_http(served_stripe, stripe_fake, user_client, flight):
    booking = book(user_client, flight)

    paid = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA)

    assert paid.status_code == 201, paid.content
    payment = Payment.objects.get()
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    create, confirm = stripe_fake.received
    assert (create.path, create.form["amount"], create.form["currency"]) == ("/v1/payment_intents", TOTAL_MINOR, "inr")
    assert (create.idempotency_key, confirm.idempotency_key) == (
        f"intent-{payment.reference}",
        f"confirm-{payment.reference}",
    )
    assert {r.headers["authorization"] for r in stripe_fake.received} == {f"Bearer {API_KEY}"}
    assert_consistent(stripe_fake, flight)

    cancelled = patch_cancel(user_client, booking["id"])

    assert cancelled.status_code == 200, cancelled.content
    assert states(booking["id"]) == ("CANCELLED", ["REFUNDED"])
    (refund,) = stripe_fake.seen("refund")
    assert (refund.idempotency_key, refund.form["payment_intent"]) == (
        f"refund-{payment.reference}",
        payment.gateway_reference,
    )
    assert_consistent(stripe_fake, flight)

    other = book(user_client, flight)
    action = post_payment(user_client, other["id"], "k2", TOTAL, payment_method=THREE_D_SECURE)

    assert action.status_code == 202, action.content
    assert action.json()["clientSecret"].startswith(action.json()["gatewayReference"] + "_secret_")
    assert states(other["id"]) == ("PENDING", ["REQUIRES_ACTION"])
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_confirm_answer_too_late_over_real_http_then_the_retry_books_once(
    served_stripe, stripe_fake, user_client, flight
):
    booking = book(user_client, flight)
    stripe_fake.on("confirm", late(1.0))  # Twice the read timeout: the socket times out for real.

    response = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA)

    assert_unavailable(response)
    assert states(booking["id"]) == ("PENDING", ["PROCESSING"])
    payment = Payment.objects.get()
    assert stripe_fake.standing() == {payment.reference}
    assert_consistent(stripe_fake, flight)

    retried = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA)

    assert retried.status_code == 201, retried.content
    assert states(booking["id"]) == ("BOOKED", ["SUCCEEDED"])
    assert len(stripe_fake.intents) == 1 and len(stripe_fake.seen("create")) == 1
    assert [(r.idempotency_key, r.replayed) for r in stripe_fake.seen("confirm")] == [
        (f"confirm-{payment.reference}", False),
        (f"confirm-{payment.reference}", True),
    ]
    assert_consistent(stripe_fake, flight)


@pytest.mark.django_db
def test_stripe_refusing_connections_then_a_wrong_key_over_real_http(
    served_stripe, stripe_fake, point_at_stripe, settings, user_client, flight
):
    booking = book(user_client, flight)
    point_at_stripe(f"http://127.0.0.1:{closed_port()}")

    refused = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA)

    assert_unavailable(refused)
    assert states(booking["id"]) == ("INITIATED", ["FAILED"])  # Never arrived: nothing charged.
    assert stripe_fake.received == []

    point_at_stripe(served_stripe)
    settings.STRIPE_SECRET_KEY = "sk_test_wrong"

    wrong = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA)

    assert_unavailable(wrong)
    assert states(booking["id"]) == ("INITIATED", ["FAILED", "FAILED"])
    (create,) = stripe_fake.received
    assert (create.status, create.headers["authorization"]) == (401, "Bearer sk_test_wrong")
    assert stripe_fake.intents == {}

    settings.STRIPE_SECRET_KEY = API_KEY
    paid = post_payment(user_client, booking["id"], "k1", TOTAL, payment_method=VISA)

    assert paid.status_code == 201, paid.content
    assert states(booking["id"]) == ("BOOKED", ["FAILED", "FAILED", "SUCCEEDED"])
    assert len(stripe_fake.intents) == 1
    assert_consistent(stripe_fake, flight)


# Helpers -------------------------------------------------------------------------------------------


def book(client, flight, *, total: str = TOTAL) -> dict:
    response = post_booking(client, flight, SEATS)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["totalCost"]) == ("INITIATED", total)
    return body


def processing_payment(user, flight) -> Payment:
    """A payment as a resumed attempt finds it: PROCESSING, its booking PENDING, no intent recorded."""
    booking = initiated(user, flight)
    Booking.objects.filter(pk=booking.pk).update(status=Booking.Status.PENDING)
    return Payment.objects.create(
        booking=booking,
        user_id=user.pk,
        created_by=user,
        idempotency_key="resumed",
        amount=booking.total_cost,
        currency=booking.currency,
        payment_method=VISA,
        attempts=2,
        attempted_at=timezone.now(),
    )


def charge(gateway, payment: Payment):
    return gateway.charge(
        amount=payment.amount, currency=payment.currency, reference=payment.reference, idempotency_key=payment.reference
    )


def refund_by_hand(fake: FakeStripe, intent_id: str) -> str:
    """A refund made in Stripe's dashboard (another key, not through us). Answers its id."""
    status, _, body = fake.handle(
        "POST",
        "/v1/refunds",
        {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "dashboard-refund"},
        f"payment_intent={intent_id}",
    )
    assert status == 200, body
    return body["id"]


def assert_unavailable(response) -> dict:
    body = assert_problem(response, 503, "payment_gateway_unavailable")
    assert response["Retry-After"] == "5"
    assert "Idempotent-Replayed" not in response
    return body


def assert_consistent(fake: FakeStripe, flight) -> None:
    """The invariants against Stripe's books: money matches the bookings, nothing charged twice,
    every POST keyed, and the seats ledger matches the bookings."""
    assert_money_matches_bookings(standing=fake.standing())
    assert fake.charged_twice() == {}
    assert fake.unkeyed() == []
    assert_bookings_match_ledger(flight)
