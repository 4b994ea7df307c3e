"""`cleanup_stale_bookings` killed after any of its steps is finished by the next run (docs/design.md#cleanup).

One scenario gives every duty work, on three flights with distinct seat counts:

    a1, a2  INITIATED past their hold                       -> expired, seats released
    b       PENDING, charged but the answer was lost         -> reconciled: BOOKED, seats kept
    c       PENDING, never charged (the charge timed out)    -> expired, payment FAILED, seats released
    d       CANCELLED, its release failed (Flights down)     -> release retried
    e1, e2  CANCELLED, a charge landed late, refund failed   -> stranded money refunded
    k       CANCELLED, reconciled as not charged, then the
            charge landed at the gateway (nobody to record it) -> found by the late-charge watch, refunded
    f1, f2  BOOKED, cancel cut short before its refund       -> refunded, cancelled, seats released
    g1, g2  idempotency keys past their TTL                  -> purged
    j       CANCELLED, release in flight on a service
            without holds, its sender gone                   -> flagged for a person (counted failed)
    h       BOOKED, g_live key, i INITIATED within its hold  -> untouched

For every step the run makes (each service cleanup calls, the gateway's look-up and refund,
the Flights seat change, the seat-state compare-and-set, the final CleanupRun write), and for
every call of it in a run (so the death lands mid-batch too), the process dies right after
the step did its work: a `BaseException`, which no per-item handler catches, raised from a
wrapper around the real function. Then:

- the state left behind is safe: the ledger is consistent, no live booking lost its seats,
  never more seats given back than held, no BOOKED booking cancelled, no money newly left
  on a cancelled booking, no hold released twice;
- the next run (a minute later: past the payment attempt window, which a SUCCEEDED payment
  on a cancelled booking waits out) does exactly the work that was left, its counts
  predicted from the database, and a third run finds nothing (all counts 0, failed=0);
- the final state is exact: every booking's status, reason, seats and payment; the ledger
  and the available seats of each flight; one gateway charge per payment and at most one
  refund each; each hold released exactly once by the Flights service.

The payment gateway (simulated, its own books) and the Flights service (in process) are
real; only the death is injected.
"""

from __future__ import annotations

import pytest

from bookings.models import CleanupRun
from tests.support.cleanup_crashes import (
    CRASH_POINTS,
    EVERYTHING,
    NOTHING_LEFT,
    STEPS,
    Crash,
    assert_every_duty_done,
    assert_partial_state_is_safe,
    restart,
    run_cleanup,
    watch_step,
    work_left,
)

pytestmark = pytest.mark.django_db


# The tests ---------------------------------------------------------------------------------


def test_one_run_does_every_duty_and_calls_each_step_as_often_as_expected(crash_scenario, monkeypatch):
    """The baseline the crash points are drawn from: each step's calls in one whole run."""
    seen = {name: watch_step(monkeypatch, step) for name, step in STEPS.items()}

    assert run_cleanup() == EVERYTHING

    assert {name: counter["calls"] for name, counter in seen.items()} == {
        name: step.calls for name, step in STEPS.items()
    }
    assert list(CleanupRun.objects.values_list("counts", "failed")) == [(EVERYTHING, 1)]
    restart(crash_scenario)
    assert run_cleanup() == NOTHING_LEFT
    assert_every_duty_done(crash_scenario)


@pytest.mark.parametrize(("step", "nth"), CRASH_POINTS, ids=[f"{step}-call{nth}" for step, nth in CRASH_POINTS])
def test_a_run_killed_right_after_any_step_is_finished_by_the_next(crash_scenario, monkeypatch, step, nth):
    with monkeypatch.context() as patch:
        watch_step(patch, STEPS[step], die_at=nth)
        with pytest.raises(Crash):
            run_cleanup()

    assert_partial_state_is_safe(crash_scenario)
    # Only a run that got to its very end wrote its record.
    assert CleanupRun.objects.count() == (1 if step == "CleanupRun.objects.create" else 0)
    restart(crash_scenario)
    left = work_left(crash_scenario)
    # The death came after some work was done: in our books, or only at the gateway or the
    # Flights service (a release applied there, not yet recorded here).
    assert left != EVERYTHING or crash_scenario.gateway_refunds or crash_scenario.ledger_releases

    assert run_cleanup() == left  # Exactly what was left, nothing twice.
    restart(crash_scenario)
    assert run_cleanup() == NOTHING_LEFT

    assert_every_duty_done(crash_scenario)
    last = CleanupRun.objects.order_by("-id").first()
    assert (last.counts, last.failed) == (NOTHING_LEFT, 0)


def test_a_run_killed_twice_in_a_row_is_still_finished_once(crash_scenario, monkeypatch):
    """Two deaths at different points before a run gets through: still each thing once."""
    for step, nth in (("flights.flight_seats_change", 1), ("gateway.find_charge", 2)):
        with monkeypatch.context() as patch:
            watch_step(patch, STEPS[step], die_at=nth)
            with pytest.raises(Crash):
                run_cleanup()
        assert_partial_state_is_safe(crash_scenario)
        restart(crash_scenario)

    left = work_left(crash_scenario)
    assert run_cleanup() == left
    restart(crash_scenario)
    assert run_cleanup() == NOTHING_LEFT
    assert_every_duty_done(crash_scenario)


def test_a_dry_run_after_a_crash_predicts_what_the_next_run_does(crash_scenario, monkeypatch):
    """Ops can see what a death left: a dry run then counts exactly what the next run does."""
    with monkeypatch.context() as patch:
        watch_step(patch, STEPS["booking_cancel"], die_at=1)
        with pytest.raises(Crash):
            run_cleanup()
    restart(crash_scenario)
    left = work_left(crash_scenario)

    assert run_cleanup("--dry-run") == left
    assert work_left(crash_scenario) == left
    assert run_cleanup() == left
