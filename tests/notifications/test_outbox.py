"""The transactional outbox (docs/design.md#notifications): every change that notifications
report has exactly one event, written with it, and a change that rolls back has none."""

import pytest
from django.db import transaction

from bookings.models import Booking, BookingEvent, OutboxEvent
from bookings.services import booking_create
from bookings_project.exceptions import PaymentDeclined
from payments.models import Payment
from payments.services import payment_refund
from tests.factories import initiated, paid, pay, pending_answer_lost, reload
from tests.support.cleanup import command
from workflows.services import booking_cancel

pytestmark = pytest.mark.django_db

Type = OutboxEvent.Type


def events_of(booking: Booking) -> list[tuple[str, int | None]]:
    return list(OutboxEvent.objects.filter(booking=booking).order_by("id").values_list("type", "payment_id"))


def test_a_booking_paid_and_cancelled_by_its_customer_has_its_four_events_in_order(user, flight):
    booking, payment, _ = paid(user, flight)
    booking_cancel(booking_id=booking.pk, reason=Booking.CancelReason.USER)

    assert events_of(booking) == [
        (Type.BOOKING_CREATED, None),
        (Type.BOOKING_CONFIRMED, None),
        (Type.PAYMENT_REFUNDED, payment.pk),
        (Type.BOOKING_CANCELLED, None),
    ]
    # The audit trail has two more changes (payment started, ...) that are not reported.
    assert BookingEvent.objects.filter(booking=booking).count() == 4


def test_a_declined_payment_and_the_pay_again_report_only_the_confirmation(user, flight, settings):
    booking = initiated(user, flight)
    settings.PAYMENT_SIMULATED_OUTCOME = "decline"
    with pytest.raises(PaymentDeclined):
        pay(user, booking, key="first")
    settings.PAYMENT_SIMULATED_OUTCOME = "approve"
    pay(user, booking, key="second")

    assert events_of(booking) == [(Type.BOOKING_CREATED, None), (Type.BOOKING_CONFIRMED, None)]


def test_cancelling_twice_reports_one_cancel(user, flight):
    booking = initiated(user, flight)
    booking_cancel(booking_id=booking.pk)
    booking_cancel(booking_id=booking.pk)

    assert events_of(booking) == [(Type.BOOKING_CREATED, None), (Type.BOOKING_CANCELLED, None)]


def test_cleanup_reports_each_booking_it_expires_in_a_batch_and_each_it_reconciles(user, flight, clock, settings):
    expiring = [initiated(user, flight, 1) for _ in range(3)]
    charged = pending_answer_lost(user, flight, settings).booking
    clock.advance(hours=1)

    command()

    for booking in expiring:
        assert reload(booking).cancel_reason == Booking.CancelReason.EXPIRED
        assert events_of(booking) == [(Type.BOOKING_CREATED, None), (Type.BOOKING_CANCELLED, None)]
    assert reload(charged).status == Booking.Status.BOOKED
    assert events_of(charged) == [(Type.BOOKING_CREATED, None), (Type.BOOKING_CONFIRMED, None)]


def test_a_change_that_rolls_back_leaves_no_event(user, flight):
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        booking_create(user=user, flight_id=flight.pk, seats=1)
        raise Abort

    assert not Booking.objects.exists()
    assert not OutboxEvent.objects.exists()


def test_a_refund_is_reported_once_however_often_it_is_asked_for(user, flight):
    _, payment, _ = paid(user, flight)
    payment_refund(payment_id=payment.pk)
    payment_refund(payment_id=payment.pk)

    assert Payment.objects.get(pk=payment.pk).status == Payment.Status.REFUNDED
    assert OutboxEvent.objects.filter(type=Type.PAYMENT_REFUNDED).count() == 1
