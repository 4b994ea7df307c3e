"""payments.services and the simulated gateway, called directly (real database; docs/api.md#payments)."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from bookings.models import Booking
from bookings.services import booking_release_seats
from bookings_project.exceptions import BookingExpired, PaymentDeclined, PaymentGatewayUnavailable
from flights.models import SeatHold
from payments import services
from payments.gateway import SimulatedPaymentGateway
from payments.models import Payment, SimulatedCharge
from tests.factories import initiated, pay, pending_answer_lost
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings, assert_problem

pytestmark = pytest.mark.django_db


class TestExpiry:
    def test_paying_an_expired_booking_cancels_it_and_releases_its_seats_once(self, user, flight):
        booking = initiated(user, flight, 3)
        Booking.objects.filter(pk=booking.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
        flight.refresh_from_db()
        assert flight.available_seats == 17

        with pytest.raises(BookingExpired):
            pay(user, booking, key="key-1")

        booking.refresh_from_db()
        assert (booking.status, booking.cancel_reason, booking.seats_state) == (
            Booking.Status.CANCELLED,
            Booking.CancelReason.EXPIRED,
            Booking.SeatsState.RELEASED,
        )
        assert booking.cancelled_at is not None
        assert SeatHold.objects.get(ref=booking.hold_ref).state == SeatHold.State.RELEASED
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert booking_release_seats(booking_id=booking.pk).seats == 0
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert Payment.objects.count() == 0
        assert SimulatedCharge.objects.count() == 0

    def test_money_that_arrives_after_cleanup_cancelled_the_booking_is_refunded(self, user, flight):
        booking = initiated(user, flight, 2)
        attempt = services._start_attempt(
            caller=user, booking_id=booking.pk, amount=booking.total_cost, idempotency_key="late", user_id=None
        )
        assert attempt.charge_needed
        payment = attempt.payment
        assert payment.status == Payment.Status.PROCESSING
        assert Booking.objects.get(pk=booking.pk).status == Booking.Status.PENDING

        # Cleanup, finding no charge at the gateway yet, settles it as not charged.
        Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.FAILED, failure_reason="no charge found")
        Booking.objects.filter(pk=booking.pk).update(
            status=Booking.Status.CANCELLED, cancel_reason=Booking.CancelReason.EXPIRED, cancelled_at=timezone.now()
        )
        assert booking_release_seats(booking_id=booking.pk).seats == 2
        # ... and then the gateway charges after all.
        gateway = SimulatedPaymentGateway()
        charge = gateway.charge(
            amount=payment.amount,
            currency=payment.currency,
            reference=payment.reference,
            idempotency_key=payment.reference,
        )
        assert charge.status == "succeeded"

        with pytest.raises(BookingExpired):
            services._record_charge(payment, charge, gateway)

        payment.refresh_from_db()
        assert payment.status == Payment.Status.REFUNDED
        assert payment.gateway_reference == charge.gateway_reference
        record = SimulatedCharge.objects.get()
        assert (record.status, record.refund_id) == (SimulatedCharge.Status.REFUNDED, payment.refund_reference)
        booking.refresh_from_db()
        assert (booking.status, booking.seats_state) == (Booking.Status.CANCELLED, Booking.SeatsState.RELEASED)
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert_money_matches_bookings()


class TestRefund:
    def test_refund_is_idempotent(self, user, flight):
        payment = pay(user, initiated(user, flight))

        first = services.payment_refund(payment_id=payment.pk)
        second = services.payment_refund(payment_id=payment.pk, gateway=RefundMustNotBeCalled())
        third = services.payment_refund(payment_id=payment.pk)

        assert first.status == second.status == third.status == Payment.Status.REFUNDED
        assert first.refund_reference.startswith("sim_re_")
        assert first.refund_reference == second.refund_reference == third.refund_reference
        assert first.refunded_at == second.refunded_at == third.refunded_at
        record = SimulatedCharge.objects.get()
        assert (record.status, record.refund_id) == (SimulatedCharge.Status.REFUNDED, first.refund_reference)

    def test_refund_is_a_no_op_for_declined_and_failed_payments(self, user, flight, settings):
        booking = initiated(user, flight)
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        with pytest.raises(PaymentDeclined):
            pay(user, booking, key="declined")
        settings.PAYMENT_SIMULATED_OUTCOME = "fail"
        with pytest.raises(PaymentGatewayUnavailable):
            pay(user, booking, key="failed")
        declined = Payment.objects.get(idempotency_key="declined")
        failed = Payment.objects.get(idempotency_key="failed")
        assert (declined.status, failed.status) == (Payment.Status.DECLINED, Payment.Status.FAILED)

        for payment in (declined, failed):
            answered = services.payment_refund(payment_id=payment.pk, gateway=RefundMustNotBeCalled())
            assert (answered.status, answered.refund_reference, answered.refunded_at) == (payment.status, "", None)
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        for payment in (declined, failed):
            assert services.payment_refund(payment_id=payment.pk).status == payment.status
        assert list(SimulatedCharge.objects.values_list("status", "refund_id")) == [("declined", "")]
        assert Booking.objects.get(pk=booking.pk).status == Booking.Status.INITIATED

    def test_refund_for_booking_refunds_only_the_succeeded_payment(self, user, flight, settings):
        booking = initiated(user, flight)
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        with pytest.raises(PaymentDeclined):
            pay(user, booking, key="first")
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        paid = pay(user, booking, key="second")
        declined = Payment.objects.get(idempotency_key="first")

        refunded = services.payment_refund_for_booking(booking_id=booking.pk)

        assert [(p.pk, p.status) for p in refunded] == [(paid.pk, Payment.Status.REFUNDED)]
        declined.refresh_from_db()
        assert (declined.status, declined.refund_reference) == (Payment.Status.DECLINED, "")
        assert set(SimulatedCharge.objects.values_list("reference", "status")) == {
            (declined.reference, "declined"),
            (paid.reference, "refunded"),
        }
        assert services.payment_refund_for_booking(booking_id=booking.pk, gateway=RefundMustNotBeCalled()) == []
        unpaid = initiated(user, flight, 1)
        assert services.payment_refund_for_booking(booking_id=unpaid.pk, gateway=RefundMustNotBeCalled()) == []


class TestSimulatedGateway:
    AMOUNT = Decimal("11000.00")

    def _charge(self, key="k-1", reference="pay_ref_1"):
        return SimulatedPaymentGateway().charge(
            amount=self.AMOUNT, currency="INR", reference=reference, idempotency_key=key
        )

    def test_a_repeated_key_answers_the_first_charge(self):
        first, second = self._charge(), self._charge()
        assert first == second
        assert first.status == "succeeded" and first.money_taken
        assert first.gateway_reference.startswith("sim_ch_")
        assert (first.amount, first.currency) == (self.AMOUNT, "INR")
        record = SimulatedCharge.objects.get()
        assert (record.charge_id, record.idempotency_key, record.reference) == (
            first.gateway_reference,
            "k-1",
            "pay_ref_1",
        )
        assert self._charge(key="k-2").gateway_reference != first.gateway_reference
        assert SimulatedCharge.objects.count() == 2

    def test_a_decline_is_stored_and_replayed(self, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        declined = self._charge()
        assert (declined.status, declined.money_taken) == ("declined", False)
        assert declined.decline_reason
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        assert self._charge() == declined  # The same key answers its first answer.
        assert list(SimulatedCharge.objects.values_list("status", flat=True)) == ["declined"]

    def test_fail_stores_nothing_and_says_nothing_was_charged(self, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "fail"
        with pytest.raises(PaymentGatewayUnavailable) as error:
            self._charge()
        assert error.value.maybe_charged is False
        assert SimulatedCharge.objects.count() == 0
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        assert self._charge().status == "succeeded"

    def test_lose_answer_charges_then_raises_maybe_charged(self, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
        with pytest.raises(PaymentGatewayUnavailable) as error:
            self._charge()
        assert error.value.maybe_charged is True
        record = SimulatedCharge.objects.get()
        assert record.status == SimulatedCharge.Status.SUCCEEDED
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        assert self._charge().gateway_reference == record.charge_id
        assert SimulatedCharge.objects.count() == 1

    def test_find_charge_by_reference(self, settings):
        gateway = SimulatedPaymentGateway()
        assert gateway.find_charge(reference="pay_ref_1") is None
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        declined = self._charge(key="k-declined")
        assert gateway.find_charge(reference="pay_ref_1") == declined
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        charged = self._charge(key="k-approved")
        assert gateway.find_charge(reference="pay_ref_1") == charged  # The one that took money.
        assert gateway.find_charge(reference="pay_ref_2") is None

    def test_refunding_twice_makes_one_refund(self):
        charge = self._charge()
        payment = Payment(gateway_reference=charge.gateway_reference, reference="pay_ref_1")
        gateway = SimulatedPaymentGateway()

        first, second = gateway.refund(payment=payment), gateway.refund(payment=payment)

        assert first == second
        assert first.refund_reference.startswith("sim_re_")
        record = SimulatedCharge.objects.get()
        assert (record.status, record.refund_id) == (SimulatedCharge.Status.REFUNDED, first.refund_reference)
        assert gateway.find_charge(reference="pay_ref_1").status == "refunded"

    def test_refunding_a_declined_or_unknown_charge_is_refused(self, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        declined = self._charge()
        gateway = SimulatedPaymentGateway()
        for charge_id in (declined.gateway_reference, "sim_ch_nosuchcharge"):
            with pytest.raises(PaymentGatewayUnavailable) as error:
                gateway.refund(payment=Payment(gateway_reference=charge_id))
            assert error.value.maybe_charged is False
        assert SimulatedCharge.objects.get().status == SimulatedCharge.Status.DECLINED


class TestOneLivePaymentPerBooking:
    def _payment(self, booking, status, key):
        return Payment.objects.create(
            booking=booking,
            user=booking.user,
            created_by=booking.user,
            idempotency_key=key,
            amount=booking.total_cost,
            currency="INR",
            status=status,
            attempted_at=timezone.now(),
        )

    @pytest.mark.parametrize("first", [Payment.Status.PROCESSING, Payment.Status.SUCCEEDED])
    @pytest.mark.parametrize("second", [Payment.Status.PROCESSING, Payment.Status.SUCCEEDED])
    def test_a_second_live_payment_is_refused_by_the_database(self, user, flight, first, second):
        booking = initiated(user, flight)
        self._payment(booking, first, "a")

        with pytest.raises(IntegrityError) as error, transaction.atomic():
            self._payment(booking, second, "b")

        # PostgreSQL names the constraint; SQLite names the partial unique index's column.
        message = str(error.value)
        assert "payment_one_live_per_booking" in message or "payments_payment.booking_id" in message, message
        assert list(Payment.objects.values_list("status", flat=True)) == [first]

    def test_settled_payments_do_not_count(self, user, flight):
        booking = initiated(user, flight)
        for index, status in enumerate(["DECLINED", "FAILED", "REFUNDED", "DECLINED", "SUCCEEDED"]):
            self._payment(booking, status, f"k{index}")
        other = initiated(user, flight, 1)
        self._payment(other, "PROCESSING", "k-other")  # Another booking's live payment is its own.
        assert Payment.objects.count() == 6


class TestResumedAttempt:
    def test_a_refused_retry_after_an_unknown_outcome_keeps_the_payment_processing(
        self, user, user_client, flight, settings
    ):
        booking = initiated(user, flight)
        body = {"bookingId": booking.pk, "amount": str(booking.total_cost)}

        def pay():
            return user_client.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY="resume-me")

        settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
        assert_problem(pay(), 503, "payment_gateway_unavailable")
        payment = Payment.objects.get()
        assert (payment.status, payment.attempts) == (Payment.Status.PROCESSING, 1)
        assert SimulatedCharge.objects.get().status == SimulatedCharge.Status.SUCCEEDED  # Charged, unknown to us.

        settings.PAYMENT_SIMULATED_OUTCOME = "fail"
        assert_problem(pay(), 503, "payment_gateway_unavailable")
        payment.refresh_from_db()
        # The refusal says nothing about the first try, which charged: not FAILED.
        assert (payment.status, payment.attempts) == (Payment.Status.PROCESSING, 2)
        assert payment.failure_reason
        booking.refresh_from_db()
        assert booking.status == Booking.Status.PENDING
        assert_money_matches_bookings()

        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        done = pay()

        assert done.status_code == 201, done.content
        charge = SimulatedCharge.objects.get()
        assert done.json()["gatewayReference"] == charge.charge_id
        assert done.json()["status"] == "SUCCEEDED"
        payment.refresh_from_db()
        assert (payment.status, payment.attempts, payment.gateway_reference) == (
            Payment.Status.SUCCEEDED,
            3,
            charge.charge_id,
        )
        booking.refresh_from_db()
        assert booking.status == Booking.Status.BOOKED
        assert Payment.objects.count() == 1
        assert_bookings_match_ledger(flight)
        assert_money_matches_bookings()

    def test_a_refused_first_try_is_known_not_charged(self, user, user_client, flight, settings):
        booking = initiated(user, flight)
        settings.PAYMENT_SIMULATED_OUTCOME = "fail"
        response = user_client.post(
            "/api/v1/payments",
            {"bookingId": booking.pk, "amount": str(booking.total_cost)},
            format="json",
            HTTP_IDEMPOTENCY_KEY="first-try",
        )
        assert_problem(response, 503, "payment_gateway_unavailable")
        assert Payment.objects.get().status == Payment.Status.FAILED
        assert Booking.objects.get(pk=booking.pk).status == Booking.Status.INITIATED
        assert SimulatedCharge.objects.count() == 0


# Helpers ------------------------------------------------------------------------------------


class RefundMustNotBeCalled:
    """A gateway that fails the test if anything asks it for money movements."""

    def charge(self, **kwargs):
        raise AssertionError(f"unexpected charge {kwargs}")

    def refund(self, *, payment):
        raise AssertionError(f"unexpected refund of payment {payment.pk}")

    def find_charge(self, *, reference):
        raise AssertionError(f"unexpected look-up of {reference}")


def test_an_answer_for_a_payment_that_moved_on_writes_nothing_and_goes_the_locked_way(user, flight, settings):
    """The booking still PENDING but its payment no longer PROCESSING: the quick record must
    undo its booking update, so the locked path sees both rows as they were."""
    booking, payment, _ = pending_answer_lost(user, flight, settings)
    Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.FAILED)
    events = booking.events.count()

    recorded = services._record_answer(payment, SimulatedPaymentGateway().find_charge(reference=payment.reference))

    assert recorded is False
    booking.refresh_from_db()
    assert booking.status == Booking.Status.PENDING  # Undone with the transaction.
    assert booking.events.count() == events
    assert Payment.objects.get(pk=payment.pk).status == Payment.Status.FAILED
