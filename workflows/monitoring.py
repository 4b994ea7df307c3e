"""What /metrics reads from the database at each scrape: state, not events. Cleanup's backlog
(each work set, as the admin's cleanup page counts it), what waits for a person, notification
deliveries pending and failed, and whether cron and the worker are alive: the age of the last
cleanup run and of the newest worker heartbeat, which no web probe can tell
(docs/operations.md#metrics). `check_background` asks the same of one host.

These are the same on every host, as they come from the one database: aggregate them across
hosts with max(), never sum().
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Case, F, Min, When
from django_tasks_db.models import DBTaskResult, get_date_max
from prometheus_client.core import GaugeMetricFamily, Metric

from bookings.models import CleanupRun
from bookings_project import db
from bookings_project.metrics import PREFIX
from notifications.models import Delivery, WorkerHeartbeat
from workflows.cleanup import WORK_SETS, Cutoffs, backlog_item

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackgroundStatus:
    """When cleanup last ran (and last ran with no step failed), and when a worker last beat."""

    now: dt.datetime
    last_cleanup: dt.datetime | None
    last_clean_cleanup: dt.datetime | None
    last_heartbeat: dt.datetime | None

    @property
    def cleanup_overdue(self) -> bool:
        """No run for two cron intervals: cron has stopped running it (or every run crashes)."""
        return _age(self.now, self.last_cleanup) > cleanup_overdue_after().total_seconds()

    @property
    def worker_missing(self) -> bool:
        """Three heartbeats missed: no worker is running (or it is stuck)."""
        return _age(self.now, self.last_heartbeat) > settings.WORKER_MISSING_AFTER_SECONDS


def cleanup_overdue_after() -> dt.timedelta:
    """Two cron intervals: cleanup's work, or cleanup itself, waiting longer means it has stopped
    (the admin's cleanup page warns by the same rule)."""
    return dt.timedelta(minutes=2 * settings.CLEANUP_INTERVAL_MINUTES)


def background_status(*, host: str | None = None) -> BackgroundStatus:
    """Cron's and the worker's signs of life, on `host` or on any."""
    runs = CleanupRun.objects.all() if host is None else CleanupRun.objects.filter(host=host)
    beats = WorkerHeartbeat.objects.all() if host is None else WorkerHeartbeat.objects.filter(host=host)
    return BackgroundStatus(
        now=db.database_now(),
        last_cleanup=runs.values_list("finished_at", flat=True).first(),
        last_clean_cleanup=runs.filter(failed=0).values_list("finished_at", flat=True).first(),
        last_heartbeat=beats.order_by("-beat_at").values_list("beat_at", flat=True).first(),
    )


def _age(now: dt.datetime, then: dt.datetime | None) -> float:
    return math.inf if then is None else max(0.0, (now - then).total_seconds())


# Each gauge's name (after the prefix) and help, in one place.
_GAUGES = {
    "database_up": "1 when the state gauges could be read from the database, 0 when not (and none are shown).",
    "cleanup_backlog": "Rows a cleanup run now would act on (or leave to a person), by work set.",
    "cleanup_backlog_oldest_seconds": "How long the longest-waiting row of each work set has been due (0 when none).",
    "notification_deliveries": "Notification deliveries pending (being attempted, or waiting for a retry) "
    "and failed (retries used up).",
    "cleanup_last_run_age_seconds": "Seconds since the last cleanup run on any host finished (+Inf: none recorded).",
    "cleanup_last_success_age_seconds": "Seconds since the last cleanup run with no failed step finished "
    "(+Inf: none recorded).",
    "worker_heartbeat_age_seconds": "Seconds since a worker last wrote its heartbeat (+Inf: none).",
    "task_queue_oldest_seconds": "How long the oldest task due in the worker's queue has waited (0 when none).",
}
STATE_METRIC_NAMES: frozenset[str] = frozenset(f"{PREFIX}_{name}" for name in _GAUGES)


def _gauge(name: str, **kwargs) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", _GAUGES[name], **kwargs)


class StateCollector:
    """A prometheus_client collector: the database's state, read when a scrape asks. With the
    database down it reports `database_up 0` and nothing else, rather than failing the scrape
    (the events are still worth having)."""

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(_state())
        except DatabaseError as error:
            logger.error("metrics: the database's state could not be read: %s", error)
            families = []
        yield from families
        yield _gauge("database_up", value=1 if families else 0)


def _state() -> Iterator[Metric]:
    status = background_status()
    now = status.now
    cutoffs = Cutoffs.at(now)
    backlog = _gauge("cleanup_backlog", labels=["work"])
    oldest = _gauge("cleanup_backlog_oldest_seconds", labels=["work"])
    for work in WORK_SETS:
        if work.label is None:
            continue
        item = backlog_item(work, cutoffs)
        backlog.add_metric([work.name], item.count)
        oldest.add_metric([work.name], _age(now, item.oldest) if item.oldest else 0.0)
    yield backlog
    yield oldest
    deliveries = _gauge("notification_deliveries", labels=["state"])
    for state in (Delivery.State.PENDING, Delivery.State.FAILED):
        deliveries.add_metric([state.value], Delivery.objects.filter(state=state).count())
    yield deliveries
    yield _gauge("cleanup_last_run_age_seconds", value=_age(now, status.last_cleanup))
    yield _gauge("cleanup_last_success_age_seconds", value=_age(now, status.last_clean_cleanup))
    yield _gauge("worker_heartbeat_age_seconds", value=_age(now, status.last_heartbeat))
    yield _gauge("task_queue_oldest_seconds", value=_task_queue_wait(now))


def _task_queue_wait(now: dt.datetime) -> float:
    due = Case(When(run_after=get_date_max(), then=F("enqueued_at")), default=F("run_after"))
    oldest = DBTaskResult.objects.ready().aggregate(oldest=Min(due))["oldest"]
    return _age(now, oldest) if oldest else 0.0
