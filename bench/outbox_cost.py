"""What the notifications outbox adds to a flow (a booking and its payment), in CPU ms of the
app process and of PostgreSQL, with the drift of a shared machine cancelled by pairing.

One process, one request at a time, the whole API path (`rest_framework.test.APIClient`:
middleware, authentication, serializers, the saga, the simulated gateway) on a throw-away
PostgreSQL database. Blocks of `--flows` flows run in pairs, the outbox **on** (the code as
it is: each reported change writes its `OutboxEvent` in its transaction, and after the
commit the process's batching thread queues the task) and **off** (`bookings.outbox`
reports nothing: no event row, no signal, no task; the request path of the commit before
notifications), the order turning every round (on off, off on, ...). A block's CPU is the
process's (`time.process_time`, every thread, the batching thread included: each block ends
by waiting out the batch window, so the block pays for its own tasks) and every PostgreSQL
backend's of the database (`serving.Backends`, the batching thread's connection included).

Then the same in a tight loop, without a request around it: one reported status change
(`record_status_change`, PENDING to BOOKED) 300 times in a transaction that is rolled back,
on and off in turn: the outbox's own share of a change, in µs.

Prints each round's pair, and the medians: what the outbox adds is the median of the
rounds' differences (on - off), with their lowest and highest. Under gunicorn's threads the
same work costs more than on one thread; `bench/load.py --code-dir` measures that, with far
more noise. Run: `.venv/bin/python bench/outbox_cost.py [--rounds 10] [--flows 200]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
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

DATABASE = "flight_bookings_bench_outbox"


def paired(measure, rounds: int) -> list[dict]:
    """`measure(on)` with the outbox on and off, `rounds` times, the order turning every round."""
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
    from django.db import transaction
    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from bookings import outbox
    from bookings.audit import record_status_change
    from bookings.models import OutboxEvent
    from flights.services import flight_create

    call_command("migrate", interactive=False, verbosity=0)
    user = get_user_model().objects.create_user("bench-outbox", password=None)
    client = APIClient(HTTP_HOST="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    departure = timezone.now() + dt.timedelta(days=30)
    flows = args.flows * (2 * args.rounds + 1)
    flight = flight_create(
        flight_number="BO1",
        departure_airport="BOM",
        arrival_airport="DEL",
        departure_time=departure,
        arrival_time=departure + dt.timedelta(hours=2),
        price=Decimal("4500.00"),
        capacity=flows,
    )
    reported = outbox.event_for_status_change
    window = settings.NOTIFICATION_ENQUEUE_BATCH_SECONDS
    backends = Backends(args.pg_url, settings.DATABASES["default"]["NAME"], leave_out=set())
    keys = iter(range(flows))

    def switch(outbox_on: bool) -> None:
        outbox.event_for_status_change = reported if outbox_on else (lambda **_: None)

    def block(outbox_on: bool) -> dict[str, float]:
        switch(outbox_on)
        app, database = time.process_time(), backends.sample()
        for _ in range(args.flows):
            booked = client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 1}, format="json")
            body = {"bookingId": booked.json()["id"], "amount": booked.json()["totalCost"]}
            paid = client.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY=f"k{next(keys)}")
            if (booked.status_code, paid.status_code) != (201, 201):
                raise SystemExit(f"a flow failed: {booked.status_code} {paid.status_code} {paid.content!r}")
        time.sleep(window + 0.1)  # The batching thread queues this block's last events.
        app, database = time.process_time() - app, backends.sample() - database
        return {"app_ms": 1000 * app / args.flows, "postgresql_ms": 1000 * database / args.flows}

    def changes(outbox_on: bool, count: int = 300) -> float:
        """CPU µs of one reported status change (the audit event, and its outbox event if on),
        in one transaction rolled back: the request path's share, without a request's noise."""
        switch(outbox_on)
        booking_id = OutboxEvent.objects.values_list("booking_id", flat=True).first()
        with transaction.atomic():
            started = time.process_time()
            for _ in range(count):
                record_status_change(booking_id=booking_id, from_status="PENDING", to_status="BOOKED", reason="x")
            spent = time.process_time() - started
            transaction.set_rollback(True)
        return 1e6 * spent / count

    block(True)  # Warm-up: every statement compiled and every connection open on both sides.
    rounds = paired(block, args.rounds)
    changes(True), changes(False)  # Warm-up.
    per_change = paired(changes, args.rounds)
    switch(True)
    backends.close()
    events, tasks = OutboxEvent.objects.count(), DBTaskResult.objects.count()
    result = {"rounds": rounds, "per_change": per_change, "events": events, "tasks": tasks, "window": window}
    print(json.dumps(result), flush=True)
    return 0


def summary(result: dict, args: argparse.Namespace) -> str:
    lines = [
        f"outbox cost: {args.rounds} rounds of {args.flows} flows a side, one thread, "
        f"NOTIFICATION_ENQUEUE_BATCH_SECONDS {result['window']}; "
        f"{result['events']} events, {result['tasks']} tasks queued",
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
        error = standard_error(added)
        lines.append(
            f"{what[:-3]}: on {on:.2f}, off {off:.2f} ms a flow (medians); the outbox adds "
            f"{statistics.median(added):+.2f} ms a flow (median of the rounds' differences; "
            f"{min(added):+.2f} to {max(added):+.2f}; mean {statistics.mean(added):+.2f} ± {error:.2f}, "
            "its standard error)"
        )
    added = [pair["on"] - pair["off"] for pair in result["per_change"]]
    error = standard_error(added)
    lines.append(
        f"one reported change in a loop, {len(added)} pairs of 300: "
        f"on {statistics.median(pair['on'] for pair in result['per_change']):.0f}, "
        f"off {statistics.median(pair['off'] for pair in result['per_change']):.0f} µs of CPU; "
        f"the outbox adds {statistics.median(added):+.0f} µs (median; mean {statistics.mean(added):+.0f} ± {error:.0f})"
    )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="pairs of blocks (default 10)")
    parser.add_argument("--flows", type=int, default=200, help="flows a block (default 200)")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
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
        env = service_env(f"{args.pg_url}/{DATABASE}")
        task = start_django_task(
            __file__, env, "--rounds", str(args.rounds), "--flows", str(args.flows), "--pg-url", args.pg_url
        )
        stdout, stderr = task.communicate()  # However long the rounds take.
        if task.returncode != 0:
            raise SystemExit(f"the outbox bench failed ({task.returncode}):\n{stdout}{stderr[-3000:]}")
        result = json.loads(stdout.splitlines()[-1])
    finally:
        drop_database(args.pg_url, DATABASE)
    print(summary(result, args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
