"""`manage.py cleanup_stale_bookings` as cron runs it (docs/design.md#cleanup), on the real database.

Time is moved with the fixed `clock` (never slept). The file proves that:

- an INITIATED booking expires when its hold ends, not a second before: CANCELLED (expired),
  its seats given back once; a BOOKED booking is never touched however old; a PENDING one is
  settled only once its payment attempt window is over (charged: BOOKED; not: expired);
- `--dry-run` changes no row anywhere (bookings, payments, keys, the gateway's books, the
  flight ledger, the run history) and prints the counts the real run then produces;
- the output is one summary line (`-v 2` adds a line per booking); a failed step makes the
  command raise `CommandError` (exit status 1), logged at WARNING by `bookings.cleanup`; bad
  arguments exit 2 from the shell; a real shell run exits 1, then 0 once Flights is back;
- a release that failed (Flights down at expiry, or at the customer's cancel, in process or
  over HTTP) is finished by the next run once Flights is back, exactly once;
- `--older-than` spares recently ended holds; keyset batches of any size neither skip nor
  repeat a booking;
- idempotency keys past their TTL are purged, live ones and ones under a live lease kept;
- each real run writes a `CleanupRun` row (counts, host); a dry run writes none.

After each run the invariants (docs/design.md#invariants) hold on both sides: seats (`assert_bookings_match_ledger`) and
money (`assert_money_matches_bookings`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest
import requests
import responses
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError
from responses import matchers

from bookings.models import Booking, CleanupRun
from bookings.services import booking_create
from bookings_project.exceptions import PaymentGatewayUnavailable
from flights import services as flight_services
from flights.models import Flight, SeatHold
from payments.gateway import SimulatedPaymentGateway
from payments.models import IdempotencyKey, Payment, SimulatedCharge
from payments.selectors import payment_attempt_window
from tests.factories import (
    DiesBeforeCharging,
    RequestDied,
    cancel_cut_short,
    initiated,
    make_flight,
    pay,
    pending_answer_lost,
    reload,
    stranded_payment,
)
from tests.helpers import (
    assert_bookings_match_ledger,
    assert_money_matches_bookings,
    closed_port,
    flight_faults,
    seats_left,
)
from tests.support import http_faults
from tests.support.cleanup import summary
from workflows.services import booking_cancel

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
Status, SeatsState, Reason = Booking.Status, Booking.SeatsState, Booking.CancelReason

SUMMARY = re.compile(
    r"^expired=\d+ released_seats=\d+ retried_releases=\d+ reconciled_booked=\d+"
    r" refunded=\d+ purged_keys=\d+ requeued_notifications=\d+ purged_notifications=\d+ failed=\d+$"
)
CONNECTION_LOST = "server closed the connection unexpectedly"  # In process: FlightServiceUnavailable.
LOCK_TIMEOUT = "database is locked"  # In process: ResourceBusy (a definite "nothing changed").

real_seats_change = flight_services.flight_seats_change
real_holds_release = flight_services.seat_holds_release


# 1. Expiry: INITIATED, BOOKED, PENDING ----------------------------------------------------


def test_an_initiated_booking_expires_when_its_hold_ends_not_a_second_before(user, flight, clock):
    booking = initiated(user, flight, 3)
    assert booking.expires_at == clock.now + dt.timedelta(minutes=10)

    clock.advance(minutes=10, seconds=-1)
    assert cleanup().lines == [summary()]
    booking = reload(booking)
    assert (booking.status, booking.seats_state, booking.cancelled_at) == (Status.INITIATED, SeatsState.RESERVED, None)
    assert seats_left(flight) == 17
    assert_consistent(flight)

    clock.advance(seconds=1)
    assert cleanup().lines == [summary(expired=1, released_seats=3)]
    booking = reload(booking)
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (
        Status.CANCELLED,
        Reason.EXPIRED,
        SeatsState.RELEASED,
    )
    assert booking.cancelled_at == booking.seats_released_at == clock.now
    hold = SeatHold.objects.get(ref=booking.hold_ref)
    assert (hold.seats, hold.state) == (3, SeatHold.State.RELEASED)
    assert seats_left(flight) == 20
    assert_consistent(flight)

    # Nothing left to do: a later run gives nothing back twice.
    clock.advance(minutes=10)
    assert cleanup().lines == [summary()]
    assert seats_left(flight) == 20
    assert_consistent(flight)


def test_a_paid_booking_is_never_expired_however_old(user, flight, clock):
    paid = initiated(user, flight, 2)
    payment = pay(user, paid)
    unpaid = initiated(user, flight, 1)

    clock.advance(days=30)
    assert cleanup().lines == [summary(expired=1, released_seats=1)]

    assert reload(unpaid).status == Status.CANCELLED
    paid = reload(paid)
    assert (paid.status, paid.seats_state, paid.cancel_reason, paid.cancelled_at) == (
        Status.BOOKED,
        SeatsState.RESERVED,
        "",
        None,
    )
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_at) == (Payment.Status.SUCCEEDED, None)
    assert SimulatedCharge.objects.get(reference=payment.reference).status == SimulatedCharge.Status.SUCCEEDED
    assert SeatHold.objects.get(ref=paid.hold_ref).state == SeatHold.State.HELD
    assert seats_left(flight) == 18
    assert_consistent(flight)

    assert cleanup().lines == [summary()]
    assert reload(paid).status == Status.BOOKED
    assert_consistent(flight)


def test_a_pending_booking_never_charged_is_expired_only_once_its_attempt_window_is_over(user, flight, clock, settings):
    booking = initiated(user, flight, 2)
    clock.advance(minutes=9)
    with pytest.raises(RequestDied):  # The first attempt dies before the gateway is asked.
        pay(user, booking, key="k1", gateway=DiesBeforeCharging())
    clock.advance(minutes=1, seconds=30)  # The hold ended 30 s ago; the client retries the same key.
    settings.PAYMENT_SIMULATED_OUTCOME = "fail"
    with pytest.raises(PaymentGatewayUnavailable):
        pay(user, booking, key="k1")
    payment = Payment.objects.get(booking=booking)
    assert (payment.status, payment.attempts, payment.attempted_at) == (Payment.Status.PROCESSING, 2, clock.now)
    assert reload(booking).status == Status.PENDING
    retried_at = clock.now

    # Its latest attempt may still be running: left alone to the last second of the window.
    assert cleanup().lines == [summary()]
    clock.now = retried_at + payment_attempt_window() - dt.timedelta(seconds=1)
    assert cleanup().lines == [summary()]
    assert reload(booking).status == Status.PENDING
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PROCESSING
    assert seats_left(flight) == 18
    assert_consistent(flight)

    clock.advance(seconds=1)
    assert cleanup(verbosity=2).lines == [
        f"booking {booking.pk}: not charged: expired",
        f"booking {booking.pk}: released 2 seat(s)",
        summary(expired=1, released_seats=2),
    ]

    booking = reload(booking)
    assert (booking.status, booking.cancel_reason, booking.seats_state, booking.cancelled_at) == (
        Status.CANCELLED,
        Reason.EXPIRED,
        SeatsState.RELEASED,
        clock.now,
    )
    payment.refresh_from_db()
    assert (payment.status, payment.failure_reason, payment.completed_at) == (
        Payment.Status.FAILED,
        "The gateway holds no charge for it.",
        clock.now,
    )
    assert SimulatedCharge.objects.count() == 0
    assert SeatHold.objects.get(ref=booking.hold_ref).state == SeatHold.State.RELEASED
    assert seats_left(flight) == 20
    assert_consistent(flight)
    assert cleanup().lines == [summary()]


def test_a_pending_booking_whose_answer_was_lost_is_booked_not_expired(user, flight, clock, settings):
    booking, _, charge = pending_answer_lost(user, flight, settings, 2)
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"

    clock.advance(minutes=10)  # Hold over, attempt window over (it is under a minute).
    assert cleanup().lines == [summary(reconciled_booked=1)]

    booking = reload(booking)
    assert (booking.status, booking.seats_state) == (Status.BOOKED, SeatsState.RESERVED)
    payment = Payment.objects.get(booking=booking)
    assert (payment.status, payment.gateway_reference) == (Payment.Status.SUCCEEDED, charge.charge_id)
    assert seats_left(flight) == 18
    assert_consistent(flight)
    assert cleanup().lines == [summary()]


@pytest.mark.usefixtures("saga_in_process")  # Only the saga has a booking without its seats.
@pytest.mark.parametrize("reserved", [False, True], ids=["died-before-reserving", "died-after-reserving"])
def test_a_booking_whose_creator_died_mid_reserve_is_expired_and_whatever_was_taken_comes_back(
    user, flight, clock, monkeypatch, reserved
):
    def reserve_then_die(**kwargs):
        if reserved:
            real_seats_change(**kwargs)
        raise RequestDied()

    monkeypatch.setattr(flight_services, "flight_seats_change", reserve_then_die)
    with pytest.raises(RequestDied):
        booking_create(user=user, flight_id=flight.pk, seats=2)
    monkeypatch.setattr(flight_services, "flight_seats_change", real_seats_change)
    booking = Booking.objects.get()
    assert (booking.status, booking.seats_state) == (Status.INITIATED, SeatsState.UNCONFIRMED)
    assert seats_left(flight) == (18 if reserved else 20)
    clock.advance(minutes=10)

    # A dry run cannot know whether the reserve arrived (it does not ask the Flights service).
    assert parse(cleanup("--dry-run").line)["expired"] == 1
    assert cleanup().lines == [summary(expired=1, released_seats=2 if reserved else 0)]

    booking = reload(booking)
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (
        Status.CANCELLED,
        Reason.EXPIRED,
        SeatsState.RELEASED,
    )
    hold = SeatHold.objects.get(ref=booking.hold_ref)  # Released; a tombstone if nothing was taken.
    assert (hold.seats, hold.state) == (2 if reserved else 0, SeatHold.State.RELEASED)
    assert seats_left(flight) == 20
    assert_consistent(flight)
    assert cleanup().lines == [summary()]


# 2. --dry-run -------------------------------------------------------------------------------


def test_dry_run_changes_nothing_and_predicts_the_real_run(user, other_user, flight, clock, flights, settings):
    stranded = stranded_payment(user, flight, clock)  # At T0 + 11 min, its booking already expired.

    owed = initiated(user, flight, 3)  # Cancelled while the Flights service was down: seats owed.
    flights.down()
    assert booking_cancel(booking_id=owed.pk).booking.release_owed
    flights.back()

    charged = initiated(user, flight, 2)  # PENDING: the gateway charged, its answer was lost.
    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    with pytest.raises(PaymentGatewayUnavailable):
        pay(user, charged, key="lost")
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"

    unpaid = initiated(other_user, flight, 1)  # INITIATED, to expire.
    make_key(user, "old", expires_at=clock.now + dt.timedelta(minutes=5))
    make_key(user, "live", expires_at=clock.now + dt.timedelta(hours=24))
    clock.advance(minutes=11)
    assert seats_left(flight) == 20 - 3 - 2 - 1

    before = snapshot()
    counts = dict(expired=1, released_seats=4, retried_releases=1, reconciled_booked=1, refunded=1, purged_keys=1)
    assert cleanup("--dry-run").lines == ["dry run: " + summary(**counts)]
    detailed = cleanup("--dry-run", verbosity=2)

    assert detailed.lines == [
        f"booking {owed.pk}: would retry its release",
        f"payment {stranded.pk}: would refund (its booking is cancelled)",
        f"booking {charged.pk}: the gateway has charged it: would be BOOKED",
        f"booking {unpaid.pk}: would expire",
        "dry run: " + summary(**counts),
    ]
    assert snapshot() == before  # No row changed, and no CleanupRun was written.
    assert_bookings_match_ledger(flight)  # (The money side waits for the stranded refund.)

    real = cleanup(verbosity=2)

    assert real.lines == [
        f"booking {owed.pk}: released 3 seat(s)",
        f"payment {stranded.pk}: refunded (its booking is cancelled)",
        f"booking {charged.pk}: the gateway had charged it: BOOKED",
        f"booking {unpaid.pk}: expired",
        f"booking {unpaid.pk}: released 1 seat(s)",
        summary(**counts),
    ]
    stranded.refresh_from_db()
    assert stranded.status == Payment.Status.REFUNDED
    assert SimulatedCharge.objects.get(reference=stranded.reference).status == SimulatedCharge.Status.REFUNDED
    assert reload(owed).seats_state == SeatsState.RELEASED
    assert reload(charged).status == Status.BOOKED
    assert Payment.objects.get(booking=charged).status == Payment.Status.SUCCEEDED
    assert (reload(unpaid).status, reload(unpaid).cancel_reason) == (Status.CANCELLED, Reason.EXPIRED)
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["live"]
    assert CleanupRun.objects.count() == len(before["CleanupRun"]) + 1
    assert seats_left(flight) == 20 - 2
    assert_consistent(flight)

    assert cleanup("--dry-run").lines == ["dry run: " + summary()]
    assert cleanup().lines == [summary()]


def test_a_cut_short_cancel_is_finished_after_the_attempt_window_as_a_dry_run_predicts(
    user, flight, clock, monkeypatch
):
    booking, payment, _ = cancel_cut_short(user, flight, 4)
    requested_at = booking.cancel_requested_at
    assert_consistent(flight)

    # A live request may still be refunding it: left alone until the window is over.
    clock.now = requested_at + payment_attempt_window() - dt.timedelta(seconds=1)
    assert cleanup().lines == [summary()]
    assert reload(booking).status == Status.BOOKED

    clock.advance(seconds=1)
    before = snapshot()
    assert cleanup("--dry-run", verbosity=2).lines == [
        f"booking {booking.pk}: would refund and finish its cancel",
        "dry run: " + summary(refunded=1, released_seats=4),
    ]
    assert snapshot() == before

    real = cleanup(verbosity=2)

    assert real.lines == [f"booking {booking.pk}: refunded, cancel finished", summary(refunded=1, released_seats=4)]
    booking = reload(booking)
    # The reason it was asked with is kept.
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (
        Status.CANCELLED,
        Reason.USER,
        SeatsState.RELEASED,
    )
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert SimulatedCharge.objects.get(reference=payment.reference).status == SimulatedCharge.Status.REFUNDED
    assert seats_left(flight) == 20
    assert_consistent(flight)
    assert cleanup().lines == [summary()]


# 3. Output, exit status, logging ------------------------------------------------------------


@pytest.mark.parametrize("verbosity", [0, 1, 2, 3])
def test_one_summary_line_at_any_verbosity_and_a_line_per_booking_from_2(user, flight, clock, verbosity):
    first, second = initiated(user, flight, 1), initiated(user, flight, 2)
    clock.advance(minutes=10)

    out = cleanup(verbosity=verbosity)

    details = [
        f"booking {first.pk}: expired",
        f"booking {first.pk}: released 1 seat(s)",
        f"booking {second.pk}: expired",
        f"booking {second.pk}: released 2 seat(s)",
    ]
    assert out.lines == (details if verbosity >= 2 else []) + [summary(expired=2, released_seats=3)]
    assert SUMMARY.match(out.line)
    assert_consistent(flight)


def test_the_summary_is_logged_through_logging(user, flight, clock, caplog):
    initiated(user, flight, 2)
    clock.advance(minutes=10)

    with caplog.at_level(logging.INFO, logger="bookings.cleanup"):
        cleanup("--dry-run")
        cleanup()

    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "bookings.cleanup"]
    line = summary(expired=1, released_seats=2)
    assert logged == [
        (logging.INFO, f"cleanup_stale_bookings (dry run): {line}"),
        (logging.INFO, f"cleanup_stale_bookings: {line}"),
    ]


def manage(*args: str, database: Path, **env: str) -> subprocess.CompletedProcess:
    """A fresh `manage.py` process on its own SQLite file, with none of this shell's settings."""
    inherited = ("DATABASE_URL", "DEBUG", "SECRET_KEY", "DJANGO_ENV", "LOG_LEVEL", "FLIGHT_", "PAYMENT_", "BOOKING_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    clean |= {"DJANGO_SETTINGS_MODULE": "bookings_project.settings", "DATABASE_URL": f"sqlite:///{database}"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--batch-size", "0"), "argument --batch-size: must be between 1 and 10000, not 0"),
        (("--batch-size", "abc"), "argument --batch-size: 'abc' is not a whole number"),
        (("--older-than", "-1"), "argument --older-than: must be between 0 and 525600, not -1"),
        (("--older-than", "1.5"), "argument --older-than: '1.5' is not a whole number"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message_before_touching_anything(tmp_path, args, message):
    database = tmp_path / "never-created.sqlite3"

    result = manage("cleanup_stale_bookings", *args, database=database)

    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"manage.py cleanup_stale_bookings: error: {message}"
    assert not database.exists()


SETUP = """
from django.contrib.auth import get_user_model
from django.db import OperationalError
from bookings.services import booking_create
from workflows.services import booking_cancel
from flights import services
from tests.factories import make_flight

flight = make_flight(capacity=20)
user = get_user_model().objects.create_user(username="alice", password="alice-password")
booking = booking_create(user=user, flight_id=flight.pk, seats=2)
real = services.flight_seats_change
def down(**kwargs):
    raise OperationalError("server closed the connection unexpectedly")
services.flight_seats_change = down
cancelled = booking_cancel(booking_id=booking.pk).booking
services.flight_seats_change = real
print(booking.pk, cancelled.status, cancelled.seats_state)
"""

STATE = """
from bookings.models import Booking
from flights.models import Flight, SeatHold
booking = Booking.objects.get()
print(Flight.objects.get().available_seats, booking.seats_state, SeatHold.objects.get(ref=booking.hold_ref).state)
"""


def test_from_the_shell_a_failed_release_exits_1_and_the_next_run_exits_0(tmp_path):
    database = tmp_path / "cron.sqlite3"
    assert manage("migrate", "-v", "0", database=database).returncode == 0
    setup = manage("shell", "--no-imports", "-c", SETUP, database=database)
    assert setup.returncode == 0, setup.stderr
    booking_id, status, seats_state = setup.stdout.split()
    assert (status, seats_state) == ("CANCELLED", "reserved")

    # The Flights service refuses connections: the release fails, cron sees exit status 1.
    down = manage("cleanup_stale_bookings", database=database, FLIGHT_SERVICE_URL=f"http://127.0.0.1:{closed_port()}")

    assert down.returncode == 1, down
    assert down.stdout == summary(failed=1) + "\n"
    # Logs are JSON lines; the run's lines carry its id.
    logged = [json.loads(line) for line in down.stderr.splitlines() if line.startswith("{")]
    warning = next(entry for entry in logged if entry["logger"] == "bookings.cleanup" and entry["level"] == "WARNING")
    assert warning["message"] == f"cleanup: release of booking {booking_id}: retried next run"
    assert warning["request_id"].startswith("cleanup-")
    assert "CommandError: 1 step(s) failed; the next run retries them (details in the log)." in down.stderr

    back = manage("cleanup_stale_bookings", database=database)

    assert back.returncode == 0, back
    assert back.stdout == summary(retried_releases=1, released_seats=2) + "\n"
    state = manage("shell", "--no-imports", "-c", STATE, database=database)
    assert state.stdout.split() == ["20", "released", "released"], state.stderr


# 4. A failed step: CommandError, WARNING, and the next run finishes it ------------------------


@pytest.mark.parametrize("fault", [CONNECTION_LOST, LOCK_TIMEOUT], ids=["flights-down", "flights-busy"])
def test_a_release_failing_at_expiry_fails_the_run_and_the_next_run_finishes_it(
    user, flight, clock, flights, caplog, fault
):
    failing, fine = initiated(user, flight, 2), initiated(user, flight, 1)
    clock.advance(minutes=10)
    flights.down(fault, only=(failing.hold_ref,))

    with caplog.at_level(logging.WARNING, logger="bookings.cleanup"):
        out = cleanup(verbosity=2, fails=True)

    assert out.error.returncode == 1
    assert str(out.error) == "1 step(s) failed; the next run retries them (details in the log)."
    # The run went on past the failure.
    assert out.lines == [
        f"booking {failing.pk}: expired",
        f"FAILED release of booking {failing.pk}: retried next run",
        f"booking {fine.pk}: expired",
        f"booking {fine.pk}: released 1 seat(s)",
        summary(expired=2, released_seats=1, failed=1),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.name == "bookings.cleanup" and r.levelno >= logging.WARNING]
    assert warnings == [f"cleanup: release of booking {failing.pk}: retried next run"]
    failing = reload(failing)
    assert (failing.status, failing.cancel_reason, failing.seats_state) == (
        Status.CANCELLED,
        Reason.EXPIRED,
        SeatsState.RESERVED,
    )
    assert failing.release_owed and failing.flight_service_error
    assert SeatHold.objects.get(ref=failing.hold_ref).state == SeatHold.State.HELD
    assert seats_left(flight) == 18
    assert_consistent(flight)
    recorded = CleanupRun.objects.get()
    assert (recorded.failed, recorded.counts) == (1, parse(summary(expired=2, released_seats=1, failed=1)))

    # Still down: the next run fails the same way and changes nothing.
    clock.advance(minutes=10)
    assert cleanup(fails=True).lines == [summary(failed=1)]
    assert seats_left(flight) == 18
    assert flights.failed == [failing.hold_ref, failing.hold_ref]

    flights.back()
    clock.advance(minutes=10)
    assert cleanup().lines == [summary(retried_releases=1, released_seats=2)]

    assert reload(failing).seats_state == SeatsState.RELEASED
    assert SeatHold.objects.get(ref=failing.hold_ref).state == SeatHold.State.RELEASED
    assert seats_left(flight) == 20
    assert_consistent(flight)
    assert cleanup().lines == [summary()]
    assert seats_left(flight) == 20


def test_an_unexpected_error_is_logged_with_its_traceback_counted_and_the_run_goes_on(
    user, flight, clock, flights, caplog
):
    failing, fine = initiated(user, flight, 2), initiated(user, flight, 1)
    clock.advance(minutes=10)
    flights.down(RuntimeError("a bug in the Flights adapter"), only=(failing.hold_ref,))

    with caplog.at_level(logging.WARNING, logger="bookings.cleanup"):
        out = cleanup(verbosity=2, fails=True)

    assert out.lines == [
        f"booking {failing.pk}: expired",
        f"FAILED expiry of booking {failing.pk}: unexpected error (logged)",
        f"booking {fine.pk}: expired",
        f"booking {fine.pk}: released 1 seat(s)",
        summary(expired=2, released_seats=1, failed=1),
    ]
    (error,) = [r for r in caplog.records if r.name == "bookings.cleanup" and r.levelno == logging.ERROR]
    assert error.getMessage() == f"cleanup: expiry of booking {failing.pk} failed"
    assert isinstance(error.exc_info[1], RuntimeError)
    assert reload(failing).release_owed
    assert_consistent(flight)

    flights.back()
    assert cleanup().lines == [summary(retried_releases=1, released_seats=2)]
    assert seats_left(flight) == 20
    assert_consistent(flight)


def test_a_payment_gateway_that_cannot_say_fails_the_run_and_leaves_the_booking_pending(
    user, flight, clock, settings, monkeypatch, caplog
):
    booking = initiated(user, flight, 2)
    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    with pytest.raises(PaymentGatewayUnavailable):
        pay(user, booking)
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"
    clock.advance(minutes=10)
    detail = "The simulated gateway is down (look-up)."

    def look_up_down(self, *, reference):
        raise PaymentGatewayUnavailable(detail, maybe_charged=False)

    with monkeypatch.context() as patch:
        patch.setattr(SimulatedPaymentGateway, "find_charge", look_up_down)
        before = snapshot()
        assert cleanup("--dry-run", fails=True).lines == ["dry run: " + summary(failed=1)]
        assert snapshot() == before
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bookings.cleanup"):
            out = cleanup(verbosity=2, fails=True)

    assert out.lines == [f"FAILED reconciliation of booking {booking.pk}: {detail}", summary(failed=1)]
    warnings = [r.getMessage() for r in caplog.records if r.name == "bookings.cleanup" and r.levelno >= logging.WARNING]
    assert warnings == [f"cleanup: reconciliation of booking {booking.pk}: {detail}"]
    assert reload(booking).status == Status.PENDING
    assert Payment.objects.get(booking=booking).status == Payment.Status.PROCESSING
    assert_consistent(flight)

    assert cleanup().lines == [summary(reconciled_booked=1)]
    assert reload(booking).status == Status.BOOKED
    assert_consistent(flight)


def test_a_release_failing_while_finishing_a_cancel_is_tried_once_per_run(user, flight, clock, flights, monkeypatch):
    booking, _, _ = cancel_cut_short(user, flight, 4)
    clock.advance(minutes=1)
    flights.down()

    out = cleanup(verbosity=2, fails=True)

    assert out.lines == [
        f"booking {booking.pk}: refunded, cancel finished",
        f"FAILED release of booking {booking.pk}: retried next run",
        summary(refunded=1, failed=1),
    ]
    assert flights.failed == [booking.hold_ref]  # "A release that fails in this run waits for the next one."
    flights.back()
    assert cleanup().lines == [summary(retried_releases=1, released_seats=4)]
    assert_consistent(flight)


# 5. A release that failed at the customer's cancel ------------------------------------------


def test_a_release_that_failed_at_the_customers_cancel_is_finished_once_flights_is_back(
    user_client, flight, clock, flights
):
    created = user_client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 3}, format="json")
    assert created.status_code == 201, created.content
    booking_id = created.json()["id"]
    flights.down()

    response = user_client.patch(f"/api/v1/bookings/{booking_id}/cancel")

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["cancelReason"]) == ("CANCELLED", "user")
    booking = Booking.objects.get(pk=booking_id)
    assert (booking.seats_state, booking.release_owed) == (SeatsState.RESERVED, True)
    assert seats_left(flight) == 17
    assert_consistent(flight)

    assert cleanup(fails=True).lines == [summary(failed=1)]  # Still down.
    flights.back()
    assert cleanup().lines == [summary(retried_releases=1, released_seats=3)]

    booking = Booking.objects.get(pk=booking_id)
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (
        Status.CANCELLED,
        Reason.USER,
        SeatsState.RELEASED,
    )
    assert SeatHold.objects.get(ref=booking.hold_ref).state == SeatHold.State.RELEASED
    assert seats_left(flight) == 20
    assert_consistent(flight)
    assert cleanup().lines == [summary()]
    assert seats_left(flight) == 20


# Over HTTP: the live server is the remote Flights service; `responses` injects the faults
# (as in tests/bookings/test_http_gateway.py).

RELEASE = matchers.json_params_matcher({"dec": False}, strict_match=False)


def _release_applied_then_lost(request):
    """The Flights service gives the seats back, and its answer never arrives."""
    body = json.loads(request.body)
    flight_id = int(re.search(r"/flights/(\d+)/seats", request.url).group(1))
    real_seats_change(flight_id=flight_id, seats=body["seats"], decrease=False, reservation=body["reservation"])
    raise requests.exceptions.ReadTimeout("read timed out")


HTTP_FAULTS = {
    "503": {"status": 503, "body": "down"},
    "timeout": {"body": requests.exceptions.ReadTimeout("read timed out")},
    "refused": {"body": http_faults.refused()},
    "applied-then-timeout": None,
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", list(HTTP_FAULTS))
def test_over_http_a_release_failed_at_cancel_is_finished_by_the_next_run_exactly_once(remote, user_client, fault):
    plane = make_flight(capacity=20)
    created = user_client.post("/api/v1/bookings", {"flightId": plane.pk, "numberOfSeats": 2}, format="json")
    assert created.status_code == 201, created.content
    booking_id = created.json()["id"]
    seats_url = f"{remote}/api/v1/flights/{plane.pk}/seats"
    applied = HTTP_FAULTS[fault] is None

    with flight_faults(remote) as rsps:
        if applied:
            release = rsps.add_callback(
                responses.PATCH, seats_url, callback=_release_applied_then_lost, match=[RELEASE]
            )
        else:
            release = rsps.add(responses.PATCH, seats_url, match=[RELEASE], **HTTP_FAULTS[fault])
        response = user_client.patch(f"/api/v1/bookings/{booking_id}/cancel")
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "CANCELLED"
        # Cleanup while the Flights service still fails: counted, left for the next run.
        assert cleanup(fails=True).lines == [summary(failed=1)]
        assert release.call_count == 2

    booking = Booking.objects.get(pk=booking_id)
    assert (booking.seats_state, booking.release_owed) == (SeatsState.RESERVED, True)
    hold = SeatHold.objects.get(ref=booking.hold_ref)
    if applied:  # The seats are back on the Flights side; the booking does not know it yet.
        assert (hold.state, seats_left(plane)) == (SeatHold.State.RELEASED, 20)
    else:
        assert (hold.state, seats_left(plane)) == (SeatHold.State.HELD, 18)
        assert_bookings_match_ledger(plane)

    with flight_faults(remote) as rsps:
        release = rsps.add(responses.PassthroughResponse(responses.PATCH, seats_url, match=[RELEASE]))
        assert cleanup().lines == [summary(retried_releases=1, released_seats=2)]
        assert release.call_count == 1
        assert cleanup().lines == [summary()]
        assert release.call_count == 1  # Nothing resent.

    booking = Booking.objects.get(pk=booking_id)
    assert (booking.seats_state, booking.release_owed) == (SeatsState.RELEASED, False)
    (hold,) = SeatHold.objects.filter(flight=plane)
    assert (hold.ref, hold.seats, hold.state) == (booking.hold_ref, 2, SeatHold.State.RELEASED)
    assert seats_left(plane) == 20
    assert_consistent(plane)


# 6. --older-than and --batch-size ------------------------------------------------------------


def test_older_than_spares_holds_that_ended_more_recently(user, flight, clock):
    early = initiated(user, flight, 1)
    pending = initiated(user, flight, 2)
    with pytest.raises(RequestDied):
        pay(user, pending, gateway=DiesBeforeCharging())
    clock.advance(minutes=2)
    late = initiated(user, flight, 3)
    clock.advance(minutes=11)  # early and pending ended 3 minutes ago, late 1 minute ago.

    assert cleanup("--older-than", "5").lines == [summary()]
    assert {reload(b).status for b in (early, late)} == {Status.INITIATED}
    assert reload(pending).status == Status.PENDING
    assert seats_left(flight) == 14
    assert_consistent(flight)

    assert cleanup("--older-than", "2").lines == [summary(expired=2, released_seats=3)]
    assert (reload(early).status, reload(pending).status, reload(late).status) == (
        Status.CANCELLED,
        Status.CANCELLED,
        Status.INITIATED,
    )
    assert Payment.objects.get(booking=pending).status == Payment.Status.FAILED
    assert seats_left(flight) == 17
    assert_consistent(flight)

    assert cleanup("--older-than", "2").lines == [summary()]
    # Exactly 1 minute ago counts as older than 1 minute.
    assert cleanup("--older-than", "1").lines == [summary(expired=1, released_seats=3)]
    assert reload(late).status == Status.CANCELLED
    assert seats_left(flight) == 20
    assert_consistent(flight)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_batches_of_any_size_expire_every_booking_exactly_once(user, clock, batch_size):
    flight = make_flight(capacity=40)
    expiring = []
    for seats in range(1, 8):
        expiring.append(initiated(user, flight, seats))
        if seats in (2, 4):  # Paid bookings between them, which the batches must step over.
            pay(user, initiated(user, flight, 1), key=f"paid-{seats}")
    clock.advance(minutes=10)

    out = cleanup("--batch-size", str(batch_size), verbosity=2)

    expected = []
    for booking in expiring:
        expected += [f"booking {booking.pk}: expired", f"booking {booking.pk}: released {booking.seats} seat(s)"]
    assert out.lines == [*expected, summary(expired=7, released_seats=28)]
    assert set(SeatHold.objects.filter(state=SeatHold.State.RELEASED).values_list("ref", flat=True)) == {
        b.hold_ref for b in expiring
    }
    assert Booking.objects.filter(status=Status.BOOKED).count() == 2
    assert seats_left(flight) == 38
    assert_consistent(flight)


def test_rows_that_fail_are_not_met_again_in_the_same_run_whatever_the_batch_size(user, flight, clock, flights):
    owed = [initiated(user, flight, seats) for seats in (1, 2, 3)]
    flights.down()
    for booking in owed:
        assert booking_cancel(booking_id=booking.pk).booking.release_owed
    flights.failed.clear()

    assert cleanup("--batch-size", "2", fails=True).lines == [summary(failed=3)]
    assert flights.failed == [b.hold_ref for b in owed]  # One try each, in order.

    flights.back()
    assert cleanup("--batch-size", "2").lines == [summary(retried_releases=3, released_seats=6)]
    assert seats_left(flight) == 20
    assert_consistent(flight)


# 7. Idempotency keys ------------------------------------------------------------------------


def test_keys_past_their_ttl_are_purged_but_live_ones_and_live_leases_are_kept(
    user, other_user, user_client, flight, clock
):
    booking = initiated(user, flight, 1)
    paid = user_client.post(
        "/api/v1/payments",
        {"bookingId": booking.pk, "amount": str(booking.total_cost)},
        format="json",
        HTTP_IDEMPOTENCY_KEY="via-api",
    )
    assert paid.status_code == 201, paid.content
    assert IdempotencyKey.objects.get(key="via-api").expires_at == clock.now + dt.timedelta(hours=24)
    day = clock.now + dt.timedelta(hours=24)
    for index in range(3):
        make_key(user, f"old-{index}", expires_at=day - dt.timedelta(hours=1))
    make_key(other_user, "old-other-user", expires_at=day - dt.timedelta(hours=1))
    make_key(user, "abandoned", expires_at=day - dt.timedelta(hours=1), locked_until=day - dt.timedelta(hours=2))
    make_key(user, "held", expires_at=day - dt.timedelta(seconds=1), locked_until=day + dt.timedelta(seconds=30))
    make_key(user, "fresh", expires_at=day + dt.timedelta(hours=24))
    clock.now = day  # "via-api" ends now, exactly.

    assert cleanup("--dry-run").lines == ["dry run: " + summary(purged_keys=6)]
    assert IdempotencyKey.objects.count() == 8

    assert cleanup("--batch-size", "2").lines == [summary(purged_keys=6)]
    assert set(IdempotencyKey.objects.values_list("key", flat=True)) == {"held", "fresh"}

    clock.advance(seconds=30)  # The held key's lease runs out.
    assert cleanup().lines == [summary(purged_keys=1)]
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["fresh"]
    assert cleanup().lines == [summary()]
    assert reload(booking).status == Status.BOOKED
    assert_consistent(flight)


# 8. Run history --------------------------------------------------------------------------------


def test_each_real_run_is_recorded_with_its_counts_and_host_and_a_dry_run_is_not(user, flight, clock):
    def past_run(days: int) -> CleanupRun:
        started = clock.now - dt.timedelta(days=days)
        return CleanupRun.objects.create(started_at=started, finished_at=started, host="old", counts={}, failed=0)

    too_old, kept = past_run(31), past_run(29)
    initiated(user, flight, 2)
    clock.advance(minutes=10)

    cleanup("--dry-run")
    assert set(CleanupRun.objects.values_list("pk", flat=True)) == {too_old.pk, kept.pk}

    out = cleanup()

    recorded = CleanupRun.objects.exclude(pk=kept.pk).get()
    assert recorded.pk != too_old.pk  # Past the 30 days of history: deleted.
    assert (recorded.started_at, recorded.finished_at) == (clock.now, clock.now)
    assert recorded.host == socket.gethostname()[:255]
    assert recorded.counts == parse(out.line) == parse(summary(expired=1, released_seats=2))
    assert recorded.failed == 0

    clock.advance(minutes=10)
    cleanup()
    assert CleanupRun.objects.count() == 3
    assert CleanupRun.objects.first().counts == parse(summary())  # Newest first.


# Running the command ----------------------------------------------------------------------


def parse(line: str) -> dict[str, int]:
    assert SUMMARY.match(line.removeprefix("dry run: ")), line
    return {name: int(value) for name, value in (pair.split("=") for pair in line.removeprefix("dry run: ").split())}


@dataclass
class Output:
    lines: list[str]
    error: CommandError | None

    @property
    def line(self) -> str:
        return self.lines[-1]


def cleanup(*args: str, verbosity: int = 1, fails: bool = False) -> Output:
    """Run the command as cron would; `fails`: it must raise CommandError (exit status 1)."""
    out = StringIO()
    error = None
    try:
        call_command("cleanup_stale_bookings", *args, verbosity=verbosity, stdout=out)
    except CommandError as raised:
        error = raised
    assert (error is not None) == fails, (error, out.getvalue())
    return Output(out.getvalue().splitlines(), error)


def assert_consistent(*flights: Flight) -> None:
    for flight in flights:
        assert_bookings_match_ledger(flight)
    assert_money_matches_bookings()


def snapshot() -> dict[str, list[dict]]:
    """Every row a run could touch, column by column."""
    models = (Booking, Payment, IdempotencyKey, SimulatedCharge, Flight, SeatHold, CleanupRun)
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in models}


def make_key(user, name: str, *, expires_at: dt.datetime, locked_until: dt.datetime | None = None) -> IdempotencyKey:
    """A completed key, or (with `locked_until`) one a request is running under a lease."""
    running = locked_until is not None
    return IdempotencyKey.objects.create(
        user=user,
        key=name,
        fingerprint="0" * 64,
        state=IdempotencyKey.State.IN_PROGRESS if running else IdempotencyKey.State.COMPLETED,
        lease=uuid.uuid4() if running else None,
        locked_until=locked_until,
        response_status=None if running else 201,
        response_body=None if running else {"status": "SUCCEEDED"},
        expires_at=expires_at,
    )


class FlightsSwitch:
    """The in-process Flights service: `down()` makes releases fail before they apply (for
    every booking, or only for the holds named); `back()` restores it. A batch of expiries
    holding such a hold fails whole (and changes nothing), so its bookings go one by one."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch
        self.failed = []

    def down(self, error: Exception | str = CONNECTION_LOST, *, only: tuple[str, ...] = ()) -> None:
        def release_fails(**kwargs):
            if kwargs["decrease"] or (only and kwargs["reservation"] not in only):
                return real_seats_change(**kwargs)
            self.failed.append(kwargs["reservation"])
            raise OperationalError(error) if isinstance(error, str) else error

        def batch_fails(*, holds):
            if only and not {hold[0] for hold in holds} & set(only):
                return real_holds_release(holds=holds)
            raise OperationalError(error) if isinstance(error, str) else error

        self.monkeypatch.setattr(flight_services, "flight_seats_change", release_fails)
        self.monkeypatch.setattr(flight_services, "seat_holds_release", batch_fails)

    def back(self) -> None:
        self.monkeypatch.setattr(flight_services, "flight_seats_change", real_seats_change)
        self.monkeypatch.setattr(flight_services, "seat_holds_release", real_holds_release)


@pytest.fixture
def flights(monkeypatch) -> FlightsSwitch:
    return FlightsSwitch(monkeypatch)
