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

import statistics
import sys
import time

from paired import Flows, block_lines, paired, parse_args, run_task, standard_error  # Puts scripts/ on the path.
from serving import service_env, set_up_django

DATABASE = "flight_bookings_bench_outbox"


def run_django_task(args) -> int:
    set_up_django()
    import json

    from django.conf import settings
    from django.core.management import call_command
    from django.db import transaction
    from django_tasks_db.models import DBTaskResult

    from bookings import outbox
    from bookings.audit import record_status_change
    from bookings.models import OutboxEvent

    call_command("migrate", interactive=False, verbosity=0)
    flows = Flows(args, username="bench-outbox", flight_number="BO1")
    reported = outbox.event_for_status_change
    window = settings.NOTIFICATION_ENQUEUE_BATCH_SECONDS

    def switch(outbox_on: bool) -> None:
        outbox.event_for_status_change = reported if outbox_on else (lambda **_: None)

    def block(outbox_on: bool) -> dict[str, float]:
        switch(outbox_on)
        # The batching thread queues this block's last events, within the measure.
        return flows.block(settle=lambda: time.sleep(window + 0.1))

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
    flows.backends.close()
    events, tasks = OutboxEvent.objects.count(), DBTaskResult.objects.count()
    result = {"rounds": rounds, "per_change": per_change, "events": events, "tasks": tasks, "window": window}
    print(json.dumps(result), flush=True)
    return 0


def summary(result: dict, args) -> str:
    lines = [
        f"outbox cost: {args.rounds} rounds of {args.flows} flows a side, one thread, "
        f"NOTIFICATION_ENQUEUE_BATCH_SECONDS {result['window']}; "
        f"{result['events']} events, {result['tasks']} tasks queued",
        *block_lines(result["rounds"], "the outbox"),
    ]
    added = [pair["on"] - pair["off"] for pair in result["per_change"]]
    error = standard_error(added)
    lines.append(
        f"one reported change in a loop, {len(added)} pairs of 300: "
        f"on {statistics.median(pair['on'] for pair in result['per_change']):.0f}, "
        f"off {statistics.median(pair['off'] for pair in result['per_change']):.0f} µs of CPU; "
        f"the outbox adds {statistics.median(added):+.0f} µs (median; mean {statistics.mean(added):+.0f} ± {error:.0f})"
    )
    return "\n".join(lines)


def main() -> int:
    args = parse_args(__doc__, rounds=10, flows=200)
    if args.django_task:
        return run_django_task(args)
    result = run_task(__file__, args, DATABASE, service_env(f"{args.pg_url}/{DATABASE}"), "outbox")
    print(summary(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
