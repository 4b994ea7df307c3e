"""Attempting deliveries: a webhook POST, signed after Standard Webhooks, or an e-mail.

Deliveries go in lanes, one per endpoint and one for e-mail. A worker process sends at most
`NOTIFICATION_LANE_CONNECTIONS` at a time in a lane, on a pool of `NOTIFICATION_SEND_THREADS`
threads, so one endpoint that is slow or down holds a few threads while it times out and never
delays the others. A thread that finishes an attempt takes its lane's next due delivery, until
none is left. With no threads (`NOTIFICATION_SEND_THREADS=0`) each attempt runs in the caller.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import threading
import time
from collections import Counter

import requests
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import close_old_connections, connections
from django.template.loader import render_to_string
from django.utils import timezone
from standardwebhooks import Webhook
from urllib3.util import Timeout

from notifications import selectors, services
from notifications.models import Delivery
from notifications.services import Claim, Due, Outcome
from notifications.urlsafety import webhook_session

logger = logging.getLogger(__name__)

_local = threading.local()


def attempt(*, delivery_id: int) -> bool:
    """Claim the delivery and attempt it once, in this thread. False if it was not ours to attempt."""
    claim = services.delivery_claim(delivery_id=delivery_id)
    if claim is None:
        return False
    started, clock = timezone.now(), time.monotonic()
    try:
        if claim.delivery.channel == Delivery.Channel.EMAIL:
            outcome = _send_email(claim, started, clock)
        else:
            outcome = _post_webhook(claim, started, clock)
    except Exception as error:
        logger.exception("delivery %s: attempt failed unexpectedly", delivery_id)
        outcome = Outcome(started, _ms_since(clock), succeeded=False, error=f"{type(error).__name__}: {error}")
    retry_at = services.delivery_record(claim=claim, outcome=outcome)
    if retry_at is not None:
        from notifications.tasks import enqueue_retry  # The task module imports this one.

        enqueue_retry(delivery_id=delivery_id, at=retry_at, lane=claim.delivery.lane)
    return True


def signed_headers(*, secret: str, event_id: str, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt: the event's id (the same on every retry),
    this attempt's time, and the signature of both with the body."""
    sent_at = timezone.now().replace(microsecond=0)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, sent_at, body),
        "Content-Type": "application/json",
        "User-Agent": "FlightBookings-Webhooks/1",
    }


def _post_webhook(claim: Claim, started, clock: float) -> Outcome:
    delivery = claim.delivery
    event = delivery.event
    if not delivery.endpoint.is_active:
        return Outcome(started, 0, succeeded=False, error="The endpoint is deactivated: not sent.")
    headers = signed_headers(secret=delivery.endpoint.secret, event_id=event.public_id, body=event.body)
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    try:
        with _session().post(
            delivery.endpoint.url,
            data=event.body.encode(),
            headers=headers,
            # `total` bounds the whole attempt (requests' own timeouts bound each read), so
            # that it cannot outlast its lease however slowly an endpoint answers.
            timeout=Timeout(connect=min(timeout, 5.0), read=timeout, total=timeout),
            allow_redirects=False,
            stream=True,
        ) as response:
            status = response.status_code
    except requests.RequestException as error:
        return Outcome(started, _ms_since(clock), succeeded=False, error=_describe(error))
    duration = _ms_since(clock)
    if duration > timeout * 1000:
        return Outcome(started, duration, succeeded=False, status_code=status, error="Answered after the timeout.")
    if 200 <= status < 300:
        return Outcome(started, duration, succeeded=True, status_code=status)
    error = "Redirects are not followed." if 300 <= status < 400 else f"HTTP {status}"
    return Outcome(started, duration, succeeded=False, status_code=status, error=error)


def _send_email(claim: Claim, started, clock: float) -> Outcome:
    event = claim.delivery.event
    body = json.loads(event.body)
    context = {"event": body, "booking": body["data"]["booking"], "payment": body["data"]["payment"]}
    name = event.type.replace(".", "_")
    subject = render_to_string(f"notifications/email/{name}_subject.txt", context).strip()
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string(f"notifications/email/{name}.txt", context),
        to=[claim.delivery.recipient],
        headers={"X-Event-Id": event.public_id},
    )
    message.attach_alternative(render_to_string(f"notifications/email/{name}.html", context), "text/html")
    try:
        message.send()
    except Exception as error:
        return Outcome(started, _ms_since(clock), succeeded=False, error=f"{type(error).__name__}: {error}")
    return Outcome(started, _ms_since(clock), succeeded=True)


def _session() -> requests.Session:
    """One session per thread (requests' sessions are not thread-safe), made anew if the URL
    safety setting changed since (tests change it)."""
    insecure = settings.WEBHOOK_ALLOW_INSECURE
    cached = getattr(_local, "session", None)
    if cached is None or cached[0] != insecure:
        cached = _local.session = (insecure, webhook_session())
    return cached[1]


def _describe(error: requests.RequestException) -> str:
    if isinstance(error, requests.Timeout):
        return f"No answer within {settings.WEBHOOK_TIMEOUT_SECONDS:g} s."
    return f"{type(error).__name__}: {error}"[:500]


def _ms_since(clock: float) -> int:
    return int((time.monotonic() - clock) * 1000)


# How often a busy worker looks for work another one dropped (killed mid-delivery, or
# mid-dispatch): at most once in this many seconds, when it runs a task.
SWEEP_SECONDS = 10.0


# A thread of ours (a sending thread, a web process's batching thread) that has had nothing
# to do for this long closes its database connection.
IDLE_SECONDS = 5.0


class Lanes:
    """The process's sending threads and how many of them each lane is using.

    A thread keeps its database connection from one delivery to the next and closes it after
    IDLE_SECONDS with nothing to send (closing it whenever its lane ran dry opened a
    connection for about every other delivery)."""

    def __init__(self) -> None:
        self._swept = -SWEEP_SECONDS
        self._lock = threading.Lock()
        self._busy: Counter[str] = Counter()
        # Lanes that were handed work while they were full: their threads look again before leaving.
        self._wanted: set[str] = set()
        self._jobs: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, due: Due) -> None:
        """Attempt the delivery soon, in its lane; a full lane's threads get to it."""
        if settings.NOTIFICATION_SEND_THREADS == 0:
            self._drain(due.lane, due.delivery_id)
            return
        with self._lock:
            if self._busy[due.lane] >= settings.NOTIFICATION_LANE_CONNECTIONS:
                self._wanted.add(due.lane)
                return
            self._busy[due.lane] += 1
            # As many threads as there are lanes at work, up to NOTIFICATION_SEND_THREADS.
            if len(self._threads) < min(sum(self._busy.values()), settings.NOTIFICATION_SEND_THREADS):
                thread = threading.Thread(target=self._serve, name=f"delivery-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._jobs.put((due.lane, due.delivery_id))

    def stop(self) -> None:
        """End the sending threads once they are done, their connections closed (tests)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()

    def sweep(self, *, force: bool = False) -> None:
        """Take up what a killed worker dropped: events left undispatched and due deliveries
        whose lease ran out. At most every SWEEP_SECONDS unless forced (cleanup's wake-up,
        for a queue where no other task runs)."""
        with self._lock:
            if not force and time.monotonic() - self._swept < SWEEP_SECONDS:
                return
            self._swept = time.monotonic()
        now = timezone.now()
        dropped = selectors.events_not_dispatched(created_before=now - dt.timedelta(seconds=SWEEP_SECONDS))
        for event_id in dropped.order_by("created_at").values_list("pk", flat=True)[:1000]:
            for due in services.event_dispatch(event_id=event_id):
                self.submit(due)
        forgotten = selectors.deliveries_forgotten(due_before=now, now=now).order_by("next_attempt_at")
        for delivery_id, endpoint_id in forgotten.values_list("pk", "endpoint_id")[:1000]:
            self.submit(Due.of(delivery_id, endpoint_id))

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no lane has a thread working (tests, and a worker's orderly exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not +self._busy:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"deliveries still being sent: {dict(self._busy)}")

    def _serve(self) -> None:
        """A sending thread: the lanes it is handed, one after another."""
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                connections.close_all()  # Idle: this thread's connections go back.
                continue
            if job is None:
                connections.close_all()
                return
            try:
                self._run_lane(*job)
            except Exception:
                logger.exception("lane %s: stopped; its due deliveries are left for a later try", job[0])
            finally:
                close_old_connections()  # A broken one, or one past CONN_MAX_AGE.

    def _run_lane(self, lane: str, delivery_id: int) -> None:
        try:
            while True:
                self._drain(lane, delivery_id)
                with self._lock:
                    if lane not in self._wanted:
                        self._busy[lane] -= 1
                        return
                    self._wanted.discard(lane)
                delivery_id = None
        except BaseException:
            with self._lock:
                self._busy[lane] -= 1
            raise

    def _drain(self, lane: str, delivery_id: int | None) -> None:
        """Attempt the delivery, then the lane's next due ones, until none is left."""
        while True:
            if delivery_id is not None:
                try:
                    attempt(delivery_id=delivery_id)
                except Exception:
                    logger.exception("delivery %s: could not be attempted; left for a later try", delivery_id)
                    close_old_connections()
                    return
            delivery_id = services.delivery_next_due(lane=lane)
            if delivery_id is None:
                return


lanes = Lanes()
