"""Query budgets of the hot API calls: a ceiling on the SQL statements each one sends, at the
count measured when it was written, so that an extra query (an N+1, a repeated read) fails
here before it ships. Lower a budget when the code gets cheaper.

Default settings: the in-process Flights adapter and the simulated payment gateway (whose
own statements, in our database, stand in for an HTTP call to a real gateway).

Measured with real transactions (`transaction=True`), as production runs: Django counts
BEGIN / COMMIT / ROLLBACK as statements. Inside a test transaction they would be savepoints,
and a failed claim would cost ROLLBACK TO SAVEPOINT + RELEASE instead of one ROLLBACK.

Both databases send the same statements, but for one: on PostgreSQL an audit event and its
outbox event are one INSERT (a data-modifying WITH, `statements.insert_together`), which
SQLite sends as two. PostgreSQL's lock-wait bound is set once per connection when it opens
(bookings_project/db.py), not once per transaction.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from payments import services as payment_services
from payments.models import Payment
from tests.factories import initiated, make_flight, paid
from tests.support.api import post_payment
from workflows import services as workflow_services

pytestmark = pytest.mark.django_db(transaction=True)

BOOKINGS = "/api/v1/bookings"
PAY = "/api/v1/payments"


def _budget(*, sqlite: int, postgresql: int) -> int:
    """The budget measured on this database."""
    return {"sqlite": sqlite, "postgresql": postgresql}[connection.vendor]


def _queries_of(client, url: str) -> tuple[int, dict]:
    """How many statements a GET sends, and its body."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(captured.captured_queries), response.json()


# Writes ------------------------------------------------------------------------------------


def test_create_a_booking(user_client, flight, django_assert_max_num_queries):
    # token auth 1; the flight's price and seats left, unlocked 1; one transaction (the
    #   in-process inventory joins it): BEGIN, INSERT booking, INSERT hold, INSERT event,
    #   INSERT outbox event (with the event's on PostgreSQL), UPDATE flight (seats left, the
    #   price read; locked last), COMMIT 7 (6);
    # after the commit, the worker's task queued 1.
    # It was 16 (17 on PostgreSQL) as a saga of separate commits with re-reads.
    with django_assert_max_num_queries(_budget(sqlite=10, postgresql=9)):
        response = user_client.post(BOOKINGS, {"flightId": flight.pk, "numberOfSeats": 2}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["status"] == "INITIATED"


def test_pay(user, user_client, flight, django_assert_max_num_queries):
    booking = initiated(user, flight)
    # token auth 1; claim the key: INSERT key (autocommit) 1;
    # start: BEGIN, UPDATE booking PENDING (only if the caller's, unpaid, unexpired, this
    #   amount), INSERT event, INSERT payment, COMMIT 5;
    # simulated gateway: INSERT charge (autocommit) 1 (an HTTP call in production);
    # record: BEGIN, UPDATE booking BOOKED (if still PENDING), UPDATE payment (if still
    #   PROCESSING), INSERT event, INSERT outbox event (confirmed; with the event's on
    #   PostgreSQL), store the answer on the key, COMMIT 7 (6);
    # after the commit, the worker's task queued 1.
    # It was 22 (24 on PostgreSQL): the claim in its own transaction, rows locked and re-read.
    with django_assert_max_num_queries(_budget(sqlite=16, postgresql=15)):
        response = post_payment(user_client, booking.pk, "pay-once", booking.total_cost)

    assert response.status_code == 201, response.content
    assert response.json()["status"] == "SUCCEEDED"


def test_replay_of_a_payment(user, user_client, flight, django_assert_max_num_queries):
    booking = initiated(user, flight)
    first = post_payment(user_client, booking.pk, "pay-twice", booking.total_cost)
    assert first.status_code == 201, first.content
    # token auth 1; claim the key: INSERT key (taken) 1; the key's stored answer 1.
    with django_assert_max_num_queries(_budget(sqlite=3, postgresql=3)):
        again = post_payment(user_client, booking.pk, "pay-twice", booking.total_cost)

    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()


def test_cancel_an_unpaid_booking(user, user_client, flight, django_assert_max_num_queries):
    booking = initiated(user, flight)
    # token auth 1; booking, scoped to the caller 1; booking re-read by booking_cancel 1;
    # cancel: BEGIN, booking FOR UPDATE, UPDATE booking, INSERT event, INSERT outbox event
    #   (one on PostgreSQL), COMMIT 6 (5); the worker's task queued 1;
    # release: booking re-read 1; Flights: BEGIN, flight FOR UPDATE, hold FOR UPDATE,
    #   UPDATE flight, UPDATE hold, COMMIT 6;
    # seats_state compare-and-set 1; booking re-read for the answer 1; its payments 1.
    with django_assert_max_num_queries(_budget(sqlite=20, postgresql=19)):
        response = user_client.post(f"{BOOKINGS}/{booking.pk}/cancel")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "CANCELLED"


def test_cancel_a_paid_booking_refunds_it(user, user_client, flight, django_assert_max_num_queries):
    booking = paid(user, flight).booking
    # token auth 1; booking, scoped to the caller 1; booking re-read by booking_cancel 1;
    # UPDATE cancel_requested_at 1;
    # refund: SUCCEEDED payments of the booking 1, the payment by id 1, simulated gateway: BEGIN,
    #   charge FOR UPDATE, UPDATE charge, COMMIT 4; BEGIN, UPDATE payment REFUNDED, INSERT
    #   outbox event (refunded), COMMIT 4; the worker's task queued 1; payment re-read 1;
    # cancel: BEGIN, booking FOR UPDATE, standing charge EXISTS, UPDATE booking, INSERT event,
    #   INSERT outbox event (one on PostgreSQL), COMMIT 7 (6); the worker's task queued 1;
    # release as for an unpaid booking 9; the answer's payments 1.
    with django_assert_max_num_queries(_budget(sqlite=34, postgresql=33)):
        response = user_client.post(f"{BOOKINGS}/{booking.pk}/cancel")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "CANCELLED"
    assert Payment.objects.get(booking=booking).status == Payment.Status.REFUNDED


# Reads -------------------------------------------------------------------------------------


def test_get_a_booking(user, user_client, flight, django_assert_max_num_queries):
    booking = initiated(user, flight)
    # token auth 1; booking, scoped to the caller 1; its payments (the answer's `payment`) 1.
    with django_assert_max_num_queries(_budget(sqlite=3, postgresql=3)):
        response = user_client.get(f"{BOOKINGS}/{booking.pk}")

    assert response.status_code == 200
    assert response.json()["id"] == booking.pk


def test_get_a_payment(user, user_client, flight, django_assert_max_num_queries):
    payment = Payment.objects.get(booking=paid(user, flight).booking)
    # token auth 1; payment, scoped to the caller 1.
    with django_assert_max_num_queries(_budget(sqlite=2, postgresql=2)):
        response = user_client.get(f"{PAY}/{payment.pk}")

    assert response.status_code == 200
    assert response.json()["id"] == payment.pk


# token auth 1; booking, scoped to the caller 1; COUNT of its events 1; the page of events 1.
EVENTS_BUDGET = {"sqlite": 4, "postgresql": 4}


def test_events_cost_the_same_for_one_event_as_for_many(user, user_client, flight):
    booking = initiated(user, flight)
    url = f"{BOOKINGS}/{booking.pk}/events"
    one, body = _queries_of(user_client, url)
    assert body["count"] == 1

    payment_services.payment_create(
        caller=user, booking_id=booking.pk, amount=booking.total_cost, idempotency_key="pay-then-cancel"
    )
    workflow_services.booking_cancel(booking_id=booking.pk)
    many, body = _queries_of(user_client, url)
    assert body["count"] == 4  # created, payment started, paid, cancelled

    assert one == many, f"{one} statements for 1 event, {many} for 4: a query per event"
    assert many <= _budget(**EVENTS_BUDGET)


# A page of bookings: token auth 1; COUNT of the caller's bookings 1; the page 1; the page's
# payments, for each booking's `payment` 1. Nothing per booking.
LIST_BUDGET = {"sqlite": 4, "postgresql": 4}
PAGE = f"{BOOKINGS}?pageSize=50"


def test_a_page_of_50_bookings_costs_what_a_page_of_1_does(user, other_user, user_client):
    flight = make_flight(capacity=120)
    initiated(user, flight, 1)
    initiated(other_user, flight, 1)  # Not the caller's: neither counted nor listed.
    one, body = _queries_of(user_client, PAGE)
    assert len(body["results"]) == 1

    for _ in range(49):
        initiated(user, flight, 1)
    fifty, body = _queries_of(user_client, PAGE)
    assert len(body["results"]) == 50 and body["count"] == 50

    assert one == fifty, f"{one} statements for 1 booking, {fifty} for 50: a query per booking"
    assert fifty <= _budget(**LIST_BUDGET)


def test_staff_page_of_everyones_50_bookings_costs_what_a_page_of_1_does(user, other_user, staff_client):
    flight = make_flight(capacity=120)
    initiated(user, flight, 1)
    one, body = _queries_of(staff_client, PAGE)
    assert len(body["results"]) == 1

    for index in range(49):
        initiated(other_user if index % 2 else user, flight, 1)
    fifty, body = _queries_of(staff_client, PAGE)
    assert len(body["results"]) == 50
    assert {row["userId"] for row in body["results"]} == {user.pk, other_user.pk}

    assert one == fifty, f"{one} statements for 1 booking, {fifty} for 50: a query per booking"
    assert fifty <= _budget(**LIST_BUDGET)


def test_a_scrape_of_metrics(client, settings, django_assert_max_num_queries):
    # The database's clock 1; the last cleanup run, the last with no failed step, the newest
    #   heartbeat 3; cleanup's ten work sets, a count and the oldest in one each 10; deliveries
    #   pending, failed 2; the oldest task due 1. Counting the events sends nothing.
    settings.METRICS_TOKEN = "metrics-token-for-tests"
    with django_assert_max_num_queries(17):
        response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-for-tests")

    assert response.status_code == 200
