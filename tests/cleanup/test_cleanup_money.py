"""Cleanup's money duties (docs/design.md#cleanup), against the real services and the real database.

What this file proves about `cleanup_stale_bookings`:

- Reconciliation of expired PENDING bookings with the gateway, once (and only once) the
  payment attempt is older than `payment_attempt_window()`: a charge whose answer was lost
  ends BOOKED + SUCCEEDED (no second charge, and the client's retry with the same key gets
  that payment); no charge, a decline or a refund at the gateway end CANCELLED (`expired`)
  with the payment FAILED / DECLINED / REFUNDED and the seats released.
- An attempt resumed by the client between cleanup's look-up and its lock is left alone.
- A gateway that is down (simulated, or over HTTP: timeout, 500, 503, garbage, refused) or
  that holds another amount leaves the booking untouched, counts `failed`, makes the command
  exit with CommandError; the next run with the gateway back settles it.
- Late money (a charge landing after cleanup settled the booking as not charged) is refunded
  at once; if that refund fails the money is "stranded" and a later run refunds it, but
  not while a live request may still be refunding it. A charge the gateway applies after
  reconciliation found none, with no request left to get its answer, is found by the
  look-ups cleanup repeats for a day, and refunded once.
- Cancels of paid bookings that were cut short (refund failed, crash between refund and
  cancel, refund applied but its answer lost) are finished after the window: one refund at
  the gateway, the reason asked kept, the seats released. A BOOKED booking nobody asked to
  cancel is never touched.

Time moves only through the `clock` fixture. After each scenario docs/design.md#invariants are asserted on
both sides: seats (`assert_bookings_match_ledger`) and money (`assert_money_matches_bookings`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from decimal import Decimal

import pytest
import requests

from bookings.models import Booking, CleanupRun
from bookings_project.exceptions import BookingExpired, PaymentGatewayUnavailable
from flights.models import SeatHold
from payments import services as payment_services
from payments.gateway import HttpPaymentGateway, SimulatedPaymentGateway
from payments.models import Payment, SimulatedCharge
from payments.selectors import payment_attempt_window
from tests.factories import (
    PAST_THE_HOLD,
    SEATS,
    LosesTheAnswer,
    expect_pending,
    initiated,
    late_charge,
    paid,
    pay,
    pending_answer_lost,
    pending_never_charged,
)
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings, assert_problem
from tests.support import http_faults
from tests.support.api import post_payment
from tests.support.cleanup import command, command_failing, counts, summary
from tests.support.payment_gateway import (
    MOCK_BASE,
    TOKEN,
    FakeGateway,
    answers,
    close_gateway,
    dead_url,
    lost,
    mocked,
)
from workflows.cleanup import CleanupCounts, cleanup_stale_bookings
from workflows.services import booking_cancel

pytestmark = pytest.mark.django_db

CAPACITY = 20  # The `flight` fixture's.


# 1. A lost answer: the gateway had charged ------------------------------------------------------


def test_lost_gateway_answer_is_reconciled_to_booked_and_the_clients_retry_answers_that_payment(
    user, user_client, flight, clock, settings, watch
):
    booking = initiated(user, flight)
    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"  # Kept for the whole test: nothing may charge again.
    assert_problem(post_payment(user_client, booking, "k1"), 503, "payment_gateway_unavailable")
    booking, payment = expect_pending(booking)
    charge = SimulatedCharge.objects.get()
    assert (charge.reference, charge.status) == (payment.reference, SimulatedCharge.Status.SUCCEEDED)
    assert payment.gateway_reference == ""  # Charged, but we were never told.
    assert_invariants(flight)

    clock.advance(**PAST_THE_HOLD)
    assert clock.now > booking.expires_at
    assert clock.now - payment.attempted_at > payment_attempt_window()

    # A dry run asks the gateway and says what would happen, changing nothing.
    assert (
        command("--dry-run").strip() == "dry run: expired=0 released_seats=0 retried_releases=0 "
        "reconciled_booked=1 refunded=0 purged_keys=0 requeued_notifications=0 purged_notifications=0 failed=0"
    )
    assert_still_pending(booking, payment, flight)
    assert CleanupRun.objects.count() == 0

    out = command("-v", "2")

    assert f"booking {booking.pk}: the gateway had charged it: BOOKED" in out
    assert out.strip().splitlines()[-1] == summary(reconciled_booked=1)
    assert CleanupRun.objects.get().counts == counts(reconciled_booked=1)
    booking.refresh_from_db()
    payment.refresh_from_db()
    assert (booking.status, booking.seats_state, booking.cancel_reason) == (
        Booking.Status.BOOKED,
        Booking.SeatsState.RESERVED,
        "",
    )
    assert (payment.status, payment.gateway_reference, payment.failure_reason, payment.completed_at) == (
        Payment.Status.SUCCEEDED,
        charge.charge_id,
        "",
        clock.now,
    )
    assert hold_state(booking) == SeatHold.State.HELD
    assert seats_left(flight) == CAPACITY - SEATS
    assert SimulatedCharge.objects.get().charge_id == charge.charge_id
    assert watch.look_ups == [payment.reference] * 2  # The dry run's, and this run's.
    assert watch.charges == [payment.reference]  # The client's one charge: cleanup never charges.
    assert watch.refunds == []
    assert_invariants(flight)

    # The client retries its payment with the same key: it gets the payment cleanup settled.
    retried = post_payment(user_client, booking, "k1")

    assert retried.status_code == 201, retried.content
    body = retried.json()
    assert (body["id"], body["status"], body["gatewayReference"]) == (payment.pk, "SUCCEEDED", charge.charge_id)
    assert watch.charges == [payment.reference]  # Not sent to the gateway again.
    assert SimulatedCharge.objects.count() == 1
    assert Payment.objects.get().attempts == 1
    # ... and that answer is now stored on the key.
    replay = post_payment(user_client, booking, "k1")
    assert (replay.status_code, replay["Idempotent-Replayed"], replay.json()) == (201, "true", body)

    # Nothing is left for the next run.
    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.look_ups == [payment.reference] * 2
    assert_invariants(flight)


# 2. Never charged -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["request-died-before-charging", "resumed-attempt-refused-too"])
def test_pending_booking_the_gateway_never_charged_expires_and_releases_its_seats(
    user, flight, clock, settings, watch, how
):
    booking, payment = pending_never_charged(user, flight)
    if how == "resumed-attempt-refused-too":
        # The client retried with the same key and the gateway refused the connection: that
        # says nothing about the first attempt, so the payment stays PROCESSING.
        settings.PAYMENT_SIMULATED_OUTCOME = "fail"
        clock.advance(minutes=1)
        with pytest.raises(PaymentGatewayUnavailable):
            pay(user, booking)
        booking, payment = expect_pending(booking)
        assert (payment.attempts, payment.attempted_at) == (2, clock.now)
    assert SimulatedCharge.objects.count() == 0
    assert_invariants(flight)

    clock.advance(**PAST_THE_HOLD)
    out = command("-v", "2")

    assert f"booking {booking.pk}: not charged: expired" in out
    assert f"booking {booking.pk}: released {SEATS} seat(s)" in out
    assert out.strip().splitlines()[-1] == summary(expired=1, released_seats=2)
    assert_expired_and_released(booking, clock, flight)
    payment.refresh_from_db()
    assert (payment.status, payment.failure_reason, payment.completed_at, payment.gateway_reference) == (
        Payment.Status.FAILED,
        "The gateway holds no charge for it.",
        clock.now,
        "",
    )
    assert watch.look_ups == [payment.reference]
    assert SimulatedCharge.objects.count() == 0
    assert_invariants(flight)

    # Settled: later runs give no seats back again. For a day they look the payment up once
    # more (a late charge would be refunded), then never again.
    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.look_ups == [payment.reference] * 2
    clock.advance(hours=24)
    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.look_ups == [payment.reference] * 2
    assert seats_left(flight) == CAPACITY
    assert_invariants(flight)


# 3. Declined, or refunded, at the gateway ----------------------------------------------------


def test_pending_booking_declined_at_the_gateway_is_settled_declined_and_expires(user, flight, clock, settings):
    booking = initiated(user, flight)
    settings.PAYMENT_SIMULATED_OUTCOME = "decline"
    with pytest.raises(PaymentGatewayUnavailable):
        pay(user, booking, gateway=LosesTheAnswer())  # Declined, but the answer never arrived.
    booking, payment = expect_pending(booking)
    charge = SimulatedCharge.objects.get()
    assert charge.status == SimulatedCharge.Status.DECLINED
    assert_invariants(flight)

    clock.advance(**PAST_THE_HOLD)
    assert asdict(cleanup_stale_bookings()) == counts(expired=1, released_seats=SEATS)

    assert_expired_and_released(booking, clock, flight)
    payment.refresh_from_db()
    assert (payment.status, payment.gateway_reference, payment.failure_reason, payment.completed_at) == (
        Payment.Status.DECLINED,
        charge.charge_id,
        "Declined by the simulated gateway.",
        clock.now,
    )
    charge.refresh_from_db()
    assert (charge.status, charge.refund_id) == (SimulatedCharge.Status.DECLINED, "")
    assert_invariants(flight)


def test_pending_booking_charged_then_refunded_at_the_gateway_is_settled_refunded_and_expires(
    user, flight, clock, settings, watch
):
    booking, payment, charge = pending_answer_lost(user, flight, settings)
    # Someone refunds the charge at the gateway (by hand, in its dashboard).
    refund = SimulatedPaymentGateway().refund(payment=Payment(gateway_reference=charge.charge_id))
    charge.refresh_from_db()
    assert (charge.status, charge.refund_id) == (SimulatedCharge.Status.REFUNDED, refund.refund_reference)
    watch.refunds.clear()

    clock.advance(**PAST_THE_HOLD)
    assert asdict(cleanup_stale_bookings()) == counts(expired=1, released_seats=SEATS)

    assert_expired_and_released(booking, clock, flight)
    payment.refresh_from_db()
    assert (payment.status, payment.gateway_reference, payment.refunded_at, payment.completed_at) == (
        Payment.Status.REFUNDED,
        charge.charge_id,
        clock.now,
        clock.now,
    )
    assert watch.refunds == []  # Nothing more to give back: no refund asked.
    charge.refresh_from_db()
    assert (charge.status, charge.refund_id) == (SimulatedCharge.Status.REFUNDED, refund.refund_reference)
    assert SimulatedCharge.objects.count() == 1
    assert_invariants(flight)


# 4. The attempt window ----------------------------------------------------------------------------


def test_an_attempt_younger_than_the_window_is_not_reconciled_nor_looked_up_until_the_window_passes(
    user, flight, clock, settings, watch
):
    booking = initiated(user, flight)
    clock.advance(minutes=9, seconds=50)  # Paid just before the hold ends; the answer is lost.
    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    with pytest.raises(PaymentGatewayUnavailable):
        pay(user, booking)
    booking, payment = expect_pending(booking)
    window = payment_attempt_window()
    assert window > dt.timedelta(seconds=20)

    clock.advance(seconds=20)  # The hold ended 10 s ago; the attempt is 20 s old.
    assert clock.now > booking.expires_at
    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.look_ups == []  # The gateway is not even asked.
    assert_still_pending(booking, payment, flight)

    clock.now = payment.attempted_at + window - dt.timedelta(seconds=1)  # The attempt's last second.
    assert (
        command("--dry-run").strip() == "dry run: expired=0 released_seats=0 retried_releases=0 "
        "reconciled_booked=0 refunded=0 purged_keys=0 requeued_notifications=0 purged_notifications=0 failed=0"
    )
    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.look_ups == []
    assert_still_pending(booking, payment, flight)
    assert_invariants(flight)

    clock.now = payment.attempted_at + window  # Now the request that made it is over.
    assert asdict(cleanup_stale_bookings()) == counts(reconciled_booked=1)

    assert watch.look_ups == [payment.reference]
    booking.refresh_from_db()
    payment.refresh_from_db()
    assert (booking.status, payment.status) == (Booking.Status.BOOKED, Payment.Status.SUCCEEDED)
    assert payment.gateway_reference == SimulatedCharge.objects.get().charge_id
    assert seats_left(flight) == CAPACITY - SEATS
    assert_invariants(flight)


# 5. A resumed attempt between the look-up and the lock --------------------------------------


def test_an_attempt_resumed_between_the_look_up_and_the_lock_is_left_alone(user, flight, clock, watch):
    booking, payment = pending_never_charged(user, flight)
    clock.advance(**PAST_THE_HOLD)

    def client_retries_with_the_same_key():
        # payment_create's first step, for real: it resumes the payment, bumping attempted_at.
        attempt = payment_services._start_attempt(
            caller=user, booking_id=booking.pk, amount=booking.total_cost, idempotency_key="k1", user_id=None
        )
        assert (attempt.payment.pk, attempt.charge_needed) == (payment.pk, True)

    watch.after_look_up = client_retries_with_the_same_key
    assert asdict(cleanup_stale_bookings()) == counts()  # Skipped: not counted, not failed.

    assert watch.look_ups == [payment.reference]  # It looked, found nothing, and still did not settle.
    booking.refresh_from_db()
    payment.refresh_from_db()
    assert (booking.status, booking.seats_state) == (Booking.Status.PENDING, Booking.SeatsState.RESERVED)
    assert (payment.status, payment.attempts, payment.attempted_at) == (Payment.Status.PROCESSING, 2, clock.now)
    assert seats_left(flight) == CAPACITY - SEATS
    assert_invariants(flight)

    # The resumed attempt is now protected by the window in turn.
    watch.after_look_up = None
    clock.advance(seconds=1)
    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.look_ups == [payment.reference]

    # The resumed request died too, never charging: once its window is over, it expires.
    clock.now = payment.attempted_at + payment_attempt_window()
    assert asdict(cleanup_stale_bookings()) == counts(expired=1, released_seats=SEATS)
    assert_expired_and_released(booking, clock, flight)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED
    assert SimulatedCharge.objects.count() == 0
    assert_invariants(flight)


def test_an_attempt_resumed_and_charged_during_the_look_up_is_not_cancelled(user, flight, clock, watch):
    booking, payment = pending_never_charged(user, flight)
    clock.advance(**PAST_THE_HOLD)

    def client_retries_and_pays():
        watch.after_look_up = None
        assert pay(user, booking).pk == payment.pk

    # The gateway answered "no charge" just before the retry's charge reached it.
    watch.after_look_up = client_retries_and_pays
    assert asdict(cleanup_stale_bookings()) == counts()

    booking.refresh_from_db()
    payment.refresh_from_db()
    charge = SimulatedCharge.objects.get()
    assert (booking.status, booking.seats_state) == (Booking.Status.BOOKED, Booking.SeatsState.RESERVED)
    assert (payment.status, payment.attempts, payment.gateway_reference) == (
        Payment.Status.SUCCEEDED,
        2,
        charge.charge_id,
    )
    assert watch.charges == [payment.reference]
    assert seats_left(flight) == CAPACITY - SEATS
    assert_invariants(flight)


# 6. The gateway down during reconciliation ---------------------------------------------------


@pytest.mark.parametrize("charged", [True, False], ids=["charged", "never-charged"])
def test_simulated_gateway_down_leaves_the_booking_untouched_and_the_next_run_settles_it(
    user, flight, clock, settings, watch, charged
):
    if charged:
        booking, payment, _ = pending_answer_lost(user, flight, settings)
    else:
        booking, payment = pending_never_charged(user, flight)
    clock.advance(**PAST_THE_HOLD)
    watch.look_up_down = True

    out = command_failing("-v", "2")

    assert f"FAILED reconciliation of booking {booking.pk}: The simulated gateway is down (look-up)." in out
    assert out.strip().splitlines()[-1] == summary(failed=1)
    assert CleanupRun.objects.get().failed == 1
    assert_still_pending(booking, payment, flight)
    assert_invariants(flight)

    # Still down on a dry run: it says so too.
    assert (
        command_failing("--dry-run").strip() == "dry run: expired=0 released_seats=0 retried_releases=0 "
        "reconciled_booked=0 refunded=0 purged_keys=0 requeued_notifications=0 purged_notifications=0 failed=1"
    )

    watch.look_up_down = False
    out = command()

    if charged:
        assert out.strip() == summary(reconciled_booked=1)
        booking.refresh_from_db()
        payment.refresh_from_db()
        assert (booking.status, payment.status) == (Booking.Status.BOOKED, Payment.Status.SUCCEEDED)
        assert payment.gateway_reference == SimulatedCharge.objects.get().charge_id
        assert seats_left(flight) == CAPACITY - SEATS
    else:
        assert out.strip() == summary(expired=1, released_seats=2)
        assert_expired_and_released(booking, clock, flight)
        payment.refresh_from_db()
        assert payment.status == Payment.Status.FAILED
    assert watch.look_ups == [payment.reference] * 3
    assert_invariants(flight)


def pending_charged_over_http(user, flight, fake: FakeGateway) -> tuple[Booking, Payment, str]:
    """The charge applied at the HTTP gateway, its answer timed out: PENDING. Answers the charge id."""
    booking = initiated(user, flight)
    gateway = mocked(fake, charge=(lost(requests.exceptions.ReadTimeout("read timed out"), applied=True),))
    with gateway.rsps, pytest.raises(PaymentGatewayUnavailable):
        pay(user, booking)
    booking, payment = expect_pending(booking)
    (charge,) = fake.charges.values()
    assert fake.standing() == {payment.reference}
    return booking, payment, charge["id"]


LOOK_UP_FAULTS = [
    pytest.param(lost(requests.exceptions.ReadTimeout("read timed out"), applied=False), 1, id="timeout"),
    pytest.param(answers(500, {"error": "boom"}, applied=False), 1, id="500"),
    pytest.param(answers(503, {"error": "down"}, applied=False), 3, id="503-retried-twice"),
    pytest.param(answers(200, "<html>oops</html>", applied=False, content_type="text/html"), 1, id="not-json"),
    pytest.param(answers(200, {"data": [{"id": "ch_1", "status": "weird"}]}, applied=False), 1, id="garbage-charge"),
    pytest.param(answers(200, {"charges": []}, applied=False), 1, id="no-data"),
    pytest.param(lost(http_faults.refused(), applied=False), 1, id="refused"),
]


@pytest.mark.parametrize(("fault", "look_ups"), LOOK_UP_FAULTS)
def test_http_gateway_faults_leave_the_booking_untouched_and_the_next_run_settles_it(
    user, flight, clock, http_fake, fault, look_ups
):
    fake = http_fake
    booking, payment, charge_id = pending_charged_over_http(user, flight, fake)
    clock.advance(**PAST_THE_HOLD)
    assert clock.now - payment.attempted_at > payment_attempt_window()

    down = mocked(fake, lookup=(fault,) * 5)
    with down.rsps:
        out = command_failing("-v", "2")

    assert f"FAILED reconciliation of booking {booking.pk}: " in out
    assert out.strip().splitlines()[-1] == summary(failed=1)
    assert down.lookup.call_count == look_ups  # Bounded: status retries on 502/503/504 only (under `responses`).
    assert down.charge.call_count == down.refund.call_count == 0
    assert_still_pending(booking, payment, flight)
    assert fake.standing() == {payment.reference}
    assert_invariants(flight, standing=fake.standing())

    up = mocked(fake)
    with up.rsps:
        out = command()

    assert out.strip() == summary(reconciled_booked=1)
    assert up.lookup.call_count == 1
    assert up.lookup.calls[0].request.url == f"{MOCK_BASE}/charges?reference={payment.reference}"
    assert up.charge.call_count == up.refund.call_count == 0
    booking.refresh_from_db()
    payment.refresh_from_db()
    assert (booking.status, booking.seats_state) == (Booking.Status.BOOKED, Booking.SeatsState.RESERVED)
    assert (payment.status, payment.gateway_reference) == (Payment.Status.SUCCEEDED, charge_id)
    assert len(fake.charges) == 1
    assert seats_left(flight) == CAPACITY - SEATS
    assert_invariants(flight, standing=fake.standing())


def test_http_gateway_refusing_connections_for_real_fails_the_run_and_changes_nothing(user, flight, clock, http_fake):
    fake = http_fake
    booking, payment, _ = pending_charged_over_http(user, flight, fake)
    clock.advance(**PAST_THE_HOLD)
    nobody_listens = HttpPaymentGateway(base_url=dead_url(), token=TOKEN, timeout=0.5)
    lines: list[str] = []
    try:
        result = cleanup_stale_bookings(payments=nobody_listens, report=lines.append)
    finally:
        close_gateway(nobody_listens)

    assert asdict(result) == counts(failed=1)
    assert lines == [
        f"FAILED reconciliation of booking {booking.pk}: The payment gateway could not be reached (look-up)."
    ]
    assert_still_pending(booking, payment, flight)
    assert_invariants(flight, standing=fake.standing())


# 7. Another amount at the gateway -------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency"), [("1.00", "INR"), ("11000.00", "USD")], ids=["another-amount", "another-currency"]
)
def test_a_charge_for_another_amount_is_not_settled_and_fails_every_run(user, flight, clock, amount, currency):
    booking, payment = pending_never_charged(user, flight)
    # The gateway holds a charge under this payment's reference, but not for its amount.
    SimulatedCharge.objects.create(
        charge_id="sim_ch_other_amount",
        idempotency_key=payment.reference,
        reference=payment.reference,
        amount=Decimal(amount),
        currency=currency,
        status=SimulatedCharge.Status.SUCCEEDED,
    )
    clock.advance(**PAST_THE_HOLD)

    for _ in range(2):  # Not a passing fault: it fails until a person settles it.
        out = command_failing("-v", "2")
        assert f"FAILED reconciliation of booking {booking.pk}: The gateway holds {amount} {currency}" in out
        assert "settle it by hand" in out
        assert out.strip().splitlines()[-1] == summary(failed=1)
        assert_still_pending(booking, payment, flight)
        payment.refresh_from_db()
        assert payment.gateway_reference == ""
        assert_invariants(flight)


def test_dry_run_reports_a_charge_for_another_amount_as_a_failure_like_the_real_run(user, flight, clock):
    _, payment = pending_never_charged(user, flight)
    SimulatedCharge.objects.create(
        charge_id="sim_ch_other_amount",
        idempotency_key=payment.reference,
        reference=payment.reference,
        amount=Decimal("1.00"),
        currency="INR",
        status=SimulatedCharge.Status.SUCCEEDED,
    )
    clock.advance(**PAST_THE_HOLD)

    assert (
        command_failing("--dry-run").strip() == "dry run: expired=0 released_seats=0 retried_releases=0 "
        "reconciled_booked=0 refunded=0 purged_keys=0 requeued_notifications=0 purged_notifications=0 failed=1"
    )
    real = command_failing()
    assert real.strip() == summary(failed=1)


# 8. Late money ---------------------------------------------------------------------------------


def test_a_charge_landing_after_cleanup_settled_the_booking_is_refunded_and_the_client_gets_booking_expired(
    user, user_client, flight, clock, watch
):
    booking = initiated(user, flight)
    runs: list[CleanupCounts] = []

    def slow_network():
        # The charge is delayed on the way: the request's window runs out, cleanup runs, finds
        # no charge at the gateway, and settles the booking as not charged.
        watch.before_charge = None
        clock.advance(**PAST_THE_HOLD)
        runs.append(cleanup_stale_bookings())
        booking.refresh_from_db()
        assert (booking.status, booking.seats_state) == (Booking.Status.CANCELLED, Booking.SeatsState.RELEASED)
        assert Payment.objects.get().status == Payment.Status.FAILED

    watch.before_charge = slow_network
    response = post_payment(user_client, booking, "k1")  # ... and then the charge lands after all.

    assert_problem(response, 409, "booking_expired")
    assert [asdict(run) for run in runs] == [counts(expired=1, released_seats=SEATS)]
    payment = Payment.objects.get()
    charge = SimulatedCharge.objects.get()
    assert (payment.status, payment.gateway_reference, payment.refund_reference, payment.refunded_at) == (
        Payment.Status.REFUNDED,
        charge.charge_id,
        charge.refund_id,
        clock.now,
    )
    assert charge.status == SimulatedCharge.Status.REFUNDED and charge.refund_id.startswith("sim_re_")
    assert watch.refunds == [payment.pk]
    assert_expired_and_released(booking, clock, flight)
    assert_invariants(flight)

    # The answer is final: the same key replays it, and there is nothing left for cleanup.
    replay = post_payment(user_client, booking, "k1")
    assert_problem(replay, 409, "booking_expired")
    assert replay["Idempotent-Replayed"] == "true"
    clock.advance(minutes=5)
    assert asdict(cleanup_stale_bookings()) == counts()
    assert (watch.charges, watch.refunds) == ([payment.reference], [payment.pk])
    assert_invariants(flight)


def test_late_money_recorded_directly_by_record_charge_is_refunded(user, flight, clock, watch):
    """The same path without the API: `_record_charge` with a charge that took money, once
    cleanup has settled the payment as not charged."""
    booking, payment = pending_never_charged(user, flight)
    clock.advance(**PAST_THE_HOLD)
    assert asdict(cleanup_stale_bookings()) == counts(expired=1, released_seats=SEATS)
    gateway = SimulatedPaymentGateway()
    charge = gateway.charge(
        amount=payment.amount, currency=payment.currency, reference=payment.reference, idempotency_key=payment.reference
    )

    with pytest.raises(BookingExpired):
        payment_services._record_charge(payment, charge, gateway)

    payment.refresh_from_db()
    assert (payment.status, payment.gateway_reference) == (Payment.Status.REFUNDED, charge.gateway_reference)
    assert SimulatedCharge.objects.get().refund_id == payment.refund_reference
    assert_expired_and_released(booking, clock, flight)
    assert_invariants(flight)


# 9. Stranded money -------------------------------------------------------------------------


def test_stranded_money_waits_for_the_window_fails_while_the_gateway_is_down_then_is_refunded(
    user, user_client, flight, clock, watch
):
    booking = initiated(user, flight)

    def slow_network():
        watch.before_charge = None
        clock.advance(**PAST_THE_HOLD)
        assert asdict(cleanup_stale_bookings()) == counts(expired=1, released_seats=SEATS)

    watch.before_charge = slow_network
    watch.refund_fault = "down"  # The late charge's immediate refund fails.
    assert_problem(post_payment(user_client, booking, "k1"), 503, "payment_gateway_unavailable")

    payment = Payment.objects.get()
    charge = SimulatedCharge.objects.get()
    booking.refresh_from_db()
    assert (booking.status, booking.seats_state) == (Booking.Status.CANCELLED, Booking.SeatsState.RELEASED)
    assert (payment.status, payment.gateway_reference, payment.updated_at) == (
        Payment.Status.SUCCEEDED,
        charge.charge_id,
        clock.now,
    )
    assert charge.status == SimulatedCharge.Status.SUCCEEDED  # Money stranded on a cancelled booking.
    assert watch.refunds == [payment.pk]
    assert_bookings_match_ledger(flight)
    assert seats_left(flight) == CAPACITY

    # Younger than the window: a live request may be refunding it. Not touched.
    watch.refund_fault = None
    clock.advance(seconds=10)
    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.refunds == [payment.pk]

    # Past the window, the gateway down: it fails, and stays owed.
    watch.refund_fault = "down"
    clock.now = payment.updated_at + payment_attempt_window()
    out = command_failing("-v", "2")
    assert f"FAILED refund of payment {payment.pk}: The simulated gateway is down (refund)." in out
    assert out.strip().splitlines()[-1] == summary(failed=1)
    assert watch.refunds == [payment.pk, payment.pk]
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED

    # The gateway is back: refunded, once.
    watch.refund_fault = None
    clock.advance(minutes=10)
    out = command("-v", "2")

    assert f"payment {payment.pk}: refunded (its booking is cancelled)" in out
    assert out.strip().splitlines()[-1] == summary(refunded=1)
    payment.refresh_from_db()
    charge.refresh_from_db()
    assert (payment.status, payment.refund_reference, payment.refunded_at) == (
        Payment.Status.REFUNDED,
        charge.refund_id,
        clock.now,
    )
    assert charge.status == SimulatedCharge.Status.REFUNDED
    booking.refresh_from_db()
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (
        Booking.Status.CANCELLED,
        Booking.CancelReason.EXPIRED,
        Booking.SeatsState.RELEASED,
    )
    assert seats_left(flight) == CAPACITY
    assert_invariants(flight)

    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.refunds == [payment.pk] * 3
    assert_invariants(flight)


# 10. Cut-short cancels of paid bookings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "reason"),
    [("user", Booking.CancelReason.USER), ("staff", Booking.CancelReason.STAFF)],
    ids=["user", "staff"],
)
def test_a_cancel_whose_refund_failed_is_finished_by_cleanup_after_the_window_with_the_reason_asked(
    user, user_client, staff_client, flight, clock, watch, who, reason
):
    booking, payment, charge = paid(user, flight)
    bystander, _, _ = paid(user, flight)  # Paid, never asked to cancel.
    watch.refund_fault = "down"
    client = user_client if who == "user" else staff_client

    response = client.patch(f"/api/v1/bookings/{booking.pk}/cancel")

    assert_problem(response, 503, "payment_gateway_unavailable")
    booking.refresh_from_db()
    assert (booking.status, booking.seats_state) == (Booking.Status.BOOKED, Booking.SeatsState.RESERVED)
    assert (booking.cancel_requested_at, booking.cancel_reason) == (clock.now, reason)
    assert seats_left(flight) == CAPACITY - 2 * SEATS
    assert_invariants(flight)

    # Younger than the window: the client may be retrying it right now.
    watch.refund_fault = None
    clock.advance(seconds=10)
    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.refunds == [payment.pk]

    # Past the window, the gateway still down: failed, the booking still BOOKED.
    watch.refund_fault = "down"
    clock.now = booking.cancel_requested_at + payment_attempt_window()
    out = command_failing("-v", "2")
    assert f"FAILED finishing the cancel of booking {booking.pk}: " in out
    assert out.strip().splitlines()[-1] == summary(failed=1)
    booking.refresh_from_db()
    payment.refresh_from_db()
    assert (booking.status, booking.seats_state, payment.status) == (
        Booking.Status.BOOKED,
        Booking.SeatsState.RESERVED,
        Payment.Status.SUCCEEDED,
    )
    assert watch.refunds == [payment.pk, payment.pk]

    # The gateway is back.
    watch.refund_fault = None
    clock.advance(minutes=10)
    out = command("-v", "2")

    assert f"booking {booking.pk}: refunded, cancel finished" in out
    assert out.strip().splitlines()[-1] == summary(released_seats=2, refunded=1)
    booking.refresh_from_db()
    payment.refresh_from_db()
    charge.refresh_from_db()
    assert (booking.status, booking.cancel_reason, booking.seats_state, booking.cancelled_at) == (
        Booking.Status.CANCELLED,
        reason,
        Booking.SeatsState.RELEASED,
        clock.now,
    )
    assert (payment.status, payment.refund_reference) == (Payment.Status.REFUNDED, charge.refund_id)
    assert charge.status == SimulatedCharge.Status.REFUNDED
    assert watch.refunds == [payment.pk] * 3
    assert hold_state(booking) == SeatHold.State.RELEASED
    bystander.refresh_from_db()
    assert (bystander.status, bystander.cancel_requested_at) == (Booking.Status.BOOKED, None)
    assert seats_left(flight) == CAPACITY - SEATS
    assert client.get(f"/api/v1/bookings/{booking.pk}").json()["cancelReason"] == reason
    assert_invariants(flight)

    assert asdict(cleanup_stale_bookings()) == counts()
    assert watch.refunds == [payment.pk] * 3


def test_a_crash_between_the_refund_and_the_cancel_is_finished_without_a_second_refund(
    user, flight, clock, monkeypatch, watch
):
    booking, payment, charge = paid(user, flight)
    real = payment_services.payment_refund_for_booking

    def refund_then_die(**kwargs):
        real(**kwargs)
        raise Crash("the process died right after the refund")

    monkeypatch.setattr(payment_services, "payment_refund_for_booking", refund_then_die)
    with pytest.raises(Crash):
        booking_cancel(booking_id=booking.pk, reason=Booking.CancelReason.STAFF)
    monkeypatch.setattr(payment_services, "payment_refund_for_booking", real)  # A new process.

    payment.refresh_from_db()
    charge.refresh_from_db()
    booking.refresh_from_db()
    refund_id, refunded_at = charge.refund_id, charge.refunded_at
    assert (payment.status, payment.refund_reference) == (Payment.Status.REFUNDED, refund_id)
    assert (booking.status, booking.seats_state, booking.cancel_reason) == (
        Booking.Status.BOOKED,
        Booking.SeatsState.RESERVED,
        Booking.CancelReason.STAFF,
    )
    assert booking.cancel_requested_at == clock.now
    assert watch.refunds == [payment.pk]
    assert_bookings_match_ledger(flight)

    clock.advance(seconds=payment_attempt_window().total_seconds() + 1)
    assert asdict(cleanup_stale_bookings()) == counts(refunded=1, released_seats=SEATS)

    assert watch.refunds == [payment.pk]  # The gateway was not asked again.
    charge.refresh_from_db()
    assert (charge.status, charge.refund_id, charge.refunded_at) == (
        SimulatedCharge.Status.REFUNDED,
        refund_id,
        refunded_at,
    )
    booking.refresh_from_db()
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (
        Booking.Status.CANCELLED,
        Booking.CancelReason.STAFF,
        Booking.SeatsState.RELEASED,
    )
    assert seats_left(flight) == CAPACITY
    assert_invariants(flight)


def test_a_refund_applied_whose_answer_was_lost_is_answered_by_the_first_refund(
    user, user_client, flight, clock, watch
):
    booking, payment, charge = paid(user, flight)
    watch.refund_fault = "answer_lost"

    assert_problem(user_client.patch(f"/api/v1/bookings/{booking.pk}/cancel"), 503, "payment_gateway_unavailable")

    charge.refresh_from_db()
    payment.refresh_from_db()
    booking.refresh_from_db()
    refund_id, refunded_at = charge.refund_id, charge.refunded_at
    assert charge.status == SimulatedCharge.Status.REFUNDED and refund_id  # The gateway did refund ...
    assert (payment.status, payment.refund_reference) == (Payment.Status.SUCCEEDED, "")  # ... we were not told.
    assert (booking.status, booking.cancel_reason) == (Booking.Status.BOOKED, Booking.CancelReason.USER)
    assert booking.cancel_requested_at == clock.now

    watch.refund_fault = None
    clock.advance(seconds=payment_attempt_window().total_seconds() + 1)
    assert asdict(cleanup_stale_bookings()) == counts(refunded=1, released_seats=SEATS)

    assert watch.refunds == [payment.pk, payment.pk]  # Asked again, with the same key ...
    charge.refresh_from_db()
    assert (charge.status, charge.refund_id, charge.refunded_at) == (
        SimulatedCharge.Status.REFUNDED,
        refund_id,
        refunded_at,
    )  # ... and answered with the first refund: one refund.
    assert SimulatedCharge.objects.count() == 1
    payment.refresh_from_db()
    assert (payment.status, payment.refund_reference, payment.refunded_at) == (
        Payment.Status.REFUNDED,
        refund_id,
        clock.now,
    )
    booking.refresh_from_db()
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (
        Booking.Status.CANCELLED,
        Booking.CancelReason.USER,
        Booking.SeatsState.RELEASED,
    )
    assert seats_left(flight) == CAPACITY
    assert_invariants(flight)


def test_a_booked_booking_nobody_asked_to_cancel_is_never_touched(user, flight, clock, watch):
    booking, payment, charge = paid(user, flight)
    booking_updated, payment_updated = booking.updated_at, payment.updated_at

    for advance in ({"minutes": 11}, {"days": 2}):
        clock.advance(**advance)
        assert (
            command("--dry-run").strip() == "dry run: expired=0 released_seats=0 retried_releases=0 "
            "reconciled_booked=0 refunded=0 purged_keys=0 requeued_notifications=0 purged_notifications=0 failed=0"
        )
        assert asdict(cleanup_stale_bookings()) == counts()

    assert (watch.look_ups, watch.refunds, watch.charges) == ([], [], [payment.reference])
    booking.refresh_from_db()
    payment.refresh_from_db()
    charge.refresh_from_db()
    assert (booking.status, booking.seats_state, booking.updated_at) == (
        Booking.Status.BOOKED,
        Booking.SeatsState.RESERVED,
        booking_updated,
    )
    assert (payment.status, payment.updated_at) == (Payment.Status.SUCCEEDED, payment_updated)
    assert charge.status == SimulatedCharge.Status.SUCCEEDED
    assert seats_left(flight) == CAPACITY - SEATS
    assert_invariants(flight)


# The run's gateways, and late charges with no request left ------------------------------------


def test_finishing_a_cut_short_cancel_refunds_through_the_runs_gateway(user, flight, clock, watch):
    booking, payment, _ = paid(user, flight)
    watch.refund_fault = "down"
    with pytest.raises(PaymentGatewayUnavailable):
        booking_cancel(booking_id=booking.pk)
    watch.refund_fault = None
    clock.advance(minutes=1)

    class RunsGateway(SimulatedPaymentGateway):
        refunded: list[int] = []

        def refund(self, *, payment):
            self.refunded.append(payment.pk)
            return super().refund(payment=payment)

    runs_gateway = RunsGateway()
    assert asdict(cleanup_stale_bookings(payments=runs_gateway)) == counts(refunded=1, released_seats=SEATS)
    assert_invariants(flight)
    assert runs_gateway.refunded == [payment.pk]


def test_a_charge_the_gateway_applies_after_cleanup_with_no_request_left_is_refunded_by_a_later_run(
    user, flight, clock
):
    # The request died, cleanup expired the booking, then the gateway applied the queued charge.
    booking, payment = late_charge(user, flight, clock)
    assert_bookings_match_ledger(flight)

    clock.advance(hours=1)
    assert asdict(cleanup_stale_bookings()) == counts(refunded=1)

    booking.refresh_from_db()
    payment.refresh_from_db()
    assert booking.status == Booking.Status.CANCELLED
    assert payment.status == Payment.Status.REFUNDED and payment.refund_reference
    assert SimulatedCharge.objects.get(reference=payment.reference).status == SimulatedCharge.Status.REFUNDED
    assert_money_matches_bookings()
    assert asdict(cleanup_stale_bookings()) == counts()  # Refunded once.


def test_a_late_charge_found_by_the_watch_whose_refund_fails_is_marked_and_refunded_by_a_later_run(
    user, flight, clock, watch
):
    booking, payment = late_charge(user, flight, clock)
    assert booking.status == Booking.Status.CANCELLED

    # The watch finds the charge and records it, but the refund fails: the money is owed,
    # and the payment says so (the stranded-money look-up reads only marked payments).
    watch.refund_fault = "down"
    clock.advance(hours=1)
    assert asdict(cleanup_stale_bookings()) == counts(failed=1)
    payment.refresh_from_db()
    assert (payment.status, payment.late_charge_at) == (Payment.Status.SUCCEEDED, clock.now)

    watch.refund_fault = None
    clock.advance(minutes=10)
    assert asdict(cleanup_stale_bookings()) == counts(refunded=1)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert SimulatedCharge.objects.get(reference=payment.reference).status == SimulatedCharge.Status.REFUNDED
    assert_money_matches_bookings()
    assert asdict(cleanup_stale_bookings()) == counts()


# Helpers ------------------------------------------------------------------------------------


class Crash(BaseException):
    """The process dies here: not an `Exception`, so neither cleanup nor the API catches it."""


def seats_left(flight) -> int:
    flight.refresh_from_db()
    return flight.available_seats


def hold_state(booking: Booking) -> str:
    return SeatHold.objects.get(ref=booking.hold_ref).state


def assert_invariants(flight, standing: set[str] | None = None) -> None:
    """The invariants (docs/design.md#invariants), both sides."""
    assert_bookings_match_ledger(flight)
    assert_money_matches_bookings(standing)


def assert_expired_and_released(booking: Booking, clock, flight) -> None:
    booking.refresh_from_db()
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (
        Booking.Status.CANCELLED,
        Booking.CancelReason.EXPIRED,
        Booking.SeatsState.RELEASED,
    )
    assert booking.cancelled_at == clock.now
    assert hold_state(booking) == SeatHold.State.RELEASED
    assert seats_left(flight) == CAPACITY


def assert_still_pending(booking: Booking, payment: Payment, flight) -> None:
    """Untouched: PENDING with its seats held, the payment PROCESSING with the same attempt."""
    booking_before, payment_before = booking.updated_at, (payment.attempted_at, payment.attempts)
    booking.refresh_from_db()
    payment.refresh_from_db()
    assert (booking.status, booking.seats_state, booking.updated_at) == (
        Booking.Status.PENDING,
        Booking.SeatsState.RESERVED,
        booking_before,
    )
    assert (payment.status, payment.completed_at) == (Payment.Status.PROCESSING, None)
    assert (payment.attempted_at, payment.attempts) == payment_before
    assert hold_state(booking) == SeatHold.State.HELD
    assert seats_left(flight) == CAPACITY - SEATS
