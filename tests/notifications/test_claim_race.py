"""Claiming a delivery (notifications.services.delivery_claim) under a real race on
PostgreSQL: of many workers that want the same due delivery at once, exactly one gets it."""

import pytest

from bookings.models import OutboxEvent
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
