"""Chaos run: the service never oversells, never charges twice, never leaks a seat and never
answers 500, while its processes die.

How: two throw-away PostgreSQL databases and two gunicorns on loopback ports, as in
production with a remote inventory: the Flights service (our `flights` API on its own
database) and the Bookings service (bookings and payments, the simulated gateway slowed a
little, talking to Flights over HTTP with the shared service token), the Bookings service
behind nginx with the production config (deploy/nginx.conf; `--proxy none` to talk to
gunicorn directly): a killed worker's requests then reach clients as nginx's 503
service_unavailable with Retry-After rather than as lost connections. Client threads book,
pay with an Idempotency-Key (retrying the same key on 503, 409 in use and lost
connections), cancel some bookings paid or not, and walk away from others. Meanwhile
chaos threads SIGKILL the whole Flights service (and restart it) and single Bookings
workers, at moments drawn from `--seed`. Then `cleanup_stale_bookings` runs twice with the
clock moved past every hold and payment window (the second run must find nothing), and the
databases are read directly:

- the invariants (docs/design.md#invariants) per flight: capacity - available = seats of held holds = seats of bookings
  whose seats are reserved; and every booking and hold ends in a state that owes nothing
  (no INITIATED or PENDING booking, no cancelled booking owing seats, every held hold
  belongs to a BOOKED booking and every BOOKED booking has its hold);
- money, against the simulated gateway's own books: one standing charge per BOOKED booking,
  none for a cancelled one, and never two charges for one payment;
- what clients were told: a booking paid (201) and not cancelled is BOOKED, one cancelled
  (200) is CANCELLED;
- no answer 5xx other than 503, and no 500 in either service's log (a 500 of the Flights
  service reaches clients as a 503);
- notifications (docs/design.md#notifications): two `db_worker` processes deliver webhooks to a
  receiver in this script (which answers 500 to the first try of one event in five) and
  e-mail, while chaos SIGKILLs them too; at the end every committed status change that is
  reported (created, confirmed, cancelled; a payment refunded) has exactly one event, and each
  event reached the receiver at least once.

Prints the figures and exits 1 if any of these fail (2 if the run itself could not be
made). Run: `.venv/bin/python scripts/chaos.py [--duration S] [--clients N] [--seed S] [--keep]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import requests
from psycopg.rows import dict_row
from serving import (
    ROOT,
    Gunicorn,
    Nginx,
    drop_database,
    finish,
    keepalive_connections,
    last_line_json,
    recreate_database,
    run_to_the_end,
    service_env,
    set_up_django,
    start_django_task,
)

PYTHON = sys.executable
DATABASE_PREFIX = "flight_bookings_chaos"
ROLES = ("bookings", "flights")
# nginx lets this many requests into the Bookings gunicorn at once: more than the clients,
# so that nothing is shed here (bench/overload.py shows shedding).
MAX_CONNS = 64
BOOKINGS_WORKERS, FLIGHTS_WORKERS, THREADS = 3, 2, 4

HOLD_MINUTES = 10
PAYMENT_DELAY_MS = 30
# flight number, from, to, price, capacity: the small ones sell out under load, the large
# ones keep payments (and so kills during charges) going to the end.
FLIGHTS = [
    ("CH101", "BOM", "DEL", "4500.00", 20),
    ("CH102", "DEL", "BOM", "5200.00", 30),
    ("CH103", "BLR", "HYD", "3100.00", 40),
    ("CH104", "HYD", "BLR", "2900.00", 60),
    ("CH105", "DEL", "CCU", "4800.00", 250),
    ("CH106", "CCU", "DEL", "5100.00", 400),
]
# What a client does with a booking it got, and how often (weights).
FLOWS = {"pay": 55, "pay_then_cancel": 25, "cancel_unpaid": 10, "abandon": 10}
MAX_SEATS = 4

CLIENT_TIMEOUT = 15.0
TRIES = 6
RETRY_WAIT_CAP = 1.0
# 409 codes that invite a retry of the same request (the same key, for a payment).
RETRY_CODES = {"idempotency_key_in_use", "payment_in_progress", "resource_busy"}

OUTAGE_SECONDS = (0.5, 2.0)
NOTIFIERS = 2  # db_worker processes
# Short, so that a killed worker's deliveries are taken over within the run.
NOTIFICATION_ENV = {
    "WEBHOOK_ALLOW_INSECURE": "true",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "NOTIFICATION_LEASE_SECONDS": "5",
    "EMAIL_URL": "memorymail://",
}
STALL_SECONDS = 8.0
HOLD_REF = re.compile(r"booking-(\d+)")
SUMMARY_LINE = re.compile(r"expired=\d+ .*failed=\d+")
SHOWN_PER_KIND = 10


# Databases -----------------------------------------------------------------------------------


def query(database_url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        return connection.execute(sql).fetchall()


# Tasks run inside Django, in a subprocess with the right DATABASE_URL ---------------------------


def run_django_task(task: str, clients: int) -> int:
    """This script re-invoked with `--django-task`: migrate and seed a database, or run cleanup late."""
    set_up_django()
    from django.core.management import call_command

    if task == "cleanup":
        return cleanup_with_clock_moved()
    call_command("migrate", interactive=False, verbosity=0)
    return seed_flights() if task == "set-up-flights" else seed_users(clients)


def seed_flights() -> int:
    from django.utils import timezone

    from flights import services

    departure = timezone.now().replace(microsecond=0) + dt.timedelta(days=30)
    created = [
        services.flight_create(
            flight_number=number,
            departure_airport=origin,
            arrival_airport=destination,
            departure_time=departure,
            arrival_time=departure + dt.timedelta(hours=2),
            price=Decimal(price),
            capacity=capacity,
        )
        for number, origin, destination, price, capacity in FLIGHTS
    ]
    print(json.dumps([flight.pk for flight in created]))
    return 0


def seed_users(count: int) -> int:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from notifications.services import endpoint_create

    users = [
        get_user_model().objects.create_user(username=f"chaos-{index}", email=f"chaos-{index}@example.com")
        for index in range(count)
    ]
    endpoint_create(url=os.environ["CHAOS_WEBHOOK_URL"], events=None, created_by=None)
    print(json.dumps([Token.objects.create(user=user).key for user in users]))
    return 0


def cleanup_with_clock_moved() -> int:
    """`cleanup_stale_bookings` as cron would run it an hour after every hold ran out (and so
    every payment attempt and Flights call window): both clocks are moved for all code, the
    host's (`timezone.now`) and the database's (`db.database_now`, which decides what is stale)."""
    from django.conf import settings
    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.utils import timezone

    from bookings_project import db

    shift = dt.timedelta(minutes=settings.BOOKING_HOLD_MINUTES + 60)
    real_host_now, real_database_now = timezone.now, db.database_now

    def host_later() -> dt.datetime:
        return real_host_now() + shift

    def database_later() -> dt.datetime:
        return real_database_now() + shift

    timezone.now = host_later
    db.database_now = database_later
    try:
        call_command("cleanup_stale_bookings")
    except CommandError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def start_task(task: str, env: dict[str, str], *, clients: int = 0) -> subprocess.Popen:
    return start_django_task(__file__, env, task, "--clients", str(clients))


# Load -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    code: str
    body: dict[str, Any]
    retry_after: float | None


@dataclass
class Stats:
    """Everything the clients saw, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter = field(default_factory=Counter)  # (endpoint, status, code) -> count
    connection_errors: Counter = field(default_factory=Counter)  # (endpoint, "timeout" | "connection")
    flows: Counter = field(default_factory=Counter)  # outcome -> count
    # What clients were told each booking ended as: booking id -> BOOKED | CANCELLED.
    told: dict[int, str] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # 5xx other than 503, with evidence

    def answer(self, endpoint: str, response: requests.Response, code: str) -> None:
        with self.lock:
            self.answers[endpoint, response.status_code, code] += 1
            if response.status_code >= 500 and response.status_code != 503:
                self.server_errors.append(
                    f"{endpoint} → {response.status_code} {code or ''} request id "
                    f"{response.headers.get('X-Request-ID')}: {response.text[:200]!r}"
                )

    def lost(self, endpoint: str, kind: str) -> None:
        with self.lock:
            self.connection_errors[endpoint, kind] += 1

    def flow(self, outcome: str, booking_id: int | None = None, told: str | None = None) -> None:
        with self.lock:
            self.flows[outcome] += 1
            if booking_id is not None and told is not None:
                self.told[booking_id] = told


class Client(threading.Thread):
    """One customer: book, then pay, cancel or walk away, until the load window closes."""

    def __init__(self, *, token: str, base_url: str, flight_ids: list[int], stats: Stats, seed: str, until: float):
        super().__init__(daemon=True)
        self.base_url = base_url
        self.flight_ids = flight_ids
        self.stats = stats
        self.rng = random.Random(seed)
        self.until = until
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while time.monotonic() < self.until:
                self.one_flow()
        except BaseException as error:  # An answer we cannot read: the main thread voids the run.
            self.error = error

    def one_flow(self) -> None:
        plan = self.rng.choices(list(FLOWS), weights=list(FLOWS.values()))[0]
        body = {"flightId": self.rng.choice(self.flight_ids), "numberOfSeats": self.rng.randint(1, MAX_SEATS)}
        reply = self.send("POST /bookings", "POST", "/api/v1/bookings", json=body)
        if reply is None or reply.status != 201:
            self.stats.flow("not booked")
            time.sleep(min(reply.retry_after or 0.05, 0.5) if reply else 0.05)
            return
        booking = reply.body
        if plan == "abandon":
            self.stats.flow("abandoned")
        elif plan == "cancel_unpaid":
            self.cancel(booking["id"], "cancelled-unpaid")
        elif self.pay(booking):
            if plan == "pay_then_cancel":
                self.cancel(booking["id"], "paid-then-cancelled")
            else:
                self.stats.flow("booked", booking["id"], "BOOKED")

    def pay(self, booking: dict[str, Any]) -> bool:
        """One key, one body, resent on answers that invite it. True once paid (201)."""
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        body = {"bookingId": booking["id"], "amount": booking["totalCost"]}
        reply = self.send_until_settled("POST /payments", "POST", "/api/v1/payments", json=body, headers=headers)
        if reply is not None and reply.status == 201:
            return True
        self.stats.flow("payment gave up" if reply is None or should_retry(reply) else "payment refused")
        return False

    def cancel(self, booking_id: int, outcome: str) -> None:
        path = f"/api/v1/bookings/{booking_id}/cancel"
        reply = self.send_until_settled("PATCH cancel", "PATCH", path)
        if reply is not None and reply.status == 200 and reply.body.get("status") == "CANCELLED":
            self.stats.flow(outcome, booking_id, "CANCELLED")
        else:
            self.stats.flow("cancel gave up")

    def send_until_settled(self, endpoint: str, method: str, path: str, **kwargs: Any) -> Reply | None:
        reply = None
        for attempt in range(TRIES):
            reply = self.send(endpoint, method, path, **kwargs)
            if not should_retry(reply):
                break
            wait = reply.retry_after if reply and reply.retry_after is not None else 0.1 * 2**attempt
            time.sleep(min(wait, RETRY_WAIT_CAP) * self.rng.uniform(0.5, 1.0))
        return reply

    def send(self, endpoint: str, method: str, path: str, **kwargs: Any) -> Reply | None:
        """One request; its answer is counted. None when no answer came (refused, reset, timeout)."""
        try:
            response = self.session.request(method, self.base_url + path, timeout=CLIENT_TIMEOUT, **kwargs)
        except requests.Timeout:
            self.stats.lost(endpoint, "timeout")
            return None
        except requests.RequestException:  # Refused, reset, or cut off mid-answer (a worker killed).
            self.stats.lost(endpoint, "connection")
            return None
        try:
            body = response.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        code = str(body.get("code", "")) if response.status_code >= 400 else ""
        self.stats.answer(endpoint, response, code)
        try:
            retry_after = float(response.headers["Retry-After"])
        except (KeyError, ValueError):
            retry_after = None
        return Reply(response.status_code, code, body, retry_after)


def should_retry(reply: Reply | None) -> bool:
    return reply is None or reply.status == 503 or (reply.status == 409 and reply.code in RETRY_CODES)


# Chaos ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    kind: str  # "flights" (the whole service, then restarted) or "worker" (one Bookings worker)
    at: float  # seconds into the load
    detail: str


class Chaos:
    """SIGKILLs at moments drawn from the seed, inside the load window, on two timelines (so
    that an outage does not hold back the worker kills): the whole Flights service, down 0.5
    to 2 s and then restarted on its port; and single Bookings workers, which gunicorn's
    master replaces."""

    def __init__(
        self,
        *,
        flights: Gunicorn,
        bookings: Gunicorn,
        notifiers: Notifiers,
        seed: int,
        outages: int,
        worker_kills: int,
        window: float,
    ) -> None:
        self.flights = flights
        self.bookings = bookings
        self.notifiers = notifiers
        self.notifier_rng = random.Random(f"{seed}:notifiers")
        self.window = window
        self.outage_rng = random.Random(f"{seed}:outages")
        self.worker_rng = random.Random(f"{seed}:workers")
        # An outage starts early enough to be over (restart included) before the load ends.
        latest = max(window - OUTAGE_SECONDS[1] - 3.0, 1.0)
        outage_moments = sorted(self.outage_rng.uniform(1.0, latest) for _ in range(outages))
        worker_moments = sorted(self.worker_rng.uniform(1.0, window) for _ in range(worker_kills))
        notifier_moments = sorted(self.notifier_rng.uniform(1.0, window) for _ in range(worker_kills // 2))
        self.threads = [
            threading.Thread(target=self.follow, args=(outage_moments, self.flights_outage), daemon=True),
            threading.Thread(target=self.follow, args=(worker_moments, self.kill_worker), daemon=True),
            threading.Thread(target=self.follow, args=(notifier_moments, self.kill_notifier), daemon=True),
        ]
        self.kills: list[Kill] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.started_at = 0.0
        self.killed_pids: set[int] = set()

    def start(self) -> None:
        self.started_at = time.monotonic()
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Run no more kills, and wait for one in progress (an outage ends with its restart)."""
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def follow(self, moments: list[float], act: Callable[[float], None]) -> None:
        try:
            for at in moments:
                if self.stopping.wait(max(0.0, self.started_at + at - time.monotonic())):
                    return
                now = time.monotonic() - self.started_at
                if now > self.window:
                    return  # Outages ran long: what is left would fall outside the load.
                act(now)
        except BaseException as error:  # Reported by the main thread: the run is then void.
            self.errors.append(error)

    def flights_outage(self, now: float) -> None:
        down = self.outage_rng.uniform(*OUTAGE_SECONDS)
        self.flights.kill()
        time.sleep(down)
        self.flights.start()
        self.flights.wait_ready("/healthz")
        back = time.monotonic() - self.started_at - now
        self.kills.append(Kill("flights", now, f"down {down:.1f} s, answering after {back:.1f} s"))

    def kill_worker(self, now: float) -> None:
        # A worker killed before is listed until its master reaps it: never count it twice.
        workers = [pid for pid in self.bookings.worker_pids() if pid not in self.killed_pids]
        if workers:
            pid = self.worker_rng.choice(workers)
            os.kill(pid, signal.SIGKILL)
            self.killed_pids.add(pid)
            self.kills.append(Kill("worker", now, f"pid {pid}"))

    def kill_notifier(self, now: float) -> None:
        pid = self.notifiers.kill_one(self.notifier_rng)
        if pid is not None:
            self.kills.append(Kill("notifier", now, f"pid {pid}"))


# Notifications ------------------------------------------------------------------------------------


class WebhookReceiver:
    """The integrator's end: every request it gets, by webhook-id. The first try of one event
    in five answers 500, so that retries (with the same id) happen within the run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.types: dict[str, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                webhook_id = self.headers.get("webhook-id", "")
                with receiver.lock:
                    receiver.received[webhook_id] += 1
                    receiver.types[webhook_id] = json.loads(body)["type"]
                    first_try = receiver.received[webhook_id] == 1
                refuse = first_try and int(uuid.UUID(webhook_id.removeprefix("evt_")).hex[-2:], 16) % 5 == 0
                self.send_response(500 if refuse else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Notifiers:
    """The notifications workers (`manage.py db_worker`), killed and replaced during the load."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []
        self.started = 0

    def start(self, count: int = NOTIFIERS) -> None:
        for _ in range(count):
            self.started += 1
            log = (self.log_dir / f"notifier-{self.started}.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [PYTHON, "manage.py", "db_worker", "--interval", "0.1", "--no-startup-delay"],
                    cwd=ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def kill_one(self, rng: random.Random) -> int | None:
        alive = [process for process in self.processes if process.poll() is None]
        if not alive:
            return None
        victim = rng.choice(alive)
        victim.kill()
        victim.wait()
        self.start(1)  # As systemd's Restart=always would.
        return victim.pid

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logged_server_errors(self) -> list[str]:
        lines = [
            f"{path.name}: {line[:300]}"
            for path in sorted(self.log_dir.glob("notifier-*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if '"level": "ERROR"' in line or "Traceback" in line
        ]
        return lines


def notifications_left(bookings_url: str) -> int:
    """Events not dispatched and deliveries still pending."""
    [row] = query(
        bookings_url,
        "SELECT (SELECT count(*) FROM bookings_outboxevent WHERE dispatched_at IS NULL)"
        " + (SELECT count(*) FROM notifications_delivery WHERE state = 'pending') AS left",
    )
    return row["left"]


def wait_for_notifications(bookings_url: str) -> tuple[float, int]:
    """Until the workers have nothing left, or make no progress for STALL_SECONDS (what is
    left then was lost with a killed process: the next cleanup run queues it again, as cron's
    would); answers the seconds it took and what was left."""
    started = last_change = time.monotonic()
    left = notifications_left(bookings_url)
    while left and time.monotonic() - last_change < STALL_SECONDS:
        time.sleep(0.2)
        now_left = notifications_left(bookings_url)
        if now_left != left:
            left, last_change = now_left, time.monotonic()
    return time.monotonic() - started, left


@dataclass
class NotificationFindings:
    events: int = 0
    received: int = 0  # requests that reached the receiver (retries and duplicates included)
    violations: list[str] = field(default_factory=list)


def check_notifications(bookings_url: str, receiver: WebhookReceiver) -> NotificationFindings:
    """One event per reported change (from the audit trail and the payments), none else, and
    each event delivered: recorded so, and seen by the receiver."""
    found = NotificationFindings()
    reported = query(
        bookings_url,
        "SELECT booking_id, CASE WHEN from_status = '' THEN 'booking.created'"
        " WHEN to_status = 'BOOKED' THEN 'booking.confirmed' ELSE 'booking.cancelled' END AS type, count(*) AS n"
        " FROM bookings_bookingevent WHERE from_status = '' OR to_status IN ('BOOKED', 'CANCELLED')"
        " GROUP BY 1, 2"
        " UNION ALL SELECT booking_id, 'payment.refunded', count(*) FROM payments_payment WHERE status = 'REFUNDED'"
        " GROUP BY 1",
    )
    events = query(
        bookings_url,
        "SELECT e.public_id, e.type, e.booking_id, e.dispatched_at IS NOT NULL AS dispatched,"
        " d.state AS webhook FROM bookings_outboxevent e"
        " LEFT JOIN notifications_delivery d ON d.event_id = e.id AND d.channel = 'webhook'",
    )
    emails = query(
        bookings_url,
        "SELECT d.state, count(*) AS n FROM notifications_delivery d WHERE d.channel = 'email' GROUP BY 1",
    )
    found.events = len(events)
    found.received = sum(receiver.received.values())
    expected = {(row["booking_id"], row["type"]): row["n"] for row in reported}
    written = Counter((event["booking_id"], event["type"]) for event in events)
    for booking_id, kind in sorted(set(expected) | set(written)):
        changes, written_events = expected.get((booking_id, kind), 0), written.get((booking_id, kind), 0)
        if changes != written_events:
            found.violations.append(f"booking {booking_id}: {changes} change(s) {kind}, {written_events} event(s)")
    for event in events:
        if event["webhook"] != "delivered" or receiver.received[event["public_id"]] == 0:
            found.violations.append(f"event not delivered: {event}, received {receiver.received[event['public_id']]}")
    for row in emails:
        if row["state"] != "delivered":
            found.violations.append(f"{row['n']} e-mail deliveries {row['state']}")
    return found


# Checks -----------------------------------------------------------------------------------------


@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    double_charges: list[str] = field(default_factory=list)
    charged_but_cancelled: list[str] = field(default_factory=list)
    sold: int = 0
    capacity: int = 0
    oversold: int = 0


def check(bookings_url: str, flights_url: str, told: dict[int, str]) -> Findings:
    """Read both databases and the gateway's books; every finding names its rows."""
    flights = query(
        flights_url,
        "SELECT f.id, f.capacity, f.available_seats,"
        " COALESCE(SUM(h.seats) FILTER (WHERE h.state = 'held'), 0) AS held"
        " FROM flights_flight f LEFT JOIN flights_seathold h ON h.flight_id = f.id GROUP BY f.id ORDER BY f.id",
    )
    holds = query(flights_url, "SELECT ref, flight_id, seats FROM flights_seathold WHERE state = 'held'")
    bookings = {
        row["id"]: row
        for row in query(
            bookings_url,
            "SELECT id, flight_id, seats, status, seats_state, cancel_reason, cancel_requested_at IS NOT NULL"
            " AS cancel_requested FROM bookings_booking",
        )
    }
    payments = query(bookings_url, "SELECT id, booking_id, status, reference FROM payments_payment")
    charges = query(bookings_url, "SELECT charge_id, reference, status FROM payments_simulatedcharge")

    found = Findings()
    check_seats(found, flights, holds, bookings)
    check_money(found, bookings, payments, charges)
    for booking_id, expected in sorted(told.items()):
        actual = bookings[booking_id]["status"] if booking_id in bookings else "missing"
        if actual != expected:
            found.violations.append(f"clients were told booking {booking_id} is {expected}; it is {actual}")
    return found


def check_seats(found: Findings, flights: list[dict], holds: list[dict], bookings: dict[int, dict[str, Any]]) -> None:
    reserved: Counter = Counter()
    booked: Counter = Counter()
    for booking in bookings.values():
        if booking["seats_state"] == "reserved":
            reserved[booking["flight_id"]] += booking["seats"]
        if booking["status"] == "BOOKED":
            booked[booking["flight_id"]] += booking["seats"]
        if booking["status"] in ("INITIATED", "PENDING"):
            found.violations.append(f"booking left {booking['status']} after cleanup: {booking}")
        elif booking["status"] == "CANCELLED" and booking["seats_state"] not in ("released", "none"):
            found.violations.append(f"cancelled booking still owing or unsure of its seats: {booking}")
        elif booking["status"] == "BOOKED" and booking["seats_state"] != "reserved":
            found.violations.append(f"BOOKED booking whose seats are not reserved: {booking}")

    for flight in flights:
        taken, capacity = flight["capacity"] - flight["available_seats"], flight["capacity"]
        found.sold += taken
        found.capacity += capacity
        found.oversold += max(0, booked[flight["id"]] - capacity)
        if not 0 <= flight["available_seats"] <= capacity:
            found.violations.append(f"flight {flight['id']}: available {flight['available_seats']} of {capacity}")
        if not taken == flight["held"] == reserved[flight["id"]]:
            found.violations.append(
                f"flight {flight['id']}: capacity - available = {taken}, held holds = {flight['held']}, "
                f"reserved bookings = {reserved[flight['id']]} (BOOKED seats {booked[flight['id']]})"
            )
    flight_ids = {flight["id"] for flight in flights}
    for flight_id in sorted(set(reserved) - flight_ids):
        found.violations.append(f"{reserved[flight_id]} seat(s) reserved on unknown flight {flight_id}")

    held_for: dict[int, dict] = {}
    for hold in holds:
        match = HOLD_REF.fullmatch(hold["ref"])
        booking = bookings.get(int(match.group(1))) if match else None
        if booking is None or booking["status"] != "BOOKED":
            found.violations.append(f"held hold {hold} belongs to no BOOKED booking: {booking}")
        elif (booking["flight_id"], booking["seats"]) != (hold["flight_id"], hold["seats"]):
            found.violations.append(f"held hold {hold} differs from its booking {booking}")
        if booking is not None:
            held_for[booking["id"]] = hold
    for booking in bookings.values():
        if booking["status"] == "BOOKED" and booking["id"] not in held_for:
            found.violations.append(f"BOOKED booking without a held hold: {booking}")


def check_money(
    found: Findings, bookings: dict[int, dict[str, Any]], payments: list[dict], charges: list[dict]
) -> None:
    charges_of: dict[str, list[dict]] = defaultdict(list)
    for charge in charges:
        charges_of[charge["reference"]].append(charge)
    payments_of: dict[int, list[dict]] = defaultdict(list)
    for payment in payments:
        payments_of[payment["booking_id"]].append(payment)
        if len(charges_of[payment["reference"]]) > 1:
            found.double_charges.append(f"payment {payment} charged {len(charges_of[payment['reference']])} times")
    references = {payment["reference"] for payment in payments}
    for charge in charges:
        if charge["reference"] not in references:
            found.double_charges.append(f"charge with no payment: {charge}")

    for booking in bookings.values():
        mine = payments_of[booking["id"]]
        standing = [
            charge for payment in mine for charge in charges_of[payment["reference"]] if charge["status"] == "succeeded"
        ]
        evidence = f"{booking}, payments {mine}, standing charges {standing}"
        if len(standing) > 1:
            found.double_charges.append(f"booking charged {len(standing)} times: {evidence}")
        if booking["status"] == "CANCELLED" and standing:
            found.charged_but_cancelled.append(evidence)
        if booking["status"] == "BOOKED" and not standing:
            found.violations.append(f"BOOKED booking with no standing charge: {evidence}")


# The run ----------------------------------------------------------------------------------------


class ChaosRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.databases = {role: f"{args.db_prefix}_{role}" for role in ROLES}
        self.urls = {role: f"{args.pg_url}/{name}" for role, name in self.databases.items()}
        self.log_dir = Path(tempfile.mkdtemp(prefix="chaos-"))
        self.servers: list[Gunicorn | Nginx] = []
        self.secret_key = secrets.token_urlsafe(50)
        self.service_token = secrets.token_urlsafe(24)
        self.failed = True  # Until the checks pass: keep the logs.
        self.torn_down = False
        self.phases: dict[str, float] = {}
        self.phase_started = time.monotonic()

    def env(self, role: str, flights_url: str = "") -> dict[str, str]:
        return service_env(
            self.urls[role],
            **NOTIFICATION_ENV,
            CHAOS_WEBHOOK_URL=self.receiver.url,
            SECRET_KEY=self.secret_key,
            FLIGHT_SERVICE_URL=flights_url,
            FLIGHT_SERVICE_TOKEN=self.service_token,
            BOOKING_HOLD_MINUTES=str(HOLD_MINUTES),
            PAYMENT_SIMULATED_DELAY_MS=str(PAYMENT_DELAY_MS),
            NUM_PROXIES="1" if role == "bookings" and self.args.proxy == "nginx" else "0",
            # Every Bookings thread's connection kept alive (docs/operations.md#the-flights-service).
            GUNICORN_KEEPALIVE_CONNECTIONS=str(
                keepalive_connections(clients=BOOKINGS_WORKERS * THREADS, workers=FLIGHTS_WORKERS, threads=THREADS)
                if role == "flights"
                else 0
            ),
        )

    def execute(self) -> int:
        args = self.args
        self.receiver = WebhookReceiver()
        flight_ids, tokens = self.set_up()
        flights_env = self.env("flights")
        self.flights = self.serve("flights", flights_env, workers=FLIGHTS_WORKERS)
        bookings_env = self.env("bookings", flights_url=self.flights.url)
        self.bookings = self.serve("bookings", bookings_env, workers=BOOKINGS_WORKERS)
        self.notifiers = Notifiers(bookings_env, self.log_dir)
        self.notifiers.start()
        # What clients talk to: nginx in front of the Bookings gunicorn, as in production.
        self.front: Gunicorn | Nginx = self.bookings
        if args.proxy == "nginx":
            self.front = Nginx("bookings", self.bookings, max_conns=MAX_CONNS, log_dir=self.log_dir)
            self.servers.append(self.front)
            self.front.start()
        self.flights.wait_ready("/healthz", "/readyz")
        self.front.wait_ready("/healthz", "/readyz")
        self.lap("setup")

        stats = Stats()
        until = time.monotonic() + args.duration
        clients = [
            Client(
                token=token,
                base_url=self.front.url,
                flight_ids=flight_ids,
                stats=stats,
                seed=f"{args.seed}:{index}",
                until=until,
            )
            for index, token in enumerate(tokens)
        ]
        chaos = Chaos(
            flights=self.flights,
            bookings=self.bookings,
            notifiers=self.notifiers,
            seed=args.seed,
            outages=args.outages,
            worker_kills=args.worker_kills,
            window=max(args.duration - 1.0, 1.0),
        )
        chaos.start()
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        chaos.stop()
        errors = [client.error for client in clients if client.error] + chaos.errors
        if errors:
            raise RuntimeError(f"{len(errors)} client or chaos thread(s) failed, first: {errors[0]!r}") from errors[0]
        self.lap("load")
        self.front.stop()
        self.bookings.stop()  # Nothing is in flight any more: cleanup and the checks see a still picture.
        self.flights.wait_ready("/healthz")

        # The workers finish what the load left, then what each cleanup run writes (its expiries
        # are reported too) or queues again, so that the second run finds nothing, re-queues included.
        drained = [wait_for_notifications(self.urls["bookings"])]
        first = finish(start_task("cleanup", bookings_env))
        drained.append(wait_for_notifications(self.urls["bookings"]))
        second = finish(start_task("cleanup", bookings_env))
        drained.append(wait_for_notifications(self.urls["bookings"]))
        self.notifiers.stop()
        found = check(self.urls["bookings"], self.urls["flights"], stats.told)
        notified = check_notifications(self.urls["bookings"], self.receiver)
        self.lap("cleanup and checks")
        self.failed = self.report(stats, chaos.kills, first, second, found, notified, drained)
        return 1 if self.failed else 0

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.phases[phase] = now - self.phase_started
        self.phase_started = now

    def set_up(self) -> tuple[list[int], list[str]]:
        """Both databases afresh, migrated and seeded at once: flights, and a customer per client."""
        for name in self.databases.values():
            recreate_database(self.args.pg_url, name)
        flights = start_task("set-up-flights", self.env("flights"))
        users = start_task("set-up-bookings", self.env("bookings"), clients=self.args.clients)
        return last_line_json(flights, "setting up flights"), last_line_json(users, "setting up bookings")

    def serve(self, name: str, env: dict[str, str], *, workers: int) -> Gunicorn:
        server = Gunicorn(name, env, workers=workers, threads=THREADS, log_dir=self.log_dir)
        self.servers.append(server)
        server.start()
        return server

    def report(
        self,
        stats: Stats,
        kills: list[Kill],
        first: subprocess.CompletedProcess,
        second: subprocess.CompletedProcess,
        found: Findings,
        notified: NotificationFindings,
        drained: list[tuple[float, int]],
    ) -> bool:
        """Print the figures; True if anything failed."""
        args = self.args
        flows = stats.flows
        proxy = "through nginx" if args.proxy == "nginx" else "to gunicorn directly"
        print(f"chaos: {args.duration:g} s, {args.clients} clients {proxy}, seed {args.seed}")
        attempted = sum(flows.values())
        main = ("booked", "paid-then-cancelled", "cancelled-unpaid", "abandoned")
        others = [f"{name} {count}" for name, count in sorted(flows.items()) if name not in main]
        print(
            f"flows attempted {attempted} ("
            + ", ".join(f"{name} {flows[name]}" for name in main)
            + (f"; {', '.join(others)}" if others else "")
            + ")"
        )
        print("answers:")
        for endpoint in ("POST /bookings", "POST /payments", "PATCH cancel"):
            counts = sorted(
                (status, code, n) for (where, status, code), n in stats.answers.items() if where == endpoint
            )
            parts = [f"{status}{' ' + code if code else ''}={n}" for status, code, n in counts]
            lost = {kind: n for (where, kind), n in stats.connection_errors.items() if where == endpoint}
            parts.append(f"connection errors={sum(lost.values())} (timeouts {lost.get('timeout', 0)})")
            print(f"  {endpoint:15} {', '.join(parts)}")
        outages = [kill for kill in kills if kill.kind == "flights"]
        workers = [kill for kill in kills if kill.kind == "worker"]
        notifiers = [kill for kill in kills if kill.kind == "notifier"]
        print(
            f"kills: flights outages {len(outages)}, bookings workers {len(workers)}, "
            f"notifications workers {len(notifiers)}"
        )
        for label, group in (
            ("flights outages", outages),
            ("bookings workers", workers),
            ("notifications workers", notifiers),
        ):
            if group:
                print(f"  {label}: " + "; ".join(f"{kill.at:.1f} s {kill.detail}" for kill in group))

        cleanup_failed = False
        for name, result in (("cleanup", first), ("second run", second)):
            match = SUMMARY_LINE.search(result.stdout)
            line = match.group(0) if match else "(no summary line)"
            counts = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}
            # The first run must not fail; the second must find nothing at all.
            left = sum(counts.values()) if name == "second run" else counts.get("failed", 0)
            if result.returncode != 0 or not match or left:
                cleanup_failed = True
                line += f" [FAILED, exit {result.returncode}] {result.stderr.strip()[-500:]}"
            print(f"{name}: {line}")

        print(
            f"seats: sold {found.sold} of capacity {found.capacity} on {len(FLIGHTS)} flights; "
            f"oversold {found.oversold}"
        )
        retried = sum(count - 1 for count in self.receiver.received.values())
        print(
            f"notifications: {notified.events} events, {notified.received} requests reached the receiver "
            f"({retried} retries or repeats); after the load and each cleanup run the workers were done in "
            + ", ".join(f"{seconds:.1f} s ({left} left for cleanup)" for seconds, left in drained)
        )
        logged = [line for server in self.servers for line in server.logged_server_errors()]
        logged += self.notifiers.logged_server_errors()
        server_errors = stats.server_errors + logged
        for title, items in (
            ("invariant violations", found.violations),
            ("notification violations", notified.violations),
            ("double charges", found.double_charges),
            ("charged-but-cancelled", found.charged_but_cancelled),
            ("5xx other than 503:", server_errors),
        ):
            print(f"{title} {len(items)}")
            for item in items[:SHOWN_PER_KIND]:
                print(f"  - {item}")
            if len(items) > SHOWN_PER_KIND:
                print(f"  ... and {len(items) - SHOWN_PER_KIND} more")
        failed = bool(
            cleanup_failed
            or found.violations
            or notified.violations
            or found.double_charges
            or found.charged_but_cancelled
            or server_errors
        )
        if failed:
            print("FAILED")
        return failed

    def tear_down(self) -> None:
        if self.torn_down:
            return
        self.torn_down = True
        for server in self.servers:
            server.kill()
        if getattr(self, "notifiers", None):
            self.notifiers.stop()
        if getattr(self, "receiver", None):
            self.receiver.stop()
        if not self.args.keep:
            for name in self.databases.values():
                drop_database(self.args.pg_url, name)
        if self.args.keep:
            print(f"kept: databases {', '.join(self.databases.values())}; server logs in {self.log_dir}")
        elif self.failed:
            print(f"server logs kept in {self.log_dir}")
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        self.lap("teardown")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load (default 40)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads (default 16)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the clients' and the chaos' choices (default 7)")
    parser.add_argument("--outages", type=int, default=4, help="Flights service outages at most (default 4)")
    parser.add_argument("--worker-kills", type=int, default=10, help="Bookings workers killed at most (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the two databases and the server logs")
    parser.add_argument(
        "--proxy",
        choices=("nginx", "none"),
        default="nginx",
        help="nginx (deploy/nginx.conf) in front of the Bookings gunicorn, as in production (default), or none",
    )
    parser.add_argument(
        "--db-prefix", default=DATABASE_PREFIX, help=f"the two databases' names start so (default {DATABASE_PREFIX})"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("CHAOS_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server, no database name (default $CHAOS_PG_URL or postgres://postgres@127.0.0.1:5432)",
    )
    tasks = ["set-up-flights", "set-up-bookings", "cleanup"]
    parser.add_argument("--django-task", choices=tasks, help=argparse.SUPPRESS)  # See run_django_task.
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.django_task:
        return run_django_task(args.django_task, args.clients)
    started = time.monotonic()
    run = ChaosRun(args)
    status = run_to_the_end("chaos", run)
    phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in run.phases.items())
    print(f"took {time.monotonic() - started:.1f} s ({phases})")
    return status


if __name__ == "__main__":
    sys.exit(main())
