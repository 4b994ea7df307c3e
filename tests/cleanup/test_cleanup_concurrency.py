"""Five copies of `cleanup_stale_bookings` at once on PostgreSQL, while clients pay (docs/design.md#cleanup).

The issue's proof: five copies of the command run at the same moment (threads, each with its
own database connection, three rounds; and five separate `manage.py` processes) over a backlog
of every kind of stale work: INITIATED bookings past their hold, PENDING ones whose charge went
through but whose answer was lost, PENDING ones never charged, cancelled ones owing a release
(reserved, or unconfirmed with or without a hold), paid ones whose cancel was cut short, late
charges on cancelled bookings (recorded, or not), idempotency keys past their TTL. Meanwhile
clients pay twenty fresh bookings (some twice with one key through the API), retry the key of
a lost answer, and try to pay expired bookings; some of them come once a copy is at the same
work, to race it there. Then:

- each booking changes state once: every status and seat move is made exactly once, by one
  actor, and nothing else moves (no BOOKED booking is cancelled, nothing expires twice);
- each seat is released once: every hold goes back exactly once, the flights' seat counts are
  exact, and docs/design.md#invariants hold (ledger = live holds = reserved bookings; money = bookings; one
  charge per paid booking, every refund made once);
- the counts are exact: each copy's summary equals the work its own connection did (so no item
  is counted by two copies), its -v 2 lines name no item twice, no copy fails, and summed
  over the copies they equal the backlog's sizes.

How it is observed: for the test, PostgreSQL triggers write every change of a booking's
`status` or `seats_state`, a payment's `status` and a seat hold's `state`, and every deleted
idempotency key, to an audit table with the `application_name` of the connection that made
it. Every cleanup copy and every client names its connection, so the audit says what moved,
how often and who moved it, in threads and in separate processes alike. Thread copies also
tag the duty they are in, so that `retried_releases` is checked exactly (a release that a
copy's retry takes over from another copy's fresh cancel counts as retried); for processes it
is bounded.

The backlog is made through the real services at a fixed clock (`clock`), in the past; the
race runs at the clock's start, which stands still throughout. A subprocess cannot see the
patched clock: its real time is the race time, since the backlog was made in the patched past.

Last, a deterministic case the race meets by chance: two copies finishing one cut-short cancel,
one cancelling and the other releasing, count one refund and the seats once.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from bookings import services as booking_services
from bookings.models import Booking
from flights.models import SeatHold
from payments import services as payment_services
from payments.models import Payment
from tests.factories import cancel_cut_short
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings, race
from tests.support.cleanup_race import (
    COPIES,
    CopyRun,
    api_token,
    check_race,
    copy_local,
    make_backlog,
    name_connection,
    pay_as,
    payers_for,
    run_copy_in_thread,
    start_copy_process,
    tag_duties,
    wait_for_cleanup,
)
from workflows.cleanup import cleanup_stale_bookings

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


# The tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(3))
def test_five_copies_in_threads_while_clients_pay_do_everything_once(
    round_, clock, monkeypatch, settings, audit, user, other_user
):
    backlog = make_backlog(clock, monkeypatch, settings, user, other_user)
    payers = payers_for(backlog)
    tokens = {u.pk: api_token(u) for u in backlog.users.values()}
    settings.PAYMENT_SIMULATED_DELAY_MS = 30  # Payments overlap the copies' work.
    tag_duties(monkeypatch)
    audit.start()

    def task(index: int):
        if index < COPIES:
            return run_copy_in_thread(index)
        return pay_as(payers[index - COPIES], backlog, tokens)

    results = race(COPIES + len(payers), task)

    copies, answers = results[:COPIES], results[COPIES:]
    assert clock.now == backlog.race_at  # Time stood still throughout.
    check_race(backlog, audit.moves(), copies, payers, answers, tagged=True)


def test_five_copies_as_processes_while_clients_pay_do_everything_once(
    clock, monkeypatch, settings, audit, user, other_user
):
    """`manage.py cleanup_stale_bookings` in five processes against the test database. Their
    clock is the real one: the backlog was made in the (patched) past, the race is now."""
    clock.now = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    backlog = make_backlog(clock, monkeypatch, settings, user, other_user)
    payers = payers_for(backlog)
    tokens = {u.pk: api_token(u) for u in backlog.users.values()}
    settings.PAYMENT_SIMULATED_DELAY_MS = 30
    audit.start()

    processes = [start_copy_process(index) for index in range(COPIES)]
    try:
        # Django takes a moment to start: the clients go once a copy is at work.
        wait_for_cleanup(unless=lambda: any(process.poll() is not None for process in processes))
        answers = race(len(payers), lambda index: pay_as(payers[index], backlog, tokens))
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    copies = []
    for index, (process, (stdout, stderr)) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, (index, stdout, stderr)
        copies.append(CopyRun(f"cleanup-{index}", stdout, None))
    check_race(backlog, audit.moves(), copies, payers, answers, tagged=False)


def test_a_cut_short_cancel_finished_by_two_copies_at_once_is_counted_once(clock, monkeypatch, audit, user, flight):
    """Deterministic (the race above meets it by chance): both copies find the paid booking
    BOOKED with its cancel cut short; copy 0 refunds and cancels it, then copy 1, finding it
    cancelled with its seats still owed, releases them before copy 0 does. One refund, one
    release, and the summed counts say so (at 0dc0f70, `_finish_cancels` counted the seats only
    in the copy that cancelled, here copy 0, which released none: released_seats summed 0)."""
    booking, _, _ = cancel_cut_short(user, flight, 2, key="k")
    clock.advance(minutes=1)

    both_found_it_booked = threading.Barrier(2)
    cancelled, released_by_copy_1 = threading.Event(), threading.Event()
    real_refund = payment_services.payment_refund_for_booking
    real_release = booking_services.booking_release_seats

    def refund(**kwargs):
        both_found_it_booked.wait(10)
        if copy_local.index == 1:
            assert cancelled.wait(10)
        return real_refund(**kwargs)

    def release(**kwargs):  # Inside booking_cancel, after its commit.
        if copy_local.index == 0:
            cancelled.set()
            assert released_by_copy_1.wait(10)
            return real_release(**kwargs)
        try:
            return real_release(**kwargs)
        finally:
            released_by_copy_1.set()

    monkeypatch.setattr(payment_services, "payment_refund_for_booking", refund)
    monkeypatch.setattr(booking_services, "booking_release_seats", release)
    audit.start()

    def copy(index: int):
        copy_local.index = index
        copy_local.name = f"cleanup-{index}"
        name_connection(copy_local.name)
        return cleanup_stale_bookings()

    counts = race(2, copy)

    moves = [(m.column, m.old, m.new, m.actor) for m in audit.moves() if m.table == Booking._meta.db_table]
    assert moves == [
        ("status", "BOOKED", "CANCELLED", "cleanup-0"),
        ("seats_state", "reserved", "released", "cleanup-1"),
    ]
    booking.refresh_from_db()
    assert (booking.status, booking.seats_state, booking.cancel_reason) == ("CANCELLED", "released", "user")
    assert SeatHold.objects.get(ref=booking.hold_ref).state == "released"
    flight.refresh_from_db()
    assert flight.available_seats == flight.capacity
    assert_bookings_match_ledger(flight)
    assert_money_matches_bookings()
    assert Payment.objects.get(booking=booking).status == "REFUNDED"
    assert [c.failed for c in counts] == [0, 0]
    assert [(c.refunded, c.released_seats) for c in counts] == [(1, 0), (0, 2)]
    assert sum(c.expired + c.retried_releases + c.reconciled_booked + c.purged_keys for c in counts) == 0
