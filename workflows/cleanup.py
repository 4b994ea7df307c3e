"""Cleanup of stale bookings (docs/design.md#cleanup), run by cron on every host:
`cleanup_stale_bookings`.

This module drives the duties in batches and counts what they did; each rule it applies
lives in the services it calls (`bookings.services`, `payments.services`,
`workflows.services`), the same ones the API and admin use. What cleanup looks at is
declared once, as `WORK_SETS`; what it does, in order, as `DUTIES`:

1. retry seat releases that failed before (the Flights service was down), and hand releases
   cut short on a service without holds to a person;
2. finish cancels of paid bookings that were cut short (refund, then cancel, then release);
3. refund money taken for bookings cancelled meanwhile (a charge that landed late, whether
   its request recorded it or a look-up finds it after reconciliation found none);
4. reconcile expired PENDING bookings with the gateway: charged → BOOKED, else expired;
5. expire INITIATED bookings past their hold, and release their seats;
6. purge idempotency keys past their TTL;
7. queue again the notifications the worker was never told of or lost track of (a lost task,
   a killed worker), delete delivered ones past `NOTIFICATION_RETENTION_DAYS`, and the
   database queue's rows of finished tasks.

Releases are retried (1) before new ones are made (2, 4, 5), so a release that fails in
this run waits for the next one instead of being tried twice in a row. The admin's cleanup
page counts the same sets (`cleanup_backlog`), and the plan tests EXPLAIN each of them.

Every change is one short transaction on one booking, taken with
`select_for_update(skip_locked=True)` and its state checked again under the lock, and
every network call is made outside it: several copies can run at once on several hosts,
and a copy killed at any point leaves work that the next run finishes. The one exception is
expiry with the in-process Flights adapter (`Duty.batch`): a batch of bookings per
transaction, locked the same way, all of it committed or none (`booking_expire_stale_batch`).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields

from django.conf import settings
from django.db.models import Count, Min, QuerySet
from django.utils import timezone

from bookings import selectors
from bookings.audit import acting_as
from bookings.flights_gateway import FlightGateway, get_flight_gateway
from bookings.models import Booking, BookingEvent, CleanupRun
from bookings.services import (
    ExpiredBatch,
    booking_expire_stale,
    booking_expire_stale_batch,
    booking_flag_stuck_release,
    booking_release_seats,
)
from bookings_project import db, request_id
from bookings_project.exceptions import DomainError
from notifications import selectors as notification_selectors
from notifications import services as notification_services
from notifications import tasks as notification_tasks
from payments import selectors as payment_selectors
from payments.gateway import ChargeStatus, PaymentGateway, get_payment_gateway
from payments.idempotency import idempotency_keys_purge
from payments.models import Payment
from payments.services import payment_find_charge, payment_refund_late_charge, payment_refund_stranded
from workflows import selectors as workflow_selectors
from workflows.services import Reconciliation, booking_cancel, payment_reconcile_expired

# The name ops filter on (the module moved here from bookings.cleanup; its log did not).
logger = logging.getLogger("bookings.cleanup")

DEFAULT_BATCH_SIZE = 500
# How long a cleanup run is kept in the table that admin shows.
RUN_HISTORY = dt.timedelta(days=30)
# A run's record keeps its first failure lines (CleanupRun.failures); the log has them all.
FAILURES_KEPT = 100
# How long a payment that reconciliation found not charged is looked up again on every run,
# in case the gateway was still working on the charge (such payments are rare).
LATE_CHARGE_WATCH = dt.timedelta(hours=24)


@dataclass
class CleanupCounts:
    """The summary line, in this order."""

    expired: int = 0  # bookings cancelled because their hold ran out unpaid
    released_seats: int = 0  # seats given back to the Flights service
    retried_releases: int = 0  # earlier failed releases finished now
    reconciled_booked: int = 0  # PENDING bookings the gateway had charged: now BOOKED
    refunded: int = 0  # stranded money refunded, and cut-short cancels of paid bookings finished
    purged_keys: int = 0  # idempotency keys deleted past their TTL
    requeued_notifications: int = 0  # events and deliveries queued again for the worker
    purged_notifications: int = 0  # delivered events deleted past their retention
    failed: int = 0  # steps that did not complete: retried next run, or flagged for a person

    def summary(self) -> str:
        return " ".join(f"{count.name}={getattr(self, count.name)}" for count in fields(self))


@dataclass(frozen=True)
class Cutoffs:
    """Which stale things a run at `now` may touch."""

    now: dt.datetime
    # Holds that ended before this expire (`--older-than` moves it back).
    expired_before: dt.datetime
    # Payment attempts and refunds started before this are over: their requests timed out.
    settled_before: dt.datetime
    # Releases sent to the Flights service before this are over (see `flight_call_window`).
    released_before: dt.datetime
    # Notifications due before this and still not picked up are queued again.
    requeue_before: dt.datetime
    # Delivered notifications older than this are deleted.
    retained_after: dt.datetime

    @classmethod
    def at(cls, now: dt.datetime, *, older_than_minutes: int = 0) -> Cutoffs:
        return cls(
            now=now,
            expired_before=now - dt.timedelta(minutes=older_than_minutes),
            settled_before=now - payment_selectors.payment_attempt_window(),
            released_before=now - selectors.flight_call_window(),
            requeue_before=now - dt.timedelta(seconds=settings.NOTIFICATION_REQUEUE_AFTER_SECONDS),
            retained_after=now - dt.timedelta(days=settings.NOTIFICATION_RETENTION_DAYS),
        )


# What cleanup looks at -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkSet:
    """One set of rows cleanup looks at: walked by its duty, counted on the admin's cleanup
    page, offered as a bookings admin filter, EXPLAINed by the plan tests."""

    name: str
    rows: Callable[[Cutoffs], QuerySet]
    # How long an item has waited: the backlog's "waiting since" is the oldest of these.
    due_field: str
    # Its line on the admin's cleanup page; None: not shown (only the gateway can tell
    # whether such a payment is work).
    label: str | None = None
    # (value, title) of the bookings admin's "needs attention" filter that lists it.
    attention: tuple[str, str] | None = None


TO_EXPIRE = WorkSet(
    "bookings_to_expire",
    lambda cutoffs: selectors.bookings_to_expire(expired_before=cutoffs.expired_before),
    "expires_at",
    "Unpaid bookings past their hold (to expire)",
    ("to_expire", "Unpaid, past their hold (cleanup expires them)"),
)
TO_RECONCILE = WorkSet(
    "bookings_to_reconcile",
    lambda cutoffs: workflow_selectors.bookings_to_reconcile(
        expired_before=cutoffs.expired_before, attempted_before=cutoffs.settled_before
    ),
    "expires_at",
    "PENDING bookings past their hold (to reconcile with the gateway)",
    ("to_reconcile", "PENDING, past their hold (cleanup asks the gateway)"),
)
RELEASES_OWED = WorkSet(
    "bookings_owing_release",
    lambda cutoffs: selectors.bookings_owing_release(),
    "updated_at",
    "Seat releases waiting for a retry",
    ("release_owed", "Cancelled, seats not yet given back"),
)
RELEASES_CUT_SHORT = WorkSet(
    "bookings_with_stuck_release",
    lambda cutoffs: selectors.bookings_with_stuck_release(updated_before=cutoffs.released_before),
    "updated_at",
    "Releases cut short on a Flights service without holds (for a person)",
)
CANCELS_CUT_SHORT = WorkSet(
    "bookings_with_unfinished_cancel",
    lambda cutoffs: selectors.bookings_with_unfinished_cancel(requested_before=cutoffs.settled_before),
    "cancel_requested_at",
    "Paid bookings whose cancel was cut short",
    ("unfinished_cancel", "Paid, cancel cut short (cleanup refunds and cancels)"),
)
MONEY_STRANDED = WorkSet(
    "payments_stranded_on_cancelled_bookings",
    lambda cutoffs: payment_selectors.payments_stranded_on_cancelled_bookings(updated_before=cutoffs.settled_before),
    "updated_at",
    "Payments to refund (booking cancelled)",
)
LATE_CHARGES_WATCHED = WorkSet(
    "payments_to_watch_for_late_charges",
    lambda cutoffs: payment_selectors.payments_to_watch_for_late_charges(
        reconciled_after=cutoffs.now - LATE_CHARGE_WATCH
    ),
    "reconciled_at",
)
KEYS_EXPIRED = WorkSet(
    "expired_idempotency_keys",
    lambda cutoffs: payment_selectors.expired_idempotency_keys(now=cutoffs.now),
    "expires_at",
    "Idempotency keys past their TTL",
)
EVENTS_NOT_DISPATCHED = WorkSet(
    "events_not_dispatched",
    lambda cutoffs: notification_selectors.events_not_dispatched(created_before=cutoffs.requeue_before),
    "created_at",
    "Notification events the worker has not picked up",
)
DELIVERIES_FORGOTTEN = WorkSet(
    "deliveries_forgotten",
    lambda cutoffs: notification_selectors.deliveries_forgotten(due_before=cutoffs.requeue_before, now=cutoffs.now),
    "next_attempt_at",
    "Notification deliveries due and not being attempted",
)
EVENTS_TO_PURGE = WorkSet(
    "events_to_purge",
    lambda cutoffs: notification_selectors.events_to_purge(created_before=cutoffs.retained_after),
    "created_at",
)
# No duty acts on these: cleanup leaves them to a person, and the page shows them.
NEEDS_A_PERSON = WorkSet(
    "bookings_needing_a_person",
    lambda cutoffs: selectors.bookings_needing_a_person(),
    "updated_at",
    "Seat outcomes only a person can settle",
    ("reconcile", "Needs reconciliation with the Flights service"),
)

# In the order the admin's cleanup page lists them.
WORK_SETS: tuple[WorkSet, ...] = (
    TO_EXPIRE,
    TO_RECONCILE,
    RELEASES_OWED,
    RELEASES_CUT_SHORT,
    CANCELS_CUT_SHORT,
    MONEY_STRANDED,
    KEYS_EXPIRED,
    EVENTS_NOT_DISPATCHED,
    DELIVERIES_FORGOTTEN,
    NEEDS_A_PERSON,
    LATE_CHARGES_WATCHED,
    EVENTS_TO_PURGE,
)


# A run -------------------------------------------------------------------------------------


def cleanup_stale_bookings(
    *,
    dry_run: bool = False,
    older_than_minutes: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    report: Callable[[str], None] | None = None,
    flights: FlightGateway | None = None,
    payments: PaymentGateway | None = None,
) -> CleanupCounts:
    """Run every duty once and answer the counts. `report` receives one line per booking
    touched (the command prints them at -v 2). A dry run changes nothing: it counts what a
    run would do, asking the payment gateway (read-only) about expired PENDING bookings."""
    # The database's clock decides what is stale, so this host's own cannot expire a hold or
    # settle a payment early; it is only compared, to say so when it is off.
    started = db.database_now()
    skew = (timezone.now() - started).total_seconds()
    if abs(skew) > settings.MAX_CLOCK_SKEW_SECONDS:
        logger.warning("cleanup: this host's clock is %.1f s off the database's; deciding with the database's", skew)
    run = _Run(
        cutoffs=Cutoffs.at(started, older_than_minutes=older_than_minutes),
        batch_size=batch_size,
        dry_run=dry_run,
        report=report or (lambda line: None),
        flights=flights or get_flight_gateway(),
        payments=payments or get_payment_gateway(),
    )
    # One id for the run: its log lines, its calls to the Flights service and the audit
    # trail's events all carry it, and so does its CleanupRun row.
    run_id = f"cleanup-{uuid.uuid4().hex}"
    with request_id.bound(run_id), acting_as(BookingEvent.Actor.CLEANUP):
        for duty in DUTIES:
            duty.perform(run)
        counts = run.counts
        logger.info("cleanup_stale_bookings%s: %s", " (dry run)" if dry_run else "", counts.summary())
    if not dry_run:
        CleanupRun.objects.create(
            started_at=started,
            finished_at=timezone.now(),
            host=socket.gethostname()[:255],
            run_id=run_id,
            counts=asdict(counts),
            failed=counts.failed,
            failures=run.failures,
        )
        CleanupRun.objects.filter(started_at__lt=started - RUN_HISTORY).delete()
    return counts


@dataclass
class _Run:
    cutoffs: Cutoffs
    batch_size: int
    dry_run: bool
    report: Callable[[str], None]
    flights: FlightGateway
    payments: PaymentGateway
    counts: CleanupCounts = field(default_factory=CleanupCounts)
    # What failed, one line each, for the run's record (admin): the first ones only, so a run
    # against a dead dependency stays one small row.
    failures: list[str] = field(default_factory=list)

    def each(self, queryset: QuerySet, what: str, step: Callable[[int], None]) -> None:
        """Apply `step` to every id in `queryset`, a batch of ids at a time (keyset order,
        so memory stays flat and a row that fails is not met again this run). One booking's
        failure is counted and logged; the rest go on."""
        for pk in _ids_in_batches(queryset, self.batch_size):
            self.one(pk, what, step)

    def one(self, pk: int, what: str, step: Callable[[int], None]) -> None:
        try:
            step(pk)
        except DomainError as error:  # The Flights service or the gateway is down: next run.
            self.fail(f"{what} {pk}: {error.detail}")
        except Exception:
            logger.exception("cleanup: %s %s failed", what, pk)
            self.fail(f"{what} {pk}: unexpected error (logged)")

    @property
    def batches(self) -> bool:
        """Whether duties may take many items per transaction: the Flights inventory joins
        our transactions (in process), and this run changes things."""
        return not self.dry_run and self.flights.joins_transactions

    def fail(self, line: str) -> None:
        self.counts.failed += 1
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(line)
        logger.warning("cleanup: %s", line)
        self.report(f"FAILED {line}")

    def would_release(self, booking_id: int) -> None:
        """Dry run: count the seats a release of this booking would give back."""
        booking = Booking.objects.only("seats", "seats_state").get(pk=booking_id)
        if booking.seats_state in Booking.SEATS_OWED:
            self.counts.released_seats += booking.seats

    def release(self, booking_id: int, *, retried: bool) -> None:
        release = booking_release_seats(booking_id=booking_id, gateway=self.flights)
        if release.outcome == release.Outcome.RELEASED:
            self.counts.released_seats += release.seats
            self.counts.retried_releases += retried
            self.report(f"booking {booking_id}: released {release.seats} seat(s)")
        elif release.failed:
            person = release.outcome == release.Outcome.RECONCILE
            self.fail(
                f"release of booking {booking_id}: {'needs a person (see admin)' if person else 'retried next run'}"
            )


def _ids_in_batches(queryset: QuerySet, batch_size: int) -> Iterator[int]:
    last = 0
    while True:
        batch = list(queryset.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size])
        yield from batch
        if len(batch) < batch_size:
            return
        last = batch[-1]


# What cleanup does: one step per item of a work set ---------------------------------------


def _retry_release(run: _Run, booking_id: int) -> None:
    if run.dry_run:
        run.counts.retried_releases += 1
        run.would_release(booking_id)
        run.report(f"booking {booking_id}: would retry its release")
    else:
        run.release(booking_id, retried=True)


def _flag_release_cut_short(run: _Run, booking_id: int) -> None:
    if run.dry_run or booking_flag_stuck_release(booking_id=booking_id, updated_before=run.cutoffs.released_before):
        run.fail(f"release of booking {booking_id}: cut short on a service without holds, needs a person")


def _finish_cancel(run: _Run, booking_id: int) -> None:
    if run.dry_run:
        run.counts.refunded += 1
        run.would_release(booking_id)
        run.report(f"booking {booking_id}: would refund and finish its cancel")
        return
    # The same call the API makes, which keeps the reason the cancel was asked with:
    # refund (keyed, so never twice), cancel, release.
    cancellation = booking_cancel(booking_id=booking_id, payment_gateway=run.payments, flight_gateway=run.flights)
    # Another host may have cancelled it while this one gave the seats back: each counts its part.
    run.counts.released_seats += cancellation.seats_released
    if cancellation.cancelled_now:
        run.counts.refunded += 1
        run.report(f"booking {booking_id}: refunded, cancel finished")
    if cancellation.booking.release_owed:
        run.fail(f"release of booking {booking_id}: retried next run")


def _refund_stranded(run: _Run, payment_id: int) -> None:
    if run.dry_run:
        run.counts.refunded += 1
        run.report(f"payment {payment_id}: would refund (its booking is cancelled)")
    elif payment_refund_stranded(payment_id=payment_id, gateway=run.payments):
        run.counts.refunded += 1
        run.report(f"payment {payment_id}: refunded (its booking is cancelled)")


def _refund_if_charged_late(run: _Run, payment_id: int) -> None:
    if run.dry_run:
        payment = Payment.objects.get(pk=payment_id)
        charge = payment_find_charge(payment=payment, gateway=run.payments, stop_if_open=False)
        if charge is not None and charge.status == ChargeStatus.SUCCEEDED:
            run.counts.refunded += 1
            run.report(f"payment {payment_id}: charged after it was settled as unpaid: would refund")
    elif payment_refund_late_charge(payment_id=payment_id, gateway=run.payments):
        run.counts.refunded += 1
        run.report(f"payment {payment_id}: charged after it was settled as unpaid: refunded")


def _reconcile(run: _Run, booking_id: int) -> None:
    if run.dry_run:
        _preview_reconciliation(run, booking_id)
        return
    outcome = payment_reconcile_expired(
        booking_id=booking_id,
        expired_before=run.cutoffs.expired_before,
        attempted_before=run.cutoffs.settled_before,
        gateway=run.payments,
    )
    if outcome == Reconciliation.BOOKED:
        run.counts.reconciled_booked += 1
        run.report(f"booking {booking_id}: the gateway had charged it: BOOKED")
    elif outcome == Reconciliation.CANCELLED:
        run.counts.expired += 1
        run.report(f"booking {booking_id}: not charged: expired")
        run.release(booking_id, retried=False)


def _preview_reconciliation(run: _Run, booking_id: int) -> None:
    payment = payment_selectors.payment_in_flight(booking_id=booking_id)
    # An open charge (3-D Secure never finished) would be cancelled, then the booking expired.
    charge = payment and payment_find_charge(payment=payment, gateway=run.payments, stop_if_open=False)
    if charge is not None and charge.status == ChargeStatus.SUCCEEDED:
        run.counts.reconciled_booked += 1
        run.report(f"booking {booking_id}: the gateway has charged it: would be BOOKED")
    else:
        run.counts.expired += 1
        run.would_release(booking_id)
        run.report(f"booking {booking_id}: not charged: would expire")


def _expire(run: _Run, booking_id: int) -> None:
    if run.dry_run:
        run.counts.expired += 1
        run.would_release(booking_id)
        run.report(f"booking {booking_id}: would expire")
    elif booking_expire_stale(booking_id=booking_id, expired_before=run.cutoffs.expired_before):
        run.counts.expired += 1
        run.report(f"booking {booking_id}: expired")
        run.release(booking_id, retried=False)


def _expire_in_batches(run: _Run, rows: QuerySet, duty: Duty) -> None:
    """`batch_size` bookings per transaction (`booking_expire_stale_batch`), in id order; each
    one a batch locks but cannot settle, and each one of a batch that failed (which changed
    nothing), goes through `_expire` on its own, as over HTTP."""
    last = 0
    while True:
        try:
            batch = booking_expire_stale_batch(
                expired_before=run.cutoffs.expired_before, after_id=last, limit=run.batch_size, gateway=run.flights
            )
        except Exception:
            # Nothing of it changed, and each of its bookings is tried again on its own right
            # away, where a failure is counted and logged as an error.
            logger.warning("cleanup: expiry batch after booking %s failed", last, exc_info=True)
            batch = ExpiredBatch(error="unexpected error (logged)")
        if batch.error and not batch.claimed:
            # Not even its bookings could be read: the rest one at a time, each failure counted there.
            duty.step_through(run, rows.filter(pk__gt=last))
            return
        for pk, seats in batch.expired.items():
            run.counts.expired += 1
            run.counts.released_seats += seats
            run.report(f"booking {pk}: expired")
            run.report(f"booking {pk}: released {seats} seat(s)")
        for pk in batch.left:
            duty.step_one(run, pk)
        if len(batch.claimed) < run.batch_size:
            return
        last = batch.claimed[-1]


def _purge_keys(run: _Run, keys: QuerySet) -> None:
    if run.dry_run:
        run.counts.purged_keys = keys.count()
    else:
        run.counts.purged_keys = idempotency_keys_purge(now=run.cutoffs.now, batch_size=run.batch_size)


def _requeue_events(run: _Run, events: QuerySet) -> None:
    ids = list(events.order_by("created_at").values_list("pk", flat=True)[: run.batch_size])
    if ids and not run.dry_run:
        notification_tasks.dispatch_events.enqueue(ids)
    run.counts.requeued_notifications += len(ids)


def _requeue_deliveries(run: _Run, deliveries: QuerySet) -> None:
    # One task attempts them all: a worker that stays down gets one more per run, not one per delivery.
    forgotten = deliveries.count()
    if forgotten and not run.dry_run:
        notification_tasks.deliver_due.enqueue()
    run.counts.requeued_notifications += forgotten


def _purge_notifications(run: _Run, events: QuerySet) -> None:
    if run.dry_run:
        run.counts.purged_notifications = events.count()
        return
    run.counts.purged_notifications = notification_services.events_purge(events=events)
    # The queue's own rows of finished tasks: not work, so not counted in the summary.
    if tasks := notification_services.task_results_purge(now=run.cutoffs.now):
        logger.info("cleanup: deleted %s finished task(s) of the database queue", tasks)


@dataclass(frozen=True)
class Duty:
    """One thing a run does to one work set: `step` on each item (`what` names an item in a
    failure line), or `whole` on the set at once."""

    work: WorkSet
    what: str
    step: Callable[[_Run, int], None] | None = None
    whole: Callable[[_Run, QuerySet], None] | None = None
    # A faster way through the set when the run allows it (`_Run.batches`): many items per
    # transaction, handing `step` each item it leaves.
    batch: Callable[[_Run, QuerySet, Duty], None] | None = None

    def perform(self, run: _Run) -> None:
        rows = self.work.rows(run.cutoffs)
        if self.whole is not None:
            self.whole(run, rows)
        elif self.batch is not None and run.batches:
            self.batch(run, rows, self)
        else:
            self.step_through(run, rows)

    def step_through(self, run: _Run, rows: QuerySet) -> None:
        run.each(rows, self.what, lambda pk: self.step(run, pk))

    def step_one(self, run: _Run, pk: int) -> None:
        run.one(pk, self.what, lambda pk: self.step(run, pk))


# In the order a run performs them (see the module's docstring).
DUTIES: tuple[Duty, ...] = (
    Duty(RELEASES_OWED, "release of booking", _retry_release),
    Duty(RELEASES_CUT_SHORT, "release of booking", _flag_release_cut_short),
    Duty(CANCELS_CUT_SHORT, "finishing the cancel of booking", _finish_cancel),
    Duty(MONEY_STRANDED, "refund of payment", _refund_stranded),
    Duty(LATE_CHARGES_WATCHED, "late-charge look-up of payment", _refund_if_charged_late),
    Duty(TO_RECONCILE, "reconciliation of booking", _reconcile),
    Duty(TO_EXPIRE, "expiry of booking", _expire, batch=_expire_in_batches),
    Duty(KEYS_EXPIRED, "purge of idempotency keys", whole=_purge_keys),
    Duty(EVENTS_NOT_DISPATCHED, "re-queue of notification events", whole=_requeue_events),
    Duty(DELIVERIES_FORGOTTEN, "re-queue of notification deliveries", whole=_requeue_deliveries),
    Duty(EVENTS_TO_PURGE, "purge of delivered notifications", whole=_purge_notifications),
)


# What a run now would act on (admin) ---------------------------------------------------------


@dataclass(frozen=True)
class BacklogItem:
    label: str
    count: int
    # The longest-waiting item's due time: far in the past means cleanup is not running.
    oldest: dt.datetime | None
    # The bookings admin filter that lists them (None: not bookings).
    attention_filter: str | None = None


def cleanup_backlog(*, now: dt.datetime | None = None) -> list[BacklogItem]:
    """Every work set with a label, counted as a run now would see it, without asking any
    remote service (the admin's cleanup page)."""
    cutoffs = Cutoffs.at(now or db.database_now())
    return [backlog_item(work, cutoffs) for work in WORK_SETS if work.label is not None]


def backlog_item(work: WorkSet, cutoffs: Cutoffs) -> BacklogItem:
    found = work.rows(cutoffs).order_by().aggregate(count=Count("pk"), oldest=Min(work.due_field))
    return BacklogItem(work.label or work.name, found["count"], found["oldest"], work.attention and work.attention[0])
