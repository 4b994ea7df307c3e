"""Cleanup's expiry in batches (docs/design.md#cleanup): with the in-process Flights adapter,
`booking_expire_stale_batch` expires a batch of INITIATED bookings past their hold in one
transaction: locked with `skip_locked`, their holds released through the ledger with one seat
change for all their flights, cancelled, one event each. Over HTTP, and for any booking a
batch cannot settle, cleanup goes one booking at a time as before.

- what a batch does and leaves, on either database;
- its statements: the same nine for 2 bookings on one flight as for 60 on four, so a run's
  statements grow by nine per batch, not per booking;
- crash safety, on PostgreSQL: a `manage.py cleanup_stale_bookings` process killed (SIGKILL)
  inside a batch's transaction leaves nothing of it, and the next run does all of it once;
- several hosts, on PostgreSQL: a second copy passes over the batch a first holds (never
  waiting for it) and takes the rest; a client paying a booking inside a batch waits for it
  and is refused; five processes at once over one backlog expire each booking once, exactly.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bookings.audit import acting_as
from bookings.flights_gateway import InProcessFlightGateway
from bookings.models import Booking, BookingEvent, CleanupRun
from bookings.services import booking_expire_stale_batch
from bookings_project.exceptions import DomainError
from flights import services as flight_services
from flights.models import Flight, SeatHold
from payments.models import Payment
from tests.factories import initiated, make_flight, pay, reload
from tests.helpers import assert_bookings_match_ledger
from tests.support.cleanup import command, counts
from tests.support.cleanup_race import ROOT, CopyRun, _database_url, name_connection, start_copy_process
from workflows import cleanup as cleanup_module
from workflows.cleanup import cleanup_stale_bookings

Status, SeatsState, Reason = Booking.Status, Booking.SeatsState, Booking.CancelReason

# BEGIN; claim the batch (FOR UPDATE SKIP LOCKED); lock its flights; read their holds;
# release the holds; give the seats back (one UPDATE for every flight); cancel the bookings;
# INSERT their audit events; INSERT their outbox events; COMMIT; then queue the worker's task
# for those events (docs/design.md#notifications).
STATEMENTS_PER_BATCH = 11


def backlog(user, flights: list[Flight], count: int, *, seats: int = 1) -> list[Booking]:
    """`count` bookings, round the flights in turn, past their hold by an hour (real time too,
    for the processes, which do not see the patched clock)."""
    bookings = [initiated(user, flights[index % len(flights)], seats) for index in range(count)]
    Booking.objects.filter(pk__in=[b.pk for b in bookings]).update(expires_at=timezone.now() - HOUR)
    return bookings


HOUR = dt.timedelta(hours=1)


def expire_batch(*, after_id: int = 0, limit: int = 500):
    return booking_expire_stale_batch(
        expired_before=timezone.now(), after_id=after_id, limit=limit, gateway=InProcessFlightGateway()
    )


def expired_events() -> Counter:
    return Counter(
        BookingEvent.objects.filter(to_status=Status.CANCELLED, reason=Reason.EXPIRED).values_list(
            "booking_id", flat=True
        )
    )


def assert_all_expired_once(bookings: list[Booking], flights: list[Flight]) -> None:
    for booking in bookings:
        booking = reload(booking)
        assert (booking.status, booking.cancel_reason, booking.seats_state) == (
            Status.CANCELLED,
            Reason.EXPIRED,
            SeatsState.RELEASED,
        ), booking
        assert booking.cancelled_at and booking.seats_released_at
    assert expired_events() == Counter(b.pk for b in bookings)
    assert not SeatHold.objects.filter(ref__in=[b.hold_ref for b in bookings]).exclude(state="released").exists()
    for flight in flights:
        assert_bookings_match_ledger(flight)
        flight.refresh_from_db()
        assert flight.available_seats == flight.capacity


def assert_untouched(bookings: list[Booking], flights: list[Flight]) -> None:
    assert set(Booking.objects.filter(pk__in=[b.pk for b in bookings]).values_list("status", "seats_state")) == {
        (Status.INITIATED, SeatsState.RESERVED)
    }
    assert not expired_events()
    assert set(SeatHold.objects.filter(ref__in=[b.hold_ref for b in bookings]).values_list("state", flat=True)) == {
        "held"
    }
    for flight in flights:
        assert_bookings_match_ledger(flight)


# What a batch does ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_batch_expires_its_bookings_releases_their_holds_and_records_one_event_each(user):
    flights = [make_flight(capacity=20), make_flight(capacity=30)]
    bookings = backlog(user, flights, 5, seats=2)
    fresh = initiated(user, flights[0], 1)  # Within its hold: not touched.

    with acting_as(BookingEvent.Actor.CLEANUP):
        batch = expire_batch()

    assert not batch.error
    assert batch.claimed == tuple(b.pk for b in bookings)
    assert batch.expired == {b.pk: 2 for b in bookings} and batch.left == []
    assert_all_expired_once(bookings, [])
    events = BookingEvent.objects.filter(reason=Reason.EXPIRED)
    assert {(e.from_status, e.to_status, e.actor) for e in events} == {("INITIATED", "CANCELLED", "cleanup")}
    assert reload(fresh).status == Status.INITIATED
    for flight in flights:
        assert_bookings_match_ledger(flight)
    assert [f.available_seats for f in Flight.objects.order_by("pk")] == [20 - 1, 30]


@pytest.mark.django_db
def test_the_next_batch_starts_after_the_last_booking_claimed(user, flight):
    bookings = backlog(user, [flight], 5)

    first = expire_batch(limit=3)
    second = expire_batch(after_id=first.claimed[-1], limit=3)

    assert first.claimed == tuple(b.pk for b in bookings[:3])
    assert second.claimed == tuple(b.pk for b in bookings[3:])
    assert expire_batch(after_id=second.claimed[-1], limit=3).claimed == ()
    assert_all_expired_once(bookings, [flight])


def unsettled(user, flight: Flight) -> tuple[Booking, Booking]:
    """Two bookings past their hold that a batch must not settle."""
    expired = timezone.now() - HOUR
    # A creator that died before its reserve (the HTTP saga): nothing plainly reserved.
    unconfirmed = Booking.objects.create(
        user=user, flight_id=flight.pk, seats=3, total_cost=1, seats_state=SeatsState.UNCONFIRMED, expires_at=expired
    )
    # Reserved, its hold missing from the ledger: not the batch's to guess about.
    no_hold = Booking.objects.create(
        user=user, flight_id=flight.pk, seats=4, total_cost=1, seats_state=SeatsState.RESERVED, expires_at=expired
    )
    return unconfirmed, no_hold


@pytest.mark.django_db
def test_a_batch_locks_but_leaves_the_bookings_it_cannot_settle(user, flight):
    plain = backlog(user, [flight], 2)
    unconfirmed, no_hold = unsettled(user, flight)

    batch = expire_batch()

    assert batch.expired == {plain[0].pk: 1, plain[1].pk: 1}
    assert batch.left == [unconfirmed.pk, no_hold.pk]
    assert reload(unconfirmed).status == reload(no_hold).status == Status.INITIATED
    assert expired_events() == Counter(b.pk for b in plain)


@pytest.mark.django_db
def test_cleanup_takes_what_a_batch_leaves_one_booking_at_a_time(user, flight):
    plain = backlog(user, [flight], 2)
    unconfirmed, no_hold = unsettled(user, flight)

    lines = command("-v", "2").splitlines()

    assert lines[:4] == [
        f"booking {plain[0].pk}: expired",
        f"booking {plain[0].pk}: released 1 seat(s)",
        f"booking {plain[1].pk}: expired",
        f"booking {plain[1].pk}: released 1 seat(s)",
    ]
    # One by one: each expired; a release by reference finds no hold (a tombstone, 0 seats).
    assert f"booking {unconfirmed.pk}: expired" in lines and f"booking {no_hold.pk}: expired" in lines
    assert CleanupRun.objects.get().counts == counts(expired=4, released_seats=2)
    for booking in (unconfirmed, no_hold):
        assert (reload(booking).status, reload(booking).seats_state) == (Status.CANCELLED, SeatsState.RELEASED)
    assert expired_events() == Counter([plain[0].pk, plain[1].pk, unconfirmed.pk, no_hold.pk])


@pytest.mark.django_db
def test_a_batch_that_would_pass_a_flights_capacity_changes_nothing(user):
    flights = [make_flight(capacity=20), make_flight(capacity=20)]
    bookings = backlog(user, flights, 4)
    Flight.objects.filter(pk=flights[1].pk).update(available_seats=20)  # Seats given back by hand meanwhile.

    batch = expire_batch()

    assert isinstance(batch.error, str) and "capacity" in batch.error
    assert batch.expired == {} and batch.left == [b.pk for b in bookings]
    assert set(Booking.objects.values_list("status", flat=True)) == {Status.INITIATED}
    assert not expired_events()
    assert set(SeatHold.objects.values_list("state", flat=True)) == {"held"}
    assert [f.available_seats for f in Flight.objects.order_by("pk")] == [18, 20]


@pytest.mark.django_db
def test_over_http_and_in_a_dry_run_cleanup_goes_one_booking_at_a_time(user, flight, monkeypatch):
    bookings = backlog(user, [flight], 3)

    def no_batches(**kwargs):
        raise AssertionError("a batch was taken")

    monkeypatch.setattr(cleanup_module, "booking_expire_stale_batch", no_batches)
    assert cleanup_stale_bookings(dry_run=True).expired == 3
    # The in-process adapter walking the saga, as the HTTP one does: every call its own commit.
    result = cleanup_stale_bookings(flights=InProcessFlightGateway(joins_transactions=False))

    assert (result.expired, result.released_seats, result.failed) == (3, 3, 0)
    assert_all_expired_once(bookings, [flight])


# Statements -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("size", "flight_count"), [(2, 1), (60, 4)])
def test_a_batch_sends_eleven_statements_whatever_its_size_and_flights(user, size, flight_count):
    flights = [make_flight(capacity=100) for _ in range(flight_count)]
    bookings = backlog(user, flights, size)

    with CaptureQueriesContext(connection) as captured:
        batch = expire_batch(limit=size)

    assert len(batch.expired) == size
    assert len(captured.captured_queries) == STATEMENTS_PER_BATCH, [q["sql"][:80] for q in captured]
    assert_all_expired_once(bookings, flights)


@pytest.mark.django_db(transaction=True)
def test_a_run_sends_eleven_statements_more_per_batch_not_per_booking(user):
    flights = [make_flight(capacity=100) for _ in range(3)]

    def statements_of_a_run(count: int) -> int:
        backlog(user, flights, count)
        with CaptureQueriesContext(connection) as captured:
            assert cleanup_stale_bookings(batch_size=20).expired == count
        return len(captured.captured_queries)

    # 20 bookings: one full batch and the empty one that ends the set; 100: five and the empty one.
    assert statements_of_a_run(100) - statements_of_a_run(20) == 4 * STATEMENTS_PER_BATCH


# Crash safety: a process killed inside a batch (PostgreSQL) ----------------------------------

DIES_INSIDE = """
import sys, time
from {module} import {name} as real
import {module} as target

def pause(*args, **kwargs):
    result = real(*args, **kwargs)
    print("inside the batch", flush=True)
    time.sleep(60)  # Killed here, its transaction open.
    return result

target.{name} = pause
from django.core.management import call_command
call_command("cleanup_stale_bookings", "--batch-size", "50")
"""

KILL_POINTS = {
    # The holds released and the seats back, the bookings not yet cancelled.
    "after-the-ledger": ("flights.services", "seat_holds_release"),
    # Everything written, not yet committed.
    "before-commit": ("bookings.services", "record_status_changes"),
}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_process_killed_inside_a_batch_leaves_nothing_of_it_and_the_next_run_does_it_once(user, point):
    flights = [make_flight(capacity=40), make_flight(capacity=40)]
    bookings = backlog(user, flights, 30, seats=2)
    module, name = KILL_POINTS[point]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bookings_project.settings", "FLIGHT_SERVICE_URL": ""}
    env["DATABASE_URL"] = _database_url("cleanup-killed")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", DIES_INSIDE.format(module=module, name=name)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "inside the batch\n", process.stderr.read()
        # Its writes are there, uncommitted: none of them is visible.
        assert_untouched(bookings, flights)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL

    assert_untouched(bookings, flights)
    assert not CleanupRun.objects.exists()
    # The dead backend's locks are gone with it: the next run does all of it, once.
    command()
    assert CleanupRun.objects.get().counts == counts(expired=30, released_seats=60)
    assert_all_expired_once(bookings, flights)
    command()
    assert CleanupRun.objects.order_by("-pk").first().counts == counts()


# Several hosts (PostgreSQL) -------------------------------------------------------------------


class PausedBatch:
    """The copy in thread `name` stops inside its first batch, after the claim and before the
    ledger is touched (so it holds only its bookings' locks), until `go` is set."""

    def __init__(self, monkeypatch, name: str) -> None:
        self.name, self.claimed, self.go = name, threading.Event(), threading.Event()
        self.batches: dict[str, list] = defaultdict(list)
        real_release, real_batch = flight_services.seat_holds_release, cleanup_module.booking_expire_stale_batch

        def release(*, holds):
            if threading.current_thread().name == self.name and not self.claimed.is_set():
                self.claimed.set()
                assert self.go.wait(20), "never let go"
            return real_release(holds=holds)

        def batch(**kwargs):
            result = real_batch(**kwargs)
            self.batches[threading.current_thread().name].append(result)
            return result

        monkeypatch.setattr(flight_services, "seat_holds_release", release)
        monkeypatch.setattr(cleanup_module, "booking_expire_stale_batch", batch)


def in_thread(name: str, target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            name_connection(name)
            outcome["result"] = target()
        except BaseException as error:  # Reported by the test.
            outcome["error"] = error
        finally:
            outcome["done_at"] = time.monotonic()
            connections.close_all()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread, outcome


def cleanup_copy(batch_size: int):
    return lambda: call_command("cleanup_stale_bookings", "--batch-size", str(batch_size), stdout=StringIO())


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_second_copy_passes_over_the_batch_a_first_holds_and_takes_the_rest_without_waiting(user, monkeypatch, audit):
    flights = [make_flight(capacity=40) for _ in range(3)]
    bookings = backlog(user, flights, 40)
    paused = PausedBatch(monkeypatch, "cleanup-a")
    audit.start()

    first, first_outcome = in_thread("cleanup-a", cleanup_copy(10))
    try:
        assert paused.claimed.wait(20)
        second, second_outcome = in_thread("cleanup-b", cleanup_copy(7))
        second.join(20)
        # b finished while a still held its batch: it never waited for a's locks.
        assert not second.is_alive() and "error" not in second_outcome, second_outcome
        assert first.is_alive()
    finally:
        paused.go.set()
        first.join(30)
    assert "error" not in first_outcome, first_outcome

    a_batches, b_batches = paused.batches["cleanup-a"], paused.batches["cleanup-b"]
    assert not [batch for batch in a_batches + b_batches if batch.error]
    a_took = {pk for batch in a_batches for pk in batch.expired}
    b_took = {pk for batch in b_batches for pk in batch.expired}
    assert a_took == {b.pk for b in bookings[:10]}  # Its first batch, all of it.
    assert b_took == {b.pk for b in bookings[10:]}  # Everything else, in batches of 7.
    runs = {run.counts["expired"] for run in CleanupRun.objects.all()}
    assert runs == {10, 30}
    # Each booking and hold moved once, by the copy whose batch had it.
    moves = audit.moves()
    status_moves = Counter((m.row_id, m.old, m.new, m.app) for m in moves if m.column == "status")
    expected = {(pk, "INITIATED", "CANCELLED", "cleanup-a"): 1 for pk in a_took}
    expected.update({(pk, "INITIATED", "CANCELLED", "cleanup-b"): 1 for pk in b_took})
    assert status_moves == expected
    hold_moves = Counter((m.row_id, m.old, m.new) for m in moves if m.table == SeatHold._meta.db_table)
    assert sorted(hold_moves.values()) == [1] * 40 and {k[1:] for k in hold_moves} == {("held", "released")}
    assert_all_expired_once(bookings, flights)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_client_paying_a_booking_inside_a_batch_waits_for_it_and_is_refused(user, monkeypatch):
    flight = make_flight(capacity=20)
    bookings = backlog(user, [flight], 5)
    target = bookings[2]
    paused = PausedBatch(monkeypatch, "cleanup-a")

    copy, copy_outcome = in_thread("cleanup-a", cleanup_copy(500))
    try:
        assert paused.claimed.wait(20)
        payer, payer_outcome = in_thread("payer", lambda: pay(user, target, key="too-late"))
        payer.join(1.0)  # Well within the lock wait (LOCK_TIMEOUT_MS, 3 s).
        # The booking is the batch's: the payment waits on its lock.
        assert payer.is_alive(), payer_outcome
    finally:
        paused.go.set()
        copy.join(30)
    payer.join(30)
    assert "error" not in copy_outcome, copy_outcome

    error = payer_outcome.get("error")
    assert isinstance(error, DomainError) and error.code == "booking_not_payable", payer_outcome
    assert not Payment.objects.filter(booking=target).exists()
    assert_all_expired_once(bookings, [flight])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_five_copies_as_processes_expire_each_booking_once_and_count_it_once(user, audit):
    flights = [make_flight(capacity=100) for _ in range(4)]
    bookings = backlog(user, flights, 300)
    audit.start()

    processes = [start_copy_process(index) for index in range(5)]
    try:
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    copies = []
    for index, (process, (stdout, stderr)) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, (index, stdout, stderr)
        copies.append(CopyRun(f"cleanup-{index}", stdout, None))

    moves = audit.moves()
    cancelled_by = defaultdict(list)
    for move in moves:
        if move.column == "status":
            assert (move.old, move.new) == ("INITIATED", "CANCELLED"), move
            cancelled_by[move.row_id].append(move.actor)
    assert {pk: len(actors) for pk, actors in cancelled_by.items()} == {b.pk: 1 for b in bookings}
    done_by = Counter(actors[0] for actors in cancelled_by.values())
    seats = {b.pk: b.seats for b in bookings}
    for copy in copies:
        # Each copy counts what its own connection did: together exactly the backlog.
        mine = [pk for pk, actors in cancelled_by.items() if actors[0] == copy.name]
        assert copy.counts == counts(expired=done_by[copy.name], released_seats=sum(seats[pk] for pk in mine))
        expired_lines = sorted(pk for kind, pk, what in copy.lines if what == "expired")
        assert expired_lines == sorted(mine)
    hold_moves = Counter(m.row_id for m in moves if m.table == SeatHold._meta.db_table)
    assert len(hold_moves) == 300 and set(hold_moves.values()) == {1}
    assert_all_expired_once(bookings, flights)
    print(f"expired per copy: {dict(done_by)}")
