"""The audit trail of booking status changes (`BookingEvent`, `bookings/audit.py`).

What this file proves:

1. Every transition of docs/design.md#state-machine writes exactly one event, with the exact from, to, reason,
   actor, actor_user and the request id of the request that caused it (the client's
   `X-Request-ID`, or the one it was given; a cleanup run's id `cleanup-<hex>`, the same as
   its `CleanupRun.run_id`). Calls straight to a service outside any request are `system`;
   the gateway's answer is `gateway` even inside another actor's block.
2. After a mixed day covering all of them, every booking's history is an unbroken chain:
   ""→INITIATED first, each event starting where the previous one ended, the last one ending
   at the booking's status. A status change that forgot to record would break it.
3. Atomicity: when the event's INSERT fails (the database refuses it), the status change it
   belongs to rolls back with it (cancel, payment start, the gateway's answer, expiry).
4. `GET /api/v1/bookings/{id}/events`: exact body, oldest first, paginated, 401/404 rules,
   documented in the OpenAPI schema.
5. Admin: the history inline on the booking page, read-only; the event list searchable by
   request id and cleanup run id.
6. PostgreSQL, real threads: twenty concurrent cancels write one event; payments racing
   cleanup on expired bookings leave one terminal event per booking, each attributed to the
   request or the cleanup run that actually made it.

Two defects these tests found are fixed: the history was ordered by the writing host's clock
rather than by write order, and the schema did not list the endpoint's page parameters.

Faults are injected only at the boundaries: the in-process Flights service's functions, the
simulated payment gateway, and the database connection (an `execute_wrapper` that refuses the
audit row's INSERT). The services, the audit module and the database are real.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings.audit import acting_as
from bookings.models import Booking, BookingEvent, CleanupRun
from bookings.services import booking_create
from bookings_project import request_id
from bookings_project.exceptions import PaymentGatewayUnavailable
from flights import selectors as flight_selectors
from flights import services as flight_services
from flights.models import SeatHold
from payments import services as payment_services
from payments.gateway import SimulatedPaymentGateway
from payments.models import Payment, SimulatedCharge
from payments.selectors import payment_attempt_window
from tests.factories import make_flight
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings, assert_problem, race
from workflows import cleanup
from workflows.cleanup import cleanup_stale_bookings
from workflows.services import booking_cancel

pytestmark = pytest.mark.django_db

INITIATED, PENDING, BOOKED, CANCELLED = "INITIATED", "PENDING", "BOOKED", "CANCELLED"
SEATS = 2
PAST_THE_HOLD = {"minutes": 11}  # BOOKING_HOLD_MINUTES is 10; also past any payment attempt window.
CHANGELIST = "/admin/bookings/booking/"
EVENT_CHANGELIST = "/admin/bookings/bookingevent/"
RUN_ID = re.compile(r"cleanup-[0-9a-f]{32}")


# 1. Every transition, one event, exact --------------------------------------------------------


def test_creation_and_a_successful_payment_are_recorded_with_the_requests_ids(user, user_client, flight):
    booking = book(user_client, flight, "req-book")
    assert trail(booking) == [created(user, "req-book")]

    response = pay(user_client, booking, "req-pay")

    assert response.status_code == 201, response.content
    assert response["X-Request-ID"] == "req-pay"
    assert trail(booking) == [
        created(user, "req-book"),
        (INITIATED, PENDING, "payment_started", "user", user.pk, "req-pay"),
        # The gateway's answer to alice's request: the gateway did it, in her request.
        (PENDING, BOOKED, "payment_succeeded", "gateway", user.pk, "req-pay"),
    ]
    assert_chain(booking)


@pytest.mark.parametrize("sent", [None, "has spaces and !", "x" * 129])
def test_a_request_without_a_usable_id_is_recorded_under_the_id_it_was_given(user, user_client, flight, sent):
    extra = {} if sent is None else {"HTTP_X_REQUEST_ID": sent}
    response = user_client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 1}, format="json", **extra)

    assert response.status_code == 201, response.content
    given = response["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", given)
    booking = Booking.objects.get(pk=response.json()["id"])
    assert trail(booking) == [created(user, given)]


def test_staff_acting_for_a_customer_is_recorded_as_staff_and_the_gateway_answers_to_the_staff_payer(
    user, staff_user, staff_client, user_client, flight
):
    booking = book(staff_client, flight, "ops-book", userId=user.pk)
    assert booking.user_id == user.pk
    assert pay(staff_client, booking, "ops-pay").status_code == 201
    assert cancel(staff_client, booking, "ops-cancel").status_code == 200

    assert trail(booking) == [
        created(staff_user, "ops-book", actor="staff"),
        (INITIATED, PENDING, "payment_started", "staff", staff_user.pk, "ops-pay"),
        (PENDING, BOOKED, "payment_succeeded", "gateway", staff_user.pk, "ops-pay"),
        (BOOKED, CANCELLED, "staff", "staff", staff_user.pk, "ops-cancel"),
    ]
    assert_chain(booking)


def test_a_declined_payment_goes_back_to_initiated_and_a_new_key_pays(user, user_client, flight, settings):
    booking = book(user_client, flight, "req-book")
    settings.PAYMENT_SIMULATED_OUTCOME = "decline"

    assert_problem(pay(user_client, booking, "req-declined"), 402, "payment_declined")

    assert status_of(booking) == INITIATED
    assert trail(booking) == [
        created(user, "req-book"),
        (INITIATED, PENDING, "payment_started", "user", user.pk, "req-declined"),
        (PENDING, INITIATED, "payment_declined", "gateway", user.pk, "req-declined"),
    ]

    settings.PAYMENT_SIMULATED_OUTCOME = "approve"
    assert pay(user_client, booking, "req-again").status_code == 201
    assert trail(booking)[3:] == [
        (INITIATED, PENDING, "payment_started", "user", user.pk, "req-again"),
        (PENDING, BOOKED, "payment_succeeded", "gateway", user.pk, "req-again"),
    ]
    assert_chain(booking)


def test_a_gateway_that_definitely_failed_before_charging_goes_back_to_initiated(user, user_client, flight, settings):
    booking = book(user_client, flight, "req-book")
    settings.PAYMENT_SIMULATED_OUTCOME = "fail"  # Down: nothing charged, and we know it.

    assert_problem(pay(user_client, booking, "req-fail"), 503, "payment_gateway_unavailable")

    assert status_of(booking) == INITIATED
    assert Payment.objects.get(booking=booking).status == Payment.Status.FAILED
    assert not SimulatedCharge.objects.exists()
    assert trail(booking) == [
        created(user, "req-book"),
        (INITIATED, PENDING, "payment_started", "user", user.pk, "req-fail"),
        (PENDING, INITIATED, "payment_failed", "gateway", user.pk, "req-fail"),
    ]
    assert_chain(booking)


def test_the_customer_cancels_once_and_a_second_cancel_records_nothing(user, user_client, flight):
    booking = book(user_client, flight, "req-book")

    assert cancel(user_client, booking, "req-cancel").status_code == 200
    again = cancel(user_client, booking, "req-cancel-again")

    assert (again.status_code, again.json()["status"]) == (200, CANCELLED)
    assert trail(booking) == [created(user, "req-book"), (INITIATED, CANCELLED, "user", "user", user.pk, "req-cancel")]
    assert_chain(booking)
    assert_bookings_match_ledger(flight)


def test_staff_cancelling_over_the_api_is_recorded_as_staff(user, staff_user, user_client, staff_client, flight):
    booking = book(user_client, flight, "req-book")

    assert cancel(staff_client, booking, "ops-cancel").status_code == 200

    assert trail(booking) == [
        created(user, "req-book"),
        (INITIATED, CANCELLED, "staff", "staff", staff_user.pk, "ops-cancel"),
    ]
    assert_chain(booking)


def test_the_admin_cancel_action_is_recorded_as_staff_under_the_admin_requests_id(
    user, user_client, admin, root, flight
):
    first, second = book(user_client, flight, "req-1"), book(user_client, flight, "req-2")

    admin_cancel(admin, first, "admin-cancel-1")
    # Selecting an already cancelled booking again records nothing more for it.
    response = admin.post(
        CHANGELIST,
        {"action": "cancel_selected", "_selected_action": [first.pk, second.pk], "confirm": "yes", "reason": "dup"},
        HTTP_X_REQUEST_ID="admin-cancel-2",
    )
    assert response.status_code == 302

    assert trail(first) == [created(user, "req-1"), (INITIATED, CANCELLED, "staff", "staff", root.pk, "admin-cancel-1")]
    assert trail(second) == [
        created(user, "req-2"),
        (INITIATED, CANCELLED, "staff", "staff", root.pk, "admin-cancel-2"),
    ]
    assert_bookings_match_ledger(flight)


def test_cancelling_a_paid_booking_is_recorded_after_the_refund(user, user_client, flight):
    booking = paid(user_client, flight, "req")

    assert cancel(user_client, booking, "req-cancel").status_code == 200

    assert Payment.objects.get(booking=booking).status == Payment.Status.REFUNDED
    assert trail(booking)[-1] == (BOOKED, CANCELLED, "user", "user", user.pk, "req-cancel")
    assert len(trail(booking)) == 4
    assert_chain(booking)
    assert_money_matches_bookings()


def test_expiry_by_cleanup_is_recorded_under_the_runs_id(user, user_client, flight, clock):
    booking = book(user_client, flight, "req-book")
    clock.advance(**PAST_THE_HOLD)

    run = run_cleanup()

    assert run.counts["expired"] == 1
    assert trail(booking) == [created(user, "req-book"), (INITIATED, CANCELLED, "expired", "cleanup", None, run.run_id)]
    # A second run has nothing to do and records nothing.
    second = run_cleanup()
    assert second.run_id != run.run_id
    assert len(trail(booking)) == 2
    assert_chain(booking)
    assert_bookings_match_ledger(flight)


def test_paying_after_expiry_cancels_in_that_request(user, user_client, flight, clock):
    booking = book(user_client, flight, "req-book")
    clock.advance(**PAST_THE_HOLD)

    assert_problem(pay(user_client, booking, "req-late"), 409, "booking_expired")

    assert not Payment.objects.exists()
    assert trail(booking) == [created(user, "req-book"), (INITIATED, CANCELLED, "expired", "user", user.pk, "req-late")]
    assert_chain(booking)
    assert_bookings_match_ledger(flight)


def test_a_reserve_refused_by_the_flights_service_is_recorded_as_reservation_failed(user, user_client, faults):
    small = make_flight(capacity=3)
    faults.walk_in_takes = 2  # Between our look-up (3 left) and our reserve of 2, someone takes 2.

    assert_problem(post_booking(user_client, small, "req-sold-out"), 409, "insufficient_seats")

    booking = Booking.objects.get()
    assert (booking.status, booking.cancel_reason, booking.seats_state) == (CANCELLED, "reservation_failed", "none")
    assert trail(booking) == [
        created(user, "req-sold-out"),
        (INITIATED, CANCELLED, "reservation_failed", "user", user.pk, "req-sold-out"),
    ]
    assert_chain(booking)


def test_a_flights_service_outage_during_the_reserve_is_recorded(user, user_client, flight, faults):
    faults.reserve_fails = True

    assert_problem(post_booking(user_client, flight, "req-down"), 503, "flight_service_unavailable")

    booking = Booking.objects.get()
    assert (booking.status, booking.cancel_reason) == (CANCELLED, "flight_service_unavailable")
    assert trail(booking) == [
        created(user, "req-down"),
        (INITIATED, CANCELLED, "flight_service_unavailable", "user", user.pk, "req-down"),
    ]
    assert_chain(booking)
    assert_bookings_match_ledger(flight)


def test_a_pending_booking_whose_charge_went_through_is_reconciled_to_booked_by_cleanup(
    user, user_client, flight, clock, settings
):
    booking = book(user_client, flight, "req-book")
    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    assert_problem(pay(user_client, booking, "req-lost"), 503, "payment_gateway_unavailable")
    assert status_of(booking) == PENDING
    # No answer, no gateway event: the booking stays where the payment left it.
    assert trail(booking) == [
        created(user, "req-book"),
        (INITIATED, PENDING, "payment_started", "user", user.pk, "req-lost"),
    ]

    clock.advance(**PAST_THE_HOLD)
    run = run_cleanup()

    assert run.counts["reconciled_booked"] == 1
    assert trail(booking)[2:] == [(PENDING, BOOKED, "reconciled_charged", "cleanup", None, run.run_id)]
    assert_chain(booking)
    assert_money_matches_bookings()


def test_a_pending_booking_never_charged_is_expired_by_cleanup(user, user_client, flight, clock, faults):
    booking = book(user_client, flight, "req-book")
    faults.charge_times_out = True
    assert_problem(pay(user_client, booking, "req-timeout"), 503, "payment_gateway_unavailable")
    assert status_of(booking) == PENDING
    assert not SimulatedCharge.objects.exists()

    clock.advance(**PAST_THE_HOLD)
    run = run_cleanup()

    assert run.counts["expired"] == 1
    assert trail(booking) == [
        created(user, "req-book"),
        (INITIATED, PENDING, "payment_started", "user", user.pk, "req-timeout"),
        (PENDING, CANCELLED, "expired", "cleanup", None, run.run_id),
    ]
    assert_chain(booking)
    assert_bookings_match_ledger(flight)


@pytest.mark.parametrize("who", ["user", "staff"])
def test_a_paid_booking_whose_cancel_was_cut_short_is_finished_by_cleanup_with_the_reason_asked(
    user, user_client, staff_client, flight, clock, faults, who
):
    booking = paid(user_client, flight, "req")
    before = trail(booking)
    faults.refund_down = True

    response = cancel(user_client if who == "user" else staff_client, booking, "req-cancel")

    assert_problem(response, 503, "payment_gateway_unavailable")
    assert status_of(booking) == BOOKED
    assert trail(booking) == before  # Asked to cancel is no status change.

    faults.refund_down = False
    clock.advance(seconds=payment_attempt_window().total_seconds() + 1)
    run = run_cleanup()

    assert run.counts["refunded"] == 1
    assert trail(booking) == [*before, (BOOKED, CANCELLED, who, "cleanup", None, run.run_id)]
    assert_chain(booking)
    assert_money_matches_bookings()
    assert_bookings_match_ledger(flight)


def test_service_calls_outside_a_request_are_system_and_the_gateways_answer_is_always_the_gateways(user, flight):
    booking = booking_create(user=user, flight_id=flight.pk, seats=SEATS)
    payment_services.payment_create(
        caller=user, booking_id=booking.pk, amount=booking.total_cost, idempotency_key="shell"
    )
    booking_cancel(booking_id=booking.pk)

    assert trail(booking) == [
        created(None, "", actor="system"),
        (INITIATED, PENDING, "payment_started", "system", None, ""),
        (PENDING, BOOKED, "payment_succeeded", "gateway", None, ""),
        (BOOKED, CANCELLED, "user", "system", None, ""),
    ]
    assert_chain(booking)

    # Inside an `acting_as` block (what cleanup does) its actor wins over `system`, and an
    # explicit actor (the gateway's answer) wins over the block.
    other = booking_create(user=user, flight_id=flight.pk, seats=SEATS)
    with request_id.bound("job-7"), acting_as(BookingEvent.Actor.CLEANUP):
        payment_services.payment_create(
            caller=user, booking_id=other.pk, amount=other.total_cost, idempotency_key="job"
        )
    assert trail(other)[1:] == [
        (INITIATED, PENDING, "payment_started", "cleanup", None, "job-7"),
        (PENDING, BOOKED, "payment_succeeded", "gateway", None, "job-7"),
    ]


# 2. The chain property after a mixed day ------------------------------------------------------


def test_after_a_mixed_day_every_bookings_history_is_an_unbroken_chain(
    user, other_user, user_client, staff_client, admin, faults, settings, clock
):
    flight = make_flight(capacity=80)
    small = make_flight(capacity=2)
    bob = client_for(other_user)

    # Paid, then cancelled (refunded first).
    paid_then_cancelled = paid(user_client, flight, "a")
    assert cancel(user_client, paid_then_cancelled, "a-cancel").status_code == 200
    # Declined, then paid with a new key.
    declined_then_paid = book(user_client, flight, "b-book")
    settings.PAYMENT_SIMULATED_OUTCOME = "decline"
    assert pay(user_client, declined_then_paid, "b-declined").status_code == 402
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"
    assert pay(user_client, declined_then_paid, "b-paid").status_code == 201
    # The gateway definitely failed: back to INITIATED, then left to expire.
    failed_then_expired = book(bob, flight, "c-book")
    settings.PAYMENT_SIMULATED_OUTCOME = "fail"
    assert pay(bob, failed_then_expired, "c-fail").status_code == 503
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"
    # Cancelled by the customer, by staff over the API, by staff in admin.
    by_customer = book(user_client, flight, "d-book")
    assert cancel(user_client, by_customer, "d-cancel").status_code == 200
    by_staff = book(bob, flight, "e-book")
    assert cancel(staff_client, by_staff, "e-cancel").status_code == 200
    by_admin = book(user_client, flight, "f-book")
    admin_cancel(admin, by_admin, "f-cancel")
    # The Flights service refused the reserve; the Flights service was down.
    faults.walk_in_takes = 1
    assert post_booking(user_client, small, "g-book").status_code == 409
    refused = Booking.objects.get(flight_id=small.pk)
    faults.reserve_fails = True
    assert post_booking(bob, flight, "h-book").status_code == 503
    faults.reserve_fails = False
    flights_down = Booking.objects.get(user=other_user, cancel_reason="flight_service_unavailable")
    # PENDING: charged but the answer was lost; never charged.
    charged_answer_lost = book(user_client, flight, "i-book")
    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    assert pay(user_client, charged_answer_lost, "i-pay").status_code == 503
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"
    never_charged = book(bob, flight, "j-book")
    faults.charge_times_out = True
    assert pay(bob, never_charged, "j-pay").status_code == 503
    faults.charge_times_out = False
    # Paid, cancel cut short by a refund that failed.
    cut_short = paid(bob, flight, "k")
    faults.refund_down = True
    assert cancel(bob, cut_short, "k-cancel").status_code == 503
    faults.refund_down = False
    # Left unpaid; and one paid only after its hold ended.
    left_unpaid = book(user_client, flight, "l-book")
    paid_too_late = book(bob, flight, "m-book")
    # Outside any request; and staff booking and paying for a customer.
    from_a_shell = booking_create(user=user, flight_id=flight.pk, seats=1)
    booking_cancel(booking_id=from_a_shell.pk)
    for_a_customer = book(staff_client, flight, "o-book", userId=other_user.pk)
    assert pay(staff_client, for_a_customer, "o-pay").status_code == 201

    clock.advance(**PAST_THE_HOLD)
    assert_problem(pay(bob, paid_too_late, "m-late"), 409, "booking_expired")
    run = run_cleanup()

    assert (run.counts["expired"], run.counts["reconciled_booked"], run.counts["refunded"], run.failed) == (
        3,
        1,
        1,
        0,
    )
    expected_status = {
        paid_then_cancelled: CANCELLED,
        declined_then_paid: BOOKED,
        failed_then_expired: CANCELLED,
        by_customer: CANCELLED,
        by_staff: CANCELLED,
        by_admin: CANCELLED,
        refused: CANCELLED,
        flights_down: CANCELLED,
        charged_answer_lost: BOOKED,
        never_charged: CANCELLED,
        cut_short: CANCELLED,
        left_unpaid: CANCELLED,
        paid_too_late: CANCELLED,
        from_a_shell: CANCELLED,
        for_a_customer: BOOKED,
    }
    assert Booking.objects.count() == len(expected_status)
    assert {booking.pk: status_of(booking) for booking in expected_status} == {
        booking.pk: status for booking, status in expected_status.items()
    }
    for booking in Booking.objects.all():
        assert_chain(booking)

    # The day covered every transition of docs/design.md#state-machine, each by its actor, and nothing else.
    signatures = set(BookingEvent.objects.values_list("from_status", "to_status", "reason", "actor"))
    assert signatures == {
        ("", INITIATED, "created", "user"),
        ("", INITIATED, "created", "staff"),
        ("", INITIATED, "created", "system"),
        (INITIATED, PENDING, "payment_started", "user"),
        (INITIATED, PENDING, "payment_started", "staff"),
        (PENDING, BOOKED, "payment_succeeded", "gateway"),
        (PENDING, INITIATED, "payment_declined", "gateway"),
        (PENDING, INITIATED, "payment_failed", "gateway"),
        (INITIATED, CANCELLED, "user", "user"),
        (INITIATED, CANCELLED, "user", "system"),
        (INITIATED, CANCELLED, "staff", "staff"),
        (BOOKED, CANCELLED, "user", "user"),
        (INITIATED, CANCELLED, "expired", "user"),
        (INITIATED, CANCELLED, "expired", "cleanup"),
        (INITIATED, CANCELLED, "reservation_failed", "user"),
        (INITIATED, CANCELLED, "flight_service_unavailable", "user"),
        (PENDING, BOOKED, "reconciled_charged", "cleanup"),
        (PENDING, CANCELLED, "expired", "cleanup"),
        (BOOKED, CANCELLED, "user", "cleanup"),
    }
    # Every cleanup event carries the run's id, the shell's none, and every other event the id
    # of the request (sent by this test) that made it.
    assert set(BookingEvent.objects.filter(actor="cleanup").values_list("request_id", flat=True)) == {run.run_id}
    assert BookingEvent.objects.filter(actor="cleanup").count() == 5
    assert set(BookingEvent.objects.filter(actor="system").values_list("request_id", flat=True)) == {""}
    for rid in BookingEvent.objects.exclude(actor__in=["cleanup", "system"]).values_list("request_id", flat=True):
        assert re.fullmatch(r"[a-o]-[a-z]+", rid), rid
    assert_money_matches_bookings()
    assert_bookings_match_ledger(flight)


# 3. Atomicity: no status change without its event ---------------------------------------------


def test_a_cancel_whose_event_cannot_be_written_does_not_happen(user, user_client, flight):
    booking = book(user_client, flight, "req-book")

    with event_insert_fails() as refused:
        response = cancel(user_client, booking, "req-cancel")

    assert_problem(response, 503, "service_unavailable")
    assert len(refused) == 1
    booking.refresh_from_db()
    assert (booking.status, booking.cancel_reason, booking.cancelled_at, booking.seats_state) == (
        INITIATED,
        "",
        None,
        Booking.SeatsState.RESERVED,
    )
    assert SeatHold.objects.get(ref=booking.hold_ref).state == SeatHold.State.HELD
    assert trail(booking) == [created(user, "req-book")]
    assert_bookings_match_ledger(flight)

    # Once the database takes it again, the same cancel works and is recorded.
    assert cancel(user_client, booking, "req-cancel").status_code == 200
    assert trail(booking)[1:] == [(INITIATED, CANCELLED, "user", "user", user.pk, "req-cancel")]
    assert_chain(booking)


def test_a_payment_whose_start_cannot_be_recorded_does_not_start_or_charge(user, user_client, flight):
    booking = book(user_client, flight, "req-book")

    with event_insert_fails("payment_started") as refused:
        response = pay(user_client, booking, "req-pay", key="k1")

    assert_problem(response, 503, "service_unavailable")
    assert len(refused) == 1
    assert status_of(booking) == INITIATED
    assert not Payment.objects.exists()
    assert not SimulatedCharge.objects.exists()
    assert trail(booking) == [created(user, "req-book")]

    # The key was let go: the retry with it pays, once.
    assert pay(user_client, booking, "req-retry", key="k1").status_code == 201
    assert trail(booking)[1:] == [
        (INITIATED, PENDING, "payment_started", "user", user.pk, "req-retry"),
        (PENDING, BOOKED, "payment_succeeded", "gateway", user.pk, "req-retry"),
    ]
    assert SimulatedCharge.objects.count() == 1
    assert_chain(booking)
    assert_money_matches_bookings()


def test_a_gateway_answer_that_cannot_be_recorded_leaves_the_payment_in_flight_and_a_retry_settles_it(
    user, user_client, flight
):
    booking = book(user_client, flight, "req-book")

    with event_insert_fails("payment_succeeded") as refused:
        response = pay(user_client, booking, "req-pay", key="k1")

    assert_problem(response, 503, "service_unavailable")
    assert len(refused) == 1
    # The charge went through at the gateway, but BOOKED was not recorded, so it is not BOOKED.
    assert status_of(booking) == PENDING
    assert Payment.objects.get().status == Payment.Status.PROCESSING
    assert trail(booking) == [
        created(user, "req-book"),
        (INITIATED, PENDING, "payment_started", "user", user.pk, "req-pay"),
    ]

    assert pay(user_client, booking, "req-retry", key="k1").status_code == 201
    assert trail(booking)[2:] == [(PENDING, BOOKED, "payment_succeeded", "gateway", user.pk, "req-retry")]
    assert SimulatedCharge.objects.count() == 1
    assert_chain(booking)
    assert_money_matches_bookings()


def test_an_expiry_whose_event_cannot_be_written_is_left_for_the_next_cleanup_run(user, user_client, flight, clock):
    booking = book(user_client, flight, "req-book")
    clock.advance(**PAST_THE_HOLD)

    with event_insert_fails("expired") as refused:
        failed_run = run_cleanup()

    # Refused twice: in its batch (which then changed nothing), and on its own after it.
    assert (len(refused), failed_run.failed, failed_run.counts["expired"]) == (2, 1, 0)
    assert (status_of(booking), booking.seats_state) == (INITIATED, Booking.SeatsState.RESERVED)
    assert trail(booking) == [created(user, "req-book")]
    assert_bookings_match_ledger(flight)

    run = run_cleanup()
    assert trail(booking)[1:] == [(INITIATED, CANCELLED, "expired", "cleanup", None, run.run_id)]
    assert_chain(booking)
    assert_bookings_match_ledger(flight)


# 4. GET /api/v1/bookings/{id}/events ------------------------------------------------------------


@pytest.fixture
def history(user, user_client, flight, clock, settings) -> tuple[Booking, list[dict]]:
    """A booking with six events a minute apart, and the API's exact representation of them."""
    times = [clock.now]
    booking = book(user_client, flight, "h-book")
    times.append(clock.advance(minutes=1))
    settings.PAYMENT_SIMULATED_OUTCOME = "decline"
    assert pay(user_client, booking, "h-declined").status_code == 402
    times.append(clock.advance(minutes=1))
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"
    assert pay(user_client, booking, "h-paid").status_code == 201
    times.append(clock.advance(minutes=1))
    assert cancel(user_client, booking, "h-cancel").status_code == 200
    ids = list(BookingEvent.objects.filter(booking=booking).order_by("id").values_list("id", flat=True))
    rows = [
        (None, INITIATED, "created", "user", "h-book", times[0]),
        (INITIATED, PENDING, "payment_started", "user", "h-declined", times[1]),
        (PENDING, INITIATED, "payment_declined", "gateway", "h-declined", times[1]),
        (INITIATED, PENDING, "payment_started", "user", "h-paid", times[2]),
        (PENDING, BOOKED, "payment_succeeded", "gateway", "h-paid", times[2]),
        (BOOKED, CANCELLED, "user", "user", "h-cancel", times[3]),
    ]
    assert len(ids) == len(rows)
    return booking, [
        {
            "id": event_id,
            "bookingId": booking.pk,
            "fromStatus": from_status,
            "toStatus": to_status,
            "reason": reason,
            "actor": actor,
            "requestId": rid,
            "createdAt": iso(at),
        }
        for event_id, (from_status, to_status, reason, actor, rid, at) in zip(ids, rows, strict=True)
    ]


def events_url(booking_id: int) -> str:
    return f"/api/v1/bookings/{booking_id}/events"


def test_the_owner_gets_the_exact_history_oldest_first(user_client, history):
    booking, expected = history

    response = user_client.get(events_url(booking.pk))

    assert response.status_code == 200, response.content
    assert response.json() == {"count": 6, "next": None, "previous": None, "results": expected}


def test_staff_get_anyones_history_and_an_event_outside_a_request_has_no_request_id(
    user, staff_client, user_client, flight, history
):
    booking, expected = history
    assert staff_client.get(events_url(booking.pk)).json()["results"] == expected

    from_a_shell = booking_create(user=user, flight_id=flight.pk, seats=1)
    results = user_client.get(events_url(from_a_shell.pk)).json()["results"]
    assert [(r["fromStatus"], r["toStatus"], r["actor"], r["requestId"]) for r in results] == [
        (None, INITIATED, "system", None)
    ]


def test_another_users_booking_an_unknown_one_and_anonymous_callers_are_refused(
    other_user, staff_client, anon_client, history
):
    booking, _ = history
    assert_problem(client_for(other_user).get(events_url(booking.pk)), 404, "not_found")
    assert_problem(client_for(other_user).get(events_url(booking.pk + 1000)), 404, "not_found")
    assert_problem(staff_client.get(events_url(booking.pk + 1000)), 404, "not_found")
    assert_problem(anon_client.get(events_url(booking.pk)), 401, "not_authenticated")


def test_the_history_keeps_write_order_when_the_next_hosts_clock_is_behind(user, user_client, flight, clock):
    booking = book(user_client, flight, "host-a-book")
    clock.advance(seconds=-2)  # The cancel is served by another app host, whose clock is 2 s behind.
    assert cancel(user_client, booking, "host-b-cancel").status_code == 200
    # In write order (by id) the history is right.
    assert [event[:2] for event in trail(booking)] == [("", INITIATED), (INITIATED, CANCELLED)]

    results = user_client.get(events_url(booking.pk)).json()["results"]

    assert [(r["fromStatus"], r["toStatus"]) for r in results] == [(None, INITIATED), (INITIATED, CANCELLED)]


def test_the_history_is_paginated_with_page_size(user_client, history):
    booking, expected = history
    url = f"http://testserver{events_url(booking.pk)}"

    first = user_client.get(events_url(booking.pk), {"pageSize": 4})
    second = user_client.get(events_url(booking.pk), {"pageSize": 4, "page": 2})

    assert first.json() == {"count": 6, "next": f"{url}?page=2&pageSize=4", "previous": None, "results": expected[:4]}
    assert second.json() == {"count": 6, "next": None, "previous": f"{url}?pageSize=4", "results": expected[4:]}
    assert_problem(user_client.get(events_url(booking.pk), {"pageSize": 0}), 400, "validation_error")
    assert_problem(user_client.get(events_url(booking.pk), {"pageSize": 4, "page": 3}), 404, "not_found")


def openapi_schema(client) -> dict:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_the_openapi_schema_documents_the_history(client):
    schema = openapi_schema(client)

    operation = schema["paths"]["/api/v1/bookings/{id}/events"]["get"]
    assert "id" in {p["name"] for p in operation["parameters"]}
    assert {"200", "401", "404"} <= set(operation["responses"])
    for status in ("401", "404"):
        assert "application/problem+json" in operation["responses"][status]["content"], status
    page_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][page_ref.rsplit("/", 1)[-1]]
    assert {"count", "next", "previous", "results"} <= set(page["properties"])
    event_ref = page["properties"]["results"]["items"]["$ref"]
    event = schema["components"]["schemas"][event_ref.rsplit("/", 1)[-1]]
    assert set(event["properties"]) == {
        "id",
        "bookingId",
        "fromStatus",
        "toStatus",
        "reason",
        "actor",
        "requestId",
        "createdAt",
    }
    assert event["properties"]["fromStatus"].get("nullable") is True
    assert event["properties"]["requestId"].get("nullable") is True


def test_the_openapi_schema_documents_the_historys_pagination_parameters(client):
    operation = openapi_schema(client)["paths"]["/api/v1/bookings/{id}/events"]["get"]
    # As the bookings list documents them.
    assert {p["name"] for p in operation["parameters"]} == {"id", "page", "pageSize"}


# 5. Admin -----------------------------------------------------------------------------------------


def test_the_booking_page_shows_its_history_read_only(admin, history):
    booking, expected = history
    page = admin.get(f"{CHANGELIST}{booking.pk}/change/")

    assert page.status_code == 200
    # The status changes in write order (the page's history also lists refunds: tests/bookings/test_admin.py).
    assert [entry.event.pk for entry in page.context["history"] if entry.event] == [row["id"] for row in expected]
    html = page.content.decode()
    for rid in ("h-book", "h-declined", "h-paid", "h-cancel"):
        assert f"request {rid}" in html
    for label in ("Booked, seats being reserved", "Payment declined", "Payment succeeded", "The customer"):
        assert label in html
    # View-only: no form for the events, nothing to save, and a forged POST is refused.
    assert "DELETE" not in html and 'name="_save"' not in html
    forged = admin.post(
        f"{CHANGELIST}{booking.pk}/change/", {"events-0-id": expected[0]["id"], "events-0-reason": "staff"}
    )
    assert forged.status_code == 403
    assert BookingEvent.objects.get(pk=expected[0]["id"]).reason == "created"
    assert BookingEvent.objects.filter(booking=booking).count() == 6


def test_events_cannot_be_added_changed_or_deleted_in_their_own_admin(admin, history):
    _, expected = history
    event_id = expected[0]["id"]

    assert admin.get(f"{EVENT_CHANGELIST}add/").status_code == 403
    assert admin.get(f"{EVENT_CHANGELIST}{event_id}/change/").status_code == 200  # Viewable.
    assert admin.post(f"{EVENT_CHANGELIST}{event_id}/change/", {"reason": "staff"}).status_code == 403
    assert admin.get(f"{EVENT_CHANGELIST}{event_id}/delete/").status_code == 403
    assert admin.post(f"{EVENT_CHANGELIST}{event_id}/delete/", {"post": "yes"}).status_code == 403
    assert BookingEvent.objects.get(pk=event_id).reason == "created"
    assert BookingEvent.objects.count() == 6


def test_the_event_list_finds_what_one_request_or_one_cleanup_run_changed(user_client, admin, flight, clock):
    first = book(user_client, flight, "req-a")
    second = book(user_client, flight, "req-b")
    assert pay(user_client, second, "req-c").status_code == 201
    clock.advance(**PAST_THE_HOLD)
    run = run_cleanup()

    def found(q: str) -> list[tuple]:
        page = admin.get(EVENT_CHANGELIST, {"q": q})
        assert page.status_code == 200
        return sorted((e.booking_id, e.reason) for e in page.context["cl"].result_list)

    assert found("req-c") == [(second.pk, "payment_started"), (second.pk, "payment_succeeded")]
    assert found("req-a") == [(first.pk, "created")]
    assert found(run.run_id) == [(first.pk, "expired")]
    assert found("req") == []  # Exact match only.
    page = admin.get(EVENT_CHANGELIST, {"q": "req-c"})
    assert "req-c" in page.content.decode()


# 6. PostgreSQL, real threads ----------------------------------------------------------------------


def signalling(reached: threading.Event, duty: cleanup.Duty):
    """`duty`, which first says that a cleanup copy has reached it."""

    @dataclass(frozen=True)
    class Signalling:
        def perform(self, run) -> None:
            reached.set()
            duty.perform(run)

    return Signalling()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_cancels_of_one_booking_write_exactly_one_event(user, user_client, flight):
    booking = book(user_client, flight, "req-book")
    token = Token.objects.get(user=user).key
    url = f"/api/v1/bookings/{booking.pk}/cancel"

    def cancel_it(index: int):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        response = client.patch(url, HTTP_X_REQUEST_ID=f"cancel-{index}")
        return response.status_code, response.json()["status"]

    results = race(20, cancel_it)

    assert results == [(200, CANCELLED)] * 20
    events = trail(booking)
    assert len(events) == 2
    assert events[0] == created(user, "req-book")
    assert events[1][:5] == (INITIATED, CANCELLED, "user", "user", user.pk)
    assert events[1][5] in {f"cancel-{index}" for index in range(20)}
    assert_chain(booking)
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_payments_racing_cleanup_on_expired_bookings_leave_one_terminal_event_each(
    user, user_client, clock, settings, monkeypatch
):
    flight = make_flight(capacity=60)
    unpaid = [book(user_client, flight, f"u{index}-book") for index in range(12)]
    settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
    pending = [book(user_client, flight, f"p{index}-book") for index in range(6)]
    for index, booking in enumerate(pending):
        assert pay(user_client, booking, f"p{index}-pay", key=f"pk{index}").status_code == 503
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"
    clock.advance(**PAST_THE_HOLD)
    token = Token.objects.get(user=user).key
    copies = 3
    # A cleanup copy's first duties touch none of these bookings: half the clients wait until a
    # copy is at the duty that does (reconcile for PENDING, expire for INITIATED), so that both
    # sides meet there; the other half start at once.
    at_duty = {cleanup.TO_RECONCILE.name: threading.Event(), cleanup.TO_EXPIRE.name: threading.Event()}
    signalled = [
        signalling(at_duty[duty.work.name], duty) if duty.work.name in at_duty else duty for duty in cleanup.DUTIES
    ]
    monkeypatch.setattr(cleanup, "DUTIES", tuple(signalled))

    def act(index: int):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        if index % 2 and index < len(unpaid) + len(pending):
            at_duty[cleanup.TO_EXPIRE.name if index < len(unpaid) else cleanup.TO_RECONCILE.name].wait(10)
        if index < len(unpaid):  # Pays an expired booking.
            response = pay(client, unpaid[index], f"u{index}-late")
            return response.status_code, response.json().get("code")
        if index < len(unpaid) + len(pending):  # Retries its lost answer with the same key.
            number = index - len(unpaid)
            response = pay(client, pending[number], f"p{number}-retry", key=f"pk{number}")
            return response.status_code, response.json().get("status")
        cleanup_stale_bookings()
        return None

    results = race(len(unpaid) + len(pending) + copies, act)

    runs = {run.run_id: run for run in CleanupRun.objects.all()}
    assert len(runs) == copies and all(RUN_ID.fullmatch(run_id) for run_id in runs)
    by_run: Counter = Counter()
    for index, booking in enumerate(unpaid):
        events = trail(booking)
        assert len(events) == 2, events
        assert events[1][:3] == (INITIATED, CANCELLED, "expired")
        actor, actor_user, rid = events[1][3:]
        if actor == "user":  # This payment found it expired and cancelled it.
            assert (actor_user, rid, results[index]) == (user.pk, f"u{index}-late", (409, "booking_expired"))
        else:  # A cleanup copy was first; the payment found it cancelled.
            assert (actor, actor_user, rid in runs) == ("cleanup", None, True)
            assert results[index] == (409, "booking_not_payable")
            by_run[rid, "expired"] += 1
        assert_chain(booking)
    for number, booking in enumerate(pending):
        events = trail(booking)
        assert len(events) == 3, events
        assert results[len(unpaid) + number] == (201, "SUCCEEDED")
        if events[2][3] == "gateway":  # The retry resumed the attempt and recorded the answer.
            assert events[2] == (PENDING, BOOKED, "payment_succeeded", "gateway", user.pk, f"p{number}-retry")
        else:  # A cleanup copy reconciled it first; the retry answered that payment.
            assert events[2][:5] == (PENDING, BOOKED, "reconciled_charged", "cleanup", None)
            assert events[2][5] in runs
            by_run[events[2][5], "reconciled_booked"] += 1
        assert_chain(booking)
    # Each run's counts are exactly the events it wrote.
    for run_id, run in runs.items():
        assert run.failed == 0
        assert (run.counts["expired"], run.counts["reconciled_booked"]) == (
            by_run[run_id, "expired"],
            by_run[run_id, "reconciled_booked"],
        )
    assert SimulatedCharge.objects.count() == len(pending)
    assert_money_matches_bookings()
    assert_bookings_match_ledger(flight)
    assert flight.available_seats == flight.capacity - SEATS * len(pending)


def test_every_cancel_reason_is_an_event_reason():
    """A cancel's event carries the booking's cancel reason, so each must be a known one."""
    assert set(Booking.CancelReason.values) <= set(BookingEvent.Reason.values)


# Helpers ------------------------------------------------------------------------------------


def trail(booking: Booking) -> list[tuple]:
    """The booking's events in write order: (from, to, reason, actor, actor_user id, request id)."""
    return list(
        BookingEvent.objects.filter(booking_id=booking.pk)
        .order_by("id")
        .values_list("from_status", "to_status", "reason", "actor", "actor_user_id", "request_id")
    )


def created(user, rid: str, actor: str = "user") -> tuple:
    return ("", INITIATED, "created", actor, user.pk if user else None, rid)


def client_for(user) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def post_booking(client, flight, rid: str, seats: int = SEATS, **extra):
    body = {"flightId": flight.pk, "numberOfSeats": seats, **extra}
    return client.post("/api/v1/bookings", body, format="json", HTTP_X_REQUEST_ID=rid)


def book(client, flight, rid: str, seats: int = SEATS, **extra) -> Booking:
    response = post_booking(client, flight, rid, seats, **extra)
    assert response.status_code == 201, response.content
    assert response["X-Request-ID"] == rid
    booking = Booking.objects.get(pk=response.json()["id"])
    assert (booking.status, booking.seats_state) == (INITIATED, Booking.SeatsState.RESERVED)
    return booking


def pay(client, booking: Booking, rid: str, key: str | None = None):
    body = {"bookingId": booking.pk, "amount": str(booking.total_cost)}
    return client.post(
        "/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY=key or f"key-{rid}", HTTP_X_REQUEST_ID=rid
    )


def cancel(client, booking: Booking, rid: str):
    return client.patch(f"/api/v1/bookings/{booking.pk}/cancel", HTTP_X_REQUEST_ID=rid)


def paid(client, flight, rid: str) -> Booking:
    booking = book(client, flight, f"{rid}-book")
    response = pay(client, booking, f"{rid}-pay")
    assert response.status_code == 201, response.content
    booking.refresh_from_db()
    assert booking.status == BOOKED
    return booking


def status_of(booking: Booking) -> str:
    booking.refresh_from_db()
    return booking.status


def run_cleanup(**kwargs) -> CleanupRun:
    before = CleanupRun.objects.count()
    cleanup_stale_bookings(**kwargs)
    assert CleanupRun.objects.count() == before + 1
    run = CleanupRun.objects.order_by("-id").first()
    assert RUN_ID.fullmatch(run.run_id), run.run_id
    return run


def iso(moment) -> str:
    """A time as the API writes it (DRF: ISO 8601, UTC as `Z`)."""
    return moment.isoformat().replace("+00:00", "Z")


def assert_chain(booking: Booking) -> None:
    """The history explains the status: it starts with the creation, every event starts where
    the one before ended, and the last ends at the booking's current status."""
    booking.refresh_from_db()
    events = list(BookingEvent.objects.filter(booking=booking).order_by("id"))
    assert events, f"booking {booking.pk} has no history"
    assert (events[0].from_status, events[0].to_status, events[0].reason) == ("", INITIATED, "created"), booking.pk
    for before, after in itertools.pairwise(events):
        assert after.from_status == before.to_status, (booking.pk, trail(booking))
        assert after.from_status != after.to_status, (booking.pk, trail(booking))
    assert events[-1].to_status == booking.status, (booking.pk, booking.status, trail(booking))
    assert [e.to_status for e in events].count(CANCELLED) <= 1, (booking.pk, trail(booking))
    # The API's order (created_at, id) is the write order.
    api_order = BookingEvent.objects.filter(booking=booking).order_by("created_at", "id")
    assert list(api_order) == events


class Faults:
    """Switchable faults at the project's boundaries: the Flights service (in process) and the
    simulated payment gateway. Both are outside the code under test."""

    def __init__(self) -> None:
        # Someone else takes this many seats at the Flights service between our look-up and our reserve.
        self.walk_in_takes: int | None = None
        # The Flights service's database fails on a reserve, before applying it: outcome unknown to us.
        self.reserve_fails = False
        # The charge never reaches the gateway, and no answer comes back: outcome unknown to us.
        self.charge_times_out = False
        # The gateway is down for refunds (nothing refunded).
        self.refund_down = False


@pytest.fixture
def faults(monkeypatch, saga_in_process) -> Faults:
    """Faults at the boundaries; bookings walk the saga, so that a reserve can fail alone."""
    faults = Faults()
    real_get, real_change = flight_selectors.flight_get, flight_services.flight_seats_change
    real_charge, real_refund = SimulatedPaymentGateway.charge, SimulatedPaymentGateway.refund

    def flight_get(**kwargs):
        found = real_get(**kwargs)
        if faults.walk_in_takes:
            seats, faults.walk_in_takes = faults.walk_in_takes, None
            real_change(flight_id=found.pk, seats=seats, decrease=True, reservation=f"walk-in-{found.pk}")
        return found

    def flight_seats_change(**kwargs):
        if kwargs["decrease"] and faults.reserve_fails:
            raise OperationalError("server closed the connection unexpectedly")
        return real_change(**kwargs)

    def charge(self, **kwargs):
        if faults.charge_times_out:
            raise PaymentGatewayUnavailable("The payment gateway did not answer in time.")
        return real_charge(self, **kwargs)

    def refund(self, *, payment):
        if faults.refund_down:
            raise PaymentGatewayUnavailable("The payment gateway is down (refund).", maybe_charged=False)
        return real_refund(self, payment=payment)

    monkeypatch.setattr(flight_selectors, "flight_get", flight_get)
    monkeypatch.setattr(flight_services, "flight_seats_change", flight_seats_change)
    monkeypatch.setattr(SimulatedPaymentGateway, "charge", charge)
    monkeypatch.setattr(SimulatedPaymentGateway, "refund", refund)
    return faults


@pytest.fixture
def root(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "root-password")


@pytest.fixture
def admin(client, root):
    client.force_login(root)
    return client


def admin_cancel(admin, booking: Booking, rid: str) -> None:
    """The cancel action's Confirm (its confirmation page is tested in tests/bookings/test_admin.py)."""
    data = {"action": "cancel_selected", "_selected_action": [booking.pk], "confirm": "yes", "reason": "asked"}
    response = admin.post(CHANGELIST, data, HTTP_X_REQUEST_ID=rid)
    assert response.status_code == 302, response.content[:300]
    assert response["X-Request-ID"] == rid


@contextlib.contextmanager
def event_insert_fails(reason: str | None = None) -> Iterator[list]:
    """The database refuses the audit row's INSERT (for events with `reason`, or all of them),
    as a full disk or a dropped connection would. Yields the refused statements."""
    refused: list = []

    def refuse(execute, sql, params, many, context):
        # Alone, or with its outbox event in one statement (PostgreSQL).
        audit_insert = ('INSERT INTO "BOOKINGS_BOOKINGEVENT"', 'WITH R0 AS (INSERT INTO "BOOKINGS_BOOKINGEVENT"')
        if sql.lstrip().upper().startswith(audit_insert) and (reason is None or reason in (params or ())):
            refused.append(params)
            raise OperationalError("could not extend file: No space left on device")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse):
        yield refused
