"""The worker's tasks (Django's tasks framework: `django-tasks` now, `django.tasks` from
Django 6). `python manage.py db_worker` runs them from the database queue.

Tasks only say "look at this now": the outbox events and deliveries are the truth, so a
task that is lost, or runs twice, or whose worker is killed, only delays a delivery
(cleanup re-queues what is due and forgotten). Tasks are enqueued once the transaction
that wrote their rows has committed.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
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
    """`bookings.outbox.events_committed`'s receiver (connected in apps.py)."""
    try:
        dispatch_events.enqueue(event_ids)
    except Exception:
        logger.exception("events %s: could not be queued; cleanup will re-queue them", event_ids)


def enqueue_retry(*, delivery_id: int, at: dt.datetime, lane: str) -> None:
    transaction.on_commit(lambda: deliver.using(run_after=at).enqueue(delivery_id, lane))


def requeue(*, event_ids: list[int], deliveries: bool) -> None:
    """Cleanup: queue again the events nobody dispatched, and (one task for all of them) the
    deliveries that are due and that nobody is attempting."""
    if event_ids:
        dispatch_events.enqueue(event_ids)
    if deliveries:
        deliver_due.enqueue()


@task()
def deliver_due() -> None:
    """Cleanup's wake-up for deliveries that are due and that nobody holds."""
    sender.lanes.sweep(force=True)
