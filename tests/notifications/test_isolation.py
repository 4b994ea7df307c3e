"""One endpoint that is slow or down never delays the others (docs/design.md#notifications):
the worker sends in lanes, one per endpoint, on a pool of threads."""

import threading
import time
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import connections
from django.db.backends.signals import connection_created

from bookings.services import booking_create
from notifications import sender
from notifications.models import Delivery, DeliveryAttempt
from tests.notifications.conftest import register, run_worker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _sending_threads_stopped() -> Iterator[None]:
    yield
    sender.lanes.stop()  # Their connections closed before the test database goes.


def test_an_endpoint_that_hangs_does_not_delay_another_ones_deliveries(
    user, flight, receiver, second_receiver, settings
):
    """The slow endpoint holds every request until the test lets go; meanwhile the other one
    gets all its deliveries. (With one thread per worker, or no lanes, the fast endpoint's
    second delivery would wait behind the slow one's first: this test would time out.)"""
    settings.NOTIFICATION_SEND_THREADS, settings.NOTIFICATION_LANE_CONNECTIONS = 4, 2
    # Longer than the test waits: the slow endpoint's attempts cannot time out meanwhile.
    settings.WEBHOOK_TIMEOUT_SECONDS, settings.NOTIFICATION_LEASE_SECONDS = 60, 130
    slow, fast = receiver, second_receiver
    register(slow.url)
    register(fast.url)
    slow.hold()

    for seats in (1, 2, 3):
        booking_create(user=user, flight_id=flight.pk, seats=seats)
    call_command("db_worker", "--batch", "--no-startup-delay", "--interval", "0", verbosity=0)

    fast.wait_for(3)  # While the slow one still holds its first requests.
    slow.wait_for(2)  # Its lane's two connections, both waiting (and no third).
    assert len(slow.received) == 2
    assert not DeliveryAttempt.objects.filter(delivery__endpoint__url=slow.url).exists()  # Still in flight.
    slow.release()
    sender.lanes.wait_idle()
    assert len(slow.received) == 3
    assert Delivery.objects.filter(state=Delivery.State.DELIVERED).count() == 6


def test_a_full_lane_picks_up_what_was_handed_to_it_meanwhile(user, flight, receiver, settings):
    """A lane at its limit takes no new thread; the busy ones take its next due deliveries."""
    settings.NOTIFICATION_SEND_THREADS, settings.NOTIFICATION_LANE_CONNECTIONS = 4, 1
    register(receiver.url)
    receiver.delay = 0.02
    for _ in range(5):
        booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()

    assert len(receiver.received) == 5
    assert receiver.overlaps == []
    assert Delivery.objects.filter(state=Delivery.State.DELIVERED).count() == 5


def test_a_sending_thread_keeps_its_database_connection_until_it_is_idle(user, flight, receiver, settings, monkeypatch):
    """A thread that closed its connection whenever its lane ran dry opened one for about
    every other delivery: now one lasts while there is work, and goes when the thread has
    been idle for IDLE_SECONDS."""
    settings.NOTIFICATION_SEND_THREADS, settings.NOTIFICATION_LANE_CONNECTIONS = 1, 1
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 60)  # As in production.
    monkeypatch.setattr(sender, "IDLE_SECONDS", 0.5)
    opened = []

    def count(sender, connection, **kwargs):
        if threading.current_thread().name.startswith("delivery"):
            opened.append(time.monotonic())

    connection_created.connect(count)
    try:
        register(receiver.url)
        for _ in range(3):  # Each delivered, and the lane dry, before the next.
            booking_create(user=user, flight_id=flight.pk, seats=1)
            run_worker()
        assert (len(receiver.received), len(opened)) == (3, 1)

        time.sleep(1.5)  # Idle: the connection goes, and the next delivery opens another.
        booking_create(user=user, flight_id=flight.pk, seats=1)
        run_worker()
        assert (len(receiver.received), len(opened)) == (4, 2)
    finally:
        connection_created.disconnect(count)
