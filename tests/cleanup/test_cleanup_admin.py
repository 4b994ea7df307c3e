"""Admin's cleanup page: what a run now would act on, when cron last ran, and warnings when
work waits longer than two cron intervals (cron has stopped) — without calling any remote
service. Its links open the bookings list filtered to the same sets cleanup uses."""

import datetime as dt
import io
import re
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import OperationalError

from bookings.models import Booking, CleanupRun
from bookings.services import booking_create
from flights import services as flight_services
from payments.models import IdempotencyKey
from tests.factories import cancel_cut_short, initiated, make_flight, pending_never_charged, release_owed
from workflows.cleanup import _Run

pytestmark = pytest.mark.django_db

PAGE = "/admin/bookings/booking/cleanup/"
CHANGELIST = "/admin/bookings/booking/"


@pytest.fixture
def ops(client):
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "root-password"))
    return client


def backlog(response) -> dict[str, int]:
    return {item.label: item.count for item in response.context["backlog"]}


def listed(client, attention: str) -> set[int]:
    response = client.get(CHANGELIST, {"attention": attention})
    assert response.status_code == 200
    return {booking.pk for booking in response.context["cl"].result_list}


@pytest.fixture
def stale(user, clock):
    """One of each kind of work, all overdue once the clock has moved 20 minutes on."""
    flight = make_flight(capacity=30)
    to_expire = initiated(user, flight, 1)
    to_reconcile, _ = pending_never_charged(user, flight, 2)
    owed = release_owed(user, flight, 3)
    unfinished, _, _ = cancel_cut_short(user, flight, 1)
    # The next two by hand: only the seed's Flights service (no holds, answers that cannot be
    # trusted) and a death mid-call get a booking there.
    person = booking_create(user=user, flight_id=flight.pk, seats=1)
    Booking.objects.filter(pk=person.pk).update(
        status=Booking.Status.CANCELLED, seats_state=Booking.SeatsState.RECONCILE
    )
    stuck = booking_create(user=user, flight_id=flight.pk, seats=1)
    Booking.objects.filter(pk=stuck.pk).update(
        status=Booking.Status.CANCELLED, seats_state=Booking.SeatsState.RELEASING, flight_keeps_holds=False
    )
    fresh = booking_create(user=user, flight_id=flight.pk, seats=1)
    IdempotencyKey.objects.create(user=user, key="old", fingerprint="f", expires_at=clock.now)
    clock.advance(minutes=20)
    # Made after the clock moved: not yet due, so on no list.
    booking_create(user=user, flight_id=flight.pk, seats=1)
    return {
        "to_expire": {to_expire.pk, fresh.pk},
        "to_reconcile": {to_reconcile.pk},
        "release_owed": {owed.pk},
        "unfinished_cancel": {unfinished.pk},
        "reconcile": {person.pk},
    }


def test_the_page_counts_each_kind_of_work_and_links_to_the_same_bookings(ops, stale):
    response = ops.get(PAGE)

    assert response.status_code == 200
    assert backlog(response) == {
        "Unpaid bookings past their hold (to expire)": 2,
        "PENDING bookings past their hold (to reconcile with the gateway)": 1,
        "Seat releases waiting for a retry": 1,
        "Releases cut short on a Flights service without holds (for a person)": 1,
        "Paid bookings whose cancel was cut short": 1,
        "Payments to refund (booking cancelled)": 0,
        "Idempotency keys past their TTL": 1,
        # No worker runs here; the re-queue window is off in the tests (tests/notifications turn it on).
        "Notification events the worker has not picked up": 0,
        "Notification deliveries due and not being attempted": 0,
        "Seat outcomes only a person can settle": 1,
    }
    html = response.content.decode()
    for attention, bookings in stale.items():
        assert f"?attention={attention}" in html
        assert listed(ops, attention) == bookings


def test_work_waiting_longer_than_two_intervals_and_no_run_are_warned_about(ops, stale, clock):
    def warned() -> list[str]:
        return [warning.split(":")[0] for warning in ops.get(PAGE).context["warnings"]]

    # The holds ran out 10 minutes ago: within two intervals (2 x 10 minutes), no alarm yet.
    assert warned() == ["cleanup_stale_bookings has never run"]

    clock.advance(minutes=15)
    assert warned() == [
        "cleanup_stale_bookings has never run",
        "Unpaid bookings past their hold (to expire)",
        "PENDING bookings past their hold (to reconcile with the gateway)",
        "Seat releases waiting for a retry",
        "Releases cut short on a Flights service without holds (for a person)",
        "Paid bookings whose cancel was cut short",
        "Idempotency keys past their TTL",
        "Seat outcomes only a person can settle",
    ]


def test_a_recent_run_clears_the_warnings_and_a_stopped_cron_brings_one_back(ops, clock, user, settings):
    flight = make_flight(capacity=5)
    booking_create(user=user, flight_id=flight.pk, seats=1)
    clock.advance(minutes=11)
    call_command("cleanup_stale_bookings", stdout=io.StringIO())

    response = ops.get(PAGE)
    assert response.context["warnings"] == []
    assert set(backlog(response).values()) == {0}
    [run] = response.context["runs"]
    assert run.counts["expired"] == 1 and run.failed == 0
    assert "expired=1" in response.content.decode()

    settings.CLEANUP_INTERVAL_MINUTES = 5
    clock.advance(minutes=11)
    [warning] = ops.get(PAGE).context["warnings"]
    assert re.match(r"No cleanup run since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", warning)


def test_the_page_asks_no_remote_service(ops, stale, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the cleanup page called a remote service")

    monkeypatch.setattr("payments.gateway.SimulatedPaymentGateway.find_charge", no_network)
    monkeypatch.setattr("flights.services.flight_seats_change", no_network)

    assert ops.get(PAGE).status_code == 200


def test_only_staff_who_may_view_bookings_see_it(client, user, staff_user):
    client.force_login(user)
    assert client.get(PAGE).status_code == 302  # To the admin login.

    client.force_login(staff_user)
    assert client.get(PAGE).status_code == 403
    staff_user.user_permissions.add(Permission.objects.get(codename="view_booking"))
    assert client.get(PAGE).status_code == 200


def test_the_bookings_list_links_to_it_and_runs_are_read_only(ops, clock):
    assert PAGE in ops.get(CHANGELIST).content.decode()
    CleanupRun.objects.create(
        started_at=clock.now, finished_at=clock.now + dt.timedelta(seconds=1), host="app-1", counts={}, failed=0
    )
    runs = "/admin/bookings/cleanuprun/"
    assert ops.get(runs).status_code == 200
    assert ops.get(f"{runs}add/").status_code == 403
    run = CleanupRun.objects.get()
    assert ops.post(f"{runs}{run.pk}/delete/", {"post": "yes"}).status_code == 403
    assert CleanupRun.objects.count() == 1


def test_a_runs_failures_are_kept_and_shown_on_its_page_the_list_and_the_cleanup_page(ops, user, clock):
    flight = make_flight(capacity=10)
    owed = release_owed(user, flight, 2)

    def flights_down(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    with mock.patch.object(flight_services, "flight_seats_change", flights_down), pytest.raises(CommandError):
        call_command("cleanup_stale_bookings", stdout=io.StringIO())

    run = CleanupRun.objects.get()
    assert run.failed == 1
    assert run.failures == [f"release of booking {owed.pk}: retried next run"]
    assert f"release of booking {owed.pk}: retried next run" in ops.get(PAGE).content.decode()
    assert "1 failed" in ops.get("/admin/bookings/cleanuprun/").content.decode()
    page = ops.get(f"/admin/bookings/cleanuprun/{run.pk}/change/").content.decode()
    assert f"<li>release of booking {owed.pk}: retried next run</li>" in page
    assert 'name="_save"' not in page


def test_a_run_keeps_only_its_first_hundred_failure_lines():
    run = _Run(cutoffs=None, batch_size=1, dry_run=False, report=lambda line: None, flights=None, payments=None)
    for number in range(150):
        run.fail(f"line {number}")
    assert run.counts.failed == 150
    assert run.failures == [f"line {number}" for number in range(100)]


def test_a_run_without_failures_shows_none(ops, clock):
    call_command("cleanup_stale_bookings", stdout=io.StringIO())
    assert CleanupRun.objects.get().failures == []
    assert "What failed in the last run" not in ops.get(PAGE).content.decode()
