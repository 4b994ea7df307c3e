"""One endpoint that is slow or down never delays the others (docs/design.md#notifications):
the worker sends in lanes, one per endpoint, on a pool of threads."""

import pytest
from django.core.management import call_command

from bookings.services import booking_create
from notifications import sender
from notifications.models import Delivery, DeliveryAttempt
from tests.notifications.conftest import register, run_worker

pytestmark = pytest.mark.django_db(transaction=True)


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
