"""Pairs of blocks of whole flows (a booking and its payment) in one process, with something
on and off in turn, the order turning every round so that a shared machine's drift favours
neither: what `outbox_cost.py` and `metrics_cost.py` share.

A block's CPU is the process's (`time.process_time`, every thread) and every PostgreSQL
backend's of the database (`serving.Backends`); what the switch adds is the median of the
rounds' differences (on - off).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from serving import drop_database, recreate_database, start_django_task  # noqa: E402  (scripts/ is not a package)


def paired(measure: Callable[[bool], Any], rounds: int) -> list[dict]:
    """`measure(on)` on and off, `rounds` times, the order turning every round."""
    return [
        {("on" if on else "off"): measure(on) for on in ((True, False) if number % 2 == 0 else (False, True))}
        for number in range(rounds)
    ]


def standard_error(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def parse_args(doc: str, *, rounds: int, flows: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=rounds, help=f"pairs of blocks (default {rounds})")
    parser.add_argument("--flows", type=int, default=flows, help=f"flows a block (default {flows})")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server, no database name (default $BENCH_PG_URL or postgres://postgres@127.0.0.1:5432)",
    )
    parser.add_argument("--django-task", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_task(script: str, args: argparse.Namespace, database: str, env: dict[str, str], what: str) -> dict:
    """`script --django-task` on a throw-away database, however long its rounds take: the
    JSON of its last line."""
    recreate_database(args.pg_url, database)
    try:
        task = start_django_task(
            script, env, "--rounds", str(args.rounds), "--flows", str(args.flows), "--pg-url", args.pg_url
        )
        stdout, stderr = task.communicate()
        if task.returncode != 0:
            raise SystemExit(f"the {what} bench failed ({task.returncode}):\n{stdout}{stderr[-3000:]}")
        result = json.loads(stdout.splitlines()[-1])
    finally:
        drop_database(args.pg_url, database)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


class Flows:
    """Inside the task (Django set up, the database migrated): a customer with a token, a
    flight with a seat for every flow, and `block`, which sends flows and measures them."""

    def __init__(self, args: argparse.Namespace, *, username: str, flight_number: str) -> None:
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.utils import timezone
        from rest_framework.authtoken.models import Token
        from rest_framework.test import APIClient
        from serving import Backends

        from flights.services import flight_create

        self.args = args
        user = get_user_model().objects.create_user(username, password=None)
        self.client = APIClient(HTTP_HOST="localhost")
        self.client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        departure = timezone.now() + dt.timedelta(days=30)
        self.flight = flight_create(
            flight_number=flight_number,
            departure_airport="BOM",
            arrival_airport="DEL",
            departure_time=departure,
            arrival_time=departure + dt.timedelta(hours=2),
            price=Decimal("4500.00"),
            capacity=args.flows * (2 * args.rounds + 1),
        )
        self.backends = Backends(args.pg_url, settings.DATABASES["default"]["NAME"], leave_out=set())
        self.keys = iter(range(self.flight.capacity))

    def block(self, settle: Callable[[], None] = lambda: None) -> dict[str, float]:
        """`--flows` flows, then `settle()` (inside the measure); CPU ms a flow."""
        app, database = time.process_time(), self.backends.sample()
        booking = {"flightId": self.flight.pk, "numberOfSeats": 1}
        for _ in range(self.args.flows):
            booked = self.client.post("/api/v1/bookings", booking, format="json")
            body = {"bookingId": booked.json()["id"], "amount": booked.json()["totalCost"]}
            key = f"k{next(self.keys)}"
            paid = self.client.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
            if (booked.status_code, paid.status_code) != (201, 201):
                raise SystemExit(f"a flow failed: {booked.status_code} {paid.status_code} {paid.content!r}")
        settle()
        app, database = time.process_time() - app, self.backends.sample() - database
        return {"app_ms": 1000 * app / self.args.flows, "postgresql_ms": 1000 * database / self.args.flows}


def block_lines(rounds: list[dict], what: str, *, decimals: int = 2) -> list[str]:
    """Each round's pair, then the medians, and what `what` adds (on - off)."""
    lines = ["round  app on  app off  added  |  PostgreSQL on  off  added   (CPU ms a flow)"]
    for number, pair in enumerate(rounds, 1):
        on, off = pair["on"], pair["off"]
        app, database = (on["app_ms"], off["app_ms"]), (on["postgresql_ms"], off["postgresql_ms"])
        lines.append(
            f"{number:5}  {app[0]:6.2f}  {app[1]:7.2f}  {app[0] - app[1]:+5.2f}  |"
            f"  {database[0]:13.2f}  {database[1]:4.2f}  {database[0] - database[1]:+5.2f}"
        )
    for key in ("app_ms", "postgresql_ms"):
        added = [pair["on"][key] - pair["off"][key] for pair in rounds]
        on = statistics.median(pair["on"][key] for pair in rounds)
        off = statistics.median(pair["off"][key] for pair in rounds)
        lines.append(
            f"{key[:-3]}: on {on:.2f}, off {off:.2f} ms a flow (medians); {what} adds "
            f"{statistics.median(added):+.{decimals}f} ms a flow (median of the rounds' differences; "
            f"{min(added):+.2f} to {max(added):+.2f}; mean {statistics.mean(added):+.{decimals}f} ± "
            f"{standard_error(added):.{decimals}f}, its standard error)"
        )
    return lines
