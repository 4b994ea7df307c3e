"""Past saturation and slow clients: what the service answers, and /healthz meanwhile.

The production set-up on a throw-away PostgreSQL database: the Bookings gunicorn
(gunicorn.conf.py) behind nginx (deploy/nginx.conf, which sheds past `--max-conns` requests in
gunicorn), the in-process Flights adapter, the simulated gateway, no rate limits. Two phases,
and all along a probe GETs /healthz every 0.1 s on a new connection, as a load balancer does:

- overload: `--clients` users (default 240, several times what saturates 2 cores) book 1 seat
  on one of 20 flights and pay it, in a closed loop; an answer 503 with Retry-After is waited
  out (a random part of it, as a client with jitter would). Prints the answers per endpoint
  by status and code, the share of 503s with Retry-After and a problem+json body, the latency
  of the shed answers and of the served ones, and flows/s.
- slow clients: `--slow-clients` connections (default 50) each POST a booking whose body is
  sent one byte a second (padded to last the phase, so that they complete at its end), while
  `--normal-clients` users (default 8) book and pay as usual. Prints /healthz p50/p99/max
  (the goal: under 1 s), what the normal users got, and how the slow bookings ended.

`--proxy none` runs the same against gunicorn alone, to see what nginx buys.

Exits 1 if the service answered anything but 2xx, 409 or a 503 with Retry-After, a request
got no answer, a /healthz probe failed, no normal flow succeeded while the slow clients
were connected, a seat was oversold, or a server logged a 500 (timings are printed, never
asserted: a shared machine makes them noisy); 2 if the run could not be made.
Run: `.venv/bin/python bench/overload.py [--clients 240] [--slow-clients 50] [--brief]`;
CI: `--brief` (a few seconds each).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from load import percentile, problem_code, seat_figures
from serving import (
    Gunicorn,
    Nginx,
    drop_database,
    last_line_json,
    recreate_database,
    run_to_the_end,
    service_env,
    set_up_django,
    start_django_task,
)

DATABASE = "flight_bookings_bench_overload"
CORES = os.cpu_count() or 1
FLIGHTS = 20
CAPACITY = 1000
PROBE_EVERY = 0.1
CLIENT_TIMEOUT = 30.0
HEALTHZ_GOAL_MS = 1000
SHOWN = 10


# Set-up in a Django subprocess ------------------------------------------------------------------


def run_django_task(users: int) -> int:
    """Migrate, then the flights and `users` customers with tokens; print their ids and keys."""
    set_up_django()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from flights import services

    call_command("migrate", interactive=False, verbosity=0)
    departure = timezone.now().replace(microsecond=0) + dt.timedelta(days=30)
    flights = [
        services.flight_create(
            flight_number=f"OV{number}",
            departure_airport="BOM",
            arrival_airport="DEL",
            departure_time=departure,
            arrival_time=departure + dt.timedelta(hours=2),
            price=Decimal("4500.00"),
            capacity=CAPACITY,
        ).pk
        for number in range(FLIGHTS)
    ]
    people = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"overload-{index}") for index in range(users)]
    )
    tokens = Token.objects.bulk_create([Token(key=Token.generate_key(), user=user) for user in people])
    print(json.dumps({"flights": flights, "tokens": [token.key for token in tokens]}))
    return 0


# What was seen -----------------------------------------------------------------------------------


@dataclass
class Seen:
    """Answers of one phase: by endpoint and label, latencies by endpoint and status class."""

    answers: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    shed: int = 0  # 503s
    shed_well: int = 0  # ... with Retry-After and a problem+json body with a code
    flows: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.failures) < 1000:
            self.failures.append(text)


def stats_ms(seconds: list[float]) -> str:
    ordered = sorted(value * 1000 for value in seconds)
    if not ordered:
        return "n 0"
    return (
        f"n {len(ordered)}, p50 {percentile(ordered, 50):.1f} ms, p99 {percentile(ordered, 99):.1f} ms, "
        f"max {ordered[-1]:.1f} ms"
    )


@dataclass(frozen=True)
class Answer:
    status: int
    code: str
    retry_after: float | None
    body: Any


async def send(
    session: aiohttp.ClientSession, seen: Seen, endpoint: str, url: str, token: str, body: dict, headers: dict
) -> Answer | None:
    started = time.perf_counter()
    try:
        async with session.post(url, json=body, headers={"Authorization": f"Token {token}", **headers}) as response:
            raw = await response.read()
            content_type = response.headers.get("Content-Type", "")
            retry_header = response.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError) as error:
        seen.answers[endpoint][f"no answer ({type(error).__name__})"] += 1
        seen.fail(f"{endpoint}: no answer: {error!r}")
        return None
    took = time.perf_counter() - started
    code = problem_code(response.status, raw)
    label = f"{response.status} {code}" if code else str(response.status)
    seen.answers[endpoint][label] += 1
    seen.latencies[f"{endpoint} {response.status // 100}xx" if response.status != 503 else "503"].append(took)
    try:
        retry_after = float(retry_header) if retry_header is not None else None
    except ValueError:
        retry_after = None
    if response.status == 503:
        seen.shed += 1
        if retry_after is not None and content_type.startswith("application/problem+json") and code:
            seen.shed_well += 1
        else:
            seen.fail(f"{endpoint}: 503 without Retry-After or problem+json: {raw[:200]!r}")
    elif not (200 <= response.status < 300 or response.status == 409):
        seen.fail(f"{endpoint}: {label}: {raw[:200]!r}")
    parsed = json.loads(raw) if raw and content_type.endswith("json") else None
    return Answer(response.status, code, retry_after, parsed)


async def flow(session: aiohttp.ClientSession, seen: Seen, base: str, token: str, flight_id: int) -> float:
    """Book 1 seat and pay it; the seconds to wait before the next flow (a Retry-After, partly)."""
    booked = await send(
        session,
        seen,
        "POST /bookings",
        f"{base}/api/v1/bookings",
        token,
        {"flightId": flight_id, "numberOfSeats": 1},
        {},
    )
    if booked is None or booked.status != 201:
        return backoff(booked)
    booking = booked.body
    key = str(uuid.uuid4())
    for _ in range(5):  # The same key again after a 503: the payment is resumed, never doubled.
        paid = await send(
            session,
            seen,
            "POST /payments",
            f"{base}/api/v1/payments",
            token,
            {"bookingId": booking["id"], "amount": booking["totalCost"]},
            {"Idempotency-Key": key},
        )
        if paid is not None and paid.status == 201:
            seen.flows += 1
            return 0.0
        if paid is None or paid.status != 503:
            return backoff(paid)
        await asyncio.sleep(backoff(paid))
    return 0.0


def backoff(answer: Answer | None) -> float:
    if answer is None:
        return 0.1
    if answer.retry_after is not None:
        return answer.retry_after * random.uniform(0.2, 1.0)
    return 0.0


async def probe(base: str, until: float, latencies: list[float], failures: list[str]) -> None:
    """GET /healthz every PROBE_EVERY s, a new connection each, until `until`."""
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=timeout) as session:
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                async with session.get(f"{base}/healthz") as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"/healthz answered {response.status}")
            except (aiohttp.ClientError, TimeoutError) as error:
                failures.append(f"/healthz: no answer: {error!r}")
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, PROBE_EVERY - (time.perf_counter() - started)))


async def slow_booking(host: str, port: int, token: str, flight_id: int, seconds: float, outcomes: Counter) -> None:
    """POST /bookings with the body sent one byte a second, padded to last `seconds`."""
    compact = json.dumps({"flightId": flight_id, "numberOfSeats": 1}).encode()
    body = b" " * max(0, int(seconds) - len(compact)) + compact
    head = (
        f"POST /api/v1/bookings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    until = time.perf_counter() + seconds + 1
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as error:
        outcomes[f"could not connect ({type(error).__name__})"] += 1
        return
    try:
        writer.write(head)
        await writer.drain()
        for byte in body:
            if time.perf_counter() > until:
                outcomes["still sending at the end"] += 1
                return
            writer.write(bytes([byte]))
            await writer.drain()
            if reader.at_eof():
                outcomes["closed by the server while sending"] += 1
                return
            await asyncio.sleep(1.0)
        status_line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
        parts = status_line.split()
        outcomes[f"answered {parts[1].decode() if len(parts) > 1 else '?'}"] += 1
    except (OSError, TimeoutError) as error:
        outcomes[f"connection lost ({type(error).__name__})"] += 1
    finally:
        writer.close()


# The run -------------------------------------------------------------------------------------------


class OverloadRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.database = args.db_name
        self.url = f"{args.pg_url}/{self.database}"
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-overload-"))
        self.servers: list[Gunicorn | Nginx] = []
        self.failed = True
        self.torn_down = False

    def execute(self) -> int:
        args = self.args
        recreate_database(args.pg_url, self.database)
        env = service_env(
            self.url, SECRET_KEY=secrets.token_urlsafe(50), NUM_PROXIES="1" if args.proxy == "nginx" else "0"
        )
        users = args.clients + args.normal_clients + args.slow_clients
        fixtures = last_line_json(start_django_task(__file__, env, "--users", str(users)), "setting up the database")
        gunicorn = Gunicorn(
            "bookings",
            env,
            workers=args.workers,
            threads=args.threads,
            worker_class=args.worker_class,
            log_dir=self.log_dir,
        )
        self.servers.append(gunicorn)
        gunicorn.start()
        front: Gunicorn | Nginx = gunicorn
        if args.proxy == "nginx":
            front = Nginx("bookings", gunicorn, max_conns=args.max_conns, log_dir=self.log_dir)
            self.servers.append(front)
            front.start()
        front.wait_ready("/healthz", "/readyz")
        size = f"{args.workers} sync workers" if args.worker_class == "sync" else f"{args.workers} x {args.threads}"
        proxy = f"nginx (deploy/nginx.conf, max_conns {args.max_conns})" if args.proxy == "nginx" else "none"
        print(f"overload: {CORES} cores; Bookings gunicorn {size}; proxy {proxy}", flush=True)
        tokens, flights = fixtures["tokens"], fixtures["flights"]
        failures = asyncio.run(self.drive(front, tokens, flights))

        for server in self.servers:
            server.stop()
        logged = [line for server in self.servers for line in server.logged_server_errors()]
        seats = seat_figures(self.url, self.url)
        print(f"\nseats: {seats.flights} flights, sold {seats.capacity - seats.available}, oversold {seats.oversold}")
        failures += seats.violations + logged
        self.failed = bool(failures) or seats.oversold > 0
        if failures:
            print(f"FAILED: {len(failures)}")
            for line in failures[:SHOWN]:
                print(f"  - {line}")
        else:
            print("ok: every answer 2xx, 409 or a 503 with Retry-After; /healthz always answered; nothing oversold")
        return 1 if self.failed else 0

    async def drive(self, front: Gunicorn | Nginx, tokens: list[str], flights: list[int]) -> list[str]:
        args = self.args
        failures: list[str] = []
        base = front.url
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # Phase 1: overload.
            seen = Seen()
            healthz: list[float] = []
            until = time.perf_counter() + args.overload_seconds

            async def client(index: int) -> None:
                rng = random.Random(f"{args.seed}:{index}")
                while time.perf_counter() < until:
                    wait = await flow(session, seen, base, tokens[index], rng.choice(flights))
                    if wait:
                        await asyncio.sleep(wait)

            started = time.perf_counter()
            await asyncio.gather(probe(base, until, healthz, failures), *(client(i) for i in range(args.clients)))
            took = time.perf_counter() - started
            print(f"\noverload: {args.clients} clients for {took:.1f} s: {seen.flows / took:.1f} flows/s")
            for endpoint, answers in sorted(seen.answers.items()):
                print(f"  {endpoint}: " + ", ".join(f"{label}={n}" for label, n in sorted(answers.items())))
            total = sum(sum(answers.values()) for answers in seen.answers.values())
            share = f"{100 * seen.shed / total:.0f}%" if total else "-"
            well = f"{100 * seen.shed_well / seen.shed:.0f}%" if seen.shed else "-"
            print(f"  shed (503): {seen.shed} of {total} answers ({share}); with Retry-After and problem+json: {well}")
            for kind in sorted(seen.latencies):
                print(f"  latency {kind}: {stats_ms(seen.latencies[kind])}")
            print(f"  /healthz meanwhile: {stats_ms(healthz)}")
            failures += seen.failures

            # Phase 2: slow clients.
            slow_seen = Seen()
            slow_healthz: list[float] = []
            outcomes: Counter[str] = Counter()
            seconds = args.slow_seconds
            until = time.perf_counter() + seconds
            offset = args.clients

            async def normal(index: int) -> None:
                rng = random.Random(f"{args.seed}:normal:{index}")
                while time.perf_counter() < until:
                    wait = await flow(session, slow_seen, base, tokens[offset + index], rng.choice(flights))
                    await asyncio.sleep(max(wait, 0.05))

            slow_offset = offset + args.normal_clients
            started = time.perf_counter()
            await asyncio.gather(
                probe(base, until, slow_healthz, failures),
                *(normal(i) for i in range(args.normal_clients)),
                *(
                    slow_booking(
                        "127.0.0.1", front.port, tokens[slow_offset + i], flights[i % len(flights)], seconds, outcomes
                    )
                    for i in range(args.slow_clients)
                ),
            )
            took = time.perf_counter() - started
            print(
                f"\nslow clients: {args.slow_clients} sending a body one byte a second, "
                f"{args.normal_clients} normal clients, {took:.1f} s"
            )
            p99 = percentile(sorted(value * 1000 for value in slow_healthz), 99)
            verdict = "goal < 1 s met" if p99 < HEALTHZ_GOAL_MS else "goal < 1 s NOT met"
            print(f"  /healthz: {stats_ms(slow_healthz)} ({verdict})")
            print(f"  normal clients: {slow_seen.flows} flows ({slow_seen.flows / took:.1f}/s)")
            for endpoint, answers in sorted(slow_seen.answers.items()):
                print(f"    {endpoint}: " + ", ".join(f"{label}={n}" for label, n in sorted(answers.items())))
            for kind in sorted(slow_seen.latencies):
                print(f"    latency {kind}: {stats_ms(slow_seen.latencies[kind])}")
            print("  slow bookings: " + ", ".join(f"{label} {n}" for label, n in sorted(outcomes.items())))
            failures += slow_seen.failures
            if args.normal_clients and not slow_seen.flows:
                failures.append("no normal flow succeeded while the slow clients were connected")
        return failures

    def tear_down(self) -> None:
        if self.torn_down:
            return
        self.torn_down = True
        for server in self.servers:
            server.kill()
        if not self.args.keep:
            drop_database(self.args.pg_url, self.database)
        if self.args.keep or self.failed:
            print(f"server logs kept in {self.log_dir}")
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=240, help="overload: users in a closed loop (default 240)")
    parser.add_argument("--overload-seconds", type=float, default=20.0, help="default 20")
    parser.add_argument("--slow-clients", type=int, default=50, help="connections sending 1 byte/s (default 50)")
    parser.add_argument("--normal-clients", type=int, default=8, help="users booking meanwhile (default 8)")
    parser.add_argument("--slow-seconds", type=float, default=40.0, help="default 40")
    parser.add_argument("--brief", action="store_true", help="CI: 3 s each phase, 100 clients, 20 slow")
    parser.add_argument("--proxy", choices=("nginx", "none"), default="nginx", help="default nginx")
    parser.add_argument("--max-conns", type=int, default=64, help="nginx's max_conns to gunicorn (default 64)")
    parser.add_argument("--workers", type=int, default=2 * CORES + 1, help=f"default {2 * CORES + 1}")
    parser.add_argument("--threads", type=int, default=4, help="default 4")
    parser.add_argument("--worker-class", choices=("gthread", "sync"), default="gthread", help="default gthread")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the database and the server logs")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server, no database name (default $BENCH_PG_URL or postgres://postgres@127.0.0.1:5432)",
    )
    parser.add_argument("--db-name", default=DATABASE, help=f"the throw-away database (default {DATABASE})")
    parser.add_argument("--django-task", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.brief:
        args.clients, args.overload_seconds = min(args.clients, 100), 3.0
        args.slow_clients, args.slow_seconds, args.normal_clients = min(args.slow_clients, 20), 3.0, 4
    return args


def main() -> int:
    args = parse_args()
    if args.django_task:
        return run_django_task(args.users)
    started = time.monotonic()
    status = run_to_the_end("overload", OverloadRun(args))
    print(f"took {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
