"""Row locks on PostgreSQL: of many workers that want the same due delivery at once, exactly
one gets it (notifications.services.delivery_claim); and an event is dispatched whatever
else holds its booking's rows."""

import threading

import pytest
from django.db import connections, transaction

from bookings.models import Booking, OutboxEvent
from bookings.services import booking_create
from notifications import services
from notifications.models import Delivery
from tests.helpers import race
from tests.notifications.conftest import register

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 8


def test_of_eight_workers_claiming_one_due_delivery_exactly_one_wins(user, flight):
    register("https://hooks.example.com/race")
    booking_create(user=user, flight_id=flight.pk, seats=1)
    (due,) = services.event_dispatch(event_id=OutboxEvent.objects.get().pk)

    claims = race(WORKERS, lambda index: services.delivery_claim(delivery_id=due.delivery_id))

    won = [claim for claim in claims if claim is not None]
    assert len(won) == 1
    assert Delivery.objects.get().lease_token == won[0].token
    # The lease holds: nobody gets it again until it runs out.
    assert services.delivery_claim(delivery_id=due.delivery_id) is None


def test_an_event_is_dispatched_while_its_booking_and_user_are_locked(user, flight):
    """A payment or a cancel of the same booking (or another dispatch of the same user's)
    holds their rows: dispatching the event must not skip it for that."""
    booking = booking_create(user=user, flight_id=flight.pk, seats=1)
    event = OutboxEvent.objects.get()
    locked, done = threading.Event(), threading.Event()

    def hold_the_booking_and_user():
        try:
            with transaction.atomic():
                Booking.objects.select_for_update().select_related("user").get(pk=booking.pk)
                locked.set()
                done.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_booking_and_user)
    holder.start()
    try:
        assert locked.wait(10)
        services.event_dispatch(event_id=event.pk)
    finally:
        done.set()
        holder.join()

    event.refresh_from_db()
    assert event.dispatched_at is not None
