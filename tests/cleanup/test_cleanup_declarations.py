"""Cleanup's work sets and duties (workflows/cleanup.py) are declared once and read by the
run, the admin's cleanup page and filter, and the plan tests: the declarations themselves."""

from workflows.cleanup import DUTIES, NEEDS_A_PERSON, WORK_SETS


def test_a_run_performs_its_duties_in_this_order() -> None:
    # Releases owed are retried before any duty makes new ones (cancels, reconciliation, expiry).
    assert [duty.work.name for duty in DUTIES] == [
        "bookings_owing_release",
        "bookings_with_stuck_release",
        "bookings_with_unfinished_cancel",
        "payments_stranded_on_cancelled_bookings",
        "payments_to_watch_for_late_charges",
        "bookings_to_reconcile",
        "bookings_to_expire",
        "expired_idempotency_keys",
        # Notifications last: what the duties above changed is in the outbox already.
        "events_not_dispatched",
        "deliveries_forgotten",
        "events_to_purge",
    ]


def test_every_work_set_but_the_one_left_to_a_person_has_exactly_one_duty() -> None:
    walked = [duty.work for duty in DUTIES]
    assert len(walked) == len(set(walked))
    assert set(WORK_SETS) - set(walked) == {NEEDS_A_PERSON}


def test_each_duty_either_steps_through_its_set_or_takes_it_whole() -> None:
    assert all((duty.step is None) != (duty.whole is None) for duty in DUTIES)
    assert [duty.work.name for duty in DUTIES if duty.whole] == [
        "expired_idempotency_keys",
        "events_not_dispatched",
        "deliveries_forgotten",
        "events_to_purge",
    ]


def test_work_set_names_and_admin_filters_are_unique() -> None:
    assert len({work.name for work in WORK_SETS}) == len(WORK_SETS)
    filters = [work.attention[0] for work in WORK_SETS if work.attention]
    assert filters == ["to_expire", "to_reconcile", "release_owed", "unfinished_cancel", "reconcile"]
