"""The worker's tasks (Django's tasks framework: `django-tasks` now, `django.tasks` from
Django 6). `python manage.py db_worker` runs them from the database queue.

Tasks only say "look at this now": the outbox events and deliveries are the truth, so a
task that is lost, or runs twice, or whose worker is killed, only delays a delivery
(cleanup re-queues what is due and forgotten). Tasks are enqueued once the transaction
that wrote their rows has committed.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connections
from django_tasks import task

from notifications import sender, services
from notifications.services import Due

logger = logging.getLogger(__name__)


@task()
def dispatch_events(event_ids: list[int]) -> None:
    """Turn committed outbox events into deliveries, and start sending them."""
    for event_id in event_ids:
        for due in services.event_dispatch(event_id=event_id):
            sender.lanes.submit(due)
    sender.lanes.sweep()


@task()
def deliver(delivery_id: int, lane: str) -> None:
    """Attempt a delivery that is due (a retry, or one cleanup re-queued); a no-op if it is not."""
    sender.lanes.submit(Due(delivery_id, lane))
    sender.lanes.sweep()


def enqueue_dispatch(sender: object = None, *, event_ids: list[int], **_) -> None:
    """`bookings.outbox.events_committed`'s receiver (connected in apps.py): the events are
    queued in this process's next batch."""
    committed.add(event_ids)


def _enqueue(event_ids: list[int]) -> None:
    try:
        dispatch_events.enqueue(event_ids)
    except Exception:
        logger.exception("events %s: could not be queued; a worker's sweep or cleanup will take them", event_ids)


class CommittedEvents:
    """The events this process committed, queued together: one task for those committed within
    `NOTIFICATION_ENQUEUE_BATCH_SECONDS` of the first, by a thread of the process's own.

    A task per commit cost each booking and each payment about a third of a millisecond of CPU
    on its request; batched, a busy process queues a few tasks a second whatever its rate, and
    a request only appends to a list. What a process killed in the window leaves unqueued is
    in the outbox: a worker's sweep or cleanup takes it up. 0 queues each commit's at once, on
    the request's thread (the tests' setting)."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._ids: list[int] = []
        self._pid = 0

    def add(self, event_ids: list[int]) -> None:
        window = settings.NOTIFICATION_ENQUEUE_BATCH_SECONDS
        if window <= 0:
            _enqueue(event_ids)
            return
        with self._ready:
            if self._pid != os.getpid():  # The first in this process (gunicorn forks its workers).
                self._pid, self._ids = os.getpid(), []
                threading.Thread(target=self._run, args=(window,), name="enqueue-events", daemon=True).start()
                atexit.register(self.flush)
            self._ids.extend(event_ids)
            self._ready.notify()

    def flush(self) -> None:
        """Queue what is waiting now (at exit, and after each window)."""
        with self._ready:
            event_ids, self._ids = self._ids, []
        if event_ids:
            close_old_connections()
            _enqueue(event_ids)

    def _run(self, window: float) -> None:
        while True:
            with self._ready:
                while not self._ids:
                    if not self._ready.wait(timeout=sender.IDLE_SECONDS):
                        connections.close_all()  # Idle: this thread's connection goes back.
            time.sleep(window)
            self.flush()


committed = CommittedEvents()


def enqueue_retry(*, delivery_id: int, at: dt.datetime, lane: str) -> None:
    """The next attempt's task, to run at its time (its delivery's row is committed already)."""
    deliver.using(run_after=at).enqueue(delivery_id, lane)


@task()
def deliver_due() -> None:
    """Cleanup's wake-up for deliveries that are due and that nobody holds."""
    sender.lanes.sweep(force=True)
