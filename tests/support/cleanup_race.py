"""The harness of tests/cleanup/test_cleanup_concurrency.py: copies of cleanup racing clients
on PostgreSQL, watched by an audit table that says who moved what.

- `Audit` / `Move`: triggers write every change of a booking's `status` or `seats_state`, a
  payment's `status`, a seat hold's `state` and every deleted idempotency key, with the
  `application_name` of the connection that made it (the `audit` fixture of
  `tests.fixtures.cleanup` starts and drops it).
- `make_backlog(...)`: every kind of stale work, made through the real services at a fixed clock.
- `payers_for`, `pay_as`, `api_token`: the clients paying while the copies run.
- `run_copy_in_thread`, `start_copy_process`, `tag_duties`, `name_connection`, `copy_local`:
  the copies, in threads (named and duty-tagged connections) or as `manage.py` processes.
- `check_race(...)`: what must hold afterwards (each move once, each seat released once, exact
  counts).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings import services as booking_services
from bookings.flights_gateway import InProcessFlightGateway
from bookings.models import Booking, CleanupRun
from bookings.services import booking_create, booking_release_seats
from bookings_project.exceptions import DomainError, FlightServiceUnavailable, PaymentGatewayUnavailable
from flights import services as flight_services
from flights.models import Flight, SeatHold
from payments import services as payment_services
from payments.gateway import SimulatedPaymentGateway
from payments.models import IdempotencyKey, Payment, SimulatedCharge
from payments.selectors import payment_attempt_window
from payments.services import payment_create
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings
from tests.support.cleanup import COUNTS
from workflows import cleanup
from workflows.services import Reconciliation, booking_cancel, payment_reconcile_expired

ROOT = Path(__file__).resolve().parents[2]
COPIES = 5
# Different batch sizes make the copies list their work at different moments.
BATCH_SIZES = (500, 1, 2, 3, 7)
FLIGHTS, CAPACITY = 4, 100

real_seats_change = flight_services.flight_seats_change
copy_local = threading.local()


class Crash(BaseException):
    """The process dies here (not an `Exception`: nothing in the app catches it)."""


# The audit: who moved what ---------------------------------------------------------------

AUDITED = {
    Booking._meta.db_table: ("status", "seats_state"),
    Payment._meta.db_table: ("status",),
    SeatHold._meta.db_table: ("state",),
}


@dataclass(frozen=True)
class Move:
    table: str
    row_id: int
    column: str
    old: str | None
    new: str | None
    app: str

    @property
    def actor(self) -> str:
        """The connection's name without its duty tag: `cleanup-3`, `payer-12`."""
        return self.app.split("/")[0]

    @property
    def duty(self) -> str | None:
        return self.app.split("/")[1] if "/" in self.app else None

    @property
    def by_cleanup(self) -> bool:
        return self.app.startswith("cleanup-")


class Audit:
    def start(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE conc_audit (id bigserial PRIMARY KEY, tbl text NOT NULL, row_id bigint NOT NULL, "
                "col text NOT NULL, old_value text, new_value text, app text NOT NULL)"
            )
            cursor.execute(
                """
                CREATE FUNCTION conc_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
                DECLARE
                    col text;
                    old_value text;
                    new_value text;
                BEGIN
                    FOREACH col IN ARRAY TG_ARGV LOOP
                        new_value := to_jsonb(NEW) ->> col;
                        old_value := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) ->> col END;
                        IF old_value IS DISTINCT FROM new_value THEN
                            INSERT INTO conc_audit (tbl, row_id, col, old_value, new_value, app)
                            VALUES (TG_TABLE_NAME, NEW.id, col, old_value, new_value,
                                    current_setting('application_name'));
                        END IF;
                    END LOOP;
                    RETURN NULL;
                END $$
                """
            )
            for table, columns in AUDITED.items():
                arguments = ", ".join(f"'{column}'" for column in columns)
                cursor.execute(
                    f"CREATE TRIGGER conc_audit AFTER INSERT OR UPDATE ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION conc_audit_row({arguments})"
                )
            cursor.execute(
                """
                CREATE FUNCTION conc_audit_delete() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO conc_audit (tbl, row_id, col, app)
                    VALUES (TG_TABLE_NAME, OLD.id, 'deleted', current_setting('application_name'));
                    RETURN NULL;
                END $$
                """
            )
            cursor.execute(
                f"CREATE TRIGGER conc_audit_delete AFTER DELETE ON {IdempotencyKey._meta.db_table} "
                "FOR EACH ROW EXECUTE FUNCTION conc_audit_delete()"
            )

    def stop(self) -> None:
        with connection.cursor() as cursor:
            for table in AUDITED:
                cursor.execute(f"DROP TRIGGER IF EXISTS conc_audit ON {table}")
            cursor.execute(f"DROP TRIGGER IF EXISTS conc_audit_delete ON {IdempotencyKey._meta.db_table}")
            cursor.execute("DROP FUNCTION IF EXISTS conc_audit_row()")
            cursor.execute("DROP FUNCTION IF EXISTS conc_audit_delete()")
            cursor.execute("DROP TABLE IF EXISTS conc_audit")

    def moves(self) -> list[Move]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT tbl, row_id, col, old_value, new_value, app FROM conc_audit ORDER BY id")
            return [Move(*row) for row in cursor.fetchall()]


def wait_for_cleanup(move: tuple[str, str] | None = None, *, unless=lambda: False) -> None:
    """Until a cleanup copy has written anything (or made this status move), or `unless()`."""
    sql = "SELECT EXISTS (SELECT 1 FROM conc_audit WHERE app LIKE 'cleanup-%%'"
    params: list[str] = []
    if move is not None:
        sql += " AND col = 'status' AND old_value = %s AND new_value = %s"
        params = list(move)
    deadline = time.monotonic() + 30
    while not unless():
        with connection.cursor() as cursor:
            cursor.execute(sql + ")", params)
            if cursor.fetchone()[0]:
                return
        assert time.monotonic() < deadline, f"no cleanup copy made {move or 'any move'}"
        time.sleep(0.002)


def name_connection(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('application_name', %s, false)", [name])


def tag_duties(monkeypatch) -> None:
    """Thread copies name the work set of the duty they are in on their connection (the duties
    are performed as they are, the tag only labels their writes in the audit)."""

    @dataclass(frozen=True)
    class Tagged:
        duty: cleanup.Duty

        def perform(self, run) -> None:
            name_connection(f"{copy_local.name}/{self.duty.work.name}")
            try:
                self.duty.perform(run)
            finally:
                name_connection(copy_local.name)

    monkeypatch.setattr(cleanup, "DUTIES", tuple(Tagged(duty) for duty in cleanup.DUTIES))


# Making the backlog through the real services ----------------------------------------------


class _CrashingCharge(SimulatedPaymentGateway):
    """The process dies after the payment was marked PROCESSING, before the gateway was asked."""

    def charge(self, **kwargs):
        raise Crash()


class _ChargeLandsAfterCleanup(SimulatedPaymentGateway):
    """While the charge is in flight the hold runs out and cleanup settles the booking as not
    charged; then the charge lands (late money), and the process dies refunding it."""

    def __init__(self, clock) -> None:
        self.clock = clock

    def charge(self, **kwargs):
        booking_id = Payment.objects.get(reference=kwargs["reference"]).booking_id
        now = self.clock.advance(minutes=django_settings.BOOKING_HOLD_MINUTES + 1)
        outcome = payment_reconcile_expired(
            booking_id=booking_id,
            expired_before=now,
            attempted_before=now - payment_attempt_window(),
            gateway=SimulatedPaymentGateway(),
        )
        assert outcome == Reconciliation.CANCELLED
        assert booking_release_seats(booking_id=booking_id).outcome == "released"
        return super().charge(**kwargs)

    def refund(self, *, payment):
        raise Crash()


class _RefundsDown(SimulatedPaymentGateway):
    def refund(self, *, payment):
        raise PaymentGatewayUnavailable("The simulated gateway is down (refund).")


def _pay_and_die_before_charging(booking: Booking) -> None:
    """The payment's request dies before the gateway is asked: PENDING, the payment PROCESSING."""
    with pytest.raises(Crash):
        payment_create(
            caller=booking.user,
            booking_id=booking.pk,
            amount=booking.total_cost,
            idempotency_key="died",
            gateway=_CrashingCharge(),
        )


def _connection_lost() -> OperationalError:
    return OperationalError("server closed the connection unexpectedly")


def api_token(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


def _api_pay(token: str, booking: Booking, key: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    body = {"bookingId": booking.pk, "amount": f"{booking.total_cost:.2f}"}
    return client.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


@dataclass
class Backlog:
    race_at: dt.datetime
    flights: list[Flight]
    users: dict[int, object]
    bookings: dict[int, Booking] = field(default_factory=dict)
    paid_before: list[int] = field(default_factory=list)  # BOOKED long ago: untouched
    stranded: list[int] = field(default_factory=list)  # CANCELLED, its late charge SUCCEEDED unrefunded
    late_unrecorded: list[int] = field(default_factory=list)  # CANCELLED, payment FAILED, then charged
    expiring: list[int] = field(default_factory=list)  # INITIATED past hold: cleanup expires
    lost_answer: list[int] = field(default_factory=list)  # PENDING, charged, answer lost: cleanup books
    lost_answer_resumed: list[int] = field(default_factory=list)  # the same, its client retries the key
    lost_keys: dict[int, str] = field(default_factory=dict)
    never_charged: list[int] = field(default_factory=list)  # PENDING, died before charging: cleanup expires
    owed: list[int] = field(default_factory=list)  # CANCELLED, release failed (reserved)
    owed_unconfirmed_held: list[int] = field(default_factory=list)  # reserve applied, answer lost
    owed_unconfirmed_none: list[int] = field(default_factory=list)  # reserve never applied
    cut_short: list[int] = field(default_factory=list)  # BOOKED, cancel asked, refund failed
    expired_for_payers: list[int] = field(default_factory=list)  # INITIATED past hold, clients pay
    fresh: list[int] = field(default_factory=list)  # INITIATED, hold running: clients pay
    expired_keys: set[int] = field(default_factory=set)
    live_keys: set[int] = field(default_factory=set)

    @property
    def all_owed(self) -> list[int]:
        return self.owed + self.owed_unconfirmed_held + self.owed_unconfirmed_none

    @property
    def expected_cancelled_by_cleanup(self) -> set[int]:
        return set(self.expiring + self.never_charged)

    @property
    def holding(self) -> list[int]:
        """Bookings that hold their seats at the end."""
        return self.paid_before + self.lost_answer + self.lost_answer_resumed + self.fresh

    @property
    def released(self) -> list[int]:
        """Bookings whose seats go back during the race."""
        return self.expiring + self.never_charged + self.all_owed + self.cut_short + self.expired_for_payers


def make_backlog(clock, monkeypatch, settings, alice, bob) -> Backlog:
    """Every kind of stale work, through the real services; answers with the clock at the race time."""
    race_at = clock.now
    clock.now = race_at - dt.timedelta(hours=27)
    flights = [make_flight(capacity=CAPACITY) for _ in range(FLIGHTS)]
    backlog = Backlog(race_at=race_at, flights=flights, users={alice.pk: alice, bob.pk: bob})
    numbers = itertools.count()

    def book() -> Booking:
        number = next(numbers)
        booking = booking_create(
            user=(alice, bob)[number % 2], flight_id=flights[number % FLIGHTS].pk, seats=1 + number % 3
        )
        backlog.bookings[booking.pk] = booking
        return booking

    def newest_booking() -> Booking:
        booking = Booking.objects.select_related("user").order_by("-pk").first()
        backlog.bookings[booking.pk] = booking
        return booking

    # A day before: bookings paid through the API, whose keys are past their TTL at the race.
    for _ in range(4):
        booking = book()
        response = _api_pay(api_token(booking.user), booking, f"paid-long-ago-{booking.pk}")
        assert response.status_code == 201, response.content
        backlog.paid_before.append(booking.pk)
    # And a key whose request died holding it.
    IdempotencyKey.objects.create(
        user=alice,
        key="died-holding-it",
        fingerprint="0" * 64,
        lease=uuid.uuid4(),
        locked_until=clock.now + payment_attempt_window(),
        expires_at=clock.now + dt.timedelta(hours=django_settings.IDEMPOTENCY_KEY_TTL_HOURS),
    )
    backlog.expired_keys = set(IdempotencyKey.objects.values_list("pk", flat=True))
    assert len(backlog.expired_keys) == 5
    clock.advance(hours=25)

    # Late money: a charge that landed after cleanup had expired its booking, its refund cut short.
    for _ in range(3):
        booking = book()
        with pytest.raises(Crash):
            payment_create(
                caller=booking.user,
                booking_id=booking.pk,
                amount=booking.total_cost,
                idempotency_key="late",
                gateway=_ChargeLandsAfterCleanup(clock),
            )
        backlog.stranded.append(booking.pk)

    # A late charge nobody recorded: reconciliation found none and expired the booking (its
    # request had died), then the gateway applied the charge. Cleanup watches such payments.
    for _ in range(2):
        booking = book()
        _pay_and_die_before_charging(booking)
        now = clock.advance(minutes=django_settings.BOOKING_HOLD_MINUTES + 1)
        outcome = payment_reconcile_expired(
            booking_id=booking.pk, expired_before=now, attempted_before=now - payment_attempt_window()
        )
        assert outcome == Reconciliation.CANCELLED
        assert booking_release_seats(booking_id=booking.pk).outcome == "released"
        payment = Payment.objects.get(booking=booking)
        assert payment.status == "FAILED"
        SimulatedPaymentGateway().charge(
            amount=payment.amount,
            currency=payment.currency,
            reference=payment.reference,
            idempotency_key=payment.reference,
        )
        backlog.late_unrecorded.append(booking.pk)

    # Ahead of the others (lower ids), so that copies meet them first when their clients come.
    for _ in range(6):
        backlog.expired_for_payers.append(book().pk)
    for _ in range(30):
        backlog.expiring.append(book().pk)

    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    for index in range(14):
        booking = book()
        key = f"lost-{booking.pk}"
        with pytest.raises(PaymentGatewayUnavailable):
            payment_create(caller=booking.user, booking_id=booking.pk, amount=booking.total_cost, idempotency_key=key)
        (backlog.lost_answer_resumed if index < 4 else backlog.lost_answer).append(booking.pk)
        backlog.lost_keys[booking.pk] = key
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"

    for _ in range(10):
        booking = book()
        _pay_and_die_before_charging(booking)
        backlog.never_charged.append(booking.pk)

    def releases_fail(**kwargs):
        if kwargs["decrease"]:
            return real_seats_change(**kwargs)
        raise _connection_lost()

    with monkeypatch.context() as patch:
        patch.setattr(flight_services, "flight_seats_change", releases_fail)
        for _ in range(10):
            booking = book()
            cancellation = booking_cancel(booking_id=booking.pk)
            assert cancellation.booking.release_owed and cancellation.seats_released == 0
            backlog.owed.append(booking.pk)

    for applied in (True, False):

        def reserve_lost(apply_it=applied, **kwargs):
            if kwargs["decrease"] and apply_it:
                real_seats_change(**kwargs)
            raise _connection_lost()

        with monkeypatch.context() as patch:
            patch.setattr(flight_services, "flight_seats_change", reserve_lost)
            # Only the saga (HTTP, or in process walking it) has a reserve whose answer is lost.
            saga = functools.partial(InProcessFlightGateway, joins_transactions=False)
            patch.setattr(booking_services, "get_flight_gateway", saga)
            with pytest.raises(FlightServiceUnavailable):
                book()
        booking = newest_booking()
        assert (booking.status, booking.seats_state) == ("CANCELLED", "unconfirmed")
        (backlog.owed_unconfirmed_held if applied else backlog.owed_unconfirmed_none).append(booking.pk)

    for _ in range(3):
        booking = book()
        response = _api_pay(api_token(booking.user), booking, f"paid-{booking.pk}")
        assert response.status_code == 201, response.content
        with monkeypatch.context() as patch:
            patch.setattr(payment_services, "get_payment_gateway", lambda: _RefundsDown())
            with pytest.raises(PaymentGatewayUnavailable):
                booking_cancel(booking_id=booking.pk)
        backlog.cut_short.append(booking.pk)

    clock.now = race_at
    assert max(Booking.objects.values_list("expires_at", flat=True)) < clock.now - payment_attempt_window(), (
        "the backlog must be past its holds and its payment attempts"
    )
    for _ in range(20):
        backlog.fresh.append(book().pk)

    backlog.live_keys = set(IdempotencyKey.objects.values_list("pk", flat=True)) - backlog.expired_keys
    assert len(backlog.live_keys) == 3
    for booking in backlog.bookings.values():
        booking.refresh_from_db()
    return backlog


# The clients racing the copies ----------------------------------------------------------


# Some clients come once a copy is at the same work, so that they race it there.
EXPIRING, RECONCILING = ("INITIATED", "CANCELLED"), ("PENDING", "BOOKED")


@dataclass(frozen=True)
class Payer:
    name: str
    booking_id: int
    kind: str  # "service" or "api"
    key: str
    wait_for: tuple[str, str] | None = None  # a status move by a cleanup copy


def payers_for(backlog: Backlog) -> list[Payer]:
    payers: list[Payer] = []

    def add(booking_id: int, kind: str, key: str, wait_for: tuple[str, str] | None = None) -> None:
        payers.append(Payer(f"payer-{len(payers)}", booking_id, kind, key, wait_for))

    for index, booking_id in enumerate(backlog.fresh):
        if index < 16:
            add(booking_id, "service", f"fresh-{booking_id}")
        else:
            add(booking_id, "api", f"fresh-{booking_id}")  # Two requests with the same key.
            add(booking_id, "api", f"fresh-{booking_id}")
    for index, booking_id in enumerate(backlog.lost_answer_resumed):  # The client retries its key.
        add(booking_id, "service", backlog.lost_keys[booking_id], RECONCILING if index % 2 else None)
    for index, booking_id in enumerate(backlog.expired_for_payers):
        add(
            booking_id,
            "api" if index % 3 == 2 else "service",
            f"too-late-{booking_id}",
            EXPIRING if index % 2 else None,
        )
    return payers


def pay_as(payer: Payer, backlog: Backlog, tokens: dict[int, str]) -> tuple:
    """What the client got: ("paid", status) | ("refused", code) | (http status, code, replayed)."""
    name_connection(payer.name)
    if payer.wait_for:
        wait_for_cleanup(payer.wait_for)
    booking = backlog.bookings[payer.booking_id]
    if payer.kind == "api":
        response = _api_pay(tokens[booking.user_id], booking, payer.key)
        code = response.json().get("code") if response.status_code >= 400 else None
        return response.status_code, code, response.get("Idempotent-Replayed") == "true"
    try:
        payment = payment_create(
            caller=backlog.users[booking.user_id],
            booking_id=booking.pk,
            amount=booking.total_cost,
            idempotency_key=payer.key,
        )
    except DomainError as error:
        return "refused", error.code
    return "paid", payment.status


# What a copy printed ----------------------------------------------------------------------

LINE = re.compile(
    r"^(?:(?P<kind>booking|payment) (?P<id>\d+): (?P<what>.*)"
    r"|(?P<failed>FAILED .*)"
    r"|(?P<summary>(?:dry run: )?expired=.*))$"
)


@dataclass
class CopyRun:
    name: str
    output: str
    error: str | None
    counts: dict[str, int] = field(default_factory=dict)
    lines: list[tuple[str, int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for text in self.output.splitlines():
            match = LINE.match(text)
            assert match, f"{self.name} printed an unexpected line: {text!r}"
            if match["summary"]:
                assert not self.counts, f"{self.name} printed two summaries"
                self.counts = {k: int(v) for k, v in (pair.split("=") for pair in match["summary"].split())}
            elif match["failed"]:
                self.failures.append(text)
            else:
                self.lines.append((match["kind"], int(match["id"]), match["what"]))
        assert list(self.counts) == list(COUNTS), self.output


def run_copy_in_thread(index: int) -> CopyRun:
    copy_local.name = name = f"cleanup-{index}"
    name_connection(name)
    out = StringIO()
    try:
        call_command("cleanup_stale_bookings", "--batch-size", str(BATCH_SIZES[index]), "-v", "2", stdout=out)
        error = None
    except CommandError as failure:
        error = str(failure)
    return CopyRun(name, out.getvalue(), error)


def _database_url(application_name: str) -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="") + (":" + quote(db["PASSWORD"], safe="") if db["PASSWORD"] else "")
    host = db["HOST"] or "127.0.0.1"
    return f"postgres://{auth}@{host}:{db['PORT'] or 5432}/{quote(db['NAME'])}?application_name={application_name}"


def start_copy_process(index: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bookings_project.settings",
        "DATABASE_URL": _database_url(f"cleanup-{index}"),
        "FLIGHT_SERVICE_URL": "",
        "PAYMENT_GATEWAY": "simulated",
        "PAYMENT_SIMULATED_OUTCOME": "approve",
        # No worker runs here: as in the test settings, nothing counts as forgotten.
        "NOTIFICATION_REQUEUE_AFTER_SECONDS": str(10 * 365 * 24 * 3600),
    }
    command = [
        sys.executable,
        "manage.py",
        "cleanup_stale_bookings",
        "-v",
        "2",
        "--batch-size",
        str(BATCH_SIZES[index]),
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# The checks ---------------------------------------------------------------------------------


def check_race(
    backlog: Backlog, moves: list[Move], copies: list[CopyRun], payers: list[Payer], answers: list, *, tagged: bool
) -> None:
    bookings = Booking.objects.in_bulk()
    holds = {hold.ref: hold for hold in SeatHold.objects.all()}
    payments = Payment.objects.in_bulk()

    def hold_seats(booking_id: int) -> int:
        return holds[f"booking-{booking_id}"].seats

    # 1. Every copy finished cleanly, and recorded its run.
    for copy in copies:
        assert copy.error is None and not copy.failures and copy.counts["failed"] == 0, (copy.name, copy.output)
    runs = sorted(sorted(run.counts.items()) for run in CleanupRun.objects.all())
    assert runs == sorted(sorted(copy.counts.items()) for copy in copies)

    # 2. Each booking changed state once: exactly the moves expected, in order, nothing else.
    status, seats = defaultdict(list), defaultdict(list)
    for move in moves:
        if move.table == Booking._meta.db_table:
            (status if move.column == "status" else seats)[move.row_id].append(move)
    expected_status: dict[int, list[tuple[str, str]]] = {}
    for booking_id in backlog.expiring + backlog.expired_for_payers:
        expected_status[booking_id] = [("INITIATED", "CANCELLED")]
    for booking_id in backlog.never_charged:
        expected_status[booking_id] = [("PENDING", "CANCELLED")]
    for booking_id in backlog.lost_answer + backlog.lost_answer_resumed:
        expected_status[booking_id] = [("PENDING", "BOOKED")]
    for booking_id in backlog.cut_short:
        expected_status[booking_id] = [("BOOKED", "CANCELLED")]
    for booking_id in backlog.fresh:
        expected_status[booking_id] = [("INITIATED", "PENDING"), ("PENDING", "BOOKED")]
    expected_seats = {booking_id: [("reserved", "released")] for booking_id in backlog.released}
    for booking_id in backlog.owed_unconfirmed_held + backlog.owed_unconfirmed_none:
        expected_seats[booking_id] = [("unconfirmed", "released")]
    actual_status = {k: [(m.old, m.new) for m in v] for k, v in status.items()}
    actual_seats = {k: [(m.old, m.new) for m in v] for k, v in seats.items()}
    assert actual_status == expected_status
    assert actual_seats == expected_seats
    assert set(bookings) == set(backlog.bookings)

    # Who made each move.
    cancelled_by = {b: status[b][0].actor for b in backlog.released if status[b]}
    released_by = {b: seats[b][0] for b in backlog.released}
    assert all(cancelled_by[b].startswith("cleanup-") for b in backlog.expiring + backlog.never_charged)
    assert all(cancelled_by[b].startswith("cleanup-") for b in backlog.cut_short)
    assert all(status[b][0].by_cleanup for b in backlog.lost_answer)
    assert all(released_by[b].by_cleanup for b in backlog.all_owed + backlog.expiring + backlog.never_charged)
    assert all(not m.by_cleanup for b in backlog.fresh for m in status[b]), "cleanup moved a fresh booking"

    # 3. The clients' answers.
    answers_by_booking = defaultdict(list)
    for payer, answer in zip(payers, answers, strict=True):
        answers_by_booking[payer.booking_id].append((payer, answer))
    for booking_id in backlog.fresh:
        got = [answer for _, answer in answers_by_booking[booking_id]]
        if len(got) == 1:
            assert got == [("paid", "SUCCEEDED")]
        else:  # The same key twice through the API: one charge, the other a replay or "in use".
            assert len(got) == 2 and got.count((201, None, False)) == 1, got
            (other,) = [answer for answer in got if answer != (201, None, False)]
            assert other in ((201, None, True), (409, "idempotency_key_in_use", False)), got
    for booking_id in backlog.lost_answer_resumed:
        assert [answer for _, answer in answers_by_booking[booking_id]] == [("paid", "SUCCEEDED")]
    payer_expired = set()
    for booking_id in backlog.expired_for_payers:
        ((payer, answer),) = answers_by_booking[booking_id]
        # The payer that found the hold run out cancels it (booking_expired); one that came
        # after cleanup did finds it CANCELLED (booking_not_payable, as docs/api.md#payments says).
        mine = cancelled_by[booking_id] == payer.name
        assert cancelled_by[booking_id] == payer.name or cancelled_by[booking_id].startswith("cleanup-")
        code = "booking_expired" if mine else "booking_not_payable"
        assert answer == (("refused", code) if payer.kind == "service" else (409, code, False)), (payer, answer)
        if mine:
            payer_expired.add(booking_id)

    # 4. Each copy's lines name each item once, and together they name exactly cleanup's work.
    lines = [line for copy in copies for line in copy.lines]
    line_counts = Counter(lines)
    assert max(line_counts.values()) == 1, [line for line, n in line_counts.items() if n > 1]
    by_kind = defaultdict(list)
    for kind, item, what in lines:
        by_kind[(kind, re.sub(r"\d+", "N", what))].append(item)
    cleanup_expired = backlog.expected_cancelled_by_cleanup | (set(backlog.expired_for_payers) - payer_expired)
    reconciled = set(backlog.lost_answer) | {b for b in backlog.lost_answer_resumed if status[b][0].by_cleanup}
    released_by_cleanup = {b for b, move in released_by.items() if move.by_cleanup}
    assert sorted(by_kind.pop(("booking", "expired"), []) + by_kind.pop(("booking", "not charged: expired"), [])) == (
        sorted(cleanup_expired)
    )
    assert sorted(by_kind.pop(("booking", "the gateway had charged it: BOOKED"), [])) == sorted(reconciled)
    assert sorted(by_kind.pop(("booking", "refunded, cancel finished"), [])) == sorted(backlog.cut_short)
    stranded_payments = sorted(
        p.pk for p in payments.values() if p.booking_id in backlog.stranded and p.idempotency_key == "late"
    )
    assert len(stranded_payments) == len(backlog.stranded)
    assert sorted(by_kind.pop(("payment", "refunded (its booking is cancelled)"), [])) == stranded_payments
    late_payments = sorted(p.pk for p in payments.values() if p.booking_id in backlog.late_unrecorded)
    assert len(late_payments) == len(backlog.late_unrecorded)
    assert sorted(by_kind.pop(("payment", "charged after it was settled as unpaid: refunded"), [])) == late_payments
    released_lines = by_kind.pop(("booking", "released N seat(s)"), [])
    assert set(released_lines) <= released_by_cleanup
    assert set(released_by_cleanup) - set(released_lines) <= set(backlog.cut_short)
    assert not by_kind, by_kind
    for copy in copies:
        for _kind, item, what in copy.lines:
            if what.startswith("released "):
                assert what == f"released {hold_seats(item)} seat(s)"
                assert released_by[item].actor == copy.name

    # 5. The counts: each copy's equal the work its connection did, item by item, so no item is
    # counted twice; summed, they equal the backlog's.
    refunds = {
        payments[m.row_id].booking_id: m for m in moves if m.table == Payment._meta.db_table and m.new == "REFUNDED"
    }
    deleted_keys = Counter(m.row_id for m in moves if m.column == "deleted")
    assert set(deleted_keys) == backlog.expired_keys and set(deleted_keys.values()) == {1}
    key_deleters = Counter(m.actor for m in moves if m.column == "deleted")

    def done_by(actor: str) -> dict[str, int]:
        return {
            "expired": sum(
                m.actor == actor and m.old in ("INITIATED", "PENDING") and m.new == "CANCELLED"
                for v in status.values()
                for m in v
            ),
            "released_seats": sum(hold_seats(b) for b, m in released_by.items() if m.actor == actor),
            "retried_releases": sum(
                m.actor == actor and m.duty == cleanup.RELEASES_OWED.name for m in released_by.values()
            ),
            "reconciled_booked": sum(
                m.actor == actor and (m.old, m.new) == RECONCILING for v in status.values() for m in v
            ),
            "refunded": sum(refunds[b].actor == actor for b in backlog.stranded + backlog.late_unrecorded)
            + sum(cancelled_by[b] == actor for b in backlog.cut_short),
            "purged_keys": key_deleters[actor],
            "requeued_notifications": 0,
            "purged_notifications": 0,
            "failed": 0,
        }

    for copy in copies:
        expected = done_by(copy.name)
        if not tagged:  # Processes do not tag their duties: checked on the total below.
            expected["retried_releases"] = copy.counts["retried_releases"]
        assert copy.counts == expected, copy.name
    assert set(key_deleters) <= {copy.name for copy in copies}

    total = Counter()
    for copy in copies:
        total.update(copy.counts)
    assert total["failed"] == 0
    assert (
        total["expired"]
        == len(cleanup_expired)
        == len(backlog.expiring) + len(backlog.never_charged) + len(backlog.expired_for_payers) - len(payer_expired)
    )
    assert total["reconciled_booked"] == len(reconciled)
    assert (
        len(backlog.lost_answer) <= total["reconciled_booked"] <= len(backlog.lost_answer + backlog.lost_answer_resumed)
    )
    assert total["refunded"] == len(backlog.stranded) + len(backlog.cut_short) + len(backlog.late_unrecorded)
    assert total["purged_keys"] == len(backlog.expired_keys)
    assert hold_seats(backlog.owed_unconfirmed_none[0]) == 0  # A tombstone: no seat went back.
    assert total["released_seats"] == sum(hold_seats(b) for b in released_by_cleanup)
    assert total["released_seats"] == sum(
        hold_seats(b) for b in backlog.released if b not in payer_expired or released_by[b].by_cleanup
    )
    # Another copy (or a client) may take over a release between a cancel's commit and its own
    # release: the booking is owed meanwhile, so that one counts as retried too.
    taken_over = released_by_cleanup - set(backlog.all_owed)
    if tagged:
        retried = {b for b in released_by_cleanup if released_by[b].duty == cleanup.RELEASES_OWED.name}
        assert set(backlog.all_owed) <= retried
        assert total["retried_releases"] == len(retried)
    else:
        assert all(released_by[b].by_cleanup for b in backlog.all_owed)
        assert len(backlog.all_owed) <= total["retried_releases"] <= len(backlog.all_owed) + len(taken_over)
    # Cut-short cancels finished by two copies at once, the seats released by the one that did
    # not cancel (each copy counts the seats its own call released).
    split = [b for b in backlog.cut_short if released_by[b].actor != cancelled_by[b]]

    # 6. Seats: each hold released once; the flights exact; docs/design.md#invariants.
    hold_moves = defaultdict(list)
    hold_refs = {hold.pk: hold.ref for hold in holds.values()}
    for move in moves:
        if move.table == SeatHold._meta.db_table:
            hold_moves[hold_refs[move.row_id]].append((move.old, move.new))
    expected_holds = {f"booking-{b}": [("held", "released")] for b in backlog.released}
    expected_holds[f"booking-{backlog.owed_unconfirmed_none[0]}"] = [(None, "released")]  # The tombstone.
    assert dict(hold_moves) == expected_holds
    for booking_id in backlog.released:
        booking = bookings[booking_id]
        assert (booking.status, booking.seats_state) == ("CANCELLED", "released"), booking
        assert holds[booking.hold_ref].state == "released"
    for booking_id in backlog.holding:
        booking = bookings[booking_id]
        assert (booking.status, booking.seats_state) == ("BOOKED", "reserved"), booking
        assert (holds[booking.hold_ref].state, holds[booking.hold_ref].seats) == ("held", booking.seats)
    for booking_id in backlog.stranded + backlog.late_unrecorded:
        assert (bookings[booking_id].status, bookings[booking_id].seats_state) == ("CANCELLED", "released")
    for flight in backlog.flights:
        flight.refresh_from_db()
        held = sum(bookings[b].seats for b in backlog.holding if bookings[b].flight_id == flight.pk)
        assert flight.available_seats == CAPACITY - held, flight
        assert_bookings_match_ledger(flight)

    # 7. Money: each paid booking charged once; every refund made once; docs/design.md#invariants.
    payment_moves = defaultdict(list)
    for move in moves:
        if move.table == Payment._meta.db_table:
            payment_moves[payments[move.row_id].booking_id].append((move.old, move.new))
    expected_payments = {b: [(None, "PROCESSING"), ("PROCESSING", "SUCCEEDED")] for b in backlog.fresh}
    expected_payments.update({b: [("PROCESSING", "SUCCEEDED")] for b in backlog.lost_answer})
    expected_payments.update({b: [("PROCESSING", "SUCCEEDED")] for b in backlog.lost_answer_resumed})
    expected_payments.update({b: [("PROCESSING", "FAILED")] for b in backlog.never_charged})
    expected_payments.update({b: [("SUCCEEDED", "REFUNDED")] for b in backlog.cut_short + backlog.stranded})
    expected_payments.update({b: [("FAILED", "SUCCEEDED"), ("SUCCEEDED", "REFUNDED")] for b in backlog.late_unrecorded})
    assert dict(payment_moves) == expected_payments
    charges = Counter((charge.reference, charge.status) for charge in SimulatedCharge.objects.all())
    assert max(charges.values()) == 1
    for booking_id in backlog.holding:
        (payment,) = [p for p in payments.values() if p.booking_id == booking_id and p.status == "SUCCEEDED"]
        assert (payment.reference, "succeeded") in charges
    for booking_id in backlog.cut_short + backlog.stranded + backlog.late_unrecorded:
        (payment,) = [p for p in payments.values() if p.booking_id == booking_id and p.status == "REFUNDED"]
        assert (payment.reference, "refunded") in charges and payment.refund_reference
    refunded = backlog.cut_short + backlog.stranded + backlog.late_unrecorded
    assert sum(charges.values()) == len(backlog.holding) + len(refunded)
    assert not Payment.objects.filter(status="PROCESSING").exists()
    assert_money_matches_bookings()

    # 8. Keys: the expired ones purged (each by one copy), the live ones kept.
    remaining = set(IdempotencyKey.objects.values_list("pk", flat=True))
    assert not remaining & backlog.expired_keys
    assert backlog.live_keys <= remaining
    assert not IdempotencyKey.objects.filter(expires_at__lte=backlog.race_at).exists()

    resumed_first = len(backlog.lost_answer_resumed) - (len(reconciled) - len(backlog.lost_answer))
    print(
        f"expired by payers {len(payer_expired)}/{len(backlog.expired_for_payers)}, "
        f"resumed before cleanup {resumed_first}/{len(backlog.lost_answer_resumed)}, "
        f"releases taken over by a retry {total['retried_releases'] - len(backlog.all_owed)}, "
        f"cut-short split between copies {len(split)}, counts {dict(total)}"
    )
