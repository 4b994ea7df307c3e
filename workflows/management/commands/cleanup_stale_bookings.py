"""`manage.py cleanup_stale_bookings` (docs/design.md#cleanup), run by cron every 10 minutes on any host.

Prints one summary line; -v 2 adds a line per booking touched. Exits 1 when a step failed
(cron reports it); the next run retries whatever failed.
"""

import argparse

from django.core.management.base import BaseCommand, CommandError

from workflows.cleanup import DEFAULT_BATCH_SIZE, cleanup_stale_bookings

MAX_BATCH_SIZE = 10_000


def _bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    return parse


class Command(BaseCommand):
    help = (
        "Expire unpaid bookings past their hold (reconciling PENDING ones with the payment gateway first), "
        "release their seats, retry releases that failed, refund money left on cancelled bookings, and purge "
        "idempotency keys past their TTL. Safe to run on several hosts at once and to kill at any point."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count what would be done and change nothing.")
        parser.add_argument(
            "--older-than",
            type=_bounded_int(0, 60 * 24 * 365),
            default=0,
            metavar="MINUTES",
            help="Only expire bookings whose hold ended at least this many minutes ago (default 0).",
        )
        parser.add_argument(
            "--batch-size",
            type=_bounded_int(1, MAX_BATCH_SIZE),
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"Rows read per query (default {DEFAULT_BATCH_SIZE}); each booking is still its own transaction.",
        )

    def handle(self, *args, dry_run: bool, older_than: int, batch_size: int, verbosity: int, **options) -> None:
        details = self.stdout.write if verbosity >= 2 else None
        counts = cleanup_stale_bookings(
            dry_run=dry_run, older_than_minutes=older_than, batch_size=batch_size, report=details
        )
        self.stdout.write(("dry run: " if dry_run else "") + counts.summary())
        if counts.failed:
            raise CommandError(f"{counts.failed} step(s) failed; the next run retries them (details in the log).")
