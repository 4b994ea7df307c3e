"""Prometheus metrics of what happened (counters and histograms), counted in the process where
it happened (docs/operations.md#metrics). State (backlogs, ages, the worker's heartbeat) is
not counted here: /metrics reads it from the database when it is scraped
(workflows/monitoring.py).

A host runs several processes: gunicorn's workers, the worker, cleanup from cron. With
`PROMETHEUS_MULTIPROC_DIR` set (the systemd units set it), each writes its counts to files in
that directory and /metrics adds them up (prometheus_client's multiprocess mode). Each process
writes under a *slot* it holds with a file lock for as long as it lives, not under its pid: a
worker recycled after `max_requests`, or the next cleanup run, takes a free slot and carries
on its counts. So the directory holds one set of files per process running at once, rather
than one per process ever started, which a scrape would read every time. Without it
(development, the tests' own process) the counts are the process's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import time
from collections.abc import Iterator

from django.conf import settings
from django.db import OperationalError, transaction
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, values
from prometheus_client.multiprocess import MultiProcessCollector

from bookings_project.db import is_lock_contention

MULTIPROCESS_DIR: str = settings.PROMETHEUS_MULTIPROC_DIR


class _Slot:
    """This process's slot in `MULTIPROCESS_DIR`: `slot-<n>.lock`, held with flock. A forked
    child asks again and takes its own (the lock is the parent's open file, not the child's)."""

    pid: int | None = None
    name: str = ""
    lock_fd: int | None = None


def _process_slot() -> str:
    """prometheus_client's process identifier: asked at every write, so it must be cheap."""
    pid = os.getpid()
    if _Slot.pid != pid:
        _take_slot(pid)
    return _Slot.name


def _take_slot(pid: int) -> None:
    number = 0
    while True:
        fd = os.open(os.path.join(MULTIPROCESS_DIR, f"slot-{number}.lock"), os.O_CREAT | os.O_RDWR, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            number += 1
            continue
        # A fork's copy of the parent's lock stays with the parent's slot; this one is ours.
        _Slot.pid, _Slot.name, _Slot.lock_fd = pid, f"slot{number}", fd
        return


# Chosen here, before any metric below exists (each reads the class when it makes its values),
# not by prometheus_client from the environment at import: there an empty value would still
# mean multiprocess mode, writing to the current directory.
# No `_created` series beside each counter (multiprocess mode has none anyway): half the series
# for a time Prometheus does not need.
disable_created_metrics()
if MULTIPROCESS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = MULTIPROCESS_DIR  # Where prometheus_client writes.
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_slot)
else:
    values.ValueClass = values.MutexValue

# Ours alone (not prometheus_client's default, with its process collectors, which do not add
# up across processes): declared here, in one place, under one prefix.
REGISTRY = CollectorRegistry(auto_describe=True)
PREFIX = "flight_bookings"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LOCK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

HTTP_REQUESTS = Counter(
    "http_requests",
    "Requests answered, by endpoint (the URL's name), status and problem code ('' when none).",
    ["method", "endpoint", "status", "code"],
    namespace=PREFIX,
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Time from the request's arrival in Django to its answer, by endpoint.",
    ["method", "endpoint"],
    namespace=PREFIX,
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BOOKING_STATUS_CHANGES = Counter(
    "booking_status_changes",
    "Booking status changes committed, by new status and reason: INITIATED is a booking created, "
    "BOOKED one confirmed, CANCELLED one cancelled (reason user, staff, expired, ...).",
    ["status", "reason"],
    namespace=PREFIX,
    registry=REGISTRY,
)
PAYMENT_OUTCOMES = Counter(
    "payment_outcomes",
    "What the gateway answered to a charge (an attempt, or a webhook's news of one): succeeded, "
    "declined, requires_action, failed (not charged) or unknown (no answer: left PROCESSING).",
    ["outcome"],
    namespace=PREFIX,
    registry=REGISTRY,
)
REFUNDS = Counter(
    "refunds",
    "Refunds recorded (refunded) and refunds the gateway did not confirm (failed: retried by cleanup).",
    ["outcome"],
    namespace=PREFIX,
    registry=REGISTRY,
)
IDEMPOTENT_REPLAYS = Counter(
    "idempotent_replays",
    "Payment requests answered with the stored answer of an earlier request with their key.",
    namespace=PREFIX,
    registry=REGISTRY,
)
SEAT_LOCK_WAIT_SECONDS = Histogram(
    "seat_lock_wait_seconds",
    "Time to take a flight's row lock to change its seats (the statement that takes it).",
    namespace=PREFIX,
    buckets=_LOCK_BUCKETS,
    registry=REGISTRY,
)
SEAT_LOCK_TIMEOUTS = Counter(
    "seat_lock_timeouts",
    "Seat changes refused because a flight's row lock was not free within LOCK_TIMEOUT_MS.",
    namespace=PREFIX,
    registry=REGISTRY,
)
OUTBOUND_REQUESTS = Counter(
    "outbound_requests",
    "HTTP requests to other services (flights, payment_gateway, stripe), by outcome: the "
    "answer's status class, or how it failed (not_connected, timed_out, connection_lost, other).",
    ["service", "outcome"],
    namespace=PREFIX,
    registry=REGISTRY,
)
OUTBOUND_REQUEST_SECONDS = Histogram(
    "outbound_request_duration_seconds",
    "Time for an HTTP request to another service (its retries included), by service.",
    ["service"],
    namespace=PREFIX,
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
NOTIFICATION_ATTEMPTS = Counter(
    "notification_attempts",
    "Notification delivery attempts recorded by the worker, by channel and outcome (delivered, failed).",
    ["channel", "outcome"],
    namespace=PREFIX,
    registry=REGISTRY,
)

# Every name a scrape shows (a counter's with `_total`): the dashboard's and the rules' tests read it.
METRIC_NAMES: frozenset[str] = frozenset(
    f"{family.name}_total" if family.type == "counter" else family.name for family in REGISTRY.collect()
)


def event_registry() -> CollectorRegistry:
    """What a scrape reports of events: every process's counts on this host (multiprocess),
    or this process's own."""
    if not MULTIPROCESS_DIR:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
    return registry


# Counting ---------------------------------------------------------------------------------


def count_on_commit(counter, amount: int = 1) -> None:
    """Count once the transaction commits (at once outside one): a rolled-back change never happened."""
    transaction.on_commit(functools.partial(counter.inc, amount))


# A client may send any method: only these are labels, so that it cannot make series at will.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(request: HttpRequest, response: HttpResponse, seconds: float) -> None:
    match = request.resolver_match
    endpoint = match.view_name if match is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    HTTP_REQUESTS.labels(method, endpoint, str(response.status_code), _problem_code(response)).inc()
    HTTP_REQUEST_SECONDS.labels(method, endpoint).observe(seconds)


def _problem_code(response: HttpResponse) -> str:
    """The problem code of an error answer: DRF's data, or a problem+json body (read only for
    errors). Only known codes are labels, so a label's values stay few."""
    if response.status_code < 400:
        return ""
    data = getattr(response, "data", None)
    if data is None and response.get("Content-Type", "").startswith("application/problem+json"):
        with contextlib.suppress(ValueError, AttributeError):
            data = json.loads(response.content)
    code = data.get("code") if isinstance(data, dict) else None
    return code if code in _known_codes() else "other" if code else ""


@functools.cache
def _known_codes() -> frozenset[str]:
    from bookings_project.errors import PROBLEM_TITLES  # The error vocabulary, once loaded.

    return frozenset(PROBLEM_TITLES)


@contextlib.contextmanager
def seat_lock() -> Iterator[None]:
    """Around the statement that takes a flight's row lock: how long it waited, and whether
    the wait ran out."""
    started = time.perf_counter()
    try:
        yield
    except OperationalError as error:
        if is_lock_contention(error):
            SEAT_LOCK_TIMEOUTS.inc()
        raise
    finally:
        SEAT_LOCK_WAIT_SECONDS.observe(time.perf_counter() - started)
