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

import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from paired import Flows, block_lines, paired, parse_args, run_task  # Puts scripts/ on the path.
from serving import service_env, set_up_django

DATABASE = "flight_bookings_bench_metrics"


def run_django_task(args) -> int:
    set_up_django()
    import json

    from django.conf import settings
    from django.core.management import call_command

    from bookings_project import metrics

    assert settings.PROMETHEUS_MULTIPROC_DIR, "the bench counts as production does: multiprocess"
    call_command("migrate", interactive=False, verbosity=0)
    flows = Flows(args, username="bench-metrics", flight_number="BM1")
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
        return flows.block()

    def observed():
        response = flows.client.get(f"/api/v1/flights/{flows.flight.pk}")
        return response.wsgi_request, response

    def observation(count: int = 20_000) -> float:
        request, response = observed()
        started = time.process_time()
        for _ in range(count):
            metrics.observe_request(request, response, 0.004)
        return 1e6 * (time.process_time() - started) / count

    def flow_counts(count: int = 5_000) -> float:
        """Every count a flow makes, without the flow: two requests observed, three status
        changes (created, payment started, booked: outside a transaction, on_commit runs at
        once), the gateway's answer, the seat lock taken once."""
        request, response = observed()
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
    flows.backends.close()
    files = sorted(path.name for path in Path(settings.PROMETHEUS_MULTIPROC_DIR).glob("*.db"))
    print(json.dumps({"rounds": rounds, "per_request": per_request, "per_flow": per_flow, "files": files}), flush=True)
    return 0


def summary(result: dict, args) -> str:
    per_request, per_flow = result["per_request"], result["per_flow"]
    return "\n".join(
        [
            f"metrics cost: {args.rounds} rounds of {args.flows} flows a side, one thread, multiprocess "
            f"mode (files: {', '.join(result['files'])})",
            *block_lines(result["rounds"], "counting", decimals=3),
            f"one request's observation in a loop (a counter and a histogram): "
            f"{statistics.median(per_request):.1f} µs of CPU (median of {len(per_request)} runs of 20,000; "
            f"{min(per_request):.1f} to {max(per_request):.1f})",
            f"every count of a flow in a loop (two requests, three status changes, a gateway answer, a seat "
            f"lock): {statistics.median(per_flow):.1f} µs of CPU (median of {len(per_flow)} runs of 5,000; "
            f"{min(per_flow):.1f} to {max(per_flow):.1f})",
        ]
    )


def main() -> int:
    args = parse_args(__doc__, rounds=10, flows=200)
    if args.django_task:
        return run_django_task(args)
    # In RAM, as production's /run is (tmpfs): a memory-mapped file on a disk is written back.
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="bench-metrics-", dir=memory) as directory:
        env = service_env(f"{args.pg_url}/{DATABASE}") | {"PROMETHEUS_MULTIPROC_DIR": directory}
        result = run_task(__file__, args, DATABASE, env, "metrics")
    print(summary(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
