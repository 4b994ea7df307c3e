"""What counting for /metrics adds to a flow (a booking and its payment), in CPU ms of the app
process and of PostgreSQL, as production counts: prometheus_client's multiprocess mode, the
counts written to memory-mapped files in a PROMETHEUS_MULTIPROC_DIR of its own.

One process, one request at a time, the whole API path (`rest_framework.test.APIClient`) on a
throw-away PostgreSQL database, as `bench/outbox_cost.py` measures the outbox. Blocks of
`--flows` flows run in pairs, counting **on** (the code as it is) and **off** (every write of
a count a no-op, and the request's observation skipped: what is left is a label look-up or
two), the order turning every round. A block's CPU is the process's (`time.process_time`)
and every PostgreSQL backend's of the database (counting sends no statement: that column
should show noise only).

Then, in tight loops without a request's noise, in µs: the request's observation alone
(`metrics.observe_request` for a `GET /api/v1/flights/<id>` answered 200: one counter and one
histogram), and every count a flow makes.

Prints each round's pair and the medians. Run:
`.venv/bin/python bench/metrics_cost.py [--rounds 10] [--flows 200]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from serving import (  # noqa: E402  (scripts/ is not a package)
    Backends,
    drop_database,
    recreate_database,
    service_env,
    set_up_django,
    start_django_task,
)

DATABASE = "flight_bookings_bench_metrics"


def paired(measure, rounds: int) -> list[dict]:
    """`measure(on)` with counting on and off, `rounds` times, the order turning every round."""
    return [
        {("on" if on else "off"): measure(on) for on in ((True, False) if number % 2 == 0 else (False, True))}
        for number in range(rounds)
    ]


def standard_error(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def run_django_task(args: argparse.Namespace) -> int:
    set_up_django()
    import datetime as dt
    from decimal import Decimal

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from bookings_project import metrics
    from flights.services import flight_create

    assert settings.PROMETHEUS_MULTIPROC_DIR, "the bench counts as production does: multiprocess"
    call_command("migrate", interactive=False, verbosity=0)
    user = get_user_model().objects.create_user("bench-metrics", password=None)
    client = APIClient(HTTP_HOST="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    departure = timezone.now() + dt.timedelta(days=30)
    flows = args.flows * (2 * args.rounds + 1)
    flight = flight_create(
        flight_number="BM1",
        departure_airport="BOM",
        arrival_airport="DEL",
        departure_time=departure,
        arrival_time=departure + dt.timedelta(hours=2),
        price=Decimal("4500.00"),
        capacity=flows,
    )
    backends = Backends(args.pg_url, settings.DATABASES["default"]["NAME"], leave_out=set())
    keys = iter(range(flows))
    # Every value is of the one class prometheus_client made for multiprocess mode.
    value_class = type(metrics.HTTP_REQUESTS.labels("GET", "x", "200", "")._value)
    written = value_class.inc, metrics.observe_request, metrics.count_on_commit, metrics.seat_lock

    def switch(on: bool) -> None:
        if on:
            value_class.inc, metrics.observe_request, metrics.count_on_commit, metrics.seat_lock = written
        else:
            value_class.inc = lambda self, amount: None
            metrics.observe_request = lambda request, response, seconds: None
            metrics.count_on_commit = lambda counter, amount=1: None
            metrics.seat_lock = contextlib.nullcontext

    def block(on: bool) -> dict[str, float]:
        switch(on)
        app, database = time.process_time(), backends.sample()
        for _ in range(args.flows):
            booked = client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 1}, format="json")
            body = {"bookingId": booked.json()["id"], "amount": booked.json()["totalCost"]}
            paid = client.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY=f"k{next(keys)}")
            if (booked.status_code, paid.status_code) != (201, 201):
                raise SystemExit(f"a flow failed: {booked.status_code} {paid.status_code} {paid.content!r}")
        app, database = time.process_time() - app, backends.sample() - database
        return {"app_ms": 1000 * app / args.flows, "postgresql_ms": 1000 * database / args.flows}

    def observation(count: int = 20_000) -> float:
        response = client.get(f"/api/v1/flights/{flight.pk}")
        request = response.wsgi_request
        started = time.process_time()
        for _ in range(count):
            metrics.observe_request(request, response, 0.004)
        return 1e6 * (time.process_time() - started) / count

    def flow_counts(count: int = 5_000) -> float:
        """Every count a flow makes, without the flow: two requests observed, three status
        changes (created, payment started, booked: outside a transaction, on_commit runs at
        once), the gateway's answer, the seat lock taken once."""
        response = client.get(f"/api/v1/flights/{flight.pk}")
        request = response.wsgi_request
        started = time.process_time()
        for _ in range(count):
            metrics.observe_request(request, response, 0.004)
            metrics.observe_request(request, response, 0.006)
            for status, reason in (("INITIATED", "created"), ("PENDING", "payment_started"), ("BOOKED", "x")):
                metrics.count_on_commit(metrics.BOOKING_STATUS_CHANGES.labels(status, reason))
            metrics.PAYMENT_OUTCOMES.labels("succeeded").inc()
            with metrics.seat_lock():
                pass
        return 1e6 * (time.process_time() - started) / count

    block(True)  # Warm-up: every statement compiled and every connection open on both sides.
    rounds = paired(block, args.rounds)
    switch(True)
    observation()  # Warm-up.
    per_request = [observation() for _ in range(args.rounds)]
    per_flow = [flow_counts() for _ in range(args.rounds)]
    backends.close()
    files = sorted(path.name for path in Path(settings.PROMETHEUS_MULTIPROC_DIR).glob("*.db"))
    print(json.dumps({"rounds": rounds, "per_request": per_request, "per_flow": per_flow, "files": files}), flush=True)
    return 0


def summary(result: dict, args: argparse.Namespace) -> str:
    lines = [
        f"metrics cost: {args.rounds} rounds of {args.flows} flows a side, one thread, multiprocess "
        f"mode (files: {', '.join(result['files'])})",
        "round  app on  app off  added  |  PostgreSQL on  off  added   (CPU ms a flow)",
    ]
    for number, pair in enumerate(result["rounds"], 1):
        on, off = pair["on"], pair["off"]
        app, database = (on["app_ms"], off["app_ms"]), (on["postgresql_ms"], off["postgresql_ms"])
        lines.append(
            f"{number:5}  {app[0]:6.2f}  {app[1]:7.2f}  {app[0] - app[1]:+5.2f}  |"
            f"  {database[0]:13.2f}  {database[1]:4.2f}  {database[0] - database[1]:+5.2f}"
        )
    for what in ("app_ms", "postgresql_ms"):
        added = [pair["on"][what] - pair["off"][what] for pair in result["rounds"]]
        on = statistics.median(pair["on"][what] for pair in result["rounds"])
        off = statistics.median(pair["off"][what] for pair in result["rounds"])
        lines.append(
            f"{what[:-3]}: on {on:.2f}, off {off:.2f} ms a flow (medians); counting adds "
            f"{statistics.median(added):+.3f} ms a flow (median of the rounds' differences; "
            f"{min(added):+.2f} to {max(added):+.2f}; mean {statistics.mean(added):+.3f} ± "
            f"{standard_error(added):.3f}, its standard error)"
        )
    per_request = result["per_request"]
    lines.append(
        f"one request's observation in a loop (a counter and a histogram): "
        f"{statistics.median(per_request):.1f} µs of CPU (median of {len(per_request)} runs of 20,000; "
        f"{min(per_request):.1f} to {max(per_request):.1f})"
    )
    per_flow = result["per_flow"]
    lines.append(
        f"every count of a flow in a loop (two requests, three status changes, a gateway answer, a seat lock): "
        f"{statistics.median(per_flow):.1f} µs of CPU (median of {len(per_flow)} runs of 5,000; "
        f"{min(per_flow):.1f} to {max(per_flow):.1f})"
    )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="pairs of blocks (default 10)")
    parser.add_argument("--flows", type=int, default=200, help="flows a block (default 200)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server, no database name (default $BENCH_PG_URL or postgres://postgres@127.0.0.1:5432)",
    )
    parser.add_argument("--django-task", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.django_task:
        return run_django_task(args)
    recreate_database(args.pg_url, DATABASE)
    try:
        # In RAM, as production's /run is (tmpfs): a memory-mapped file on a disk is written back.
        memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="bench-metrics-", dir=memory) as directory:
            env = service_env(f"{args.pg_url}/{DATABASE}") | {"PROMETHEUS_MULTIPROC_DIR": directory}
            task = start_django_task(
                __file__, env, "--rounds", str(args.rounds), "--flows", str(args.flows), "--pg-url", args.pg_url
            )
            stdout, stderr = task.communicate()  # However long the rounds take.
        if task.returncode != 0:
            raise SystemExit(f"the metrics bench failed ({task.returncode}):\n{stdout}{stderr[-3000:]}")
        result = json.loads(stdout.splitlines()[-1])
    finally:
        drop_database(args.pg_url, DATABASE)
    print(summary(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
