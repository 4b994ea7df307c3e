"""One clock for every host: cleanup decides what is stale with the database's clock, and a
host whose own clock is off fails its readiness probe (docs/operations.md#clocks).

The host's clock is moved by patching `timezone.now` alone; the database keeps its own, the
real one (PostgreSQL's `statement_timestamp()`, SQLite's reading of the OS clock).
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.utils import timezone

from bookings.models import Booking
from bookings_project import db
from tests.factories import initiated, reload
from tests.helpers import seats_left
from tests.support.cleanup import command

pytestmark = pytest.mark.django_db(transaction=True)

REAL_NOW = timezone.now


@pytest.fixture
def host_clock(monkeypatch):
    """Set how far this host's clock runs ahead of the real one (the database's)."""

    def set_ahead(**offset: float) -> None:
        ahead = dt.timedelta(**offset)
        monkeypatch.setattr(timezone, "now", lambda: REAL_NOW() + ahead)

    return set_ahead


def test_a_host_clock_eleven_minutes_ahead_expires_nothing_early(user, flight, host_clock, caplog):
    booking = initiated(user, flight, 3)  # 10 minutes of hold left, by every clock.
    host_clock(minutes=11)

    with caplog.at_level(logging.WARNING, logger="bookings.cleanup"):
        output = command()

    assert "expired=0" in output
    assert reload(booking).status == Booking.Status.INITIATED
    assert seats_left(flight) == flight.capacity - 3
    assert any("clock is 660." in record.getMessage() for record in caplog.records)


def test_a_hold_that_ended_by_the_databases_clock_expires_on_a_host_behind_it(user, flight, host_clock):
    booking = initiated(user, flight, 3)
    Booking.objects.filter(pk=booking.pk).update(expires_at=REAL_NOW() - dt.timedelta(seconds=5))
    host_clock(seconds=-3)  # Behind, but still past the hold's end.

    assert "expired=1" in command()
    assert reload(booking).status == Booking.Status.CANCELLED


def test_the_database_clock_is_the_servers_and_utc():
    before, database, after = REAL_NOW(), db.database_now(), REAL_NOW()

    assert database.utcoffset() == dt.timedelta(0)
    # This test's host and database share a clock: within the statement's round trip (and
    # SQLite's millisecond).
    assert before - dt.timedelta(milliseconds=2) <= database <= after + dt.timedelta(milliseconds=2)


@pytest.mark.parametrize(("offset", "ready"), [(0, True), (4, True), (-4, True), (6, False), (-660, False)])
def test_readyz_fails_when_the_hosts_clock_is_off_the_databases(client, host_clock, settings, offset, ready):
    settings.MAX_CLOCK_SKEW_SECONDS = 5
    host_clock(seconds=offset)

    response = client.get("/readyz")

    assert response.status_code == (200 if ready else 503)
    assert response.json()["checks"] == {"database": "ok", "clock": "ok" if ready else "failing"}
