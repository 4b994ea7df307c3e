"""The harness of tests/cleanup/test_cleanup_crash_safety.py (its docstring describes the
scenario): `build_scenario` (the `crash_scenario` fixture of `tests.fixtures.cleanup`), the
steps a run makes (`STEPS`, `CRASH_POINTS`, `watch_step`), running and restarting cleanup, and
the checks of what a death leaves and what the next run finishes."""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.db.models import Sum

from bookings import services as booking_services
from bookings.models import Booking, CleanupRun
from bookings.services import booking_create, booking_release_seats
from bookings_project.exceptions import PaymentGatewayUnavailable
from flights import services as flight_services
from flights.models import Flight, SeatHold
from payments import services as payment_services
from payments.gateway import SimulatedPaymentGateway
from payments.idempotency import request_fingerprint, run_idempotently
from payments.models import IdempotencyKey, Payment, SimulatedCharge
from payments.services import payment_create
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, assert_ledger_invariant, assert_money_matches_bookings
from tests.support.cleanup import COUNTS
from workflows import cleanup as cleanup_module
from workflows.services import Reconciliation, booking_cancel, payment_reconcile_expired

Status, SeatsState, Reason = Booking.Status, Booking.SeatsState, Booking.CancelReason
OLDER_THAN_MINUTES = 5
# A flight of a Flights service without holds (the seed's): not in our ledger.
FOREIGN_FLIGHT_ID = 990_001

NOTHING_LEFT = dict.fromkeys(COUNTS, 0)
# What one uninterrupted run of the scenario does.
EVERYTHING = {
    "expired": 3,  # c, a1, a2
    "released_seats": 2 + 3 + 5 + 4 + 1 + 2,  # f1, f2 (cancel), d (retried), c (reconciled), a1, a2 (expired)
    "retried_releases": 1,  # d
    "reconciled_booked": 1,  # b
    "refunded": 5,  # f1, f2 (cancel finished), e1, e2 (stranded), k (late charge)
    "purged_keys": 2,  # g1, g2
    # No worker runs here, and re-queueing is off in the tests (settings_test).
    "requeued_notifications": 0,
    "purged_notifications": 0,
    "failed": 1,  # j, flagged for a person
}


class Crash(BaseException):
    """The process dies: not an `Exception`, so cleanup's per-item handlers let it through."""


# The steps of a run, where cleanup calls them, and how often one uninterrupted run calls each
# (checked by test_one_run_does_every_duty_and_calls_each_step_as_often_as_expected).
# `moved_only`: count only the calls that moved a booking.
@dataclass(frozen=True)
class Step:
    target: object
    name: str
    calls: int
    moved_only: bool = False


STEPS = {
    "booking_cancel": Step(cleanup_module, "booking_cancel", 2),  # f1, f2
    "payment_refund_stranded": Step(cleanup_module, "payment_refund_stranded", 2),  # e1, e2
    "payment_refund_late_charge": Step(cleanup_module, "payment_refund_late_charge", 1),  # k
    # Inside payment_refund_late_charge: the late charge is recorded, not yet refunded.
    "payments.services.payment_refund_stranded": Step(payment_services, "payment_refund_stranded", 1),  # k
    "booking_release_seats": Step(cleanup_module, "booking_release_seats", 2),  # d, c
    "booking_flag_stuck_release": Step(cleanup_module, "booking_flag_stuck_release", 1),  # j
    "payment_reconcile_expired": Step(cleanup_module, "payment_reconcile_expired", 2),  # b, c
    # a1 and a2 (on two flights) in one batch of 2, then the empty batch that ends the set.
    "booking_expire_stale_batch": Step(cleanup_module, "booking_expire_stale_batch", 2),
    # Inside the batch's one transaction: the holds released and the seats back, the bookings
    # not yet cancelled; then their events written, not yet committed.
    "flights.seat_holds_release": Step(flight_services, "seat_holds_release", 1),
    "bookings.audit.record_status_changes": Step(booking_services, "record_status_changes", 1),
    "idempotency_keys_purge": Step(cleanup_module, "idempotency_keys_purge", 1),
    # Inside booking_cancel: the refund is recorded, the booking not yet cancelled.
    "payments.services.payment_refund_for_booking": Step(payment_services, "payment_refund_for_booking", 2),
    "gateway.find_charge": Step(SimulatedPaymentGateway, "find_charge", 3),  # k (watch), b, c (reconcile)
    "gateway.refund": Step(SimulatedPaymentGateway, "refund", 5),  # f1, f2 (in booking_cancel), e1, e2, k
    # The Flights service applied the release; we died before recording it.
    "flights.flight_seats_change": Step(flight_services, "flight_seats_change", 4),  # f1, f2, d, c
    "bookings.services._set_seats_state": Step(booking_services, "_set_seats_state", 4, moved_only=True),
    "CleanupRun.objects.create": Step(CleanupRun.objects, "create", 1),  # died at the very end
}
CRASH_POINTS = [(step, nth) for step, spec in STEPS.items() for nth in range(1, spec.calls + 1)]


def watch_step(monkeypatch, step: Step, *, die_at: int | None = None) -> Counter:
    """Wrap the step: call the real one, count the call, and die after call `die_at`."""
    real = getattr(step.target, step.name)
    seen = Counter()

    def watched(*args, **kwargs):
        result = real(*args, **kwargs)
        if step.moved_only and not result:
            return result
        seen["calls"] += 1
        if seen["calls"] == die_at:
            raise Crash(f"died right after call {die_at} of {step.name}")
        return result

    monkeypatch.setattr(step.target, step.name, watched)
    return seen


# The scenario ------------------------------------------------------------------------------


@dataclass
class Scenario:
    flights: dict[str, Flight]
    bookings: dict[str, Booking]
    run_at: dt.datetime
    booked_at: dt.datetime
    clock: Any  # tests.conftest.Clock
    # Per hold reference: releases that moved seats in the ledger, from the first run on.
    ledger_releases: Counter = field(default_factory=Counter)
    # Per gateway charge id: refunds that moved money at the gateway, from the first run on.
    gateway_refunds: Counter = field(default_factory=Counter)

    def booking(self, name: str) -> Booking:
        return Booking.objects.get(pk=self.bookings[name].pk)

    def payment(self, name: str) -> Payment:
        return Payment.objects.get(booking_id=self.bookings[name].pk)


class _ChargeTimesOut:
    """The charge request timed out before reaching the gateway's books: nothing charged,
    but the outcome is unknown to us (`maybe_charged`)."""

    def charge(self, **kwargs):
        raise PaymentGatewayUnavailable("The payment gateway did not answer the charge in time.")


class _ChargeLandsLate(SimulatedPaymentGateway):
    """A slow charge: while it is in flight the hold runs out, cleanup finds no charge, expires
    the booking and releases its seats; then the charge lands, and the refund that
    `_record_charge` sends for it fails (the gateway went down): money stranded."""

    def __init__(self, clock) -> None:
        self.clock = clock

    def charge(self, **kwargs):
        booking_id = Payment.objects.get(reference=kwargs["reference"]).booking_id
        now = self.clock.advance(minutes=11)
        settled = payment_reconcile_expired(
            booking_id=booking_id, expired_before=now, attempted_before=now, gateway=SimulatedPaymentGateway()
        )
        assert settled == Reconciliation.CANCELLED
        assert booking_release_seats(booking_id=booking_id).seats > 0
        return super().charge(**kwargs)

    def refund(self, *, payment):
        raise PaymentGatewayUnavailable("The simulated gateway is down (refund).", maybe_charged=False)


def _flights_down(**kwargs):
    raise OperationalError("server closed the connection unexpectedly")


def _refund_down(self, *, payment):
    raise PaymentGatewayUnavailable("The simulated gateway is down (refund).", maybe_charged=False)


def _key(user, key: str):
    body = {"bookingId": 1, "amount": "1.00"}
    fingerprint = request_fingerprint(method="POST", path="/api/v1/payments", body=body)
    run_idempotently(user=user, key=key, fingerprint=fingerprint, operation=lambda claim: (201, {"key": key}))


def build_scenario(user, clock, settings, monkeypatch) -> Scenario:
    """The scenario of tests/cleanup/test_cleanup_crash_safety.py, made through the real services."""
    flights = {"A": make_flight(capacity=20), "B": make_flight(capacity=30), "C": make_flight(capacity=25)}
    bookings: dict[str, Booking] = {}

    def book(name: str, flight: str, seats: int) -> Booking:
        bookings[name] = booking_create(user=user, flight_id=flights[flight].pk, seats=seats)
        return bookings[name]

    def pay(booking: Booking, gateway=None):
        return payment_create(
            caller=user,
            booking_id=booking.pk,
            amount=booking.total_cost,
            idempotency_key=f"pay-{booking.pk}",
            gateway=gateway,
        )

    # Keys answered a day ago: past their TTL by the run.
    _key(user, "g1")
    _key(user, "g2")
    booked_at = clock.advance(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)

    book("a1", "A", 1)
    book("a2", "B", 2)

    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    with pytest.raises(PaymentGatewayUnavailable):
        pay(book("b", "A", 3))
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"

    with pytest.raises(PaymentGatewayUnavailable):
        pay(book("c", "B", 4), gateway=_ChargeTimesOut())

    book("d", "C", 5)
    with monkeypatch.context() as patch:
        patch.setattr(flight_services, "flight_seats_change", _flights_down)
        assert booking_cancel(booking_id=bookings["d"].pk).booking.release_owed

    pay(book("f1", "A", 2))
    pay(book("f2", "C", 3))
    pay(book("h", "B", 2))
    with monkeypatch.context() as patch:
        patch.setattr(SimulatedPaymentGateway, "refund", _refund_down)
        with pytest.raises(PaymentGatewayUnavailable):
            booking_cancel(booking_id=bookings["f1"].pk)
        with pytest.raises(PaymentGatewayUnavailable):
            booking_cancel(booking_id=bookings["f2"].pk, reason=Reason.STAFF)

    # Made by hand: only a Flights service without holds (the seed's) and a death mid-call get here.
    bookings["j"] = Booking.objects.create(
        user=user,
        flight_id=FOREIGN_FLIGHT_ID,
        seats=2,
        total_cost=11000,
        status=Status.CANCELLED,
        cancel_reason=Reason.USER,
        cancelled_at=booked_at,
        seats_state=SeatsState.RELEASING,
        flight_keeps_holds=False,
        expires_at=booked_at + dt.timedelta(minutes=10),
    )

    # k: its charge request times out, the gateway still working on it.
    with pytest.raises(PaymentGatewayUnavailable):
        pay(book("k", "A", 4), gateway=_ChargeTimesOut())

    for name, flight, seats in (("e1", "B", 1), ("e2", "C", 6)):  # Each moves the clock 11 minutes on.
        with pytest.raises(PaymentGatewayUnavailable):
            pay(book(name, flight, seats), gateway=_ChargeLandsLate(clock))

    # k: reconciliation finds no charge and expires it; then the gateway applies the charge after
    # all, with no request left to record it.
    settled = payment_reconcile_expired(
        booking_id=bookings["k"].pk, expired_before=clock.now, attempted_before=clock.now
    )
    assert settled == Reconciliation.CANCELLED
    assert booking_release_seats(booking_id=bookings["k"].pk).seats == 4
    late = Payment.objects.get(booking_id=bookings["k"].pk)
    SimulatedPaymentGateway().charge(
        amount=late.amount, currency=late.currency, reference=late.reference, idempotency_key=late.reference
    )

    run_at = clock.advance(minutes=30 - 22)
    _key(user, "g_live")
    book("i", "C", 2)

    s = Scenario(flights=flights, bookings=bookings, run_at=run_at, booked_at=booked_at, clock=clock)
    _check_the_scenario_starts_as_described(s)
    _count_what_moves(s, monkeypatch)
    return s


def _check_the_scenario_starts_as_described(s: Scenario) -> None:
    states = {name: (b.status, b.seats_state) for name, b in ((n, s.booking(n)) for n in s.bookings)}
    assert states == {
        "a1": (Status.INITIATED, SeatsState.RESERVED),
        "a2": (Status.INITIATED, SeatsState.RESERVED),
        "b": (Status.PENDING, SeatsState.RESERVED),
        "c": (Status.PENDING, SeatsState.RESERVED),
        "d": (Status.CANCELLED, SeatsState.RESERVED),
        "e1": (Status.CANCELLED, SeatsState.RELEASED),
        "e2": (Status.CANCELLED, SeatsState.RELEASED),
        "f1": (Status.BOOKED, SeatsState.RESERVED),
        "f2": (Status.BOOKED, SeatsState.RESERVED),
        "h": (Status.BOOKED, SeatsState.RESERVED),
        "i": (Status.INITIATED, SeatsState.RESERVED),
        "j": (Status.CANCELLED, SeatsState.RELEASING),
        "k": (Status.CANCELLED, SeatsState.RELEASED),
    }
    payments = {name: s.payment(name).status for name in ("b", "c", "e1", "e2", "f1", "f2", "h", "k")}
    assert payments == {
        "b": Payment.Status.PROCESSING,
        "c": Payment.Status.PROCESSING,
        "e1": Payment.Status.SUCCEEDED,
        "e2": Payment.Status.SUCCEEDED,
        "f1": Payment.Status.SUCCEEDED,
        "f2": Payment.Status.SUCCEEDED,
        "h": Payment.Status.SUCCEEDED,
        "k": Payment.Status.FAILED,
    }
    # The gateway charged b (answer lost), e1, e2, k (late), f1, f2, h; never c.
    charged = set(SimulatedCharge.objects.filter(status="succeeded").values_list("reference", flat=True))
    assert charged == {s.payment(name).reference for name in ("b", "e1", "e2", "f1", "f2", "h", "k")}
    assert SimulatedCharge.objects.count() == 7
    assert [s.booking(name).cancel_requested_at for name in ("f1", "f2")] == [s.booked_at] * 2
    assert sorted(IdempotencyKey.objects.values_list("key", flat=True)) == ["g1", "g2", "g_live"]
    assert _available_seats(s) == {"A": 20 - 1 - 3 - 2, "B": 30 - 2 - 4 - 2, "C": 25 - 5 - 3 - 2}
    assert work_left(s) == EVERYTHING


def _count_what_moves(s: Scenario, monkeypatch) -> None:
    """From here on, count the releases the ledger applies and the refunds the gateway makes."""
    real_change, real_refund = flight_services.flight_seats_change, SimulatedPaymentGateway.refund
    real_batch = cleanup_module.booking_expire_stale_batch

    def seats_change(**kwargs):
        ref = kwargs["reservation"]
        before = SeatHold.objects.filter(ref=ref).values_list("state", flat=True).first()
        result = real_change(**kwargs)
        if not kwargs["decrease"] and before == SeatHold.State.HELD and result.hold.state == SeatHold.State.RELEASED:
            s.ledger_releases[ref] += 1
        return result

    def refund(self, *, payment):
        charge = SimulatedCharge.objects.get(charge_id=payment.gateway_reference)
        answer = real_refund(self, payment=payment)
        if charge.status == "succeeded" and SimulatedCharge.objects.get(pk=charge.pk).status == "refunded":
            s.gateway_refunds[charge.charge_id] += 1
        return answer

    def expire_batch(**kwargs):
        # Read from the ledger around the batch, which has committed (or rolled back) by its return.
        before = set(SeatHold.objects.filter(state=SeatHold.State.HELD).values_list("ref", flat=True))
        result = real_batch(**kwargs)
        after = set(SeatHold.objects.filter(state=SeatHold.State.RELEASED).values_list("ref", flat=True))
        for ref in before & after:
            s.ledger_releases[ref] += 1
        return result

    monkeypatch.setattr(flight_services, "flight_seats_change", seats_change)
    monkeypatch.setattr(cleanup_module, "booking_expire_stale_batch", expire_batch)
    monkeypatch.setattr(SimulatedPaymentGateway, "refund", refund)


# Running it and reading the state ----------------------------------------------------------


def restart(s: Scenario) -> None:
    """The next run starts a minute later (a restart, or cron): past the payment attempt window,
    which a SUCCEEDED payment on a cancelled booking waits out before cleanup refunds it, since a
    live request may be refunding it (so a rerun in the same instant may leave that for later)."""
    s.clock.advance(minutes=1)


def run_cleanup(*extra: str) -> dict[str, int]:
    """Run the command as cron does; answer its summary's counts (it exits 1 when failed > 0)."""
    out = io.StringIO()
    args = ("cleanup_stale_bookings", *extra, "--older-than", str(OLDER_THAN_MINUTES), "--batch-size", "2", "-v", "2")
    try:
        call_command(*args, stdout=out)
        exited_with_error = False
    except CommandError:
        exited_with_error = True
    summary = out.getvalue().strip().splitlines()[-1].removeprefix("dry run: ")
    counts = {name: int(value) for name, value in (item.split("=") for item in summary.split())}
    assert list(counts) == list(COUNTS), summary
    assert exited_with_error == (counts["failed"] > 0), summary
    return counts


def _seats(bookings) -> int:
    return sum(booking.seats for booking in bookings)


def work_left(s: Scenario) -> dict[str, int]:
    """What the next run must do, read from the database: the counts it must report."""
    now = s.clock.now
    cancels = list(Booking.objects.filter(status=Status.BOOKED, cancel_requested_at__isnull=False))
    owed = list(Booking.objects.filter(status=Status.CANCELLED, seats_state__in=Booking.SEATS_OWED))
    # Every PENDING booking of the scenario is past its hold and its payment attempt.
    pending = list(Booking.objects.filter(status=Status.PENDING))
    charged = [
        booking
        for booking in pending
        if SimulatedCharge.objects.filter(
            reference=Payment.objects.get(booking=booking, status=Payment.Status.PROCESSING).reference,
            status="succeeded",
        ).exists()
    ]
    unpaid = [booking for booking in pending if booking not in charged]
    to_expire = list(
        Booking.objects.filter(status=Status.INITIATED, expires_at__lte=now - dt.timedelta(minutes=OLDER_THAN_MINUTES))
    )
    stranded = Payment.objects.filter(status=Payment.Status.SUCCEEDED, booking__status=Status.CANCELLED).count()
    # Settled as not charged by reconciliation (within the watch), yet charged at the gateway.
    charged_late = [
        payment
        for payment in Payment.objects.filter(status=Payment.Status.FAILED, reconciled_at__isnull=False)
        if SimulatedCharge.objects.filter(reference=payment.reference, status="succeeded").exists()
    ]
    return {
        "expired": len(unpaid) + len(to_expire),
        "released_seats": _seats(cancels) + _seats(owed) + _seats(unpaid) + _seats(to_expire),
        "retried_releases": len(owed),
        "reconciled_booked": len(charged),
        "refunded": len(cancels) + stranded + len(charged_late),
        "purged_keys": IdempotencyKey.objects.filter(expires_at__lte=now).count(),
        "requeued_notifications": 0,
        "purged_notifications": 0,
        "failed": Booking.objects.filter(status=Status.CANCELLED, seats_state=SeatsState.RELEASING).count(),
    }


def _available_seats(s: Scenario) -> dict[str, int]:
    return {name: Flight.objects.get(pk=flight.pk).available_seats for name, flight in s.flights.items()}


def _charge_of(payment: Payment) -> SimulatedCharge:
    return SimulatedCharge.objects.get(reference=payment.reference)


RELEASED_BY_CLEANUP = ("a1", "a2", "c", "d", "f1", "f2")
HOLDING = ("b", "h", "i")
REFUNDED_BY_CLEANUP = ("e1", "e2", "f1", "f2", "k")


def assert_partial_state_is_safe(s: Scenario) -> None:
    """After a death at any point: what is done is done right, and what is not is still owed."""
    for name, flight in s.flights.items():
        assert_ledger_invariant(flight)
        held = flight.capacity - flight.available_seats
        reserved = Booking.objects.filter(flight_id=flight.pk, seats_state=SeatsState.RESERVED)
        live = reserved.exclude(status=Status.CANCELLED).aggregate(total=Sum("seats"))["total"] or 0
        owed_or_live = reserved.aggregate(total=Sum("seats"))["total"] or 0
        # Live bookings keep their seats; no more seats given back than bookings held.
        assert live <= held <= owed_or_live, (name, live, held, owed_or_live)
    for name in s.bookings:
        booking = s.booking(name)
        if name == "j":
            assert (booking.status, booking.seats_state) in {
                (Status.CANCELLED, SeatsState.RELEASING),
                (Status.CANCELLED, SeatsState.RECONCILE),
            }
            continue
        hold = SeatHold.objects.get(ref=booking.hold_ref)
        assert hold.seats == booking.seats, name
        if booking.status != Status.CANCELLED:
            assert (hold.state, booking.seats_state) == (SeatHold.State.HELD, SeatsState.RESERVED), name
        if booking.seats_state == SeatsState.RELEASED:
            assert hold.state == SeatHold.State.RELEASED, name
        assert booking.seats_state in (SeatsState.RESERVED, SeatsState.RELEASED), name
    assert all(count == 1 for count in s.ledger_releases.values()), s.ledger_releases
    assert set(s.ledger_releases) <= {s.bookings[name].hold_ref for name in RELEASED_BY_CLEANUP}

    # Nothing that must stay is touched; nothing paid is cancelled without its refund.
    assert (s.booking("h").status, s.booking("i").status) == (Status.BOOKED, Status.INITIATED)
    assert s.booking("b").status in (Status.PENDING, Status.BOOKED)
    for name in ("f1", "f2"):
        if s.booking(name).status == Status.CANCELLED:
            assert s.payment(name).status == Payment.Status.REFUNDED, name
        else:
            assert s.booking(name).status == Status.BOOKED, name
    stranded = set(
        Payment.objects.filter(status=Payment.Status.SUCCEEDED, booking__status=Status.CANCELLED).values_list(
            "booking_id", flat=True
        )
    )
    assert stranded <= {s.bookings[name].pk for name in ("e1", "e2", "k")}, stranded
    # The gateway: one charge per payment, none for c, and only what was to be refunded is.
    for payment in Payment.objects.all():
        assert SimulatedCharge.objects.filter(reference=payment.reference).count() <= 1
    assert not SimulatedCharge.objects.filter(reference=s.payment("c").reference).exists()
    for name in ("b", "h"):
        assert _charge_of(s.payment(name)).status == "succeeded", name
    assert all(count == 1 for count in s.gateway_refunds.values()), s.gateway_refunds


def assert_every_duty_done(s: Scenario) -> None:
    for flight in s.flights.values():
        assert_bookings_match_ledger(flight)
    assert_money_matches_bookings()
    assert _available_seats(s) == {"A": 20 - 3, "B": 30 - 2, "C": 25 - 2}  # b, h, i hold theirs

    expected = {
        "a1": (Status.CANCELLED, SeatsState.RELEASED, Reason.EXPIRED),
        "a2": (Status.CANCELLED, SeatsState.RELEASED, Reason.EXPIRED),
        "b": (Status.BOOKED, SeatsState.RESERVED, ""),
        "c": (Status.CANCELLED, SeatsState.RELEASED, Reason.EXPIRED),
        "d": (Status.CANCELLED, SeatsState.RELEASED, Reason.USER),
        "e1": (Status.CANCELLED, SeatsState.RELEASED, Reason.EXPIRED),
        "e2": (Status.CANCELLED, SeatsState.RELEASED, Reason.EXPIRED),
        "f1": (Status.CANCELLED, SeatsState.RELEASED, Reason.USER),
        "f2": (Status.CANCELLED, SeatsState.RELEASED, Reason.STAFF),
        "h": (Status.BOOKED, SeatsState.RESERVED, ""),
        "i": (Status.INITIATED, SeatsState.RESERVED, ""),
        "j": (Status.CANCELLED, SeatsState.RECONCILE, Reason.USER),
        "k": (Status.CANCELLED, SeatsState.RELEASED, Reason.EXPIRED),
    }
    actual = {name: (b.status, b.seats_state, b.cancel_reason) for name, b in ((n, s.booking(n)) for n in s.bookings)}
    assert actual == expected
    for name in ("a1", "a2", "c", "f1", "f2"):  # Cancelled by cleanup, at one of the runs.
        assert s.run_at <= s.booking(name).cancelled_at <= s.clock.now, name
    for name in RELEASED_BY_CLEANUP:
        assert s.run_at <= s.booking(name).seats_released_at <= s.clock.now, name
    assert [s.booking(name).cancel_requested_at for name in ("f1", "f2")] == [s.booked_at] * 2
    assert s.booking("h").cancel_requested_at is None
    assert s.booking("j").flight_service_error

    # The ledger: each hold released once, by one seat change that moved seats.
    holds = dict(SeatHold.objects.values_list("ref", "state"))
    assert holds == {
        s.bookings[name].hold_ref: SeatHold.State.HELD if name in HOLDING else SeatHold.State.RELEASED
        for name in s.bookings
        if name != "j"
    }
    assert s.ledger_releases == Counter({s.bookings[name].hold_ref: 1 for name in RELEASED_BY_CLEANUP})

    # The money: b reconciled as charged, c as not, the rest refunded once.
    b, c = s.payment("b"), s.payment("c")
    assert (b.status, b.gateway_reference) == (Payment.Status.SUCCEEDED, _charge_of(b).charge_id)
    assert _charge_of(b).status == "succeeded"
    assert (c.status, c.failure_reason) == (Payment.Status.FAILED, "The gateway holds no charge for it.")
    assert not SimulatedCharge.objects.filter(reference=c.reference).exists()
    for name in REFUNDED_BY_CLEANUP:
        payment, charge = s.payment(name), _charge_of(s.payment(name))
        assert (payment.status, charge.status) == (Payment.Status.REFUNDED, "refunded"), name
        assert payment.refund_reference == charge.refund_id != "", name
    assert s.gateway_refunds == Counter({_charge_of(s.payment(name)).charge_id: 1 for name in REFUNDED_BY_CLEANUP})
    assert _charge_of(s.payment("h")).status == "succeeded"
    assert s.payment("k").failure_reason == "Charged after its booking was settled as unpaid."
    assert Payment.objects.count() == SimulatedCharge.objects.count() + 1 == 8  # c has none
    for payment in Payment.objects.exclude(pk=c.pk):
        assert SimulatedCharge.objects.filter(reference=payment.reference).count() == 1

    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["g_live"]
    assert work_left(s) == NOTHING_LEFT
