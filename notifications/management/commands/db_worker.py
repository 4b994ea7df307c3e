"""`manage.py db_worker`: django-tasks-db's worker, with a heartbeat.

It takes the place of django-tasks-db's command of the same name (notifications comes first
in INSTALLED_APPS), so every way the worker is started (make run, the systemd unit) beats.
While the worker runs, a thread writes its heartbeat every `WORKER_HEARTBEAT_SECONDS`
(`notifications.services.worker_heartbeat_beat`); /metrics shows its age, and
`check_background` fails when no worker on the host beat for three of them. A `--batch` run,
which runs what is due and exits, writes none.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_tasks_db.management.commands import db_worker

from notifications import services

logger = logging.getLogger("notifications.tasks")


class Command(db_worker.Command):
    help = "Run a database background worker (django-tasks-db's), writing a heartbeat."

    def handle(self, *args, worker_id: str, batch: bool, **options) -> None:
        if batch:  # Runs what is due and exits (tests, one-off runs): not a standing worker.
            super().handle(*args, worker_id=worker_id, batch=batch, **options)
            return
        stopped = threading.Event()
        beating = threading.Thread(target=_beat, args=(worker_id, stopped), name="worker-heartbeat", daemon=True)
        beating.start()
        try:
            super().handle(*args, worker_id=worker_id, batch=batch, **options)
        finally:
            stopped.set()
            beating.join(timeout=5)
            services.worker_heartbeat_end(worker_id=worker_id)


def _beat(worker_id: str, stopped: threading.Event) -> None:
    host, pid, started_at = socket.gethostname(), os.getpid(), timezone.now()
    try:
        while True:
            try:
                services.worker_heartbeat_beat(worker_id=worker_id, host=host, pid=pid, started_at=started_at)
            except Exception as error:  # The database away for a moment: the next beat says so.
                logger.warning("worker heartbeat not written: %s", error)
                connection.close()
            if stopped.wait(settings.WORKER_HEARTBEAT_SECONDS):
                return
    finally:
        connection.close()
