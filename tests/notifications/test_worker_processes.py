"""The worker as production runs it (`manage.py db_worker` processes, on SQLite and on
PostgreSQL): killed mid-delivery it loses nothing, and two of them never attempt one delivery
at the same time."""

import signal
import time

import pytest

from bookings.models import OutboxEvent
from bookings.services import booking_create
from notifications import tasks
from notifications.models import Delivery, DeliveryAttempt
from tests.factories import make_flight
from tests.notifications.conftest import register
from tests.support.cleanup import command
from tests.support.worker import running_worker, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

# Short, so that a killed worker's lease runs out within the test.
FAST = {"WEBHOOK_TIMEOUT_SECONDS": "2", "NOTIFICATION_LEASE_SECONDS": "3"}


def wait_until(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


def test_a_worker_killed_mid_delivery_loses_nothing(user, flight, receiver, tmp_path, settings):
    """SIGKILL while the endpoint holds the request: no outcome is recorded, the lease runs
    out, cleanup queues the delivery again, and the restarted worker delivers it with the
    same webhook-id."""
    register(receiver.url)
    receiver.hold()
    log = tmp_path / "worker.log"
    with running_worker(log, worker_env(**FAST)) as first:
        booking_create(user=user, flight_id=flight.pk, seats=1)
        receiver.wait_for(1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    receiver.release()
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == (Delivery.State.PENDING, 0), log.read_text()
    assert not DeliveryAttempt.objects.exists()

    settings.NOTIFICATION_REQUEUE_AFTER_SECONDS = 0
    wait_until(lambda: Delivery.objects.get().lease_until.timestamp() < time.time(), what="the lease to run out")
    assert "requeued_notifications=1" in command()
    with running_worker(log, worker_env(**FAST)):
        wait_until(lambda: Delivery.objects.get().state == Delivery.State.DELIVERED, what=log.read_text())

    first_request, second_request = receiver.received
    assert first_request.webhook_id == second_request.webhook_id == OutboxEvent.objects.get().public_id
    assert first_request.body == second_request.body
    assert list(DeliveryAttempt.objects.values_list("number", "status_code")) == [(1, 200)]


def test_two_workers_never_attempt_one_delivery_at_the_same_time(user, receiver, tmp_path):
    """Forty events, each queued twice, and two workers racing for every task: each event
    reaches the endpoint exactly once, and no two requests for one event overlap."""
    flight = make_flight(capacity=100)
    register(receiver.url)
    receiver.delay = 0.05  # Every request takes a while, so that overlaps would show.
    events = []
    for _ in range(40):
        booking = booking_create(user=user, flight_id=flight.pk, seats=1)
        events.append(OutboxEvent.objects.get(booking=booking))
    tasks.dispatch_events.enqueue([event.pk for event in events])  # Each event queued a second time.

    with running_worker(tmp_path / "a.log", worker_env()), running_worker(tmp_path / "b.log", worker_env()):
        wait_until(
            lambda: Delivery.objects.filter(state=Delivery.State.DELIVERED).count() == 40,
            what="40 deliveries",
        )
        time.sleep(0.5)  # Any second attempt would arrive now.

    assert sorted(request.webhook_id for request in receiver.received) == sorted(event.public_id for event in events)
    assert receiver.overlaps == []
    assert Delivery.objects.count() == 40
    assert set(DeliveryAttempt.objects.values_list("number", flat=True)) == {1}
    for log in ("a.log", "b.log"):  # Both workers took part.
        assert "notifications.tasks.dispatch_events state=SUCCESSFUL" in (tmp_path / log).read_text()
