"""Refunds on cancel (docs/api.md#bookings: a BOOKED booking is refunded first, then cancelled), and
payments in Django admin, with the default simulated gateway (its books: SimulatedCharge).

The gateway is outside the code under test, so a refund that fails is made by patching the
simulated gateway's `refund` (the service and the booking saga run for real)."""

import csv
import datetime as dt
import io

import pytest
from django.contrib.auth import get_user_model

from bookings.models import Booking
from bookings.services import booking_create
from bookings_project.exceptions import PaymentDeclined, PaymentGatewayUnavailable
from payments import services as payment_services
from payments.gateway import SimulatedPaymentGateway
from payments.models import IdempotencyKey, Payment, SimulatedCharge
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings, assert_problem

pytestmark = pytest.mark.django_db

BOOKINGS_ADMIN = "/admin/bookings/booking/"
PAYMENTS_ADMIN = "/admin/payments/payment/"
KEYS_ADMIN = "/admin/payments/idempotencykey/"

_real_refund = SimulatedPaymentGateway.refund


def _paid_booking(user, flight, *, seats=2, key="pay-1") -> tuple[Booking, Payment]:
    booking = booking_create(user=user, flight_id=flight.pk, seats=seats)
    payment = payment_services.payment_create(
        caller=user, booking_id=booking.pk, amount=booking.total_cost, idempotency_key=key
    )
    booking.refresh_from_db()
    assert booking.status == Booking.Status.BOOKED
    assert payment.status == Payment.Status.SUCCEEDED
    return booking, payment


def _charge_of(payment: Payment) -> SimulatedCharge:
    return SimulatedCharge.objects.get(reference=payment.reference)


@pytest.fixture
def refund_down(monkeypatch):
    """The simulated gateway's refund is unreachable (nothing refunded); `recover()` brings it back."""
    calls = []

    def unavailable(self, *, payment):
        calls.append(payment.pk)
        raise PaymentGatewayUnavailable("The simulated gateway is down (refund).", maybe_charged=False)

    monkeypatch.setattr(SimulatedPaymentGateway, "refund", unavailable)
    unavailable.calls = calls
    unavailable.recover = lambda: monkeypatch.setattr(SimulatedPaymentGateway, "refund", _real_refund)
    return unavailable


@pytest.fixture
def refund_answer_lost(monkeypatch):
    """The simulated gateway refunds, but its answer never arrives; `recover()` brings it back."""

    def lost(self, *, payment):
        _real_refund(self, payment=payment)
        raise PaymentGatewayUnavailable("The simulated gateway refunded, but its answer was lost.")

    monkeypatch.setattr(SimulatedPaymentGateway, "refund", lost)
    lost.recover = lambda: monkeypatch.setattr(SimulatedPaymentGateway, "refund", _real_refund)
    return lost


@pytest.fixture
def ops(client):
    ops_user = get_user_model().objects.create_superuser("root", "root@example.com", "root-password")
    client.force_login(ops_user)
    return client


class TestRefundOnCancel:
    @pytest.mark.parametrize("method", ["patch", "post"])
    def test_cancelling_a_paid_booking_refunds_it_then_releases_its_seats(self, method, user, user_client, flight):
        booking, payment = _paid_booking(user, flight, seats=3)
        flight.refresh_from_db()
        assert flight.available_seats == 17

        response = getattr(user_client, method)(f"/api/v1/bookings/{booking.pk}/cancel")

        assert response.status_code == 200, response.content
        body = response.json()
        assert (body["id"], body["status"], body["cancelReason"]) == (booking.pk, "CANCELLED", "user")
        booking.refresh_from_db()
        assert (booking.status, booking.seats_state) == (Booking.Status.CANCELLED, Booking.SeatsState.RELEASED)
        payment.refresh_from_db()
        assert payment.status == Payment.Status.REFUNDED
        assert payment.refund_reference.startswith("sim_re_")
        assert payment.refunded_at is not None
        charge = _charge_of(payment)
        assert charge.status == SimulatedCharge.Status.REFUNDED
        assert charge.refund_id == payment.refund_reference
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert_money_matches_bookings()

    def test_cancelling_again_is_a_no_op_with_still_one_refund(self, user, user_client, flight):
        booking, payment = _paid_booking(user, flight)
        assert user_client.patch(f"/api/v1/bookings/{booking.pk}/cancel").status_code == 200
        payment.refresh_from_db()
        first_refund, first_refunded_at = payment.refund_reference, payment.refunded_at

        again = user_client.patch(f"/api/v1/bookings/{booking.pk}/cancel")
        also = user_client.post(f"/api/v1/bookings/{booking.pk}/cancel")

        assert again.status_code == also.status_code == 200
        assert again.json()["status"] == also.json()["status"] == "CANCELLED"
        payment.refresh_from_db()
        assert (payment.status, payment.refund_reference, payment.refunded_at) == (
            Payment.Status.REFUNDED,
            first_refund,
            first_refunded_at,
        )
        assert list(SimulatedCharge.objects.values_list("status", "refund_id")) == [("refunded", first_refund)]
        assert Payment.objects.count() == 1
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert_money_matches_bookings()


class TestRefundFailure:
    def test_a_refund_that_fails_leaves_the_booking_paid_and_a_retry_completes_it(
        self, user, user_client, flight, refund_down
    ):
        booking, payment = _paid_booking(user, flight, seats=2)

        response = user_client.patch(f"/api/v1/bookings/{booking.pk}/cancel")

        assert_problem(response, 503, "payment_gateway_unavailable")
        assert response["Retry-After"] == "5"
        assert refund_down.calls == [payment.pk]
        booking.refresh_from_db()
        assert (booking.status, booking.seats_state) == (Booking.Status.BOOKED, Booking.SeatsState.RESERVED)
        # The request is on record (cleanup finishes it if the client never retries), but
        # clients see no cancelReason until the booking is CANCELLED.
        assert booking.cancel_requested_at is not None and booking.cancel_reason == Booking.CancelReason.USER
        assert user_client.get(f"/api/v1/bookings/{booking.pk}").json()["cancelReason"] is None
        payment.refresh_from_db()
        assert (payment.status, payment.refund_reference, payment.refunded_at) == (Payment.Status.SUCCEEDED, "", None)
        assert _charge_of(payment).status == SimulatedCharge.Status.SUCCEEDED
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 18
        assert_money_matches_bookings()

        refund_down.recover()
        retry = user_client.patch(f"/api/v1/bookings/{booking.pk}/cancel")

        assert retry.status_code == 200, retry.content
        assert retry.json()["status"] == "CANCELLED"
        payment.refresh_from_db()
        charge = _charge_of(payment)
        assert payment.status == Payment.Status.REFUNDED
        assert (charge.status, charge.refund_id) == (SimulatedCharge.Status.REFUNDED, payment.refund_reference)
        assert SimulatedCharge.objects.count() == 1
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert_money_matches_bookings()

    def test_a_refund_applied_but_whose_answer_was_lost_is_not_refunded_twice_on_retry(
        self, user, user_client, flight, refund_answer_lost
    ):
        booking, payment = _paid_booking(user, flight, seats=2)

        response = user_client.patch(f"/api/v1/bookings/{booking.pk}/cancel")

        assert_problem(response, 503, "payment_gateway_unavailable")
        assert "Retry-After" in response
        booking.refresh_from_db()
        assert (booking.status, booking.seats_state) == (Booking.Status.BOOKED, Booking.SeatsState.RESERVED)
        payment.refresh_from_db()
        assert payment.status == Payment.Status.SUCCEEDED  # We were not told: the outcome is unknown to us.
        charge = _charge_of(payment)
        assert charge.status == SimulatedCharge.Status.REFUNDED  # ... but the gateway did refund.
        refund_id, refunded_at = charge.refund_id, charge.refunded_at
        assert refund_id

        refund_answer_lost.recover()
        retry = user_client.post(f"/api/v1/bookings/{booking.pk}/cancel")

        assert retry.status_code == 200, retry.content
        assert retry.json()["status"] == "CANCELLED"
        payment.refresh_from_db()
        charge.refresh_from_db()
        assert (payment.status, payment.refund_reference) == (Payment.Status.REFUNDED, refund_id)
        assert (charge.status, charge.refund_id, charge.refunded_at) == ("refunded", refund_id, refunded_at)
        assert SimulatedCharge.objects.count() == 1
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert_money_matches_bookings()

    def test_a_crash_between_refund_and_cancel_is_completed_by_a_later_cancel(self, user, user_client, flight):
        booking, payment = _paid_booking(user, flight, seats=4)
        refunded = payment_services.payment_refund(payment_id=payment.pk)  # ... and the process died here.
        assert refunded.status == Payment.Status.REFUNDED
        refund_id = refunded.refund_reference
        booking.refresh_from_db()
        assert booking.status == Booking.Status.BOOKED
        assert _charge_of(payment).status == SimulatedCharge.Status.REFUNDED  # Money back, booking not cancelled.

        response = user_client.patch(f"/api/v1/bookings/{booking.pk}/cancel")

        assert response.status_code == 200, response.content
        assert response.json()["status"] == "CANCELLED"
        payment.refresh_from_db()
        charge = _charge_of(payment)
        assert (payment.status, payment.refund_reference) == (Payment.Status.REFUNDED, refund_id)
        assert (charge.status, charge.refund_id) == (SimulatedCharge.Status.REFUNDED, refund_id)
        booking.refresh_from_db()
        assert booking.seats_state == Booking.SeatsState.RELEASED
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert_money_matches_bookings()


def _cancel_in_admin(client, booking_ids, reason="refund agreed"):
    """The action's confirmation page, then its Confirm with a reason."""
    page = client.post(BOOKINGS_ADMIN, {"action": "cancel_selected", "_selected_action": booking_ids, "index": 0})
    assert page.status_code == 200
    data = {"action": "cancel_selected", "_selected_action": booking_ids, "confirm": "yes", "reason": reason}
    return page, client.post(BOOKINGS_ADMIN, data, follow=True)


class TestStaffCancelAction:
    def test_cancel_action_refunds_and_cancels_a_paid_booking(self, ops, user, flight):
        booking, payment = _paid_booking(user, flight, seats=2)
        unpaid = booking_create(user=user, flight_id=flight.pk, seats=1)

        page, response = _cancel_in_admin(ops, [booking.pk, unpaid.pk])

        # The confirmation says what will be refunded, before anything is.
        assert [(p.booking, p.refund) for p in page.context["previews"]] == [(booking, payment), (unpaid, None)]
        assert f"11000.00 INR (payment {payment.pk})" in page.content.decode()
        assert response.status_code == 200
        messages = [str(m) for m in response.context["messages"]]
        assert messages == [
            f"Cancelled 2 booking(s); released 3 seat(s); refunded 11000.00 INR for booking {booking.pk} "
            f"(payment {payment.pk})."
        ]
        assert set(Booking.objects.values_list("status", "cancel_reason")) == {("CANCELLED", "staff")}
        payment.refresh_from_db()
        assert payment.status == Payment.Status.REFUNDED
        assert _charge_of(payment).status == SimulatedCharge.Status.REFUNDED
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        assert_money_matches_bookings()

    def test_cancel_action_reports_a_failed_refund_and_leaves_the_booking_booked(self, ops, user, flight, refund_down):
        booking, payment = _paid_booking(user, flight, seats=2)

        _, response = _cancel_in_admin(ops, [booking.pk])

        messages = [str(m) for m in response.context["messages"]]
        assert "Cancelled 0 booking(s); released 0 seat(s)." in messages
        assert any(m.startswith(f"Not cancelled: {booking.pk}: ") for m in messages), messages
        booking.refresh_from_db()
        assert (booking.status, booking.seats_state) == (Booking.Status.BOOKED, Booking.SeatsState.RESERVED)
        payment.refresh_from_db()
        assert payment.status == Payment.Status.SUCCEEDED
        assert _charge_of(payment).status == SimulatedCharge.Status.SUCCEEDED
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 18
        assert_money_matches_bookings()


class TestPaymentsAdmin:
    @pytest.fixture
    def payments(self, user, other_user, flight, settings):
        _, alices = _paid_booking(user, flight, seats=1, key="alice-key-1")
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        bobs_booking = booking_create(user=other_user, flight_id=flight.pk, seats=1)
        with pytest.raises(PaymentDeclined):
            payment_services.payment_create(
                caller=other_user, booking_id=bobs_booking.pk, amount=bobs_booking.total_cost, idempotency_key="bob-k"
            )
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        bobs = Payment.objects.get(booking=bobs_booking)
        assert bobs.status == Payment.Status.DECLINED
        return alices, bobs

    def test_changelist_and_change_page_answer_staff(self, ops, payments):
        alices, bobs = payments
        page = ops.get(PAYMENTS_ADMIN)
        assert page.status_code == 200
        assert set(page.context["cl"].result_list) == {alices, bobs}
        html = page.content.decode()
        for column in ("Status", "Booking", "Amount", "Gateway reference", "Attempts"):
            assert column in html
        change = ops.get(f"{PAYMENTS_ADMIN}{alices.pk}/change/")
        assert change.status_code == 200
        assert alices.gateway_reference in change.content.decode()

    def test_payments_are_read_only(self, ops, payments):
        alices, _ = payments
        assert ops.get(f"{PAYMENTS_ADMIN}add/").status_code == 403
        assert ops.get(f"{PAYMENTS_ADMIN}{alices.pk}/delete/").status_code == 403
        change = ops.get(f"{PAYMENTS_ADMIN}{alices.pk}/change/")
        assert change.context["has_change_permission"] is False
        assert change.context["has_delete_permission"] is False
        # A hand-made edit is ignored: money changes only through the services.
        edit = ops.post(f"{PAYMENTS_ADMIN}{alices.pk}/change/", {"status": "REFUNDED", "amount": "1.00"})
        assert edit.status_code == 403
        alices.refresh_from_db()
        assert (alices.status, str(alices.amount)) == (Payment.Status.SUCCEEDED, "5500.00")
        assert ops.get(f"{KEYS_ADMIN}add/").status_code == 403
        assert ops.get("/admin/payments/simulatedcharge/add/").status_code == 403

    def test_filter_payments_by_status(self, ops, payments):
        alices, bobs = payments
        assert list(ops.get(PAYMENTS_ADMIN, {"status__exact": "SUCCEEDED"}).context["cl"].result_list) == [alices]
        assert list(ops.get(PAYMENTS_ADMIN, {"status__exact": "DECLINED"}).context["cl"].result_list) == [bobs]
        assert list(ops.get(PAYMENTS_ADMIN, {"status__exact": "REFUNDED"}).context["cl"].result_list) == []

    def test_search_payments_by_reference_gateway_reference_and_key(self, ops, payments):
        alices, bobs = payments
        for query, found in [
            (alices.reference, [alices]),
            (bobs.reference, [bobs]),
            (alices.gateway_reference, [alices]),
            (bobs.gateway_reference, [bobs]),
            ("alice-key-1", [alices]),
            ("bob-k", [bobs]),
            ("no-such-thing", []),
        ]:
            assert list(ops.get(PAYMENTS_ADMIN, {"q": query}).context["cl"].result_list) == found, query

    def test_idempotency_keys_filter_by_state_and_search_by_key(self, ops, user, other_user, user_client, flight):
        booking = booking_create(user=user, flight_id=flight.pk, seats=1)
        paid = user_client.post(
            "/api/v1/payments",
            {"bookingId": booking.pk, "amount": str(booking.total_cost)},
            format="json",
            HTTP_IDEMPOTENCY_KEY="order-42-pay",
        )
        assert paid.status_code == 201, paid.content
        running = IdempotencyKey.objects.create(
            user=other_user, key="order-43-pay", fingerprint="0" * 64, expires_at=booking.expires_at
        )
        completed = IdempotencyKey.objects.get(key="order-42-pay")
        assert completed.state == IdempotencyKey.State.COMPLETED

        assert ops.get(KEYS_ADMIN).status_code == 200
        assert list(ops.get(KEYS_ADMIN, {"state__exact": "completed"}).context["cl"].result_list) == [completed]
        assert list(ops.get(KEYS_ADMIN, {"state__exact": "in_progress"}).context["cl"].result_list) == [running]
        assert list(ops.get(KEYS_ADMIN, {"q": "order-43"}).context["cl"].result_list) == [running]
        assert set(ops.get(KEYS_ADMIN, {"q": "order-4"}).context["cl"].result_list) == {completed, running}
        assert ops.get(f"{KEYS_ADMIN}{completed.pk}/change/").status_code == 200

    def test_booking_change_page_shows_its_payments_inline(self, ops, user, flight):
        booking, payment = _paid_booking(user, flight, seats=2)
        payment_services.payment_refund(payment_id=payment.pk)
        payment.refresh_from_db()

        page = ops.get(f"{BOOKINGS_ADMIN}{booking.pk}/change/")

        assert page.status_code == 200
        inlines = {formset.opts.model: formset for formset in page.context["inline_admin_formsets"]}
        assert [form.original for form in inlines[Payment]] == [payment]
        html = page.content.decode()
        assert payment.gateway_reference in html
        assert "Refunded" in html
        assert f"{PAYMENTS_ADMIN}{payment.pk}/change/" in html  # show_change_link

    def test_the_list_and_the_page_link_to_the_booking_the_flight_and_the_user(self, ops, payments, user, flight):
        alices, _ = payments
        links = [
            f'href="{BOOKINGS_ADMIN}{alices.booking_id}/change/"',
            f'href="/admin/flights/flight/{flight.pk}/change/"',
            f'href="/admin/auth/user/{user.pk}/change/"',
        ]
        listing = ops.get(PAYMENTS_ADMIN).content.decode()
        page = ops.get(f"{PAYMENTS_ADMIN}{alices.pk}/change/").content.decode()
        for link in links:
            assert link in listing and link in page, link
        assert 'name="_save"' not in page

    def test_failed_declined_and_stuck_payments_stand_out(self, ops, payments, user, clock, flight):
        from payments.selectors import payment_attempt_window

        alices, bobs = payments
        stuck = Payment.objects.create(
            booking=booking_create(user=user, flight_id=flight.pk, seats=1),
            user=user,
            created_by=user,
            idempotency_key="stuck",
            amount="5500.00",
            currency="INR",
            attempted_at=clock.now - payment_attempt_window() - dt.timedelta(seconds=1),
        )
        fresh = Payment.objects.create(
            booking=booking_create(user=user, flight_id=flight.pk, seats=1),
            user=user,
            created_by=user,
            idempotency_key="fresh",
            amount="5500.00",
            currency="INR",
            attempted_at=clock.now,
        )
        admin = ops.get(PAYMENTS_ADMIN).context["cl"].model_admin

        assert "ops-badge-alert" in admin.status_shown(bobs)  # DECLINED
        assert "stuck" in admin.status_shown(stuck)
        assert admin.status_shown(fresh) == "Processing"
        assert admin.status_shown(alices) == "Succeeded"
        Payment.objects.filter(pk=fresh.pk).update(status=Payment.Status.FAILED)
        fresh.refresh_from_db()
        assert "ops-badge-alert" in admin.status_shown(fresh)

    def test_export_streams_the_selected_payments_as_csv(self, ops, payments, user, other_user):
        alices, bobs = payments

        response = ops.post(
            PAYMENTS_ADMIN, {"action": "export_csv", "_selected_action": [bobs.pk, alices.pk], "index": 0}
        )

        assert response.status_code == 200 and response.streaming
        assert response["Content-Disposition"].startswith('attachment; filename="payments-')
        rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert rows[0] == [
            "id",
            "booking id",
            "user",
            "amount",
            "currency",
            "status",
            "gateway reference",
            "created",
            "refunded at",
        ]
        assert [row[:7] for row in rows[1:]] == [
            [str(alices.pk), str(alices.booking_id), "alice", "5500.00", "INR", "SUCCEEDED", alices.gateway_reference],
            [str(bobs.pk), str(bobs.booking_id), "bob", "5500.00", "INR", "DECLINED", bobs.gateway_reference],
        ]

    def test_idempotency_key_and_charge_pages_are_view_only(self, ops, payments):
        alices, _ = payments
        key = IdempotencyKey.objects.create(
            user=alices.user, key="alice-key-1", fingerprint="0" * 64, expires_at=alices.created_at
        )
        for url in (
            f"{KEYS_ADMIN}{key.pk}/change/",
            f"/admin/payments/simulatedcharge/{_charge_of(alices).pk}/change/",
        ):
            page = ops.get(url)
            assert page.status_code == 200, url
            assert page.context["has_change_permission"] is False
            assert 'name="_save"' not in page.content.decode(), url
