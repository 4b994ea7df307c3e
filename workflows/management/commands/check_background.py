"""`manage.py check_background`: are cron's cleanup and the worker alive on this host?

A web probe cannot tell: they answer no requests. Exit status 0 when both are, 1 when either
is not (each reason printed), 2 when the database does not answer; for a monitoring agent's
check or a systemd timer (docs/operations.md#checking-cron-and-the-worker).
"""

from __future__ import annotations

import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from workflows.monitoring import background_status, cleanup_overdue_after


class Command(BaseCommand):
    help = "Exit 1 when cleanup has not run for two intervals, or no worker beat for three heartbeats."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--any-host", action="store_true", help="Count cleanup runs and workers on any host, not only this one."
        )

    def handle(self, *args, any_host: bool, **options) -> None:
        host = None if any_host else socket.gethostname()
        where = "any host" if any_host else host
        try:
            status = background_status(host=host)
        except DatabaseError as error:
            raise CommandError(f"the database does not answer: {error}", returncode=2) from error
        problems = []
        if status.cleanup_overdue:
            problems.append(
                f"cleanup has not run on {where} for {cleanup_overdue_after().total_seconds() / 60:.0f} minutes "
                f"(last finished: {_when(status.last_cleanup)}): is its cron line or timer installed?"
            )
        if status.worker_missing:
            problems.append(
                f"no worker on {where} has written a heartbeat for {settings.WORKER_MISSING_AFTER_SECONDS} s "
                f"(last: {_when(status.last_heartbeat)}): is db_worker running?"
            )
        if problems:
            raise CommandError("\n".join(problems), returncode=1)
        self.stdout.write(
            f"ok: cleanup last finished {_when(status.last_cleanup)}, a worker beat {_when(status.last_heartbeat)}"
        )


def _when(moment) -> str:
    return "never" if moment is None else moment.isoformat(timespec="seconds")
