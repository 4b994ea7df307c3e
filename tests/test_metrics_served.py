"""/metrics as production serves it: gunicorn with two workers, the worker and cleanup as
processes of their own, all writing to one PROMETHEUS_MULTIPROC_DIR on the test database.
Whichever worker answers a scrape, it shows every process's counts; a worker that dies and
is replaced carries on in the slot it freed (bookings_project/metrics.py)."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from prometheus_client.multiprocess import MultiProcessCollector
from rest_framework.authtoken.models import Token

from bookings.models import Booking
from notifications.models import Delivery
from notifications.services import RETRY_DELAYS
from tests.factories import make_flight
from tests.helpers import race
from tests.notifications.conftest import register
from tests.support.gunicorn import ROOT, running_gunicorn
from tests.support.metrics import TOKEN, Samples, parse, value
from tests.support.receiver import running_receiver
from tests.support.worker import running_worker, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

P = "flight_bookings_"
THREADS = 2
CLIENTS = 8


@dataclass
class Host:
    url: str
    env: dict[str, str]
    metrics_dir: Path
    log: Path

    def scrape(self) -> Samples:
        response = requests.get(
            f"{self.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"}, timeout=10
        )
        assert response.status_code == 200, response.text
        return parse(response.text)

    def workers(self) -> list[int]:
        """The pids gunicorn says it booted, in order."""
        booted = []
        for line in self.log.read_text().splitlines():
            with_pid = re.search(r"Booting worker with pid: (\d+)", line)
            if with_pid:
                booted.append(int(with_pid.group(1)))
        return booted

    def counter_files(self) -> list[Path]:
        return sorted(self.metrics_dir.glob("counter_*.db"))


@pytest.fixture
def host(tmp_path, db) -> Host:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = worker_env(
        DEBUG="false",
        GUNICORN_WORKERS="2",
        GUNICORN_THREADS=str(THREADS),
        METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    with running_gunicorn(tmp_path, env) as (url, log):
        served = Host(url, env, metrics_dir, log)
        deadline = time.monotonic() + 30
        while len(served.workers()) < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield served


@pytest.fixture
def customer(db) -> dict[str, str]:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="carol", password="carol-password")
    return {"Authorization": f"Token {Token.objects.create(user=user).key}", "Connection": "close"}


def read_flight_from_many_clients(host: Host, customer: dict[str, str], flight_id: int, each: int) -> None:
    """CLIENTS clients at once, more than one worker's threads: both workers answer some."""

    def client(_: int) -> None:
        for _ in range(each):
            response = requests.get(f"{host.url}/api/v1/flights/{flight_id}", headers=customer, timeout=10)
            assert response.status_code == 200, response.text

    race(CLIENTS, client)


def book(host: Host, customer: dict[str, str], flight_id: int, *, seats: int) -> requests.Response:
    body = {"flightId": flight_id, "numberOfSeats": seats}
    return requests.post(f"{host.url}/api/v1/bookings", json=body, headers=customer, timeout=10)


def flight_reads(samples: Samples) -> float:
    labels = {"method": "GET", "endpoint": "flight-detail", "status": "200", "code": ""}
    return value(samples, P + "http_requests_total", **labels)


def per_file_flight_reads(host: Host) -> list[float]:
    """What each process's file holds on its own."""
    reads = []
    for path in host.counter_files():
        families = MultiProcessCollector.merge([str(path)], accumulate=True)
        samples = {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}
        reads.append(flight_reads(samples))
    return reads


def test_every_scrape_shows_both_workers_counts(host, customer):
    flight = make_flight(capacity=50)
    read_flight_from_many_clients(host, customer, flight.pk, each=5)
    for _ in range(3):
        assert book(host, customer, flight.pk, seats=1).status_code == 201
    assert book(host, customer, flight.pk, seats=0).status_code == 400

    # Both workers served reads: each process's file holds some, and they add up.
    reads = [count for count in per_file_flight_reads(host) if count]
    assert len(reads) == 2, reads
    assert sum(reads) == CLIENTS * 5
    scrapes = [host.scrape() for _ in range(6)]  # Each on a new connection: either worker.
    for samples in scrapes:
        assert flight_reads(samples) == CLIENTS * 5
        labels = {"method": "POST", "endpoint": "booking-list"}
        assert value(samples, P + "http_requests_total", status="201", code="", **labels) == 3
        assert value(samples, P + "http_requests_total", status="400", code="validation_error", **labels) == 1
        assert value(samples, P + "booking_status_changes_total", status="INITIATED", reason="created") == 3
        assert value(samples, P + "http_request_duration_seconds_count", method="GET", endpoint="flight-detail") == (
            CLIENTS * 5
        )


def test_a_worker_that_dies_is_replaced_in_its_slot(host, customer):
    flight = make_flight(capacity=5)
    read_flight_from_many_clients(host, customer, flight.pk, each=2)
    files = host.counter_files()
    first, _ = host.workers()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(host.workers()) < 3:
        assert time.monotonic() < deadline, host.log.read_text()
        time.sleep(0.05)
    read_flight_from_many_clients(host, customer, flight.pk, each=2)

    # The new worker took the slot the dead one freed, and its counts go on from there.
    assert host.counter_files() == files
    assert flight_reads(host.scrape()) == 2 * CLIENTS * 2


def test_access_through_gunicorn_needs_the_token(host):
    assert requests.get(f"{host.url}/metrics", timeout=10).status_code == 401
    response = requests.get(f"{host.url}/metrics", headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert response.status_code == 401


def manage(host: Host, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=host.env, capture_output=True, text=True, timeout=120
    )


def test_cleanup_and_the_worker_count_into_the_same_scrape(host, customer, tmp_path):
    """cleanup from cron and the worker are processes of their own: what they do shows in
    the web's scrape, with the state they leave (a failed delivery; the worker's heartbeat)."""
    flight = make_flight(capacity=5)
    with running_receiver() as receiver:
        receiver.always = 503
        register(receiver.url, events=["booking.created"])
        for _ in range(2):
            assert book(host, customer, flight.pk, seats=1).status_code == 201
        worker_log = tmp_path / "worker.log"
        with running_worker(worker_log, host.env):
            wait_until(lambda: Delivery.objects.filter(attempts=1).count() == 2, worker_log)
            # Both at their last retry, due now: the next failure fails them for good.
            Delivery.objects.update(failures=len(RETRY_DELAYS), next_attempt_at=timezone.now())
            DBTaskResult.objects.filter(status="READY").update(run_after=timezone.now())
            wait_until(lambda: Delivery.objects.filter(state=Delivery.State.FAILED).count() == 2, worker_log)

            Booking.objects.update(expires_at=timezone.now() - dt.timedelta(minutes=1))
            cleanup = manage(host, "cleanup_stale_bookings")
            assert cleanup.returncode == 0, cleanup.stderr
            assert "expired=2 released_seats=2" in cleanup.stdout

            running = host.scrape()
        stopped = host.scrape()

    assert value(running, P + "booking_status_changes_total", status="CANCELLED", reason="expired") == 2
    assert value(running, P + "cleanup_backlog", work="bookings_to_expire") == 0
    assert value(running, P + "cleanup_last_run_age_seconds") < 60
    assert value(running, P + "cleanup_last_success_age_seconds") < 60
    assert value(running, P + "notification_attempts_total", channel="webhook", outcome="failed") == 4
    assert value(running, P + "notification_deliveries", state="failed") == 2
    assert value(running, P + "notification_deliveries", state="pending") == 0
    assert value(running, P + "worker_heartbeat_age_seconds") < 15
    # The worker stopped as asked: its heartbeat is gone, and the check says no worker runs.
    assert value(stopped, P + "worker_heartbeat_age_seconds") == float("inf")
    check = manage(host, "check_background")
    assert check.returncode == 1
    assert "no worker on" in check.stderr and "cleanup has not run" not in check.stderr


def wait_until(condition, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
