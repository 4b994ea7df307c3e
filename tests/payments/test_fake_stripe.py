"""The Stripe fake itself (tests/support/fake_stripe.py), through the official library: what the
adapter's tests rely on it for. Not the adapter's tests; no database."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import stripe

from tests.support.fake_stripe import (
    API_KEY,
    MOCK_BASE,
    WEBHOOK_SECRET,
    FakeStripe,
    dropped,
    late,
    lost,
    mocked,
    parse_form,
    serving,
    signed,
    to_minor,
)
from tests.support.http_faults import read_timeout
from tests.support.receiver import running_receiver

REFERENCE = "pay_" + "0" * 32


def client_for(base: str, api_key: str = API_KEY, timeout: float = 2) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base},
        http_client=stripe.RequestsClient(timeout=timeout),
        max_network_retries=0,
    )


def create(client: stripe.StripeClient, pm: str = "pm_card_visa", key: str = f"intent-{REFERENCE}", **changes):
    params = {
        "amount": 1999,
        "currency": "usd",
        "payment_method": pm,
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "metadata": {"booking_id": "7", "payment_id": "3", "payment_reference": REFERENCE},
        **changes,
    }
    return client.v1.payment_intents.create(params=params, options={"idempotency_key": key})


def confirm(client: stripe.StripeClient, intent_id: str, key: str = f"confirm-{REFERENCE}"):
    return client.v1.payment_intents.confirm(intent_id, options={"idempotency_key": key})


@pytest.fixture
def fake() -> FakeStripe:
    return FakeStripe()


@pytest.fixture
def served(fake) -> Iterator[str]:
    with serving(fake) as base:
        yield base


@pytest.fixture
def client(served) -> stripe.StripeClient:
    return client_for(served)


def test_form_bodies_are_read_as_stripe_nests_them():
    assert parse_form("metadata[booking_id]=7&automatic_payment_methods[enabled]=true&expand[0]=latest_charge") == {
        "metadata": {"booking_id": "7"},
        "automatic_payment_methods": {"enabled": "true"},
        "expand": ["latest_charge"],
    }
    assert (to_minor("1200", "JPY"), to_minor("19.99", "usd"), to_minor("150.50", "inr")) == (1200, 1999, 15050)


def test_create_then_confirm_takes_the_money_once(fake, client):
    intent = create(client)
    assert (intent.status, intent.client_secret.startswith(f"{intent.id}_secret_")) == ("requires_confirmation", True)
    confirmed = confirm(client, intent.id)
    assert confirmed.status == "succeeded" and confirmed.latest_charge.startswith("ch_")
    shown = client.v1.payment_intents.retrieve(intent.id, params={"expand": ["latest_charge"]})
    assert (shown.latest_charge.id, shown.latest_charge.refunded) == (confirmed.latest_charge, False)
    assert fake.seen("create")[0].form["metadata"]["payment_reference"] == REFERENCE
    assert fake.seen("retrieve")[0].query == {"expand": ["latest_charge"]}
    assert [r.idempotency_key for r in fake.received if r.method == "POST"] == [
        f"intent-{REFERENCE}",
        f"confirm-{REFERENCE}",
    ]
    assert (fake.standing(), fake.charged_twice()) == ({REFERENCE}, {})
    assert [e["type"] for e in fake.events] == ["payment_intent.succeeded"]


def test_a_decline_is_a_card_error_carrying_the_intent(fake, client):
    intent = create(client, pm="pm_card_visa_chargeDeclinedInsufficientFunds")
    with pytest.raises(stripe.CardError) as declined:
        confirm(client, intent.id)
    error = declined.value.error
    assert (declined.value.http_status, error.code, error.decline_code) == (402, "card_declined", "insufficient_funds")
    assert (error.payment_intent.id, error.payment_intent.status) == (intent.id, "requires_payment_method")
    assert fake.standing() == set() and fake.events_of("payment_intent.payment_failed")


def test_three_d_secure_waits_for_the_customer(fake, client):
    intent = confirm(client, create(client, pm="pm_card_authenticationRequired").id)
    assert (intent.status, intent.next_action.type) == ("requires_action", "use_stripe_sdk")
    fake.complete_action(intent.id, succeed=True)
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"

    other = confirm(client, create(client, pm="pm_card_threeDSecure2Required", key="i2").id, key="c2")
    failed = fake.complete_action(other.id, succeed=False)
    assert (failed["status"], failed["last_payment_error"]["code"]) == (
        "requires_payment_method",
        "payment_intent_authentication_failure",
    )
    assert [e["type"] for e in fake.events] == [
        "payment_intent.requires_action",
        "payment_intent.succeeded",
        "payment_intent.requires_action",
        "payment_intent.payment_failed",
    ]


def test_a_key_replays_its_first_answer_and_refuses_other_parameters(fake, client, served):
    first, again = create(client), create(client)
    assert first.id == again.id and len(fake.intents) == 1
    assert fake.seen("create")[1].replayed
    raw = requests.post(
        f"{served}/v1/payment_intents",
        data={"amount": 1999, "currency": "usd"},
        headers={"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "raw"},
        timeout=2,
    )
    replay = requests.post(raw.request.url, data=raw.request.body, headers=raw.request.headers, timeout=2)
    assert (raw.json(), replay.headers.get("Idempotent-Replayed")) == (replay.json(), "true")
    with pytest.raises(stripe.IdempotencyError):
        create(client, amount=2500)
    assert len(fake.intents) == 2


def test_cancel_and_its_refusals(fake, client):
    intent = create(client)
    canceled = client.v1.payment_intents.cancel(
        intent.id, params={"cancellation_reason": "abandoned"}, options={"idempotency_key": "cancel-1"}
    )
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "abandoned")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        confirm(client, intent.id)
    assert refused.value.code == "payment_intent_unexpected_state"
    paid = confirm(client, create(client, key="i2").id, key="c2")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.cancel(paid.id, options={"idempotency_key": "cancel-2"})
    assert refused.value.json_body["error"]["payment_intent"]["status"] == "succeeded"


def test_a_refund_under_another_key_finds_the_charge_refunded(fake, client):
    paid = confirm(client, create(client).id)
    refund = client.v1.refunds.create(
        params={"payment_intent": paid.id, "metadata": {"payment_id": "3"}},
        options={"idempotency_key": f"refund-{REFERENCE}"},
    )
    assert (refund.amount, refund.charge, refund.status) == (1999, paid.latest_charge, "succeeded")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.refunds.create(params={"payment_intent": paid.id}, options={"idempotency_key": "another"})
    assert refused.value.code == "charge_already_refunded"
    assert fake.standing() == set() and fake.takings() == {REFERENCE: 1}
    (event,) = fake.events_of("charge.refunded")
    assert (event["data"]["object"]["refunded"], event["request"]["idempotency_key"]) == (True, f"refund-{REFERENCE}")
    assert event["data"]["object"]["refunds"]["data"][0]["id"] == refund.id


def test_a_wrong_key_is_refused(served):
    with pytest.raises(stripe.AuthenticationError):
        create(client_for(served, api_key="sk_test_wrong"))


def test_signed_events_pass_the_library_check_and_reach_a_url(fake, client):
    confirm(client, create(client).id)
    (event,) = fake.events
    body, headers = signed(event, WEBHOOK_SECRET)
    parsed = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], WEBHOOK_SECRET)
    assert (parsed.type, parsed.data.object.id, parsed.data.object.status) == (
        event["type"],
        event["data"]["object"]["id"],
        "succeeded",
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_other")
    with running_receiver() as receiver:
        receiver.answer(500)
        assert fake.deliver(receiver.url, events=[event, event]) == [500, 200]  # A redelivery.
    arrived = receiver.received[1]
    assert (
        stripe.Webhook.construct_event(arrived.body, arrived.headers["stripe-signature"], WEBHOOK_SECRET).id
        == (event["id"])
    )


def test_served_faults_drop_the_connection_before_or_after_applying(fake, served):
    client = client_for(served, timeout=0.3)
    fake.on("create", dropped(applied=False), dropped(applied=True), late(0.6))
    for _ in range(3):
        with pytest.raises(stripe.APIConnectionError):
            create(client)
    assert len(fake.intents) == 1 and len(fake.seen("create")) == 2  # The first never arrived.
    assert create(client).id in fake.intents and len(fake.intents) == 1  # The key replays the applied one.


def test_concurrent_requests_under_one_key_make_one_intent(fake, served):
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: create(client_for(served)).id, range(8)))
    assert len(ids) == len(fake.intents) == 1 and sum(r.replayed for r in fake.seen("create")) == 7


def test_mocked_endpoints_play_their_script_then_answer_healthily(fake):
    client = client_for(MOCK_BASE)
    mock = mocked(fake, confirm=(lost(read_timeout(), applied=True),))
    with mock.rsps:
        intent = create(client)
        with pytest.raises(stripe.APIConnectionError):
            confirm(client, intent.id)
        assert confirm(client, intent.id).status == "succeeded"  # The replay of the lost answer.
        with pytest.raises(stripe.CardError):
            confirm(client, create(client, pm="pm_card_chargeDeclined", key="i2").id, key="c2")
    assert fake.takings() == {REFERENCE: 1} and mock.endpoints["confirm"].call_count == 3
