"""Notification writes (docs/design.md#notifications): endpoints, turning outbox events into
deliveries, and each delivery's attempts on the retry schedule.

A delivery is attempted by whoever claims it: a conditional UPDATE that only one worker wins,
taking a lease for longer than an attempt can last. A worker killed mid-attempt leaves the
lease to run out, and the delivery is attempted again (at least once, never two at a time).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_tasks import DEFAULT_TASK_BACKEND_ALIAS, TaskResultStatus, task_backends
from django_tasks_db.backend import DatabaseBackend
from django_tasks_db.models import DBTaskResult

from bookings.models import OutboxEvent
from bookings_project import metrics, statements
from notifications import selectors
from notifications.models import Delivery, DeliveryAttempt, WebhookEndpoint, WorkerHeartbeat, endpoint_of, lane_of
from notifications.urlsafety import check_url

logger = logging.getLogger(__name__)

State, Channel, EventType = Delivery.State, Delivery.Channel, OutboxEvent.Type

# After a failed attempt, the next one waits this long (docs/design.md#notifications); when
# they are used up, the delivery is failed, for staff to retry.
RETRY_DELAYS = tuple(
    dt.timedelta(seconds=seconds) for seconds in (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
)
# The events the booking's user is e-mailed about.
EMAILED = (EventType.BOOKING_CONFIRMED, EventType.BOOKING_CANCELLED)
# What PATCH may change.
EDITABLE = ("url", "events", "description", "is_active")


def lease_duration() -> dt.timedelta:
    """Longer than an attempt can last (connect, then the answer's timeout), with a margin."""
    return dt.timedelta(seconds=settings.NOTIFICATION_LEASE_SECONDS)


def endpoint_create(
    *, url: str, events: list[str] | None, description: str = "", created_by: AbstractBaseUser | None
) -> WebhookEndpoint:
    """Register an endpoint; `UnsafeURL` if its URL may not be called (notifications.urlsafety)."""
    check_url(url)
    return WebhookEndpoint.objects.create(
        url=url,
        events=_event_types(events),
        description=description,
        created_by=created_by,
    )


def endpoint_update(*, endpoint: WebhookEndpoint, **changes) -> WebhookEndpoint:
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")
    if "url" in changes:
        check_url(changes["url"])
    if "events" in changes:
        changes["events"] = _event_types(changes["events"])
    for name, value in changes.items():
        setattr(endpoint, name, value)
    endpoint.save(update_fields=[*changes, "updated_at"])
    return endpoint


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    endpoint.delete()


def _event_types(events: list[str] | None) -> list[str]:
    """The types asked for, once each, in the vocabulary's order; all of them if none were named."""
    if not events:
        return list(EventType.values)
    return [value for value in EventType.values if value in set(events)]


@dataclass(frozen=True)
class Due:
    """A delivery to attempt now, and the lane it is sent in."""

    delivery_id: int
    lane: str

    @classmethod
    def of(cls, delivery_id: int, endpoint_id: int | None) -> Due:
        return cls(delivery_id, lane_of(endpoint_id))


def event_dispatch(*, event_id: int) -> list[Due]:
    """Turn an outbox event into its deliveries, once: one per active endpoint registered
    before it and subscribed to its type, and one e-mail to the booking's user for a
    confirmed or cancelled booking. Its body is rendered here and kept. Answers the
    deliveries to attempt now (none if another worker dispatched it)."""
    now = timezone.now()
    with transaction.atomic():
        # The event's row only (`of`): joined, the booking's and the user's would be locked too,
        # and skipped whenever a payment, a cancel or another event of theirs holds them.
        event = (
            OutboxEvent.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk=event_id, dispatched_at__isnull=True)
            .select_related("booking__user")
            .first()
        )
        if event is None:
            return []
        event.body = selectors.event_body(event=event)
        event.dispatched_at = now
        event.save(update_fields=["body", "dispatched_at"])
        endpoints = WebhookEndpoint.objects.filter(is_active=True, created_at__lte=event.created_at)
        deliveries = [
            Delivery(event=event, channel=Channel.WEBHOOK, endpoint=endpoint, next_attempt_at=now, lease_until=now)
            for endpoint in endpoints
            if endpoint.receives(event.type)
        ]
        email = event.booking.user.email
        if event.type in EMAILED and email:
            deliveries.append(
                Delivery(event=event, channel=Channel.EMAIL, recipient=email, next_attempt_at=now, lease_until=now)
            )
        created = Delivery.objects.bulk_create(deliveries)
    return [Due(delivery.pk, delivery.lane) for delivery in created]


@dataclass(frozen=True)
class Claim:
    """A delivery this worker may attempt now, with what it sends."""

    delivery: Delivery
    token: str


def delivery_claim(*, delivery_id: int) -> Claim | None:
    """Take a due delivery for one attempt: None if it is not due, not pending, or another
    worker holds it. One conditional UPDATE, so two workers never both win it."""
    now = timezone.now()
    token = uuid.uuid4().hex
    claimed = statements.update(
        Delivery,
        where={"pk": delivery_id, "state": State.PENDING, "next_attempt_at__lte": now, "lease_until__lte": now},
        values={"lease_until": now + lease_duration(), "lease_token": token, "updated_at": now},
    )
    if not claimed:
        return None
    delivery = Delivery.objects.select_related("event", "endpoint").get(pk=delivery_id)
    return Claim(delivery=delivery, token=token)


def delivery_next_due(*, lane: str) -> int | None:
    """The lane's oldest due delivery nobody holds, if any."""
    now = timezone.now()
    due = Delivery.objects.filter(state=State.PENDING, next_attempt_at__lte=now, lease_until__lte=now)
    endpoint_id = endpoint_of(lane)
    due = due.filter(channel=Channel.EMAIL) if endpoint_id is None else due.filter(endpoint_id=endpoint_id)
    return due.order_by("next_attempt_at", "id").values_list("pk", flat=True).first()


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    started_at: dt.datetime
    duration_ms: int
    succeeded: bool
    status_code: int | None = None
    error: str = ""


def delivery_record(*, claim: Claim, outcome: Outcome) -> dt.datetime | None:
    """Record an attempt, and settle the delivery: delivered, retried later (answers when),
    or failed once the retries are used up. Nothing is recorded if this worker's lease was
    taken over meanwhile (the attempt outlived it; the new holder records its own)."""
    delivery = claim.delivery
    now = timezone.now()
    with transaction.atomic():
        held = (
            Delivery.objects.select_for_update()
            .filter(pk=delivery.pk, lease_token=claim.token, state=State.PENDING)
            .first()
        )
        if held is None:
            logger.warning("delivery %s: lease lost during the attempt; its outcome is not recorded", delivery.pk)
            return None
        held.attempts += 1
        DeliveryAttempt.objects.create(
            delivery=held,
            number=held.attempts,
            started_at=outcome.started_at,
            duration_ms=outcome.duration_ms,
            status_code=outcome.status_code,
            error=outcome.error[:500],
            succeeded=outcome.succeeded,
        )
        held.last_status_code, held.last_error = outcome.status_code, outcome.error[:500]
        held.lease_until, held.lease_token = now, ""
        retry_at = None
        if outcome.succeeded:
            held.state, held.delivered_at, held.next_attempt_at = State.DELIVERED, now, None
        elif held.failures < len(RETRY_DELAYS):
            retry_at = held.next_attempt_at = now + RETRY_DELAYS[held.failures]
            held.failures += 1
        else:
            held.state, held.next_attempt_at = State.FAILED, None
            held.failures += 1
        held.save()
        metrics.count_on_commit(
            metrics.NOTIFICATION_ATTEMPTS.labels(delivery.channel, "delivered" if outcome.succeeded else "failed")
        )
    level = logging.INFO if outcome.succeeded else logging.WARNING
    logger.log(
        level,
        "delivery %s (%s, %s): attempt %s %s%s",
        delivery.pk,
        delivery.event.type,
        delivery.lane,
        held.attempts,
        "delivered" if outcome.succeeded else f"failed ({outcome.status_code or outcome.error})",
        f", next at {retry_at:%H:%M:%S}" if retry_at else (", no retries left" if held.state == State.FAILED else ""),
    )
    return retry_at


def delivery_retry_now(*, delivery_ids: list[int]) -> list[tuple[int, int | None]]:
    """Staff: make these deliveries due now. A failed one gets one more attempt (it is failed
    again if that fails too); a delivered one is left alone. Answers the (id, endpoint id)
    of those made due, for the caller to queue."""
    now = timezone.now()
    rows = list(
        Delivery.objects.filter(pk__in=delivery_ids, state__in=[State.PENDING, State.FAILED]).values_list(
            "pk", "endpoint_id"
        )
    )
    ids = [pk for pk, _ in rows]
    with transaction.atomic():
        Delivery.objects.filter(pk__in=ids, state=State.FAILED).update(failures=len(RETRY_DELAYS), updated_at=now)
        Delivery.objects.filter(pk__in=ids).update(state=State.PENDING, next_attempt_at=now, updated_at=now)
    return rows


def events_purge(*, events: QuerySet[OutboxEvent]) -> int:
    """Delete these events (`selectors.events_to_purge`) with their deliveries and attempts,
    10,000 at most per call. Answers how many."""
    ids = list(events.order_by("id").values_list("pk", flat=True)[:10_000])
    if not ids:
        return 0
    with transaction.atomic():
        DeliveryAttempt.objects.filter(delivery__event_id__in=ids).delete()
        Delivery.objects.filter(event_id__in=ids).delete()
        OutboxEvent.objects.filter(pk__in=ids).delete()
    return len(ids)


# How long the database queue keeps a finished task's row (its result is never read: the
# outbox rows say what was delivered), and how long a task may stay RUNNING before it is taken
# for one whose worker was killed (ours take seconds; deleting the row of one still running
# would make its worker fail when it finishes).
TASK_RESULT_RETENTION = dt.timedelta(hours=1)
TASK_ABANDONED_AFTER = dt.timedelta(days=1)


def task_results_purge(*, now: dt.datetime) -> int:
    """Delete the database queue's rows of tasks finished more than an hour ago, and of tasks
    a killed worker left RUNNING a day ago (their work was taken up again from the outbox).
    Other queue backends keep their own results. Answers how many."""
    if not isinstance(task_backends[DEFAULT_TASK_BACKEND_ALIAS], DatabaseBackend):
        return 0
    finished = Q(
        status__in=[TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED], finished_at__lt=now - TASK_RESULT_RETENTION
    )
    abandoned = Q(status=TaskResultStatus.RUNNING, started_at__lt=now - TASK_ABANDONED_AFTER)
    deleted, _ = DBTaskResult.objects.filter(finished | abandoned).delete()
    return deleted


# The worker's heartbeat ---------------------------------------------------------------------


def worker_heartbeat_beat(*, worker_id: str, host: str, pid: int, started_at: dt.datetime) -> None:
    """This worker is alive now: its row's `beat_at`, made on its first beat."""
    now = timezone.now()
    if not WorkerHeartbeat.objects.filter(worker_id=worker_id).update(beat_at=now):
        # A new worker: the rows its host's killed workers left are no one's.
        WorkerHeartbeat.objects.filter(
            host=host, beat_at__lt=now - dt.timedelta(seconds=settings.WORKER_MISSING_AFTER_SECONDS)
        ).delete()
        WorkerHeartbeat.objects.create(worker_id=worker_id, host=host, pid=pid, started_at=started_at, beat_at=now)


def worker_heartbeat_end(*, worker_id: str) -> None:
    """The worker stopped as asked: it is not missing."""
    WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()
