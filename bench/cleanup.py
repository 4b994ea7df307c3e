"""What `manage.py cleanup_stale_bookings` costs as its backlog grows: time per 1,000 stale
bookings and the command's peak memory, at 10,000 and 100,000 by default.

For each size: a throw-away PostgreSQL database, migrated; the real command run once on it
empty (the baseline: start-up and the scans of an empty backlog); then N bookings seeded in
bulk (INSERT ... SELECT generate_series) as they are an hour after their hold ran out
unpaid: INITIATED, seats reserved, each with its hold in the flights ledger (SeatHold
`booking-<id>`, held) and its flight's seat count lowered to match, so that expiring them
really gives the seats back through the in-process Flights adapter. `--pending-percent P`
makes P% of them PENDING instead, each with a PROCESSING payment older than the attempt
window, half of which the simulated gateway had charged (reconciled to BOOKED, seats kept)
and half not (expired like the rest). The default keeps the figure on the INITIATED expiry.

Then the real command runs in a subprocess with that database's DATABASE_URL, its stdout
and stderr to a log file. Its wall clock runs from spawn to exit. Its peak memory is the
`ru_maxrss` that `wait4()` answers for that one child (the kernel's high-water mark of its
RSS; the command starts no processes of its own), so each figure is its own run's, not the
maximum over every child this script has waited for, as RUSAGE_CHILDREN would be. Then the
database is read: every seeded booking ended as it should (CANCELLED, reason expired, seats
released, its expiry in the audit trail; or BOOKED), every hold agrees with its booking,
every flight's free seats agree with its held holds (for a pure INITIATED backlog: every
seat is back), and the command's summary line says as much. A second run must then find
nothing (its time is the scans alone, on tables of that size).

Prints a row per size and the growth from the first size to the last (time per 1k and peak
memory); exits 1 if a check failed, 2 if the run could not be made.
Run: `.venv/bin/python bench/cleanup.py [--sizes 10000,100000] [--pending-percent P] [--keep]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from serving import (  # noqa: E402  (scripts/ is not a package)
    drop_database,
    last_line_json,
    recreate_database,
    run_to_the_end,
    service_env,
    set_up_django,
    start_django_task,
)

PYTHON = sys.executable
DATABASE_PREFIX = "flight_bookings_bench_cleanup"
DEFAULT_SIZES = "10000,100000"

# 300 bookings of 1 to 4 seats (cycling) per flight: 750 of its 1,000 seats taken.
BOOKINGS_PER_FLIGHT = 300
CAPACITY = 1000
PRICE = "4500.00"
USERS = 50
# How long ago the holds ran out: past every window cleanup waits for.
EXPIRED_AGO = dt.timedelta(hours=1)
SUMMARY_LINE = re.compile(r"expired=\d+ .*failed=\d+")


# Tasks run inside Django, in a subprocess with the right DATABASE_URL --------------------------


def run_django_task(task: str, size: int, pending_percent: int, expect: str) -> int:
    """This script re-invoked with `--django-task`: migrate, seed or verify one database."""
    set_up_django()
    from django.core.management import call_command

    if task == "migrate":
        call_command("migrate", interactive=False, verbosity=0)
        result: dict[str, Any] = {}
    elif task == "seed":
        result = seed(size, pending_percent)
    else:
        result = {"problems": verify(json.loads(expect))}
    print(json.dumps(result))
    return 0


def seed(size: int, pending_percent: int) -> dict[str, int]:
    """N stale bookings, their holds, creation events and (for PENDING ones) payments, in a
    handful of INSERT ... SELECT statements; then ANALYZE, as autovacuum would have by the
    time cron runs."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from bookings.models import Booking, BookingEvent
    from flights.models import Flight, SeatHold
    from payments.models import Payment, SimulatedCharge

    tables = {
        "flight": Flight._meta.db_table,
        "hold": SeatHold._meta.db_table,
        "booking": Booking._meta.db_table,
        "event": BookingEvent._meta.db_table,
        "payment": Payment._meta.db_table,
        "charge": SimulatedCharge._meta.db_table,
    }
    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        [user_model(username=f"bench-{index}", password="!") for index in range(USERS)]
    )
    now = timezone.now()
    params = {
        "size": size,
        "flights": math.ceil(size / BOOKINGS_PER_FLIGHT),
        "per_flight": BOOKINGS_PER_FLIGHT,
        "capacity": CAPACITY,
        "price": PRICE,
        "users": [user.pk for user in users],
        "user_count": len(users),
        "pending": pending_percent,
        "departure": now + dt.timedelta(days=30),
        "expired": now - EXPIRED_AGO,
        "currency": settings.CURRENCY,
    }
    statements = [
        # Every seat free at first; lowered below to what the holds take.
        """INSERT INTO {flight} (flight_number, departure_airport, arrival_airport, departure_time, arrival_time,
                                 price, currency, capacity, available_seats, created_at, updated_at)
           SELECT 'BN' || g, 'BOM', 'DEL', %(departure)s, %(departure)s + interval '2 hours',
                  %(price)s::numeric, %(currency)s, %(capacity)s, %(capacity)s, now(), now()
           FROM generate_series(1, %(flights)s) AS g""",
        # Booking g goes to the (g / per_flight)-th flight; holds ended 1 hour to 2 hours ago.
        """WITH f AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM {flight})
           INSERT INTO {booking} (user_id, flight_id, seats, total_cost, currency, status, seats_state,
                                  flight_keeps_holds, cancel_reason, flight_service_error, created_at, updated_at,
                                  expires_at)
           SELECT (%(users)s::bigint[])[1 + g %% %(user_count)s], f.id, 1 + g %% 4, %(price)s::numeric * (1 + g %% 4),
                  %(currency)s, CASE WHEN g %% 100 < %(pending)s THEN 'PENDING' ELSE 'INITIATED' END, 'reserved',
                  true, '', '',
                  t.expires - interval '10 minutes', t.expires - interval '9 minutes', t.expires
           FROM generate_series(0, %(size)s - 1) AS g
           JOIN f ON f.k = g / %(per_flight)s
           CROSS JOIN LATERAL (SELECT %(expired)s - (g %% 3600) * interval '1 second' AS expires) AS t
           ORDER BY g""",
        """INSERT INTO {hold} (flight_id, ref, seats, state, created_at)
           SELECT flight_id, 'booking-' || id, seats, 'held', created_at FROM {booking}""",
        """UPDATE {flight} AS f SET available_seats = f.capacity - h.taken
           FROM (SELECT flight_id, sum(seats) AS taken FROM {hold} WHERE state = 'held' GROUP BY flight_id) AS h
           WHERE h.flight_id = f.id""",
        """INSERT INTO {event} (booking_id, from_status, to_status, reason, actor, actor_user_id, request_id,
                                note, created_at)
           SELECT id, '', 'INITIATED', 'created', 'user', user_id, '', '', created_at FROM {booking}
           UNION ALL
           SELECT id, 'INITIATED', 'PENDING', 'payment_started', 'user', user_id, '', '', updated_at
           FROM {booking} WHERE status = 'PENDING'""",
        # The attempt was made 9 minutes before the hold ended: long past the attempt window.
        """INSERT INTO {payment} (booking_id, user_id, created_by_id, idempotency_key, amount, currency, status,
                                  reference, gateway_reference, failure_reason, refund_reference, created_at,
                                  updated_at, attempted_at, attempts, payment_method)
           SELECT id, user_id, user_id, 'bench-' || id, total_cost, %(currency)s, 'PROCESSING',
                  'pay_bench_' || id, '', '', '', updated_at, updated_at, updated_at, 1, ''
           FROM {booking} WHERE status = 'PENDING'""",
        # The gateway charged the payments of even bookings, and their answer was lost.
        """INSERT INTO {charge} (charge_id, idempotency_key, reference, amount, currency, status, decline_reason,
                                 refund_id, created_at)
           SELECT 'sim_ch_bench_' || booking_id, reference, reference, amount, currency, 'succeeded', '', '',
                  attempted_at
           FROM {payment} WHERE booking_id %% 2 = 0""",
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement.format(**tables), params)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute(
            f"""SELECT count(*) FILTER (WHERE b.status = 'INITIATED'),
                       count(*) FILTER (WHERE b.status = 'PENDING' AND c.id IS NULL),
                       count(*) FILTER (WHERE c.id IS NOT NULL),
                       coalesce(sum(b.seats) FILTER (WHERE c.id IS NULL), 0),
                       coalesce(sum(b.seats) FILTER (WHERE c.id IS NOT NULL), 0)
                FROM {tables["booking"]} AS b
                LEFT JOIN {tables["payment"]} AS p ON p.booking_id = b.id
                LEFT JOIN {tables["charge"]} AS c ON c.reference = p.reference"""
        )
        initiated, unpaid, charged, seats_released, seats_kept = cursor.fetchone()
    return {
        "initiated": initiated,
        "pending_unpaid": unpaid,
        "pending_charged": charged,
        "expired": initiated + unpaid,
        "seats_released": int(seats_released),
        "seats_kept": int(seats_kept),
        "flights": params["flights"],
    }


def verify(expect: dict[str, int]) -> list[str]:
    """What is wrong in the database after cleanup, against what was seeded (empty: nothing)."""
    from django.db import connection
    from django.db.models import Sum

    from bookings.models import Booking, BookingEvent
    from flights.models import Flight, SeatHold
    from payments.models import Payment

    Status, SeatsState = Booking.Status, Booking.SeatsState
    problems: list[str] = []

    def equal(what: str, found: int, wanted: int) -> None:
        if found != wanted:
            problems.append(f"{what}: {found}, expected {wanted}")

    bookings = Booking.objects
    equal(
        "bookings left INITIATED or PENDING", bookings.filter(status__in=[Status.INITIATED, Status.PENDING]).count(), 0
    )
    equal("bookings CANCELLED", bookings.filter(status=Status.CANCELLED).count(), expect["expired"])
    equal(
        "bookings CANCELLED, reason expired, seats released",
        bookings.filter(
            status=Status.CANCELLED,
            cancel_reason=Booking.CancelReason.EXPIRED,
            seats_state=SeatsState.RELEASED,
            seats_released_at__isnull=False,
            cancelled_at__isnull=False,
        ).count(),
        expect["expired"],
    )
    equal(
        "bookings BOOKED with seats reserved",
        bookings.filter(status=Status.BOOKED, seats_state=SeatsState.RESERVED).count(),
        expect["pending_charged"],
    )
    equal("bookings BOOKED", bookings.filter(status=Status.BOOKED).count(), expect["pending_charged"])
    equal(
        "expiry events by cleanup",
        BookingEvent.objects.filter(
            to_status=Status.CANCELLED, reason=BookingEvent.Reason.EXPIRED, actor=BookingEvent.Actor.CLEANUP
        ).count(),
        expect["expired"],
    )
    held = SeatHold.objects.filter(state=SeatHold.State.HELD)
    released = SeatHold.objects.filter(state=SeatHold.State.RELEASED, released_at__isnull=False)
    equal("holds held", held.count(), expect["pending_charged"])
    equal("seats of holds held", held.aggregate(seats=Sum("seats"))["seats"] or 0, expect["seats_kept"])
    equal("seats of holds released", released.aggregate(seats=Sum("seats"))["seats"] or 0, expect["seats_released"])
    flights = Flight.objects.aggregate(capacity=Sum("capacity"), available=Sum("available_seats"))
    equal("seats taken on all flights", flights["capacity"] - flights["available"], expect["seats_kept"])
    equal(
        "payments left PROCESSING",
        Payment.objects.filter(status=Payment.Status.PROCESSING).count(),
        0,
    )
    equal(
        "payments SUCCEEDED", Payment.objects.filter(status=Payment.Status.SUCCEEDED).count(), expect["pending_charged"]
    )
    equal(
        "payments FAILED, reconciled",
        Payment.objects.filter(status=Payment.Status.FAILED, reconciled_at__isnull=False).count(),
        expect["pending_unpaid"],
    )
    tables = {
        "booking": Booking._meta.db_table,
        "hold": SeatHold._meta.db_table,
        "flight": Flight._meta.db_table,
    }
    with connection.cursor() as cursor:
        # A booking's hold is held exactly when it is BOOKED, released exactly when CANCELLED.
        cursor.execute(
            """SELECT count(*) FROM {booking} AS b LEFT JOIN {hold} AS h ON h.ref = 'booking-' || b.id
               WHERE h.id IS NULL OR h.flight_id <> b.flight_id OR h.seats <> b.seats
                  OR (h.state = 'held') <> (b.status = 'BOOKED')""".format(**tables)
        )
        equal("bookings whose hold disagrees with them", cursor.fetchone()[0], 0)
        # The invariants (docs/design.md#invariants) per flight: capacity - available = seats of its held holds.
        cursor.execute(
            """SELECT count(*) FROM {flight} AS f
               LEFT JOIN (SELECT flight_id, sum(seats) AS seats FROM {hold} WHERE state = 'held' GROUP BY flight_id)
                    AS h ON h.flight_id = f.id
               WHERE f.capacity - f.available_seats <> coalesce(h.seats, 0)""".format(**tables)
        )
        equal("flights whose free seats disagree with their holds", cursor.fetchone()[0], 0)
    return problems


# Measuring the command ------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_seconds: float  # user + system of the command's process (PostgreSQL's own work is not in it)
    peak_rss_mb: float
    returncode: int
    summary: dict[str, int]
    log_lines: int
    log_mb: float


def measure_cleanup(env: dict[str, str], log_path: Path, batch_size: int | None) -> Measured:
    """The real command in a subprocess: wall clock from spawn to exit, and its own peak RSS."""
    command = [PYTHON, "manage.py", "cleanup_stale_bookings"]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
        # wait4 answers this one child's rusage (Linux: ru_maxrss in KiB); Popen is told the
        # exit status so that it never waits for the pid again.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(errors="replace")
    match = SUMMARY_LINE.search(text)
    summary = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(0))} if match else {}
    return Measured(
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        returncode=process.returncode,
        summary=summary,
        log_lines=text.count("\n"),
        log_mb=log_path.stat().st_size / 2**20,
    )


def django_task(task: str, env: dict[str, str], *, size: int = 0, pending_percent: int = 0, expect: str = "{}") -> Any:
    options = ["--task-size", str(size), "--pending-percent", str(pending_percent), "--expect", expect]
    return last_line_json(start_django_task(__file__, env, task, *options), task)


# The run --------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: int
    seeded: dict[str, int]
    seed_seconds: float
    baseline: Measured
    cleanup: Measured
    rerun: Measured
    problems: list[str]

    @property
    def net_seconds(self) -> float:
        """The run less the empty run on the same database (start-up and empty scans)."""
        return max(self.cleanup.seconds - self.baseline.seconds, 0.0)

    @property
    def seconds_per_1k(self) -> float:
        return self.net_seconds / self.size * 1000


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-cleanup-"))
        self.databases: list[str] = []
        self.failed = True  # Until the checks pass: keep the logs.
        self.torn_down = False

    def env(self, database: str) -> dict[str, str]:
        return service_env(f"{self.args.pg_url}/{database}", LOG_LEVEL=self.args.log_level, LOG_FORMAT="json")

    def execute(self) -> int:
        self.print_header()
        results = [self.one_size(size) for size in self.args.sizes]
        self.failed = self.report(results)
        return 1 if self.failed else 0

    def print_header(self) -> None:
        args = self.args
        with psycopg.connect(f"{args.pg_url}/postgres") as connection:
            version = connection.execute("SHOW server_version").fetchone()[0]
            durability = ", ".join(
                f"{name} {connection.execute(f'SHOW {name}').fetchone()[0]}"
                for name in ("fsync", "synchronous_commit", "shared_buffers")
            )
        print(
            f"cleanup_stale_bookings at scale: sizes {', '.join(f'{size:,}' for size in args.sizes)}; "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, PostgreSQL {version} ({durability})"
        )
        mix = (
            f"{args.pending_percent}% PENDING with a stale PROCESSING payment (half charged: BOOKED; half not: expired)"
            if args.pending_percent
            else "all INITIATED"
        )
        print(
            f"backlog: stale bookings (holds ended 1-2 h ago, seats held in the ledger), {mix}; "
            f"{BOOKINGS_PER_FLIGHT} per flight; batch size {args.batch_size or 'default (500)'}"
        )
        print(
            f"logging: LOG_LEVEL={args.log_level} LOG_FORMAT=json (INFO, the default, is what cron runs: a line "
            f"per status change); the command's stdout and stderr to {self.log_dir}/cleanup-<N>.log"
        )
        print(
            "time: wall clock of the command from spawn to exit; net = less the same command on the empty "
            "database (start-up and empty scans); cpu = its user + system time (PostgreSQL's is not in it); "
            "peak RSS: ru_maxrss of that one process, from wait4()"
        )
        print(f"machine: load average {', '.join(f'{load:.1f}' for load in os.getloadavg())} at the start")

    def one_size(self, size: int) -> SizeResult:
        args = self.args
        database = f"{DATABASE_PREFIX}_{size}"
        self.databases.append(database)
        recreate_database(args.pg_url, database)
        env = self.env(database)
        django_task("migrate", env)
        baseline = measure_cleanup(env, self.log_dir / f"baseline-{size}.log", args.batch_size)
        started = time.monotonic()
        seeded = django_task("seed", env, size=size, pending_percent=args.pending_percent)
        seed_seconds = time.monotonic() - started
        cleanup = measure_cleanup(env, self.log_dir / f"cleanup-{size}.log", args.batch_size)
        rerun = measure_cleanup(env, self.log_dir / f"rerun-{size}.log", args.batch_size)
        problems = django_task("verify", env, expect=json.dumps(seeded))["problems"]
        problems += self.command_problems(seeded, baseline, cleanup, rerun)
        if not args.keep:
            drop_database(args.pg_url, database)
            self.databases.remove(database)
        result = SizeResult(size, seeded, seed_seconds, baseline, cleanup, rerun, problems)
        self.print_row(result)
        return result

    @staticmethod
    def command_problems(seeded: dict[str, int], baseline: Measured, cleanup: Measured, rerun: Measured) -> list[str]:
        """The command's own word: exit 0, and its summary line counts what was seeded."""
        problems = []
        wanted = {
            "expired": seeded["expired"],
            "released_seats": seeded["seats_released"],
            "reconciled_booked": seeded["pending_charged"],
            "retried_releases": 0,
            "refunded": 0,
            "failed": 0,
        }
        for name, run in (("empty run", baseline), ("cleanup", cleanup), ("second run", rerun)):
            if run.returncode != 0 or not run.summary:
                problems.append(f"{name}: exit {run.returncode}, summary {run.summary or 'missing'}")
        found = {key: cleanup.summary.get(key) for key in wanted}
        if cleanup.summary and found != wanted:
            problems.append(f"cleanup summary {found}, expected {wanted}")
        for name, run in (("empty run", baseline), ("second run", rerun)):
            if run.summary and any(run.summary.values()):
                problems.append(f"{name} did something: {run.summary}")
        return problems

    header_printed = False

    def print_row(self, result: SizeResult) -> None:
        if not self.header_printed:
            self.header_printed = True
            print()
            print(
                f"{'bookings':>9} {'seed s':>7} {'total s':>8} {'net s':>8} {'s/1k':>6} {'cpu s':>7} {'peak RSS':>9} "
                f"{'+ empty':>8} {'rerun s':>8} {'log lines':>10} {'log MB':>7}  check"
            )
        cleanup = result.cleanup
        print(
            f"{result.size:>9,} {result.seed_seconds:>7.1f} {cleanup.seconds:>8.1f} {result.net_seconds:>8.1f} "
            f"{result.seconds_per_1k:>6.2f} {cleanup.cpu_seconds:>7.1f} {cleanup.peak_rss_mb:>6.1f} MB "
            f"{cleanup.peak_rss_mb - result.baseline.peak_rss_mb:>+5.1f} MB {result.rerun.seconds:>8.1f} "
            f"{cleanup.log_lines:>10,} {cleanup.log_mb:>7.1f}  {'FAIL' if result.problems else 'OK'}",
            flush=True,
        )
        for problem in result.problems:
            print(f"    - {problem}")

    def report(self, results: list[SizeResult]) -> bool:
        """The baseline and the growth; True if anything failed."""
        first, last = results[0], results[-1]
        print()
        print(
            f"empty run (baseline) at {first.size:,}: {first.baseline.seconds:.2f} s, "
            f"{first.baseline.peak_rss_mb:.1f} MB peak RSS"
        )
        print(f"summary line at {last.size:,}: {' '.join(f'{k}={v}' for k, v in last.cleanup.summary.items())}")
        if len(results) > 1:
            time_ratio = last.seconds_per_1k / first.seconds_per_1k if first.seconds_per_1k else math.nan
            cpu_ratio = (last.cleanup.cpu_seconds / last.size) / (first.cleanup.cpu_seconds / first.size)
            rss_ratio = last.cleanup.peak_rss_mb / first.cleanup.peak_rss_mb
            added_first = first.cleanup.peak_rss_mb - first.baseline.peak_rss_mb
            added_last = last.cleanup.peak_rss_mb - last.baseline.peak_rss_mb
            print(
                f"growth {last.size:,} vs {first.size:,} ({last.size / first.size:g}x the bookings): "
                f"time per 1k x{time_ratio:.2f} (the command's CPU per 1k x{cpu_ratio:.2f}), peak RSS x{rss_ratio:.2f} "
                f"({added_first:+.1f} MB -> {added_last:+.1f} MB over the empty run)"
            )
        failed = any(result.problems for result in results)
        print("FAILED" if failed else "OK: every stale booking expired (or reconciled) and every seat accounted for")
        return failed

    def tear_down(self) -> None:
        if self.torn_down:
            return
        self.torn_down = True
        if self.args.keep:
            print(f"kept: databases {', '.join(self.databases)}; logs in {self.log_dir}")
        else:
            for database in self.databases:
                drop_database(self.args.pg_url, database)
            if self.failed:
                print(f"logs kept in {self.log_dir}")
            else:
                shutil.rmtree(self.log_dir, ignore_errors=True)


def sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or any(value < 1 for value in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct sizes of at least 1")
    return values


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=sizes, default=sizes(DEFAULT_SIZES), help=f"stale bookings per run (default {DEFAULT_SIZES})"
    )
    parser.add_argument(
        "--pending-percent",
        type=bounded_int(0, 100),
        default=0,
        metavar="P",
        help="percent of the backlog seeded PENDING with a stale payment, reconciled (default 0)",
    )
    parser.add_argument(
        "--batch-size",
        type=bounded_int(1, 10_000),
        metavar="N",
        help="passed to the command, 1 to 10000 (default: its own, 500)",
    )
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the command (default INFO, as in production)")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the command's logs")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server, no database name (default $BENCH_PG_URL or postgres://postgres@127.0.0.1:5432)",
    )
    # See run_django_task.
    parser.add_argument("--django-task", choices=["migrate", "seed", "verify"], help=argparse.SUPPRESS)
    parser.add_argument("--task-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--expect", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pg_url = args.pg_url.rstrip("/")
    return args


def main() -> int:
    args = parse_args()
    if args.django_task:
        return run_django_task(args.django_task, args.task_size, args.pending_percent, args.expect)
    started = time.monotonic()
    status = run_to_the_end("bench-cleanup", Bench(args))
    print(f"took {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
