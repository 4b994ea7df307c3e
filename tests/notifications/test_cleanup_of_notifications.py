"""What cleanup does for notifications (docs/design.md#notifications, worker): it queues again
what the worker lost (a task that never ran, a worker killed mid-delivery), deletes delivered
events past their retention, and the database queue's finished tasks."""

import datetime as dt
import json
import time

import pytest
from django_tasks_db.models import DBTaskResult

from bookings.models import OutboxEvent
from bookings.services import booking_create
from notifications import sender, services
from notifications.models import Delivery, DeliveryAttempt
from tests.notifications.conftest import register, run_worker
from tests.support.cleanup import command, summary

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def requeue_after_a_minute(settings):
    settings.NOTIFICATION_REQUEUE_AFTER_SECONDS = 60


def test_an_event_whose_task_was_lost_is_queued_again_after_a_minute(
    user, flight, receiver, clock, requeue_after_a_minute
):
    register(receiver.url)
    booking_create(user=user, flight_id=flight.pk, seats=1)
    DBTaskResult.objects.all().delete()  # The task is lost (a queue emptied, an enqueue that failed).

    clock.advance(seconds=59)
    assert command().splitlines()[-1] == summary()  # Not yet: the worker may only be behind.
    clock.advance(seconds=2)
    assert command().splitlines()[-1] == summary(requeued_notifications=1)
    run_worker()

    assert receiver.types() == ["booking.created"]
    assert OutboxEvent.objects.get().dispatched_at is not None
    assert command().splitlines()[-1] == summary()  # Nothing is left to queue.


def test_a_delivery_nobody_attempted_is_queued_again(user, flight, receiver, clock, requeue_after_a_minute):
    """Dispatched, then the worker died before its first attempt: the delivery is pending,
    due, and held by nobody."""
    register(receiver.url)
    booking_create(user=user, flight_id=flight.pk, seats=1)
    DBTaskResult.objects.all().delete()
    services.event_dispatch(event_id=OutboxEvent.objects.get().pk)  # ... and the worker is gone.
    clock.advance(minutes=2)

    dry = command("--dry-run")
    assert dry.splitlines()[-1] == "dry run: " + summary(requeued_notifications=1)
    assert not DBTaskResult.objects.exists()  # A dry run queues nothing.
    assert command().splitlines()[-1] == summary(requeued_notifications=1)
    run_worker()

    assert receiver.types() == ["booking.created"]
    assert Delivery.objects.get().state == Delivery.State.DELIVERED


def test_a_delivery_held_by_a_live_worker_is_left_to_it(user, flight, clock, requeue_after_a_minute):
    register("https://hooks.example.com/held")
    booking_create(user=user, flight_id=flight.pk, seats=1)
    (due,) = services.event_dispatch(event_id=OutboxEvent.objects.get().pk)
    clock.advance(minutes=2)
    assert services.delivery_claim(delivery_id=due.delivery_id) is not None  # Being attempted now.

    assert command().splitlines()[-1] == summary()


def test_delivered_events_past_their_retention_are_deleted_and_the_rest_kept(user, flight, receiver, clock, settings):
    settings.NOTIFICATION_RETENTION_DAYS = 30
    register(receiver.url)
    delivered = booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()
    receiver.always = 500  # From now on the endpoint is down.
    pending = booking_create(user=user, flight_id=flight.pk, seats=2)
    run_worker()
    clock.advance(days=29)
    recent = booking_create(user=user, flight_id=flight.pk, seats=3)
    run_worker()
    assert list(Delivery.objects.order_by("id").values_list("state", flat=True)) == ["delivered", "pending", "pending"]
    clock.advance(days=1, seconds=1)

    out = command()

    assert out.splitlines()[-1] == summary(
        expired=3, released_seats=6, purged_notifications=1
    )  # The holds ran out too.
    kept = OutboxEvent.objects.filter(type=OutboxEvent.Type.BOOKING_CREATED)
    assert set(kept.values_list("booking_id", flat=True)) == {pending.pk, recent.pk}
    assert not Delivery.objects.filter(event__booking=delivered, event__type=OutboxEvent.Type.BOOKING_CREATED).exists()
    assert DeliveryAttempt.objects.filter(delivery__event__booking=pending).count() >= 1


def test_the_queues_finished_tasks_are_deleted_after_an_hour(user, flight, clock):
    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()
    (finished,) = DBTaskResult.objects.filter(status="SUCCESSFUL")
    clock.advance(minutes=59)
    command()
    assert DBTaskResult.objects.filter(pk=finished.pk).exists()

    clock.advance(minutes=2)
    command()

    assert not DBTaskResult.objects.filter(pk=finished.pk).exists()
    assert dt.timedelta(hours=1) == services.TASK_RESULT_RETENTION


def test_a_busy_worker_takes_up_what_a_killed_one_dropped_without_waiting_for_cleanup(
    user, flight, receiver, monkeypatch
):
    """One event dispatched by a worker that died before attempting it, one whose worker died
    while dispatching it: the next task any worker runs sweeps both up."""
    monkeypatch.setattr(sender, "SWEEP_SECONDS", 0.0)  # Sweep on every task (it is every 10 s).
    register(receiver.url)
    dropped_delivery = booking_create(user=user, flight_id=flight.pk, seats=1)
    services.event_dispatch(event_id=OutboxEvent.objects.get(booking=dropped_delivery).pk)
    dropped_dispatch = booking_create(user=user, flight_id=flight.pk, seats=2)
    DBTaskResult.objects.all().delete()  # Both workers' tasks are gone with them.

    booking_create(user=user, flight_id=flight.pk, seats=3)  # Any new work wakes a worker.
    run_worker()

    seats = sorted(json.loads(request.body)["data"]["booking"]["numberOfSeats"] for request in receiver.received)
    assert seats == [1, 2, 3]
    assert dropped_dispatch.pk in set(
        OutboxEvent.objects.filter(dispatched_at__isnull=False).values_list("booking_id", flat=True)
    )


def test_a_web_process_queues_the_events_it_commits_in_a_window_in_one_task(user, flight, receiver, settings):
    """With NOTIFICATION_ENQUEUE_BATCH_SECONDS (production's 0.25), three bookings committed
    at once are queued in one task, by the process's own thread, after their commits."""
    settings.NOTIFICATION_ENQUEUE_BATCH_SECONDS = 0.3
    register(receiver.url)
    bookings = [booking_create(user=user, flight_id=flight.pk, seats=seats) for seats in (1, 2, 3)]
    assert not DBTaskResult.objects.exists()  # Nothing on the requests' own path.

    deadline = time.monotonic() + 10
    while not DBTaskResult.objects.exists():
        assert time.monotonic() < deadline, "the batch was never queued"
        time.sleep(0.02)
    (queued,) = DBTaskResult.objects.all()
    events = OutboxEvent.objects.filter(booking__in=bookings).order_by("id")
    assert queued.args_kwargs == {"args": [[event.pk for event in events]], "kwargs": {}}
    run_worker()
    assert len(receiver.received) == 3
