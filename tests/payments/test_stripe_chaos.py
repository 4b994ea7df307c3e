"""Chaos with Stripe: many customers book, pay, retry, cancel and walk away while Stripe's
answers are lost, late or refused and its webhooks arrive shuffled and twice; at the end
nobody was charged twice, no money stands for a booking that is not BOOKED, no seat is
lost, and every answer a client got is still true. PostgreSQL only (row locks and real
concurrency: skipped on SQLite, like the other concurrency tests).

The run, drawn from a fixed seed (printed; `STRIPE_CHAOS_SEED` replays another):

- `CLIENTS` threads, each a customer with its own token, API client and database
  connection, make `BOOKINGS_EACH` bookings each through the API (POST /api/v1/bookings)
  and pay them (POST /api/v1/payments, an Idempotency-Key per attempt, the payment method
  one of a card that pays, one that is declined and one that asks for 3-D Secure), resend
  the same key on 503 and on 409 `idempotency_key_in_use` / `payment_in_progress` (a few
  times at most), sometimes send the first request twice at once (a double click),
  sometimes try another card with a new key after a decline, or a new key after giving up;
  then cancel some bookings paid or not (PATCH .../cancel, resent on 409 and 503) and walk
  away from others;
- meanwhile, at the fake Stripe served on a real socket (`served_stripe`): creates and
  confirms whose connection drops after they were applied, or before; answers later than
  the adapter's 0.5 s timeout; a proxy's 502 after a confirm was applied; 500s and drops on
  refunds and cancels (`stripe_fake.on`); customers finish some 3-D Secure challenges, or
  fail them (`complete_action`), and leave the others; two webhook senders post the fake's
  events to POST /api/v1/payments/stripe/webhook, shuffled, with duplicates (some sent by
  both senders at once), and send again the ones answered 503;
- then the clock moves past every hold and payment attempt window and
  `cleanup_stale_bookings` runs until a run finds nothing (at most three runs; its first
  run meets a dropped look-up and a dropped cancel), and every event is delivered once more.

What is proven, exactly, against Stripe's books (the fake's) and ours:

- no double charge: no payment reference took money twice (`charged_twice() == {}`), and
  at most one intent took money per booking;
- no charge stands without its booking: every intent holding money not refunded belongs to
  a BOOKED booking, and every BOOKED booking has exactly one (`assert_money_matches_bookings`
  with `standing()`); every REFUNDED payment was refunded at Stripe;
- nothing is left half-way: no intent left waiting for 3-D Secure (customers who come back
  after cleanup and pass it would be charged for a settled booking), no booking PENDING,
  none INITIATED with its seats held past its hold, no payment in flight; every booking
  BOOKED or CANCELLED; the seat ledger matches the bookings (`assert_bookings_match_ledger`);
- what clients were told holds: a payment answered 201 whose booking was not cancelled
  afterwards is BOOKED; a cancel answered 200, or asked for after a 201, ends CANCELLED;
- no answer was a 500: every status is 2xx, 4xx or 503 (a view that raised counts as 500),
  webhooks answered only 200, 503 or 409 resource_busy (Stripe sends those again), and the
  last delivery of every event changed nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings.models import Booking
from payments.models import Payment, StripeEvent
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings
from tests.support.api import patch_cancel, post_booking, post_payment
from tests.support.fake_stripe import FakeStripe, Fault, dropped, late, proxy_answers, signed

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SEED = int(os.environ.get("STRIPE_CHAOS_SEED", "20270101"))
CLIENTS, BOOKINGS_EACH, MAX_SEATS = 8, 8, 3
WEBHOOK = "/api/v1/payments/stripe/webhook"
WEBHOOK_SENDERS = 2

# What a customer does with a booking, and how often (weights).
PLANS = {"pay": 40, "pay_then_cancel": 25, "pay_once_and_leave": 10, "cancel_unpaid": 10, "abandon": 15}
PAYMENT_METHODS = {"pm_card_visa": 50, "pm_card_chargeDeclined": 20, "pm_card_threeDSecure2Required": 30}
DOUBLE_CLICK, OTHER_CARD_AFTER_DECLINE, NEW_KEY_AFTER_GIVING_UP = 0.15, 0.6, 0.4
TRIES = 5
RETRY_CODES = {"idempotency_key_in_use", "payment_in_progress", "resource_busy"}

LATE = 0.8  # Seconds: past the adapter's PAYMENT_GATEWAY_TIMEOUT (0.5 s in the tests).
FAULTS: dict[str, tuple[Fault, ...]] = {
    "create": (dropped(applied=True), dropped(applied=False), late(LATE)),
    "confirm": (dropped(applied=True), dropped(applied=False), late(LATE), proxy_answers(502, applied=True)),
    "refund": (proxy_answers(500, applied=False), proxy_answers(500, applied=True), dropped(applied=True)),
    "cancel": (dropped(applied=True), proxy_answers(500, applied=False)),
}
FAULT_WEIGHTS = {"create": 2, "confirm": 4, "refund": 2, "cancel": 1}
FAULTS_WAITING = 2  # At most this many queued per kind: they are met soon after they are made.
THREE_D_SECURE_SUCCEEDS, ABANDONS_3DS = 0.6, 0.35
# Events our endpoint does not get during the load (it was down for them): they arrive while
# cleanup runs, after cleanup has reconciled their payments with Stripe's books.
HELD_BACK = 0.2
SUMMARY = re.compile(r"expired=\d+ .*failed=\d+")
# 503: Stripe must send it again; 409 resource_busy (a row lock held too long): the same.
ALLOWED_WEBHOOK = {(200, ""), (503, "payment_gateway_unavailable"), (409, "resource_busy")}


def describe(kind: str, fault: Fault) -> str:
    if fault.action == "drop":
        return f"{kind} dropped {'after' if fault.applied else 'before'} applying"
    if fault.action == "late":
        return f"{kind} answered {fault.seconds:g} s late"
    return f"{kind} answered {fault.status} ({'applied' if fault.applied else 'not applied'})"


@dataclass
class Books:
    """What clients and senders saw, shared by the threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter = field(default_factory=Counter)  # (endpoint, status, code) -> count
    errors: list[str] = field(default_factory=list)  # 500s, raised views, broken threads
    flows: Counter = field(default_factory=Counter)
    told_paid: set[int] = field(default_factory=set)  # a payment answered 201
    cancel_asked: set[int] = field(default_factory=set)  # a cancel sent after being told paid
    told_cancelled: set[int] = field(default_factory=set)  # a cancel answered 200 CANCELLED
    faults: Counter = field(default_factory=Counter)  # injected, by description
    completed_3ds: Counter = field(default_factory=Counter)  # succeeded / failed
    deliveries: Counter = field(default_factory=Counter)  # webhook status -> count

    def answer(self, endpoint: str, status: int, code: str) -> None:
        with self.lock:
            self.answers[endpoint, status, code] += 1
            if not (200 <= status < 300 or 400 <= status < 500 or status == 503):
                self.errors.append(f"{endpoint} answered {status} {code}")

    def error(self, line: str) -> None:
        with self.lock:
            self.errors.append(line)

    def note(self, flow: str) -> None:
        with self.lock:
            self.flows[flow] += 1


def _api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def _code(response) -> str:
    if response.status_code < 400:
        return ""
    try:
        return str(response.json().get("code", ""))
    except ValueError:
        return ""


def _retryable(response) -> bool:
    return response is not None and (
        response.status_code == 503 or (response.status_code == 409 and _code(response) in RETRY_CODES)
    )


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


# The customers ------------------------------------------------------------------------------


class Customer:
    def __init__(self, index: int, token: str, flight_id: int, books: Books) -> None:
        self.index, self.token, self.flight_id, self.books = index, token, flight_id, books
        self.rng = random.Random(f"{SEED}:customer:{index}")
        self.api = _api(token)

    def run(self) -> None:
        try:
            for _ in range(BOOKINGS_EACH):
                self.one_booking()
        except BaseException:
            self.books.error(f"customer {self.index} broke:\n{traceback.format_exc()}")
        finally:
            connection.close()

    def send(self, endpoint: str, call, api: APIClient | None = None):
        """One request through the API; its answer is counted. None if the view raised (a 500)."""
        try:
            response = call(api or self.api)
        except Exception:
            self.books.error(f"{endpoint} raised (a 500):\n{traceback.format_exc()}")
            return None
        self.books.answer(endpoint, response.status_code, _code(response))
        return response

    def pause(self) -> None:
        time.sleep(self.rng.uniform(0.03, 0.15))

    def one_booking(self) -> None:
        plan = _pick(self.rng, PLANS)
        seats = self.rng.randint(1, MAX_SEATS)
        response = self.send("POST /bookings", lambda api: post_booking(api, self.flight_id, seats))
        if response is None or response.status_code != 201:
            self.books.note("not booked")
            return
        booking = response.json()
        booking_id, amount = booking["id"], booking["totalCost"]
        if plan == "abandon":
            self.books.note("abandoned unpaid")
            return
        if plan == "cancel_unpaid":
            self.cancel(booking_id)
            self.books.note("cancelled unpaid")
            return
        outcome = self.pay(booking_id, amount, retry=plan != "pay_once_and_leave")
        self.books.note(f"payment {outcome}")
        if plan == "pay_then_cancel":
            with self.books.lock:
                if booking_id in self.books.told_paid:
                    self.books.cancel_asked.add(booking_id)
            self.cancel(booking_id)

    def pay(self, booking_id: int, amount: str, *, retry: bool, method: str | None = None, depth: int = 0) -> str:
        """One key, resent while the answers invite it. Answers what came of it."""
        method = method or _pick(self.rng, PAYMENT_METHODS)
        key = f"chaos-{uuid.UUID(int=self.rng.getrandbits(128))}"

        def attempt(api: APIClient):
            return post_payment(api, booking_id, key, amount, payment_method=method)

        response = None
        for number in range(TRIES if retry else 1):
            if number == 0 and self.rng.random() < DOUBLE_CLICK:
                answers = self.double_click(attempt)
            else:
                answers = [self.send("POST /payments", attempt)]
            for answer in answers:
                if answer is not None and answer.status_code == 201:
                    with self.books.lock:
                        self.books.told_paid.add(booking_id)
            settled = [answer for answer in answers if answer is not None and not _retryable(answer)]
            response = settled[0] if settled else answers[0]
            if response is None or not _retryable(response):
                break
            self.pause()
        if response is None:
            return "broken"
        if response.status_code == 201 or booking_id in self.books.told_paid:
            return "paid"
        if response.status_code == 202:
            return "waiting for 3-D Secure"
        if depth == 0 and response.status_code == 402 and self.rng.random() < OTHER_CARD_AFTER_DECLINE:
            return "declined, then " + self.pay(booking_id, amount, retry=True, method="pm_card_visa", depth=1)
        if depth == 0 and _retryable(response) and retry and self.rng.random() < NEW_KEY_AFTER_GIVING_UP:
            return "gave up, then " + self.pay(booking_id, amount, retry=True, method=method, depth=1)
        if _retryable(response):
            return "gave up"
        return f"refused {response.status_code} {_code(response)}"

    def double_click(self, attempt) -> list:
        """The first request sent twice at once, with the same key (a second API client)."""
        second: list = [None]

        def other() -> None:
            try:
                second[0] = self.send("POST /payments", attempt, api=_api(self.token))
            finally:
                connection.close()

        thread = threading.Thread(target=other)
        thread.start()
        first = self.send("POST /payments", attempt)
        thread.join()
        return [first, second[0]]

    def cancel(self, booking_id: int) -> None:
        for _ in range(TRIES):
            response = self.send("PATCH cancel", lambda api: patch_cancel(api, booking_id))
            if response is None:
                return
            if response.status_code == 200:
                if response.json().get("status") == "CANCELLED":
                    with self.books.lock:
                        self.books.told_cancelled.add(booking_id)
                return
            if not _retryable(response):
                return
            self.pause()


# Stripe's side: faults, customers at 3-D Secure, webhooks ------------------------------------


class Inbox:
    """The events to send: new ones as they happen, the ones answered 503 again, and
    duplicates (Stripe delivers at least once, in no order)."""

    def __init__(self, fake: FakeStripe, rng: random.Random) -> None:
        self.fake, self.rng = fake, rng
        self.lock = threading.Lock()
        self.taken = 0
        self.again: list[dict] = []
        self.sent: list[dict] = []
        self.held: list[dict] = []

    def take(self) -> list[dict]:
        with self.fake.lock:
            events = list(self.fake.events)
        with self.lock:
            new = events[self.taken :]
            self.taken = len(events)
            self.held += [event for event in new if self.rng.random() < HELD_BACK]
            batch = [event for event in new if event not in self.held] + self.again
            self.again = []
            if self.sent:
                batch += self.rng.sample(self.sent, k=min(len(self.sent), self.rng.randint(0, 3)))
            self.sent += batch
            # Some go to both senders: the same event handled twice at once.
            self.again += [event for event in batch if self.rng.random() < 0.15]
        self.rng.shuffle(batch)
        return batch

    def retry(self, event: dict) -> None:
        with self.lock:
            self.again.append(event)


class Stripe:
    """What happens at Stripe and in customers' browsers meanwhile, from the seed."""

    def __init__(self, fake: FakeStripe, books: Books) -> None:
        self.fake, self.books = fake, books
        self.rng = random.Random(f"{SEED}:stripe")
        self.inbox = Inbox(fake, random.Random(f"{SEED}:inbox"))
        self.stopping = threading.Event()
        self.decided: dict[str, bool] = {}  # intent id -> whether its customer finishes 3-D Secure

    def chaos(self) -> None:
        try:
            while not self.stopping.wait(self.rng.uniform(0.02, 0.1)):
                if self.rng.random() < 0.7:
                    self.inject()
                else:
                    self.finish_3ds()
        except BaseException:
            self.books.error(f"the chaos thread broke:\n{traceback.format_exc()}")

    def inject(self) -> None:
        kind = _pick(self.rng, FAULT_WEIGHTS)
        fault = self.rng.choice(FAULTS[kind])
        with self.fake.lock:
            if len(self.fake.faults.get(kind, [])) >= FAULTS_WAITING:
                return
            self.fake.faults.setdefault(kind, []).append(fault)
        with self.books.lock:
            self.books.faults[describe(kind, fault)] += 1

    def finish_3ds(self) -> None:
        with self.fake.lock:
            waiting = sorted(i for i, intent in self.fake.intents.items() if intent["status"] == "requires_action")
        # Some customers finish the challenge soon, others late, others never (before cleanup).
        for intent_id in waiting:
            if intent_id not in self.decided:
                self.decided[intent_id] = self.rng.random() >= ABANDONS_3DS
        waiting = [intent_id for intent_id in waiting if self.decided[intent_id]]
        for intent_id in self.rng.sample(waiting, k=min(len(waiting), self.rng.randint(0, 2))):
            succeed = self.rng.random() < THREE_D_SECURE_SUCCEEDS
            try:
                self.fake.complete_action(intent_id, succeed=succeed)
            except ValueError:
                continue  # Cancelled meanwhile (the webhook's handling of a failure).
            with self.books.lock:
                self.books.completed_3ds["succeeded" if succeed else "failed"] += 1

    def during_cleanup(self) -> None:
        """While cleanup's first run reconciles: the last customers finish their challenges
        (or fail them), and the events held back arrive, in no order."""
        client = Client()
        try:
            with self.inbox.lock:
                held, self.inbox.held = self.inbox.held, []
            self.rng.shuffle(held)
            for number in range(max(len(held), 8)):
                time.sleep(self.rng.uniform(0.0, 0.03))
                if number % 2 == 0:
                    self.finish_3ds()
                if number < len(held) and deliver(client, held[number], self.books) != 200:  # Stripe sends it again.
                    self.inbox.retry(held[number])
        except BaseException:
            self.books.error(f"the thread during cleanup broke:\n{traceback.format_exc()}")
        finally:
            connection.close()

    def send_webhooks(self, index: int) -> None:
        rng, client = random.Random(f"{SEED}:sender:{index}"), Client()
        try:
            while not self.stopping.wait(rng.uniform(0.05, 0.3)):
                for event in self.inbox.take():
                    if deliver(client, event, self.books) != 200:  # Stripe sends it again.
                        self.inbox.retry(event)
        except BaseException:
            self.books.error(f"webhook sender {index} broke:\n{traceback.format_exc()}")
        finally:
            connection.close()


def deliver(client: Client, event: dict, books: Books) -> int:
    """One event, signed, as Stripe's sender posts it (`FakeStripe.deliver`), its answer counted."""
    body, headers = signed(event)
    try:
        response = client.post(
            WEBHOOK,
            data=body,
            content_type=headers["Content-Type"],
            headers={"Stripe-Signature": headers["Stripe-Signature"]},
        )
    except Exception:
        books.error(f"webhook {event['type']} {event['id']} raised (a 500):\n{traceback.format_exc()}")
        return 500
    status, code = response.status_code, _code(response)
    with books.lock:
        books.deliveries[status, code] += 1
        if (status, code) not in ALLOWED_WEBHOOK:
            books.errors.append(f"webhook {event['type']} {event['id']} answered {status} {code}")
    return status


# Cleanup and the end state -------------------------------------------------------------------


def run_cleanup() -> tuple[str, dict[str, int]]:
    out = StringIO()
    with contextlib.suppress(CommandError):  # Some steps failed (the faults): the next run retries them.
        call_command("cleanup_stale_bookings", stdout=out)
    match = SUMMARY.search(out.getvalue())
    assert match, out.getvalue()
    return match.group(0), {name: int(count) for name, count in re.findall(r"(\w+)=(\d+)", match.group(0))}


def statuses() -> dict[str, dict[int, str]]:
    return {
        "bookings": dict(Booking.objects.values_list("pk", "status")),
        "seats": dict(Booking.objects.values_list("pk", "seats_state")),
        "payments": dict(Payment.objects.values_list("pk", "status")),
    }


# The test -----------------------------------------------------------------------------------


@pytest.fixture
def quiet_logs():
    """The request log says a line per request: keep the warnings and errors only."""
    logging.disable(logging.INFO)
    yield
    logging.disable(logging.NOTSET)


def test_stripe_chaos_charges_once_leaks_nothing_and_keeps_its_word(
    served_stripe, stripe_fake, clock, settings, quiet_logs
):
    started = time.monotonic()
    print(f"\nstripe chaos: seed {SEED}, {CLIENTS} customers x {BOOKINGS_EACH} bookings")
    flight = make_flight(capacity=CLIENTS * BOOKINGS_EACH * MAX_SEATS)
    users = [get_user_model().objects.create_user(username=f"chaos-{i}") for i in range(CLIENTS)]
    tokens = [Token.objects.create(user=user).key for user in users]
    books = Books()
    stripe = Stripe(stripe_fake, books)

    # The load: customers, and Stripe's side meanwhile.
    customers = [
        threading.Thread(target=Customer(i, token, flight.pk, books).run, name=f"customer-{i}")
        for i, token in enumerate(tokens)
    ]
    helpers = [threading.Thread(target=stripe.chaos, name="chaos")] + [
        threading.Thread(target=stripe.send_webhooks, args=(i,), name=f"webhooks-{i}") for i in range(WEBHOOK_SENDERS)
    ]
    for thread in helpers + customers:
        thread.start()
    for thread in customers:
        thread.join(120)
    stripe.stopping.set()
    for thread in helpers:
        thread.join(30)
    assert not any(thread.is_alive() for thread in helpers + customers), "a thread is stuck"
    with stripe_fake.lock:
        unplayed = Counter(describe(kind, fault) for kind, faults in stripe_fake.faults.items() for fault in faults)
        stripe_fake.faults.clear()
    load_seconds = time.monotonic() - started

    # Cleanup, as cron would run it long after every hold and payment attempt window ended;
    # its first run meets a dropped look-up and a dropped cancel.
    clock.advance(minutes=settings.BOOKING_HOLD_MINUTES + 60)
    stripe_fake.on("retrieve", dropped(applied=False))
    stripe_fake.on("cancel", dropped(applied=True))
    runs = []
    for number in range(3):
        meanwhile = threading.Thread(target=stripe.during_cleanup, name="during-cleanup")
        if number == 0:
            meanwhile.start()
        line, counts = run_cleanup()
        if number == 0:
            meanwhile.join(60)
            assert not meanwhile.is_alive()
        runs.append(line)
        if number > 0 and not any(counts.values()):
            break
    with stripe_fake.lock:
        unplayed.update(describe(kind, fault) for kind, faults in stripe_fake.faults.items() for fault in faults)
        stripe_fake.faults.clear()
    played = books.faults + Counter({"retrieve dropped before applying": 1, "cancel dropped after applying": 1})
    played.subtract(unplayed)

    # Customers who come back to their 3-D Secure page now and pass it: cleanup must have
    # cancelled every intent still waiting for them, or this charges a settled booking.
    before = statuses()
    with stripe_fake.lock:
        left_waiting = sorted(i for i, intent in stripe_fake.intents.items() if intent["status"] == "requires_action")
    for intent_id in left_waiting:
        stripe_fake.complete_action(intent_id, succeed=True)

    # Every event once more, in no order: nothing may change.
    with stripe_fake.lock:
        every_event = list(stripe_fake.events)
    random.Random(f"{SEED}:last").shuffle(every_event)
    web = Client()
    last = Counter(deliver(web, event, books) for event in every_event)
    after = statuses()

    _report(books, stripe_fake, runs, played, unplayed, last, load_seconds, time.monotonic() - started)

    # No answer was a 500, and no thread broke.
    assert left_waiting == [], f"intents cleanup left open for the customer to complete: {left_waiting}"
    assert not books.errors, "\n".join(books.errors[:10])
    assert set(last) == {200}, last
    # Cleanup settled everything: its last run found nothing, and the last events changed nothing.
    assert not any(run_counts(runs[-1]).values()), runs
    assert before == after, {
        what: {pk: (before[what].get(pk), now) for pk, now in after[what].items() if before[what].get(pk) != now}
        for what in after
    }

    # No double charge: one taking per payment reference, at most one per booking.
    assert stripe_fake.charged_twice() == {}
    with stripe_fake.lock:
        intents = [dict(intent) for intent in stripe_fake.intents.values()]
        charges = {charge_id: dict(charge) for charge_id, charge in stripe_fake.charges.items()}
        refunds = [dict(refund) for refund in stripe_fake.refunds.values()]
    taken_per_booking = Counter(int(i["metadata"]["booking_id"]) for i in intents if i["status"] == "succeeded")
    assert {pk: n for pk, n in taken_per_booking.items() if n > 1} == {}
    # No money stands for a booking that is not BOOKED; each BOOKED booking holds exactly one charge.
    standing = stripe_fake.standing()
    assert_money_matches_bookings(standing=standing)
    booking_of = dict(Payment.objects.values_list("reference", "booking_id"))
    status_of = dict(Booking.objects.values_list("pk", "status"))
    assert {ref: status_of[booking_of[ref]] for ref in standing if status_of[booking_of[ref]] != "BOOKED"} == {}
    booked = {pk for pk, status in status_of.items() if status == Booking.Status.BOOKED}
    assert Counter(booking_of[ref] for ref in standing) == Counter(booked)
    # Every payment we call refunded was refunded at Stripe, and each charge at most once.
    refunded_intents = Counter(refund["payment_intent"] for refund in refunds)
    assert {intent: n for intent, n in refunded_intents.items() if n > 1} == {}
    for payment in Payment.objects.filter(status=Payment.Status.REFUNDED):
        assert refunded_intents[payment.gateway_reference] == 1, payment.pk

    # Nothing is left half-way, and the seats add up.
    assert set(status_of.values()) <= {Booking.Status.BOOKED, Booking.Status.CANCELLED}, Counter(status_of.values())
    assert not Booking.objects.filter(status=Booking.Status.PENDING).exists()
    assert not Booking.objects.filter(
        status=Booking.Status.INITIATED, seats_state=Booking.SeatsState.RESERVED, expires_at__lte=clock.now
    ).exists()
    assert not Payment.objects.filter(status__in=Payment.IN_FLIGHT).exists()
    assert (
        not Booking.objects.filter(status=Booking.Status.CANCELLED)
        .exclude(seats_state=Booking.SeatsState.RELEASED)
        .exists()
    ), Counter(Booking.objects.filter(status="CANCELLED").values_list("seats_state", flat=True))
    assert_bookings_match_ledger(flight)

    # What clients were told holds.
    told_booked = books.told_paid - books.cancel_asked - books.told_cancelled
    assert {pk: status_of[pk] for pk in told_booked if status_of[pk] != Booking.Status.BOOKED} == {}
    cancelled = books.told_cancelled | books.cancel_asked
    assert {pk: status_of[pk] for pk in cancelled if status_of[pk] != Booking.Status.CANCELLED} == {}
    # The chaos was there: faults met, challenges finished both ways, events sent twice.
    assert sum(n for n in played.values() if n > 0) >= 10, played
    assert books.completed_3ds["succeeded"] and books.completed_3ds["failed"], books.completed_3ds
    assert sum(books.deliveries.values()) > len(every_event) * 2
    assert len(charges) >= 1


def run_counts(line: str) -> dict[str, int]:
    return {name: int(count) for name, count in re.findall(r"(\w+)=(\d+)", line)}


def _report(books, fake, runs, played, unplayed, last, load_seconds, total_seconds) -> None:
    with fake.lock:
        intents = Counter(intent["status"] for intent in fake.intents.values())
        charges, refunds, events = len(fake.charges), len(fake.refunds), Counter(e["type"] for e in fake.events)
        requests_ = Counter((r.kind, r.status) for r in fake.received)
    print(f"load {load_seconds:.1f} s, whole test {total_seconds:.1f} s")
    print("flows:", dict(sorted(books.flows.items())))
    for endpoint in ("POST /bookings", "POST /payments", "PATCH cancel"):
        counts = sorted((s, c, n) for (e, s, c), n in books.answers.items() if e == endpoint)
        print(f"  {endpoint}: " + ", ".join(f"{s}{' ' + c if c else ''}={n}" for s, c, n in counts))
    print("bookings:", dict(Counter(Booking.objects.values_list("status", flat=True))))
    print("payments:", dict(Counter(Payment.objects.values_list("status", flat=True))))
    print(f"stripe: intents {dict(intents)}, charges {charges}, refunds {refunds}")
    print("stripe requests (kind, status):", dict(sorted(requests_.items(), key=str)))
    print("events:", dict(events), f"webhook deliveries {dict(books.deliveries)}, last round {dict(last)}")
    print("events handled:", dict(Counter(StripeEvent.objects.values_list("type", flat=True))))
    print("3-D Secure finished by customers:", dict(books.completed_3ds))
    print("faults played:", {k: n for k, n in sorted(played.items()) if n > 0}, "unplayed:", dict(unplayed))
    print("told: paid", len(books.told_paid), "cancel asked after paid", len(books.cancel_asked),
          "cancelled", len(books.told_cancelled))  # fmt: skip
    for number, line in enumerate(runs, 1):
        print(f"cleanup run {number}: {line}")
    print(f"errors: {len(books.errors)}")
    for line in books.errors[:5]:
        print("  -", line[:2000])
