"""Load benchmark: the service under gunicorn behind nginx (deploy/nginx.conf; `--proxy none`
for gunicorn alone) on a throw-away PostgreSQL database, driven for a fixed time per scenario by
`--concurrency` virtual users (asyncio + aiohttp, one session), with the in-process and with the
HTTP Flights adapter (whose Flights service, internal, is called directly). Each scenario runs
once per level of `--concurrency` (default 10 and 50 users).

Scenarios, each after a warm-up that is not counted:

- baseline: GET /api/v1/flights/{id}, the cheapest authenticated DRF endpoint: a token look-up
  and one read by primary key, with no throttle, filter or pagination (the bookings and
  payments endpoints add their throttle, and the lists a count). Every other figure is also
  given as a ratio of it, measured on the same run, so that runs on other machines compare.
  With the HTTP adapter it is still the Bookings service's own endpoint (its `flights` app,
  on its own database), so that the ratios are of one and the same server.
- read: GET /api/v1/bookings/{id} and GET /api/v1/bookings?pageSize=20, on the user's own
  20 bookings, made through the API before the load.
- spread: POST /api/v1/bookings (1 to 4 seats) on one of 20 flights made for the run, that do
  not sell out, then POST /api/v1/payments with a fresh Idempotency-Key and the booking's
  totalCost. A flow is both answered 201.
- hot: everyone books 2 seats on one 1,000-seat flight and pays: lock contention on the
  flight's row. The first 409 insufficient_seats moves everyone on to the next flight of a
  chain made long enough for `--duration`, so there is one hot flight at a time for the whole
  window; every flight of the chain is checked (sold out to the last seat, ledger and
  bookings agreeing).

`--hosts N` starts N Bookings gunicorns on the one database, as N app hosts would be, and
gives each user one of them in turn: the seat checks then hold across hosts.

Setup: the database(s) migrated and the users made in a Django subprocess (there is no
sign-up endpoint): a customer per virtual user, and staff. Then everything through the API:
tokens (POST /auth/token), flights (staff POST /flights; on the Flights service with the
HTTP adapter, since a booking's flightId is that service's id), the read scenario's bookings.

After each scenario, the seats from the databases, for every flight: capacity = available +
seats held by the ledger (flights SeatHold) = available + seats of bookings holding seats
(INITIATED, PENDING, BOOKED); oversold = seats held beyond capacity, which must be 0.

Prints per scenario the rate (flows/s, or requests/s for baseline and read), per endpoint n,
p50/p95/p99 and the answers by status and code, the CPU milliseconds per flow (per request for
baseline and read) of each process group (the Bookings gunicorn(s), the Flights gunicorn,
nginx, the PostgreSQL backends of the bench's databases, this process: CPU seconds in the
measured window over the flows or requests counted, the figure that stays stable on a shared
machine), where the CPU went in % of a core (anything else on the host too: the bench shares
the cores with the servers) and how many backends waited on a lock; then a summary with the
CPU ms and every rate as a ratio to the baseline of the same run (`--markdown` prints it for
docs/performance.md too) and the machine. `--json PATH` writes the raw figures. Exits 1 if a seat check failed,
an answer was 5xx (or anything but 2xx and 409), a request got no answer, or a server logged
a 500; 2 if the run could not be made.

`--code-dir PATH` serves another checkout of the project (a `git worktree` of another commit)
with this bench: its gunicorn.conf.py, so its code, and its migrations for the databases; the
same virtualenv. So two commits are compared by the same driver and the same measures.

Notifications (docs/design.md#notifications): with the code of a commit that has them, every
booking and every payment queues a task for the worker after its commit (the outbox INSERT in
the transaction, the task's INSERT after it). With no worker (the default) the tasks stay in
the queue: the request path's cost alone. `--worker` runs one `manage.py db_worker` beside each
Bookings database, with one webhook endpoint registered at a receiver on loopback
(bench/receiver.py, answering 204; WEBHOOK_ALLOW_INSECURE=true for the worker), so that every
event is delivered while the load runs; the worker is a CPU group of its own (its backends are
among PostgreSQL's). `--no-enqueue` serves the Bookings app with the receiver that queues the
task disconnected (bench/wsgi_without_enqueue.py; no application code changes): the outbox
INSERT without the task's. Each scenario prints the queue and the deliveries at its end.

Run: `.venv/bin/python bench/load.py [--scenarios baseline,read,spread,hot] [--adapter inprocess,http]
[--duration 10] [--warmup 2] [--concurrency 10,50] [--proxy nginx|none] [--worker-class gthread|sync]
[--code-dir PATH] [--worker | --no-enqueue] [--markdown] [--json PATH]`.
CI smoke: `--duration 2 --warmup 0.5 --concurrency 4`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from receiver import Receiver  # noqa: E402
from serving import (  # noqa: E402  (scripts/ is not a package)
    Gunicorn,
    Nginx,
    ProcessGroup,
    drop_database,
    keepalive_connections,
    nginx_binary,
    recreate_database,
    run_to_the_end,
    service_env,
    start_django_task,
    task_output,
)

PYTHON = sys.executable
SCENARIOS = ("baseline", "read", "spread", "hot")
ADAPTERS = ("inprocess", "http")
DATABASE_PREFIX = "flight_bookings_bench_load"

CORES = os.cpu_count() or 1
# The production defaults (bookings_project/settings.py: GUNICORN_WORKERS, GUNICORN_THREADS).
DEFAULT_WORKERS = 2 * CORES + 1
DEFAULT_THREADS = 4
# The Flights service behind the HTTP adapter does less per request (one short transaction),
# and shares the same cores: smaller.
DEFAULT_FLIGHTS_WORKERS = CORES + 1

STAFF = "bench-staff"
POOL_FLIGHTS = 50
POOL_CAPACITY = 1000  # flights.models.MAX_CAPACITY
READ_BOOKINGS_PER_USER = 20
PAGE_SIZE = 20
SPREAD_FLIGHTS = 20  # Fresh for each run of spread, as in issue 16's comparison.
SPREAD_SEATS = (1, 4)
HOT_SEATS = 2  # Every hot booking asks for as many, and the capacity is a multiple: it sells out to the last seat.
HOT_CAPACITY = POOL_CAPACITY
# The hot chain is made long enough for `--duration` at this many flows/s; faster, it runs out
# and the scenario ends early (its window is then shorter, its figures still good).
HOT_CHAIN_FLOWS_PER_SECOND = 400
DEFAULT_LEVELS = (10, 50)
# Requests nginx lets into one gunicorn at once (deploy/nginx.conf's max_conns); past it, 503.
# Little's law: about the host's throughput times the longest queueing wanted, here ~150
# writes/s x 0.4 s; a closed loop of up to 64 users is never shed.
DEFAULT_MAX_CONNS = 64
CLIENT_TIMEOUT = 30.0
PG_SAMPLE_SECONDS = 0.2
# Other processes using more of a core than this (%) during a scenario make its figures suspect.
BUSY_NEIGHBOURS_PERCENT = 20
SHOWN_FAILURES = 10

GET_FLIGHT = "GET /flights/{id}"
GET_BOOKING = "GET /bookings/{id}"
LIST_BOOKINGS = f"GET /bookings?pageSize={PAGE_SIZE}"
POST_BOOKING = "POST /bookings"
POST_PAYMENT = "POST /payments"


# Users and databases: made in a Django subprocess --------------------------------------------


def customer_name(index: int) -> str:
    return f"bench-{index}"


def run_django_task(users: int) -> int:
    """This script re-invoked with `--django-task`: migrate DATABASE_URL's database with the
    code of the checkout in BENCH_CODE_DIR, then make staff and `users` customers, all with the
    password in BENCH_PASSWORD, and a webhook endpoint at BENCH_WEBHOOK_URL if it is set."""
    # That checkout's project, not this one's (scripts/serving.py's set_up_django puts this
    # one first).
    sys.path.insert(0, os.environ["BENCH_CODE_DIR"])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookings_project.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    # One hash for all: hashing is slow on purpose (~0.5 s), and they share the password.
    password = make_password(os.environ["BENCH_PASSWORD"])
    user_model = get_user_model()
    people = [user_model(username=STAFF, password=password, is_staff=True)]
    people += [user_model(username=customer_name(index), password=password) for index in range(users)]
    user_model.objects.bulk_create(people)
    if os.environ.get("BENCH_WEBHOOK_URL"):
        from notifications.models import WebhookEndpoint

        WebhookEndpoint.objects.create(url=os.environ["BENCH_WEBHOOK_URL"], description="bench/load.py --worker")
    return 0


# Another checkout's servers, and the notifications worker ------------------------------------


# What the worker logs when something went wrong (the JSON log format, or a bare traceback).
WORKER_ERROR_LOG = re.compile(r'"level": ?"(ERROR|CRITICAL)"|^Traceback')


class Worker(ProcessGroup):
    """`manage.py db_worker` of the checkout served, on one Bookings database, polling every
    50 ms as in the suite's worker tests; in its own session (process group), as the servers
    are, so that its CPU is a group of its own."""

    error_log = WORKER_ERROR_LOG

    def __init__(self, name: str, env: dict[str, str], *, code_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.code_dir = code_dir
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [PYTHON, "manage.py", "db_worker", "--interval", "0.05", "--no-startup-delay"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, cwd=self.code_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )


def notification_figures(bookings_url: str) -> dict[str, int]:
    """The queue's tasks and the deliveries by state, and the outbox events not yet dispatched;
    nothing for code without notifications."""
    with psycopg.connect(bookings_url) as connection:
        if connection.execute("SELECT to_regclass('bookings_outboxevent')").fetchone()[0] is None:
            return {}
        events, undispatched = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE dispatched_at IS NULL) FROM bookings_outboxevent"
        ).fetchone()
        tasks = dict(
            connection.execute(
                "SELECT status, count(*) FROM django_tasks_database_dbtaskresult GROUP BY status"
            ).fetchall()
        )
        deliveries = dict(connection.execute("SELECT state, count(*) FROM notifications_delivery GROUP BY state"))
    return {
        "events": events,
        "events_undispatched": undispatched,
        **{f"tasks_{status.lower()}": count for status, count in sorted(tasks.items())},
        **{f"deliveries_{state}": count for state, count in sorted(deliveries.items())},
    }


# Answers and what is recorded of them --------------------------------------------------------


@dataclass
class Failure:
    """Requests that failed the same way (endpoint and answer), with the first as evidence."""

    kind: str
    count: int
    example: str

    def __str__(self) -> str:
        return f"{self.kind} x {self.count}, first: {self.example}"


@dataclass(frozen=True)
class Reply:
    status: int
    code: str  # The problem's `code` for an error answer, else "".
    raw: bytes

    @property
    def label(self) -> str:
        return f"{self.status} {self.code}" if self.code else str(self.status)

    def json(self) -> Any:
        return json.loads(self.raw)


def problem_code(status: int, raw: bytes) -> str:
    if status < 400:
        return ""
    try:
        body = json.loads(raw)
    except ValueError:
        return "(not json)"
    return str(body.get("code", "")) if isinstance(body, dict) else ""


class Recorder:
    """What the virtual users saw in one scenario. Latencies, answers and flows count the
    requests started in the measured window only; a failure counts whenever it happened."""

    def __init__(self, measure_from: float = 0.0) -> None:
        self.measure_from = measure_from
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.answers: dict[str, Counter[str]] = defaultdict(Counter)
        self.flows = 0
        self.failures: dict[str, Failure] = {}

    def measured(self, started: float) -> bool:
        return started >= self.measure_from

    def answer(self, endpoint: str, started: float, label: str, seconds: float | None) -> None:
        if self.measured(started):
            self.answers[endpoint][label] += 1
            if seconds is not None:
                self.latencies[endpoint].append(seconds)

    def flow(self, started: float) -> None:
        if self.measured(started):
            self.flows += 1

    def fail(self, kind: str, evidence: str) -> None:
        failure = self.failures.setdefault(kind, Failure(kind, 0, evidence))
        failure.count += 1


class Api:
    """The one aiohttp session, and the recorder of the scenario running."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self.recorder = Recorder()

    async def send(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        token: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        base_url: str | None = None,
    ) -> Reply | None:
        """One request, timed from sending to the last byte of the answer. None: no answer."""
        url = (base_url or self.base_url) + path
        # Another service than this host (the Flights service, in set-up): its kept-alive
        # connections are the adapter's (docs/operations.md#the-flights-service), so ours close.
        closing = {"Connection": "close"} if base_url not in (None, self.base_url) else {}
        started = time.perf_counter()
        try:
            authorization = {"Authorization": f"Token {token}"} if token else {}
            async with self.session.request(
                method, url, json=body, headers={**authorization, **closing, **(headers or {})}
            ) as response:
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            label = f"no answer ({type(error).__name__})"
            self.recorder.answer(endpoint, started, label, None)
            self.recorder.fail(f"{endpoint}: {label}", f"{method} {path}: {error}")
            return None
        seconds = time.perf_counter() - started
        reply = Reply(response.status, problem_code(response.status, raw), raw)
        self.recorder.answer(endpoint, started, reply.label, seconds)
        # 409 is the service refusing for a reason (sold out, busy): part of the load. Anything
        # else but 2xx is a fault of the service (5xx) or of this script (4xx).
        if not (200 <= reply.status < 300 or reply.status == 409):
            request_id = response.headers.get("X-Request-ID")
            self.recorder.fail(f"{endpoint}: {reply.label}", f"{method} {path}, request id {request_id}: {raw[:200]!r}")
        return reply


def expect(reply: Reply | None, status: int, what: str) -> Any:
    """A setup step's answer, or the run cannot be made."""
    if reply is None or reply.status != status:
        got = "no answer" if reply is None else f"{reply.label}: {reply.raw[:300]!r}"
        raise RuntimeError(f"{what}: expected {status}, got {got}")
    return reply.json()


# Scenarios ------------------------------------------------------------------------------------


@dataclass
class User:
    name: str
    token: str = ""
    booking_ids: list[int] = field(default_factory=list)


NewFlight = Callable[[int], Awaitable[int]]  # capacity -> a new flight's id, in the inventory.


class Scenario:
    name = ""
    unit = "requests"  # What the rate counts: "requests", or "flows" (a booking paid).
    endpoints: tuple[str, ...] = ()

    async def prepare(self, new_flight: NewFlight, duration: float) -> None:
        """Before a run (warm-up included): its own flights, if it needs fresh ones."""

    async def step(self, api: Api, user: User, rng: random.Random) -> bool:
        """One flow of one user; False when this user is done."""
        raise NotImplementedError


class Baseline(Scenario):
    name = "baseline"
    endpoints = (GET_FLIGHT,)

    def __init__(self, flight_id: int) -> None:
        self.flight_id = flight_id

    async def step(self, api: Api, user: User, rng: random.Random) -> bool:
        await api.send(GET_FLIGHT, "GET", f"/api/v1/flights/{self.flight_id}", token=user.token)
        return True


class Read(Scenario):
    name = "read"
    endpoints = (GET_BOOKING, LIST_BOOKINGS)

    async def step(self, api: Api, user: User, rng: random.Random) -> bool:
        booking_id = rng.choice(user.booking_ids)
        await api.send(GET_BOOKING, "GET", f"/api/v1/bookings/{booking_id}", token=user.token)
        await api.send(LIST_BOOKINGS, "GET", f"/api/v1/bookings?pageSize={PAGE_SIZE}", token=user.token)
        return True


async def book(api: Api, user: User, flight_id: int, seats: int) -> Reply | None:
    body = {"flightId": flight_id, "numberOfSeats": seats}
    return await api.send(POST_BOOKING, "POST", "/api/v1/bookings", token=user.token, body=body)


async def pay(api: Api, user: User, booked: Reply, flow_started: float) -> None:
    """Pay a booking answered 201 with a fresh key: the flow is done when this is 201 too."""
    booking = booked.json()
    paid = await api.send(
        POST_PAYMENT,
        "POST",
        "/api/v1/payments",
        token=user.token,
        body={"bookingId": booking["id"], "amount": booking["totalCost"]},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    if paid is not None and paid.status == 201:
        api.recorder.flow(flow_started)


class Spread(Scenario):
    name = "spread"
    unit = "flows"
    endpoints = (POST_BOOKING, POST_PAYMENT)

    def __init__(self) -> None:
        self.pool: list[int] = []

    async def prepare(self, new_flight: NewFlight, duration: float) -> None:
        self.pool = list(await asyncio.gather(*(new_flight(POOL_CAPACITY) for _ in range(SPREAD_FLIGHTS))))

    async def step(self, api: Api, user: User, rng: random.Random) -> bool:
        started = time.perf_counter()
        booked = await book(api, user, rng.choice(self.pool), rng.randint(*SPREAD_SEATS))
        if booked is not None and booked.status == 201:
            await pay(api, user, booked, started)
        return True


class Hot(Scenario):
    """One hot flight at a time: everyone books 2 seats on the flight on sale and pays; the
    first user told insufficient_seats moves the sale on to the next flight of a chain, and
    everyone follows. So the row lock stays contended for as long as the scenario lasts, and
    every flight's books are checked exactly."""

    name = "hot"
    unit = "flows"
    endpoints = (POST_BOOKING, POST_PAYMENT)

    def __init__(self, pool: list[int]) -> None:
        self.pool = pool  # The warm-up books there: the hot flights are all for the measured window.
        self.chain: list[int] = []
        self.on_sale = 0  # Index in the chain.
        self.sold_out_at: list[float] = []  # When each flight of the chain was first found sold out.

    async def prepare(self, new_flight: NewFlight, duration: float) -> None:
        length = max(2, math.ceil(duration * HOT_CHAIN_FLOWS_PER_SECOND * HOT_SEATS / HOT_CAPACITY) + 1)
        self.chain = list(await asyncio.gather(*(new_flight(HOT_CAPACITY) for _ in range(length))))
        self.on_sale = 0
        self.sold_out_at = []

    async def step(self, api: Api, user: User, rng: random.Random) -> bool:
        started = time.perf_counter()
        if started < api.recorder.measure_from:
            booked = await book(api, user, rng.choice(self.pool), HOT_SEATS)
            if booked is not None and booked.status == 201:
                await pay(api, user, booked, started)
            return True
        index = self.on_sale
        if index >= len(self.chain):
            return False
        booked = await book(api, user, self.chain[index], HOT_SEATS)
        if booked is None:
            return True
        if booked.status == 201:
            await pay(api, user, booked, started)
        elif booked.status == 409 and booked.code == "insufficient_seats" and index == self.on_sale:
            self.on_sale += 1
            self.sold_out_at.append(time.perf_counter())
        return True


# Figures ----------------------------------------------------------------------------------------


def percentile(ordered: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


@dataclass
class EndpointFigures:
    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    answers: dict[str, int]

    @classmethod
    def of(cls, seconds: list[float], answers: Counter[str]) -> EndpointFigures:
        ordered = sorted(value * 1000 for value in seconds)
        mean = sum(ordered) / len(ordered) if ordered else math.nan
        return cls(
            n=sum(answers.values()),
            p50_ms=percentile(ordered, 50),
            p95_ms=percentile(ordered, 95),
            p99_ms=percentile(ordered, 99),
            mean_ms=mean,
            answers=dict(sorted(answers.items())),
        )


@dataclass
class SeatFigures:
    flights: int = 0
    capacity: int = 0
    available: int = 0
    held: int = 0  # Seats of held holds in the Flights ledger.
    booked: int = 0  # Seats of bookings holding seats (INITIATED, PENDING, BOOKED).
    oversold: int = 0
    violations: list[str] = field(default_factory=list)


@dataclass
class PostgresFigures:
    """pg_stat_activity sampled during the measured window, over the bench's databases."""

    samples: int = 0
    active_mean: float = 0.0
    active_max: int = 0
    lock_waiting_mean: float = 0.0
    lock_waiting_max: int = 0


@dataclass
class ScenarioResult:
    name: str
    unit: str
    users: int
    seconds: float  # The measured window: from the end of the warm-up until the last user stopped.
    rate: float  # `unit` per second.
    requests_per_second: float
    flows: int
    endpoints: dict[str, EndpointFigures]
    cpu: CpuFigures  # Over the measured window.
    postgres: PostgresFigures
    seats: SeatFigures
    # CPU milliseconds per flow (spread, hot) or per request (baseline, read), by group: each
    # server, "PostgreSQL", "bench" (CpuFigures.seconds over the flows or requests counted).
    cpu_ms: dict[str, float] = field(default_factory=dict)
    proxy: str = "none"
    hot_flight: SeatFigures | None = None  # hot: the chain's flights together.
    hot_flights: int = 0  # hot: flights in the chain ...
    hot_sold_out: int = 0  # ... sold out in the window.
    failures: list[Failure] = field(default_factory=list)
    # At the end of the window: the queue's tasks by status, deliveries by state, outbox events
    # (notification_figures); empty for code without notifications.
    notifications: dict[str, int] = field(default_factory=dict)

    @property
    def per(self) -> str:
        return "flow" if self.unit == "flows" else "request"


def seat_figures(inventory_url: str, bookings_url: str, flight_ids: set[int] | None = None) -> SeatFigures:
    """Seats per flight from the service's own data; every flight's books must balance."""
    with psycopg.connect(inventory_url) as connection:
        flights = connection.execute(
            "SELECT f.id, f.capacity, f.available_seats,"
            " COALESCE(SUM(h.seats) FILTER (WHERE h.state = 'held'), 0)"
            " FROM flights_flight f LEFT JOIN flights_seathold h ON h.flight_id = f.id GROUP BY f.id ORDER BY f.id"
        ).fetchall()
    with psycopg.connect(bookings_url) as connection:
        booked = dict(
            connection.execute(
                "SELECT flight_id, SUM(seats) FROM bookings_booking"
                " WHERE status IN ('INITIATED', 'PENDING', 'BOOKED') GROUP BY flight_id"
            ).fetchall()
        )
    figures = SeatFigures()
    for flight_id, capacity, available, held in flights:
        if flight_ids is not None and flight_id not in flight_ids:
            continue
        seats_booked = int(booked.get(flight_id, 0))
        figures.flights += 1
        figures.capacity += capacity
        figures.available += available
        figures.held += held
        figures.booked += seats_booked
        figures.oversold += max(0, held - capacity, seats_booked - capacity)
        if not (0 <= available <= capacity and capacity - available == held == seats_booked):
            figures.violations.append(
                f"flight {flight_id}: capacity {capacity}, available {available}, ledger holds {held}, "
                f"bookings hold {seats_booked}"
            )
    return figures


async def sample_postgres(pg_url: str, databases: list[str], start: float, stop: asyncio.Event) -> PostgresFigures:
    """Backends at work and backends waiting on a lock (a row lock: the hot flight's), sampled."""
    sql = (
        "SELECT count(*) FILTER (WHERE state = 'active'), count(*) FILTER (WHERE wait_event_type = 'Lock')"
        " FROM pg_stat_activity WHERE datname = ANY(%s)"
    )
    active: list[int] = []
    waiting: list[int] = []
    connection = await psycopg.AsyncConnection.connect(f"{pg_url}/postgres", autocommit=True)
    async with connection:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        while not stop.is_set():
            cursor = await connection.execute(sql, [databases])
            row = await cursor.fetchone()
            active.append(row[0])
            waiting.append(row[1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PG_SAMPLE_SECONDS)
    if not active:
        return PostgresFigures()
    return PostgresFigures(
        samples=len(active),
        active_mean=sum(active) / len(active),
        active_max=max(active),
        lock_waiting_mean=sum(waiting) / len(waiting),
        lock_waiting_max=max(waiting),
    )


@dataclass
class CpuFigures:
    """CPU over the measured window, in % of one core: this process (os.times), and, where
    /proc can be read, the whole host's busy time split into each gunicorn (master, workers
    and workers that exited meanwhile), the PostgreSQL backends of the bench's databases, and
    everything else (other processes on the host included: the figures are only as good as
    the host is quiet)."""

    bench: float
    host_busy: float | None = None
    servers: dict[str, float] = field(default_factory=dict)
    postgres: float | None = None
    other: float | None = None
    # CPU seconds in the window by group: each server (gunicorns, nginx), "PostgreSQL", "bench".
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    bench: float
    host_busy: float | None  # None when /proc cannot be read.
    servers: dict[str, float]  # By gunicorn.
    backends: dict[int, float]  # By PostgreSQL backend pid.


class CpuMeter:
    """CPU seconds so far, by group. Linux only (/proc); elsewhere, the bench's own alone."""

    def __init__(self, server_pgids: dict[str, int], databases: list[str]) -> None:
        self.server_pgids = server_pgids  # Each gunicorn runs in its own session: process group = master's pid.
        self.databases = databases
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    async def snapshot_at(self, when: float) -> CpuSnapshot:
        await asyncio.sleep(max(0.0, when - time.perf_counter()))
        return self.snapshot()

    def snapshot(self) -> CpuSnapshot:
        own = os.times()
        bench = own.user + own.system
        try:
            return CpuSnapshot(time.perf_counter(), bench, *self._read_proc())
        except OSError:
            return CpuSnapshot(time.perf_counter(), bench, None, {}, {})

    def _read_proc(self) -> tuple[float, dict[str, float], dict[int, float]]:
        # user nice system idle iowait irq softirq steal: all but idle and iowait is busy.
        cpu = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        host_busy = (sum(cpu) - cpu[3] - cpu[4]) / self.tick
        servers: dict[str, float] = dict.fromkeys(self.server_pgids, 0.0)
        backends: dict[int, float] = {}
        by_pgid = {pgid: name for name, pgid in self.server_pgids.items()}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                pgid, (utime, stime, cutime, cstime) = int(fields[2]), map(int, fields[11:15])
                if pgid in by_pgid:
                    # With the children the master has reaped: workers recycled (max_requests)
                    # in the window count whole, and the group's sum only grows.
                    servers[by_pgid[pgid]] += (utime + stime + cutime + cstime) / self.tick
                elif stat.startswith(f"{entry.name} (postgres)"):
                    title = (entry / "cmdline").read_bytes().decode(errors="replace")
                    if any(f" {name} " in title for name in self.databases):
                        backends[int(entry.name)] = (utime + stime) / self.tick
            except (OSError, ValueError):
                continue  # The process ended while we looked.
        return host_busy, servers, backends

    def figures(self, before: CpuSnapshot, after: CpuSnapshot) -> CpuFigures:
        wall = after.wall - before.wall

        def percent(seconds: float) -> float:
            return 100 * seconds / wall if wall > 0 else math.nan

        figures = CpuFigures(bench=percent(after.bench - before.bench))
        figures.seconds = {"bench": after.bench - before.bench}
        if before.host_busy is None or after.host_busy is None:
            return figures
        figures.host_busy = percent(after.host_busy - before.host_busy)
        servers = {name: after.servers[name] - before.servers[name] for name in self.server_pgids}
        figures.servers = {name: percent(seconds) for name, seconds in servers.items()}
        # Per backend: one that ended in the window (a connection past CONN_MAX_AGE, a worker
        # recycled) is left out, its share counted in "other".
        postgres = sum(seconds - before.backends.get(pid, 0.0) for pid, seconds in after.backends.items())
        figures.postgres = percent(postgres)
        figures.seconds = {**servers, "PostgreSQL": postgres, "bench": figures.seconds["bench"]}
        figures.other = figures.host_busy - sum(figures.servers.values()) - figures.postgres - figures.bench
        return figures


# One adapter's run ------------------------------------------------------------------------------


@dataclass
class Fixtures:
    """What the setup made through the API."""

    users: list[User]
    baseline_flight: int = 0
    pool: list[int] = field(default_factory=list)


class AdapterRun:
    """Databases, servers and load for one Flights adapter."""

    def __init__(
        self,
        adapter: str,
        args: argparse.Namespace,
        log_dir: Path,
        servers: list[Gunicorn | Nginx | Worker],
        receiver: Receiver | None = None,
    ) -> None:
        self.adapter = adapter
        self.args = args
        self.log_dir = log_dir
        self.servers = servers  # Shared with the teardown.
        self.running: dict[str, Gunicorn | Nginx | Worker] = {}  # By role: bookings, flights, nginx, worker.
        self.receiver = receiver  # With --worker: where the webhook endpoint the setup registers points.
        self.flight_numbers = 0
        self.password = secrets.token_urlsafe(16)
        self.secret_key = secrets.token_urlsafe(50)
        self.service_token = secrets.token_urlsafe(24)
        # /metrics on, counting as production does: each host's processes into one directory.
        self.metrics_token = secrets.token_urlsafe(24)
        self.metrics_dirs: dict[str, str] = {}
        roles = ("bookings", "flights") if adapter == "http" else ("bookings",)
        self.databases = {role: f"{args.db_prefix}_{adapter}_{role}" for role in roles}
        self.urls = {role: f"{args.pg_url}/{name}" for role, name in self.databases.items()}
        # Where flights, the ledger and their seats live.
        self.inventory_role = "flights" if adapter == "http" else "bookings"

    def env(self, role: str, flights_url: str = "") -> dict[str, str]:
        args = self.args
        # The Flights service keeps every Bookings thread's connection alive (docs/operations.md#the-flights-service).
        keepalive = (
            keepalive_connections(
                clients=args.hosts * args.workers * args.threads,
                workers=args.flights_workers,
                threads=args.flights_threads,
            )
            if role == "flights"
            else 0
        )
        return service_env(
            self.urls[role],
            SECRET_KEY=self.secret_key,
            FLIGHT_SERVICE_URL=flights_url,
            FLIGHT_SERVICE_TOKEN=self.service_token,
            PAYMENT_SIMULATED_DELAY_MS=str(args.payment_delay_ms),
            GUNICORN_KEEPALIVE_CONNECTIONS=str(keepalive),
        )

    def execute(self) -> list[ScenarioResult]:
        args = self.args
        for name in self.databases.values():
            recreate_database(args.pg_url, name)
        setup = {"BENCH_PASSWORD": self.password, "BENCH_CODE_DIR": str(args.code_dir)}
        webhook = {
            "bookings": {"BENCH_WEBHOOK_URL": receiver.url} if (receiver := self.receiver) else {},
            "flights": {},
        }
        tasks = [
            (
                role,
                start_django_task(__file__, {**self.env(role), **setup, **webhook[role]}, "--users", str(users)),
            )
            for role, users in (("bookings", max(args.concurrency)), ("flights", 0))
            if role in self.databases
        ]
        for role, task in tasks:
            task_output(task, f"setting up the {role} database")

        flights_url = ""
        if self.adapter == "http":
            # The Flights service is internal (its one client is our adapter): no proxy.
            flights = self.serve(
                "flights", self.env("flights"), args.flights_workers, args.flights_threads, args.flights_worker_class
            )
            flights.wait_ready("/healthz", "/readyz")
            flights_url = flights.url
        # With --hosts N, N gunicorn masters on one database, as N app hosts would be: they
        # share nothing but PostgreSQL (and the Flights service). Each host has its nginx.
        gunicorns = [
            self.serve(
                "bookings" if number == 1 else f"bookings-{number}",
                self.env("bookings", flights_url=flights_url),
                args.workers,
                args.threads,
                args.worker_class,
            )
            for number in range(1, args.hosts + 1)
        ]
        self.hosts: list[Gunicorn | Nginx] = list(gunicorns)
        if args.proxy == "nginx":
            self.hosts = []
            for number, gunicorn in enumerate(gunicorns, start=1):
                role = "nginx" if number == 1 else f"nginx-{number}"
                proxy = Nginx(f"{self.adapter}-{role}", gunicorn, max_conns=args.max_conns, log_dir=self.log_dir)
                self.servers.append(proxy)
                self.running[role] = proxy
                proxy.start()
                self.hosts.append(proxy)
        self.bookings = self.hosts[0]
        self.inventory_url = flights_url or self.bookings.url
        for host in self.hosts:
            host.wait_ready("/healthz", "/readyz")
        if args.worker:
            # One worker for the hosts' one database, as `make run` starts one beside the server.
            env = {**self.env("bookings", flights_url=flights_url), "WEBHOOK_ALLOW_INSECURE": "true"}
            env |= self.metrics_env("bookings")  # The first host's.
            worker = Worker(f"{self.adapter}-worker", env, code_dir=args.code_dir, log_dir=self.log_dir)
            self.servers.append(worker)
            self.running["worker"] = worker
            worker.start()
            self.running["receiver"] = self.receiver  # Measured too: else its CPU would be "other".
        results = asyncio.run(self.drive())
        self.report_metrics(gunicorns)
        return results

    def metrics_env(self, role: str) -> dict[str, str]:
        """A host's metrics directory, shared by its gunicorn's workers and its worker: in RAM,
        as production's /run is (tmpfs), when the machine has /dev/shm."""
        if role not in self.metrics_dirs:
            memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self.metrics_dirs[role] = tempfile.mkdtemp(prefix=f"bench-{self.adapter}-{role}-metrics-", dir=memory)
        directory = self.metrics_dirs[role]
        return {"PROMETHEUS_MULTIPROC_DIR": str(directory), "METRICS_TOKEN": self.metrics_token}

    def report_metrics(self, gunicorns: list[Gunicorn]) -> None:
        """What each host's /metrics counted (a checkout without /metrics answers 404)."""
        for server in gunicorns:
            response = requests.get(
                f"{server.url}/metrics", headers={"Authorization": f"Bearer {self.metrics_token}"}, timeout=30
            )
            if response.status_code != 200:
                print(f"  metrics: {server.name}: /metrics answered {response.status_code}")
                continue
            counted = sum(
                sample.value
                for family in text_string_to_metric_families(response.text)
                for sample in family.samples
                if sample.name == "flight_bookings_http_requests_total"
            )
            print(f"  metrics: {server.name}: /metrics counted {counted:.0f} requests")

    async def notifications_at(self, when: float) -> dict[str, int]:
        await asyncio.sleep(max(0.0, when - time.perf_counter()))
        return await asyncio.to_thread(notification_figures, self.urls["bookings"])

    def serve(self, role: str, env: dict[str, str], workers: int, threads: int, worker_class: str) -> Gunicorn:
        # This checkout's as scripts/serving.py serves it, or another's (--code-dir), or
        # without the enqueue of committed outbox events (--no-enqueue, the Bookings app only).
        without_enqueue = self.args.no_enqueue and role.startswith("bookings")
        server = Gunicorn(
            f"{self.adapter}-{role}",
            env | self.metrics_env(role),
            workers=workers,
            threads=threads,
            worker_class=worker_class,
            log_dir=self.log_dir,
            code_dir=self.args.code_dir,
            app=["--pythonpath", str(ROOT / "bench"), "wsgi_without_enqueue:application"] if without_enqueue else None,
        )
        self.servers.append(server)
        self.running[role] = server
        server.start()
        return server

    async def drive(self) -> list[ScenarioResult]:
        args = self.args
        connector = aiohttp.TCPConnector(limit=0)  # One connection per user at most; never queue in here.
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            api = Api(session, self.bookings.url)
            # Each user talks to one host, in turn; the first host also serves the set-up.
            self.apis = [api] + [Api(session, host.url) for host in self.hosts[1:]]
            setup_started = time.perf_counter()
            fixtures = await self.set_up(api)
            print(f"[{self.adapter}] setup through the API: {time.perf_counter() - setup_started:.1f} s", flush=True)
            scenarios: dict[str, Scenario] = {
                "baseline": Baseline(fixtures.baseline_flight),
                "read": Read(),
                "spread": Spread(),
                "hot": Hot(fixtures.pool),
            }
            results = []
            for name in args.scenarios:
                for users in args.concurrency:
                    result = await self.run_scenario(api, scenarios[name], fixtures.users[:users])
                    print_scenario(self.adapter, result, args)
                    results.append(result)
        return results

    async def set_up(self, api: Api) -> Fixtures:
        """Tokens, flights, and the read scenario's bookings, through the API."""
        args = self.args
        logins = asyncio.Semaphore(args.workers)  # Password hashing is CPU work: no more at once than workers.

        async def token(username: str, base_url: str) -> str:
            async with logins:
                reply = await api.send(
                    "POST /auth/token",
                    "POST",
                    "/api/v1/auth/token",
                    token="",
                    body={"username": username, "password": self.password},
                    base_url=base_url,
                )
            return expect(reply, 200, f"token of {username}")["token"]

        users = [User(customer_name(index)) for index in range(max(args.concurrency))]
        staff_tokens = await asyncio.gather(token(STAFF, self.bookings.url), token(STAFF, self.inventory_url))
        tokens = await asyncio.gather(*(token(user.name, self.bookings.url) for user in users))
        for user, user_token in zip(users, tokens, strict=True):
            user.token = user_token
        fixtures = Fixtures(users=users)

        departure = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=30)

        async def flight(number: str, capacity: int, base_url: str, staff_token: str) -> int:
            body = {
                "flightNumber": number,
                "departureAirport": "BOM",
                "arrivalAirport": "DEL",
                "departureTime": departure.isoformat(),
                "arrivalTime": (departure + dt.timedelta(hours=2)).isoformat(),
                "price": "4500.00",
                "capacity": capacity,
            }
            reply = await api.send(
                "POST /flights", "POST", "/api/v1/flights", token=staff_token, body=body, base_url=base_url
            )
            return expect(reply, 201, f"flight {number}")["id"]

        # The baseline flight is the Bookings service's own; the others are the inventory's.
        bookings_staff, inventory_staff = staff_tokens

        async def new_flight(capacity: int) -> int:
            self.flight_numbers += 1
            return await flight(f"BX{self.flight_numbers}", capacity, self.inventory_url, inventory_staff)

        self.new_flight = new_flight
        fixtures.baseline_flight = await flight("BN0", POOL_CAPACITY, self.bookings.url, bookings_staff)
        fixtures.pool = list(
            await asyncio.gather(
                *(
                    flight(f"BN{number}", POOL_CAPACITY, self.inventory_url, inventory_staff)
                    for number in range(1, POOL_FLIGHTS + 1)
                )
            )
        )

        if "read" in args.scenarios:

            async def make_bookings(index: int, user: User) -> None:
                for number in range(READ_BOOKINGS_PER_USER):
                    flight_id = fixtures.pool[(index * READ_BOOKINGS_PER_USER + number) % len(fixtures.pool)]
                    reply = await api.send(
                        POST_BOOKING,
                        "POST",
                        "/api/v1/bookings",
                        token=user.token,
                        body={"flightId": flight_id, "numberOfSeats": 1},
                    )
                    user.booking_ids.append(expect(reply, 201, f"a booking of {user.name}")["id"])

            await asyncio.gather(*(make_bookings(index, user) for index, user in enumerate(users)))
        return fixtures

    async def run_scenario(self, api: Api, scenario: Scenario, users: list[User]) -> ScenarioResult:
        args = self.args
        await scenario.prepare(self.new_flight, args.duration)
        measure_from = time.perf_counter() + args.warmup
        deadline = measure_from + args.duration
        recorder = Recorder(measure_from)
        for host_api in self.apis:
            host_api.recorder = recorder
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(
            sample_postgres(args.pg_url, list(self.databases.values()), measure_from, stop_sampling)
        )
        server_pgids = {role: server.process.pid for role, server in self.running.items()}
        meter = CpuMeter(server_pgids, list(self.databases.values()))
        cpu_before = asyncio.create_task(meter.snapshot_at(measure_from))
        notifications_before = asyncio.create_task(self.notifications_at(measure_from))

        async def virtual_user(index: int, user: User) -> float:
            rng = random.Random(f"{args.seed}:{self.adapter}:{scenario.name}:{len(users)}:{index}")
            host_api = self.apis[index % len(self.apis)]
            while time.perf_counter() < deadline and await scenario.step(host_api, user, rng):
                pass
            return time.perf_counter()

        stopped = await asyncio.gather(*(virtual_user(index, user) for index, user in enumerate(users)))
        stop_sampling.set()
        postgres = await sampler
        cpu = meter.figures(await cpu_before, meter.snapshot())
        notifications = notification_figures(self.urls["bookings"])
        before = await notifications_before
        # Delivered in the window, for the worker's CPU a delivery.
        if notifications and args.worker:
            delivered = notifications.get("deliveries_delivered", 0) - before.get("deliveries_delivered", 0)
            notifications["delivered_in_window"] = delivered

        seconds = max(stopped) - measure_from
        requests = sum(sum(answers.values()) for answers in recorder.answers.values())
        counted = recorder.flows if scenario.unit == "flows" else requests
        inventory, bookings = self.urls[self.inventory_role], self.urls["bookings"]
        result = ScenarioResult(
            name=scenario.name,
            unit=scenario.unit,
            users=len(users),
            seconds=seconds,
            rate=counted / seconds,
            requests_per_second=requests / seconds,
            flows=recorder.flows,
            endpoints={
                endpoint: EndpointFigures.of(recorder.latencies[endpoint], recorder.answers[endpoint])
                for endpoint in scenario.endpoints
            },
            cpu=cpu,
            cpu_ms={group: 1000 * used / counted if counted else math.nan for group, used in cpu.seconds.items()},
            proxy=args.proxy,
            postgres=postgres,
            seats=seat_figures(inventory, bookings),
            notifications=notifications,
            failures=list(recorder.failures.values()),
        )
        if isinstance(scenario, Hot):
            chain = seat_figures(inventory, bookings, set(scenario.chain))
            sold_out = scenario.chain[: scenario.on_sale]
            # A flight found sold out (409 insufficient_seats for 2 seats) must have none left:
            # every booking takes 2 and the capacity is even.
            left = seat_figures(inventory, bookings, set(sold_out)).available if sold_out else 0
            if left:
                violation = f"the {len(sold_out)} hot flights found sold out have {left} seats left"
                chain.violations.append(violation)
                result.seats.violations.append(violation)
            result.hot_flight, result.hot_flights, result.hot_sold_out = chain, len(scenario.chain), len(sold_out)
        return result


# Output -----------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]], *, markdown: bool = False, indent: str = "") -> str:
    """Text columns, or a markdown table; columns of figures are right-aligned."""
    numeric = [all(is_figure(row[column]) for row in rows) for column in range(len(headers))]
    if markdown:
        rule = ["---:" if right else "---" for right in numeric]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, rule, *rows])
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join(indent + line(cells) for cells in [headers, *rows])


def is_figure(cell: str) -> bool:
    """A number, maybe with its unit (\"307.1 req/s\"), or blank or "-" for none."""
    head = cell.split(" ")[0]
    return head in ("", "-") or head.replace(".", "", 1).isdigit()


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def rate_text(result: ScenarioResult) -> str:
    unit = "flows/s" if result.unit == "flows" else "req/s"
    return f"{result.rate:.1f} {unit}"


def cpu_text(cpu: CpuFigures) -> str:
    bench = f"bench {cpu.bench:.0f}%"
    if cpu.host_busy is None:
        return bench
    parts = [f"{name} {percent:.0f}%" for name, percent in cpu.servers.items()]
    parts += [f"PostgreSQL {cpu.postgres:.0f}%", bench, f"other {cpu.other:.0f}%"]
    return f"host busy {cpu.host_busy:.0f}% = " + ", ".join(parts)


def cpu_groups(result: ScenarioResult) -> dict[str, float]:
    """CPU ms per flow or request by group: the app (the Bookings gunicorns together), the
    Flights gunicorn (http adapter), nginx, PostgreSQL's backends, the bench, the notifications
    worker (--worker); NaN if unknown."""
    ms_of = result.cpu_ms
    groups = {
        "app": sum(value for name, value in ms_of.items() if name.startswith("bookings")) if ms_of else math.nan,
        "flights": ms_of.get("flights", math.nan),
        "nginx": sum(value for name, value in ms_of.items() if name.startswith("nginx"))
        if result.proxy == "nginx"
        else math.nan,
        "PostgreSQL": ms_of.get("PostgreSQL", math.nan),
        "bench": ms_of.get("bench", math.nan),
        "worker": ms_of.get("worker", math.nan),
    }
    if "PostgreSQL" not in ms_of:  # No /proc: the bench's own alone.
        groups["app"] = math.nan
    return groups


def cpu_ms_text(result: ScenarioResult) -> str:
    groups = {name: value for name, value in cpu_groups(result).items() if not math.isnan(value)}
    served = sum(value for name, value in groups.items() if name != "bench")
    parts = [f"{name} {value:.2f}" for name, value in groups.items()]
    return ", ".join(parts) + (f" (the servers together {served:.2f})" if len(groups) > 1 else "")


def seats_text(seats: SeatFigures) -> str:
    return (
        f"capacity {seats.capacity}, sold {seats.capacity - seats.available} (ledger holds {seats.held}, "
        f"bookings hold {seats.booked}), available {seats.available}, oversold {seats.oversold}"
        + (f": {len(seats.violations)} VIOLATION(S)" if seats.violations else ": ok")
    )


def print_scenario(adapter: str, result: ScenarioResult, args: argparse.Namespace) -> None:
    flows = f", {result.flows} flows" if result.unit == "flows" else ""
    requests = f", {result.requests_per_second:.1f} req/s" if result.unit == "flows" else ""
    proxy = ", through nginx" if result.proxy == "nginx" else ""
    print(
        f"\n[{adapter}] {result.name}: {result.users} users{proxy}, {result.seconds:.1f} s measured "
        f"(after {args.warmup:g} s warm-up){flows}: {rate_text(result)}{requests}"
    )
    rows = [
        [
            endpoint,
            str(figures.n),
            ms(figures.p50_ms),
            ms(figures.p95_ms),
            ms(figures.p99_ms),
            ", ".join(f"{label}={count}" for label, count in figures.answers.items()),
        ]
        for endpoint, figures in result.endpoints.items()
    ]
    print(table(["endpoint", "n", "p50 ms", "p95 ms", "p99 ms", "answers"], rows, indent="  "))
    pg = result.postgres
    print(f"  CPU ms per {result.per}: {cpu_ms_text(result)}")
    print(f"  CPU, % of one core ({CORES} cores: {100 * CORES}%): {cpu_text(result.cpu)}")
    print(
        f"  PostgreSQL backends active {pg.active_mean:.1f} (max {pg.active_max}), "
        f"waiting on a lock {pg.lock_waiting_mean:.1f} (max {pg.lock_waiting_max})"
    )
    print(f"  seats, all {result.seats.flights} flights: {seats_text(result.seats)}")
    if result.notifications:
        figures = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in result.notifications.items())
        print(f"  notifications, at the end: {figures}")
        delivered, worker = result.notifications.get("delivered_in_window", 0), result.cpu.seconds.get("worker")
        if delivered and worker is not None:
            print(f"  worker CPU ms per delivery in the window: {1000 * worker / delivered:.2f}")
    if result.hot_flight is not None:
        pace = f", one every {result.seconds / result.hot_sold_out:.1f} s" if result.hot_sold_out else ""
        ran_out = "; the chain RAN OUT: the window ended early" if result.hot_sold_out == result.hot_flights else ""
        print(
            f"  hot flights, one on sale at a time: {result.hot_sold_out} of {result.hot_flights} sold out{pace}"
            f"{ran_out}; {seats_text(result.hot_flight)}"
        )
    for violation in result.seats.violations[:SHOWN_FAILURES]:
        print(f"  - {violation}")
    if result.failures:
        print(f"  FAILED requests: {sum(failure.count for failure in result.failures)}")
        for failure in result.failures[:SHOWN_FAILURES]:
            print(f"  - {failure}")
    sys.stdout.flush()


def summary_rows(results: dict[str, list[ScenarioResult]], columns: tuple[str, ...]) -> list[list[str]]:
    """Per adapter, scenario and endpoint: throughput and p50 as ratios of the same run's baseline."""
    rows = []
    for adapter, scenarios in results.items():
        baselines = {result.users: result for result in scenarios if result.name == "baseline"}
        for result in scenarios:
            # The baseline at as many users, else the first one run.
            baseline = baselines.get(result.users) or next(iter(baselines.values()), None)
            base_rate = baseline.rate if baseline else math.nan
            base_p50 = baseline.endpoints[GET_FLIGHT].p50_ms if baseline else math.nan
            groups = cpu_groups(result)
            for position, (endpoint, figures) in enumerate(result.endpoints.items()):
                first = position == 0
                cpu = [cpu_ms(groups[name]) if first else "" for name in columns]
                rows.append(
                    [
                        adapter if first else "",
                        result.name if first else "",
                        str(result.users) if first else "",
                        rate_text(result) if first else "",
                        ratio(result.rate, base_rate) if first else "",
                        *cpu,
                        endpoint,
                        ms(figures.p50_ms),
                        ratio(figures.p50_ms, base_p50),
                        ms(figures.p99_ms),
                    ]
                )
    return rows


def cpu_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def flow_cost(result: ScenarioResult) -> float:
    """The servers' CPU a flow that the performance goal counts: app, Flights (none in process), PostgreSQL."""
    groups = cpu_groups(result)
    flights = 0.0 if math.isnan(groups["flights"]) else groups["flights"]
    return groups["app"] + flights + groups["PostgreSQL"]


def http_cost_ratios(rounds: list[dict[str, list[ScenarioResult]]]) -> list[str]:
    """Lines of what a flow costs over the HTTP adapter against in process (app + Flights +
    PostgreSQL CPU a flow), by scenario and users: each round's ratio, and their median."""
    ratios: dict[tuple[str, int], list[float]] = {}
    for results in rounds:
        if not {"inprocess", "http"} <= results.keys():
            return []
        in_process = {(result.name, result.users): result for result in results["inprocess"]}
        for result in results["http"]:
            other = in_process.get((result.name, result.users))
            if result.unit != "flows" or other is None:
                continue
            over_http, in_process_cost = flow_cost(result), flow_cost(other)
            if not math.isnan(over_http / in_process_cost):
                ratios.setdefault((result.name, result.users), []).append(over_http / in_process_cost)
    if not ratios:
        return []
    lines = ["\nover HTTP ÷ in process, CPU a flow (app + Flights + PostgreSQL), round by round and median:"]
    for (name, users), values in ratios.items():
        each = " / ".join(f"{value:.2f}" for value in values)
        lines.append(f"  {name}, {users} users: {each}; median {statistics.median(values):.2f}")
    return lines


CPU_COLUMNS = ("app", "flights", "nginx", "PostgreSQL", "bench")


def cpu_columns(args: argparse.Namespace) -> tuple[str, ...]:
    return (*CPU_COLUMNS, "worker") if args.worker else CPU_COLUMNS


def ratio(value: float, base: float) -> str:
    return "-" if math.isnan(value) or math.isnan(base) or base == 0 else f"{value / base:.2f}"


def summary_headers(columns: tuple[str, ...]) -> list[str]:
    return [
        "adapter",
        "scenario",
        "users",
        "throughput",
        "÷ baseline",
        *(f"{name} CPU ms" for name in columns),
        "endpoint",
        "p50 ms",
        "÷ baseline p50",
        "p99 ms",
    ]


def machine(args: argparse.Namespace) -> dict[str, Any]:
    with psycopg.connect(f"{args.pg_url}/postgres") as connection:
        postgres = connection.execute("SHOW server_version").fetchone()[0]
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cores": CORES,
        "ram_gib": round(memory_kb / 1024**2, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "bookings_gunicorn": (f"{args.hosts} hosts of " if args.hosts > 1 else "")
        + size_text(args.workers, args.threads, args.worker_class),
        "flights_gunicorn": size_text(args.flights_workers, args.flights_threads, args.flights_worker_class),
        "proxy": f"nginx {nginx_version()} (deploy/nginx.conf, max_conns {args.max_conns})"
        if args.proxy == "nginx"
        else "none",
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "code": code_text(args.code_dir),
        "notifications_worker": "one db_worker, one webhook endpoint at a local receiver" if args.worker else "none",
        "enqueue": "off (bench/wsgi_without_enqueue.py)" if args.no_enqueue else "as the code does",
    }


def code_text(code_dir: Path) -> str:
    """The checkout served and its commit, and whether its working tree had changes."""

    def git(*command: str) -> str:
        try:
            found = subprocess.run(["git", "-C", str(code_dir), *command], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return found.stdout.strip() if found.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "?"
    changed = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{code_dir} at {commit}{changed}"


def size_text(workers: int, threads: int, worker_class: str) -> str:
    return f"{workers} sync workers" if worker_class == "sync" else f"{workers} workers x {threads} threads"


def nginx_version() -> str:
    try:
        found = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "?"
    return found.strip().rpartition("/")[2] or "?"


def machine_text(info: dict[str, Any], args: argparse.Namespace) -> str:
    flights = f"; Flights service (http adapter) {info['flights_gunicorn']}" if "http" in args.adapter else ""
    users = ", ".join(str(level) for level in args.concurrency)
    return (
        f"{info['cores']} cores, {info['ram_gib']} GiB RAM, {info['platform']}, Python {info['python']}, "
        f"PostgreSQL {info['postgresql']}; Bookings gunicorn {info['bookings_gunicorn']}{flights}; "
        f"proxy {info['proxy']}; code {info['code']}; notifications worker {info['notifications_worker']}, "
        f"task enqueue {info['enqueue']}; "
        f"{users} users, {args.duration:g} s per scenario after {args.warmup:g} s warm-up, "
        f"payment delay {args.payment_delay_ms} ms; the bench runs on the same cores; "
        f"load average {info['load_average_at_start']} at the start"
    )


def without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def without_nan(value: Any) -> Any:
    """JSON has no NaN (an endpoint with no answer has no percentiles): null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return value


# The run ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-load-"))
        self.servers: list[Gunicorn | Nginx | Worker] = []
        self.runs: list[AdapterRun] = []
        self.receiver: Receiver | None = None  # --worker: where the webhook endpoint points.
        self.failed = True  # Until the checks pass: keep the logs.
        self.torn_down = False

    def execute(self) -> int:
        args = self.args
        info = machine(args)
        print(f"machine: {machine_text(info, args)}", flush=True)
        if args.worker:
            self.receiver = Receiver(self.log_dir / "receiver.log")
            self.receiver.start()
        cpu_before, wall_before = os.times(), time.perf_counter()
        rounds: list[dict[str, list[ScenarioResult]]] = []
        log_errors: list[str] = []
        timings: dict[str, float] = {}
        for number in range(args.rounds):
            # Every other round runs the adapters the other way round (A B B A ...), so that a
            # machine whose speed drifts favours neither in their ratio.
            order = args.adapter if number % 2 == 0 else args.adapter[::-1]
            results: dict[str, list[ScenarioResult]] = {}
            for adapter in order:
                if args.rounds > 1:
                    print(f"\nround {number + 1} of {args.rounds}: {adapter}", flush=True)
                started = time.perf_counter()
                run = AdapterRun(adapter, args, self.log_dir, self.servers, self.receiver)
                self.runs.append(run)
                results[adapter] = run.execute()
                self.stop_servers()
                log_errors += [line for server in self.servers for line in server.logged_server_errors()]
                self.servers.clear()
                self.drop_databases(run)
                timings[adapter] = timings.get(adapter, 0.0) + time.perf_counter() - started
            rounds.append({adapter: results[adapter] for adapter in args.adapter})

        cpu_after = os.times()
        cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        wall = time.perf_counter() - wall_before
        for number, results in enumerate(rounds, start=1):
            columns = cpu_columns(args)
            rows = summary_rows(results, columns)
            print(
                f"\nsummary{f' of round {number}' if len(rounds) > 1 else ''} (throughput: flows/s for spread and "
                "hot, a flow being a booking and its payment; req/s else; CPU ms: per flow, or per request for "
                "baseline and read):"
            )
            print(table(summary_headers(columns), rows, indent="  "))
            if args.markdown:
                print(f"\nMachine: {machine_text(info, args)}.\n")
                print(table(summary_headers(columns), rows, markdown=True))
        for line in http_cost_ratios(rounds):
            print(line)
        print(f"\nbench process CPU: {cpu:.1f} s over {wall:.1f} s ({100 * cpu / wall:.0f}% of one of {CORES} cores)")
        every = [
            (adapter, result) for results in rounds for adapter, scenarios in results.items() for result in scenarios
        ]
        disturbed = [
            f"{adapter} {result.name} ({result.cpu.other:.0f}%)"
            for adapter, result in every
            if (result.cpu.other or 0) > BUSY_NEIGHBOURS_PERCENT
        ]
        if disturbed:
            print(
                f"WARNING: other processes on the host took more than {BUSY_NEIGHBOURS_PERCENT}% of a core during "
                f"{', '.join(disturbed)}: those figures (and ratios to them) are not clean; run again on a quiet host"
            )

        failures = [
            f"[{adapter}] {result.name}: {item}"
            for adapter, result in every
            for item in [str(failure) for failure in result.failures] + result.seats.violations
        ] + log_errors
        oversold = sum(result.seats.oversold for _, result in every)
        self.failed = bool(failures or oversold)
        if log_errors:
            print(f"server log errors: {len(log_errors)}")
            for line in log_errors[:SHOWN_FAILURES]:
                print(f"  - {line}")
        if args.json:
            report = {
                "machine": info,
                "options": {
                    **{key: value for key, value in vars(args).items() if key not in ("django_task", "users")},
                    "pg_url": without_password(args.pg_url),
                    "code_dir": str(args.code_dir),
                },
                "seconds": timings,
                "bench_cpu_seconds": cpu,
                # Round by round (one unless --rounds).
                "rounds": [
                    {
                        adapter: [dataclasses.asdict(result) for result in scenarios]
                        for adapter, scenarios in results.items()
                    }
                    for results in rounds
                ],
                "server_log_errors": log_errors,
                "failed": self.failed,
            }
            Path(args.json).write_text(json.dumps(without_nan(report), indent=2, allow_nan=False) + "\n")
        print("FAILED" if self.failed else "ok: no oversold seat, no 5xx, every request answered")
        return 1 if self.failed else 0

    def stop_servers(self) -> None:
        for server in self.servers:
            server.stop()

    def drop_databases(self, run: AdapterRun) -> None:
        if not self.args.keep:
            for name in run.databases.values():
                drop_database(self.args.pg_url, name)

    def tear_down(self) -> None:
        if self.torn_down:
            return
        self.torn_down = True
        for server in self.servers:
            server.kill()
        if self.receiver is not None:
            self.receiver.kill()
        for run in self.runs:
            self.drop_databases(run)
            for directory in run.metrics_dirs.values():
                shutil.rmtree(directory, ignore_errors=True)
        if self.args.keep:
            names = ", ".join(name for run in self.runs for name in run.databases.values())
            print(f"kept: databases {names}; server logs in {self.log_dir}")
        elif self.failed:
            print(f"server logs kept in {self.log_dir}")
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = sorted(set(chosen) - set(allowed))
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return [item for item in allowed if item in chosen]  # Always in this order: baseline first.

    return parse


def levels(text: str) -> list[int]:
    try:
        chosen = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("numbers of users, comma-separated (e.g. 10,50)") from None
    if not chosen:
        raise argparse.ArgumentTypeError("at least one number of users")
    return chosen


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=choices(SCENARIOS), default=list(SCENARIOS), help="default: all")
    parser.add_argument("--adapter", type=choices(ADAPTERS), default=list(ADAPTERS), help="default: both")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted first (default 2)")
    parser.add_argument(
        "--concurrency",
        type=levels,
        default=list(DEFAULT_LEVELS),
        help="virtual users (a customer each); a comma-separated list runs every scenario at each "
        f"(default {','.join(map(str, DEFAULT_LEVELS))})",
    )
    parser.add_argument(
        "--proxy",
        choices=("nginx", "none"),
        default="nginx",
        help="nginx (deploy/nginx.conf) in front of each Bookings gunicorn, as in production (default), or none",
    )
    parser.add_argument(
        "--max-conns",
        type=int,
        default=DEFAULT_MAX_CONNS,
        help=f"requests nginx lets into a gunicorn at once, then 503 (default {DEFAULT_MAX_CONNS})",
    )
    parser.add_argument(
        "--worker-class",
        choices=("gthread", "sync"),
        default="gthread",
        help="the Bookings gunicorn's worker class (sync: one thread per worker; default gthread)",
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"default 2 x cores + 1 = {DEFAULT_WORKERS}"
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"default {DEFAULT_THREADS}")
    parser.add_argument(
        "--hosts", type=int, default=1, help="Bookings gunicorns (app hosts) on one database (default 1)"
    )
    parser.add_argument(
        "--flights-workers",
        type=int,
        default=DEFAULT_FLIGHTS_WORKERS,
        help=f"the Flights service's, http adapter (default cores + 1 = {DEFAULT_FLIGHTS_WORKERS})",
    )
    parser.add_argument("--flights-threads", type=int, default=DEFAULT_THREADS, help=f"default {DEFAULT_THREADS}")
    parser.add_argument(
        "--flights-worker-class", choices=("gthread", "sync"), default="gthread", help="default gthread"
    )
    parser.add_argument("--payment-delay-ms", type=int, default=0, help="the simulated gateway's delay (default 0)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the adapters this many times, in turn A B B A ..., for ratios a drifting machine cannot skew",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the users' choices (default 1)")
    parser.add_argument(
        "--code-dir",
        type=Path,
        default=ROOT,
        help="serve this checkout of the project instead (e.g. a git worktree of another commit; default this one)",
    )
    parser.add_argument(
        "--no-enqueue",
        action="store_true",
        help="the Bookings app writes its outbox events but queues no task after the commit "
        "(bench/wsgi_without_enqueue.py): the outbox INSERT's cost without the task INSERT's",
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="run one notifications worker (manage.py db_worker) during the load, delivering to a local receiver",
    )
    parser.add_argument("--markdown", action="store_true", help="print the summary as a markdown table too")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the server logs")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server, no database name (default $BENCH_PG_URL or postgres://postgres@127.0.0.1:5432)",
    )
    parser.add_argument(
        "--db-prefix",
        default=DATABASE_PREFIX,
        help=f"names of the throw-away databases, for runs side by side on one server (default {DATABASE_PREFIX})",
    )
    parser.add_argument("--django-task", action="store_true", help=argparse.SUPPRESS)  # See run_django_task.
    parser.add_argument("--users", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.duration <= 0 or args.warmup < 0 or args.max_conns < 1:
        parser.error("--concurrency and --max-conns must be at least 1, --duration more than 0, --warmup at least 0")
    if not 1 <= args.hosts <= min(args.concurrency):
        parser.error("--hosts must be from 1 to the lowest --concurrency")
    args.code_dir = args.code_dir.resolve()
    if not (args.code_dir / "gunicorn.conf.py").is_file() or not (args.code_dir / "manage.py").is_file():
        parser.error(f"--code-dir {args.code_dir}: not a checkout of the project (no gunicorn.conf.py, manage.py)")
    if (args.worker or args.no_enqueue) and not (args.code_dir / "notifications").is_dir():
        parser.error(f"--worker, --no-enqueue: the code in {args.code_dir} has no notifications")
    if args.worker and args.no_enqueue:
        parser.error("--worker and --no-enqueue: the worker would have nothing queued")
    return args


def main() -> int:
    args = parse_args()
    if args.django_task:
        return run_django_task(args.users)
    started = time.monotonic()
    status = run_to_the_end("bench", Bench(args))
    print(f"took {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
