"""Payments API (docs/api.md#payments, #idempotency, #errors) through HTTP, on the in-process Flights adapter and the
default simulated payment gateway: every idempotency rule and every payment error code."""

import contextlib
import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings.models import Booking
from bookings_project.exceptions import PaymentDeclined
from payments import idempotency
from payments import services as payment_services
from payments.idempotency import request_fingerprint
from payments.models import IdempotencyKey, Payment, SimulatedCharge
from tests.factories import RequestDied
from tests.helpers import assert_bookings_match_ledger, assert_money_matches_bookings, assert_problem, race

pytestmark = pytest.mark.django_db

PAY = "/api/v1/payments"
REPLAYED = "Idempotent-Replayed"
PAYMENT_FIELDS = {
    "id",
    "bookingId",
    "userId",
    "amount",
    "currency",
    "status",
    "gatewayReference",
    "createdAt",
    "updatedAt",
}


class TestPay:
    def test_pays_once_and_books(self, user_client, user, booking, flight):
        before = timezone.now()
        response = _pay(user_client, "k-1", _body(booking))

        assert response.status_code == 201, response.content
        assert REPLAYED not in response
        body = response.json()
        assert set(body) == PAYMENT_FIELDS
        assert body["bookingId"] == booking
        assert body["userId"] == user.pk
        assert body["amount"] == "11000.00"
        assert body["currency"] == "INR"
        assert body["status"] == "SUCCEEDED"
        charge = SimulatedCharge.objects.get()
        assert body["gatewayReference"] == charge.charge_id
        assert charge.status == "succeeded" and charge.amount == Decimal("11000.00")
        assert _parse_time(body["createdAt"]) >= before - dt.timedelta(seconds=1)
        assert _parse_time(body["updatedAt"]) >= _parse_time(body["createdAt"])
        payment = Payment.objects.get()
        assert (payment.pk, payment.status, payment.idempotency_key, payment.attempts) == (
            body["id"],
            "SUCCEEDED",
            "k-1",
            1,
        )
        assert charge.reference == payment.reference
        assert _status(booking) == "BOOKED"
        key = IdempotencyKey.objects.get()
        assert (key.key, key.state, key.response_status, key.response_body) == ("k-1", "completed", 201, body)
        assert key.user_id == user.pk
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 18

    @pytest.mark.parametrize(
        "money",
        [
            {"amount": 11000},
            {"amount": 11000.0},
            {"amount": "11000.00"},
            {"amount": "11000"},
            {"totalCost": "11000.00"},
        ],
        ids=["int", "float", "string", "string-no-places", "totalCost-alias"],
    )
    def test_amount_as_number_string_or_alias(self, user_client, booking, money):
        response = _pay(user_client, "k", {"bookingId": booking, **money})
        assert response.status_code == 201, response.content
        assert response.json()["amount"] == "11000.00"
        assert _status(booking) == "BOOKED"
        assert SimulatedCharge.objects.count() == 1

    def test_staff_pays_for_a_customer_with_userId(self, staff_client, staff_user, user_client, user, booking):
        response = _pay(staff_client, "staff-k", _body(booking, userId=user.pk))

        assert response.status_code == 201, response.content
        assert response.json()["userId"] == user.pk
        payment = Payment.objects.get()
        assert (payment.user_id, payment.created_by_id) == (user.pk, staff_user.pk)
        assert IdempotencyKey.objects.get().user_id == staff_user.pk  # The key is the caller's.
        assert _status(booking) == "BOOKED"
        # The customer sees their payment.
        assert user_client.get(f"{PAY}/{payment.pk}").status_code == 200

    def test_own_userId_is_accepted(self, user_client, user, booking):
        response = _pay(user_client, "k", _body(booking, userId=user.pk))
        assert response.status_code == 201, response.content


class TestValidation:
    @pytest.mark.parametrize(
        "body, field",
        [
            ({"amount": 11000.001}, "amount"),
            ({"amount": "11000.001"}, "amount"),
            ({"amount": -11000}, "amount"),
            ({"amount": "-11000.00"}, "amount"),
            ({"amount": True}, "amount"),
            ({}, "amount"),
            ({"amount": None}, "amount"),
            ({"amount": "11000.00", "totalCost": "10000.00"}, "totalCost"),
            ({"amount": "11000.00", "bookingIdAsString": True}, "bookingId"),
            ({"amount": "11000.00", "bookingId": 0}, "bookingId"),
            ({"amount": "11000.00", "bookingId": 10**18}, "bookingId"),
            ({"amount": "11000.00", "bookingId": True}, "bookingId"),
            ({"amount": "11000.00", "userId": "1"}, "userId"),
        ],
        ids=[
            "3-places-number",
            "3-places-string",
            "negative-number",
            "negative-string",
            "boolean",
            "missing",
            "null",
            "alias-disagrees",
            "bookingId-string",
            "bookingId-zero",
            "bookingId-too-big",
            "bookingId-boolean",
            "userId-string",
        ],
    )
    def test_bad_body_is_400_and_stores_nothing(self, user_client, booking, body, field):
        payload = {"bookingId": booking, **body}
        if payload.pop("bookingIdAsString", False):
            payload["bookingId"] = str(booking)
        response = _pay(user_client, "k", payload)

        problem = assert_problem(response, 400, "validation_error")
        assert field in {error["field"] for error in problem["errors"]}, problem
        assert IdempotencyKey.objects.count() == 0
        _assert_untouched(booking)

    def test_after_a_bad_body_the_same_key_is_free(self, user_client, booking):
        assert_problem(_pay(user_client, "k", _body(booking, amount=True)), 400, "validation_error")
        response = _pay(user_client, "k", _body(booking))
        assert response.status_code == 201, response.content
        assert REPLAYED not in response


class TestKeyHeader:
    def test_missing_key_is_400_and_stores_nothing(self, user_client, booking):
        response = _pay(user_client, None, _body(booking))
        assert_problem(response, 400, "idempotency_key_missing")
        assert IdempotencyKey.objects.count() == 0
        _assert_untouched(booking)

    @pytest.mark.parametrize("key", ["", "   ", "\t"])
    def test_empty_or_blank_key_counts_as_missing(self, user_client, booking, key):
        assert_problem(_pay(user_client, key, _body(booking)), 400, "idempotency_key_missing")
        assert IdempotencyKey.objects.count() == 0
        _assert_untouched(booking)

    def test_key_of_256_characters_is_refused(self, user_client, booking):
        problem = assert_problem(_pay(user_client, "k" * 256, _body(booking)), 400, "validation_error")
        assert [error["field"] for error in problem["errors"]] == ["Idempotency-Key"]
        assert IdempotencyKey.objects.count() == 0
        _assert_untouched(booking)

    def test_key_of_255_characters_is_accepted(self, user_client, booking):
        response = _pay(user_client, "k" * 255, _body(booking))
        assert response.status_code == 201, response.content
        assert IdempotencyKey.objects.get().key == "k" * 255
        replay = _pay(user_client, "k" * 255, _body(booking))
        assert (replay.status_code, replay[REPLAYED]) == (201, "true")

    def test_two_different_keys_are_refused(self, user_client, booking):
        response = _pay(user_client, "k-1", _body(booking), seed_key="k-2")
        problem = assert_problem(response, 400, "validation_error")
        assert [error["field"] for error in problem["errors"]] == ["Idempotency-Key"]
        assert IdempotencyKey.objects.count() == 0
        _assert_untouched(booking)

    def test_the_same_key_in_both_headers_is_fine(self, user_client, booking):
        response = _pay(user_client, "k-1", _body(booking), seed_key="k-1")
        assert response.status_code == 201, response.content
        assert IdempotencyKey.objects.get().key == "k-1"

    def test_seed_header_alone_works_and_is_the_same_key(self, user_client, booking):
        first = _pay(user_client, None, _body(booking), seed_key="unique-key-123")
        assert first.status_code == 201, first.content
        assert IdempotencyKey.objects.get().key == "unique-key-123"
        # The standard header with the same key replays the seed header's answer.
        replay = _pay(user_client, "unique-key-123", _body(booking))
        assert (replay.status_code, replay[REPLAYED], replay.json()) == (201, "true", first.json())
        assert SimulatedCharge.objects.count() == 1


class TestReplay:
    def test_same_key_same_body_replays_and_never_charges_twice(self, user_client, booking, flight):
        first = _pay(user_client, "k", _body(booking))
        assert first.status_code == 201, first.content

        for _ in range(2):
            replay = _pay(user_client, "k", _body(booking))
            assert replay.status_code == 201
            assert replay[REPLAYED] == "true"
            assert replay["Content-Type"] == "application/json"
            assert replay.json() == first.json()

        assert SimulatedCharge.objects.count() == 1
        assert Payment.objects.count() == 1
        assert IdempotencyKey.objects.count() == 1
        assert _status(booking) == "BOOKED"
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)

    @pytest.mark.parametrize(
        "first, again",
        [
            ({"amount": 11000}, {"amount": "11000.00"}),
            ({"amount": "11000.00"}, {"totalCost": 11000}),
            ({"totalCost": "11000"}, {"amount": 11000.0}),
            ({"amount": "11000.00", "totalCost": "11000.00"}, {"amount": "11000.00"}),
        ],
        ids=["number-then-string", "string-then-alias", "alias-then-float", "both-then-amount"],
    )
    def test_fingerprint_normalises_the_body(self, user_client, booking, first, again):
        original = _pay(user_client, "k", {"bookingId": booking, **first})
        assert original.status_code == 201, original.content
        replay = _pay(user_client, "k", {**again, "bookingId": booking})  # Key order does not matter either.
        assert (replay.status_code, replay.get(REPLAYED)) == (201, "true"), replay.content
        assert replay.json() == original.json()
        assert SimulatedCharge.objects.count() == 1

    @pytest.mark.parametrize("first_names_me", [True, False], ids=["userId-then-none", "none-then-userId"])
    def test_naming_yourself_as_userId_is_the_same_body(self, user_client, user, booking, first_names_me):
        mine = {"userId": user.pk}
        original = _pay(user_client, "k", _body(booking, **(mine if first_names_me else {})))
        assert original.status_code == 201, original.content

        replay = _pay(user_client, "k", _body(booking, **({} if first_names_me else mine)))

        assert (replay.status_code, replay.get(REPLAYED)) == (201, "true"), replay.content
        assert SimulatedCharge.objects.count() == 1

    def test_stored_decline_is_replayed(self, user_client, booking, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        first = _pay(user_client, "k", _body(booking))
        assert_problem(first, 402, "payment_declined")
        assert REPLAYED not in first

        settings.PAYMENT_SIMULATED_OUTCOME = "approve"  # Even so: the key's answer is the decline.
        replay = _pay(user_client, "k", _body(booking))
        assert_problem(replay, 402, "payment_declined")
        assert replay[REPLAYED] == "true"
        assert replay.json() == first.json()
        assert SimulatedCharge.objects.count() == 1  # The declined one; nothing charged again.
        assert _status(booking) == "INITIATED"

    def test_stored_amount_mismatch_is_replayed(self, user_client, booking):
        first = _pay(user_client, "k", _body(booking, amount="1.00"))
        assert_problem(first, 422, "amount_mismatch")
        replay = _pay(user_client, "k", _body(booking, amount="1.00"))
        assert_problem(replay, 422, "amount_mismatch")
        assert replay[REPLAYED] == "true"
        assert replay.json() == first.json()
        key = IdempotencyKey.objects.get()
        assert (key.state, key.response_status) == ("completed", 422)
        _assert_untouched(booking)

    def test_stored_not_found_is_replayed(self, user_client):
        first = _pay(user_client, "k", _body(987654))
        assert_problem(first, 404, "not_found")
        replay = _pay(user_client, "k", _body(987654))
        assert_problem(replay, 404, "not_found")
        assert replay[REPLAYED] == "true"
        assert replay.json() == first.json()

    def test_stored_booking_not_payable_is_replayed(self, user_client, booking):
        assert _pay(user_client, "k-1", _body(booking)).status_code == 201
        first = _pay(user_client, "k-2", _body(booking))
        assert_problem(first, 409, "booking_not_payable")
        replay = _pay(user_client, "k-2", _body(booking))
        assert_problem(replay, 409, "booking_not_payable")
        assert replay[REPLAYED] == "true"
        assert "Retry-After" not in replay


class TestKeyReused:
    def test_same_key_other_amount_after_success_is_422(self, user_client, booking):
        first = _pay(user_client, "k", _body(booking))
        assert first.status_code == 201
        response = _pay(user_client, "k", _body(booking, amount="11000.01"))
        assert_problem(response, 422, "idempotency_key_reused")
        assert REPLAYED not in response
        key = IdempotencyKey.objects.get()
        assert (key.response_status, key.response_body) == (201, first.json())  # Unchanged.
        assert SimulatedCharge.objects.count() == 1

    def test_same_key_for_another_booking_is_422_and_that_booking_is_untouched(self, user_client, booking, flight):
        assert _pay(user_client, "k", _body(booking)).status_code == 201
        second = _book(user_client, flight)
        assert_problem(_pay(user_client, "k", _body(second)), 422, "idempotency_key_reused")
        assert _status(second) == "INITIATED"
        assert not Payment.objects.filter(booking_id=second).exists()
        assert SimulatedCharge.objects.count() == 1

    def test_same_key_after_a_stored_error_with_another_body_is_422(self, user_client, booking):
        assert_problem(_pay(user_client, "k", _body(booking, amount="1.00")), 422, "amount_mismatch")
        # Fixing the body does not reuse the key: a new attempt needs a new key.
        assert_problem(_pay(user_client, "k", _body(booking)), 422, "idempotency_key_reused")
        _assert_untouched(booking)
        assert _pay(user_client, "k-new", _body(booking)).status_code == 201

    def test_same_key_while_in_progress_with_another_body_is_422(self, user_client, user, booking):
        now = timezone.now()
        IdempotencyKey.objects.create(
            user=user,
            key="k",
            fingerprint=_fingerprint(booking, amount="1.00"),
            lease=uuid.uuid4(),
            locked_until=now + dt.timedelta(minutes=1),
            expires_at=now + dt.timedelta(hours=24),
        )
        assert_problem(_pay(user_client, "k", _body(booking)), 422, "idempotency_key_reused")
        _assert_untouched(booking)


class TestKeyScope:
    def test_keys_are_scoped_per_user(self, user_client, bob_client, user, other_user, booking, flight):
        alice = _pay(user_client, "shared-key", _body(booking))
        assert alice.status_code == 201

        bobs_booking = _book(bob_client, flight)
        bob = _pay(bob_client, "shared-key", _body(bobs_booking))

        assert bob.status_code == 201, bob.content
        assert REPLAYED not in bob
        assert bob.json()["bookingId"] == bobs_booking
        assert bob.json()["userId"] == other_user.pk
        assert bob.json()["id"] != alice.json()["id"]
        assert _status(bobs_booking) == "BOOKED"
        assert SimulatedCharge.objects.count() == 2
        assert set(IdempotencyKey.objects.values_list("user_id", "key")) == {
            (user.pk, "shared-key"),
            (other_user.pk, "shared-key"),
        }
        assert_money_matches_bookings()

    def test_same_key_and_body_from_another_user_is_not_a_replay(self, user_client, bob_client, booking):
        assert _pay(user_client, "shared-key", _body(booking)).status_code == 201
        # Bob sends alice's exact request: her answer is not his to see.
        response = _pay(bob_client, "shared-key", _body(booking))
        assert_problem(response, 404, "not_found")
        assert REPLAYED not in response


class TestInProgress:
    def _running_key(self, user, booking, *, locked_for: dt.timedelta, **fingerprint_extra) -> IdempotencyKey:
        now = timezone.now()
        return IdempotencyKey.objects.create(
            user=user,
            key="k",
            fingerprint=_fingerprint(booking, **fingerprint_extra),
            state=IdempotencyKey.State.IN_PROGRESS,
            lease=uuid.uuid4(),
            locked_until=now + locked_for,
            expires_at=now + dt.timedelta(hours=24),
        )

    def test_key_still_running_is_409_with_retry_after(self, user_client, user, booking):
        row = self._running_key(user, booking, locked_for=dt.timedelta(minutes=1))

        response = _pay(user_client, "k", _body(booking))

        assert_problem(response, 409, "idempotency_key_in_use")
        assert response["Retry-After"] == "1"
        assert REPLAYED not in response
        _assert_untouched(booking)
        again = IdempotencyKey.objects.get()
        assert (again.pk, again.state, again.lease) == (row.pk, "in_progress", row.lease)  # Left to its owner.

    def test_running_key_with_userId_in_the_body(self, user_client, user, booking):
        # Naming yourself is the same request as naming nobody: the same fingerprint.
        self._running_key(user, booking, locked_for=dt.timedelta(minutes=1))
        assert_problem(_pay(user_client, "k", _body(booking, userId=user.pk)), 409, "idempotency_key_in_use")

    def test_key_whose_lease_ran_out_is_taken_over(self, user_client, user, booking, flight):
        row = self._running_key(user, booking, locked_for=-dt.timedelta(seconds=1))

        response = _pay(user_client, "k", _body(booking))

        assert response.status_code == 201, response.content
        assert REPLAYED not in response
        assert _status(booking) == "BOOKED"
        key = IdempotencyKey.objects.get()
        assert key.pk == row.pk
        assert (key.state, key.response_status, key.lease, key.locked_until) == ("completed", 201, None, None)
        assert SimulatedCharge.objects.count() == 1
        replay = _pay(user_client, "k", _body(booking))
        assert (replay.status_code, replay[REPLAYED]) == (201, "true")
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)


class TestAnswerCommitsWithTheOutcome:
    """The key's answer is written in the transaction that records the gateway's answer: a
    request that dies right after that commit has its answer stored all the same."""

    @pytest.fixture
    def dies_once_recorded(self, monkeypatch):
        real = payment_services.payment_create

        def pay_then_die(**kwargs):
            with contextlib.suppress(PaymentDeclined):
                real(**kwargs)
            raise RequestDied()

        monkeypatch.setattr(payment_services, "payment_create", pay_then_die)
        # A killed process runs nothing after: it lets no key go.
        monkeypatch.setattr(idempotency, "_let_go", lambda row: None)
        return monkeypatch

    def test_paid_then_died_replays_the_payment_at_once(self, user_client, booking, flight, dies_once_recorded):
        with pytest.raises(RequestDied):
            _pay(user_client, "k", _body(booking))
        dies_once_recorded.undo()

        replay = _pay(user_client, "k", _body(booking))

        # Not 409 idempotency_key_in_use until the lease runs out: the answer was stored.
        assert (replay.status_code, replay[REPLAYED]) == (201, "true")
        payment = Payment.objects.get()
        assert replay.json()["id"] == payment.pk
        assert (replay.json()["status"], replay.json()["gatewayReference"]) == ("SUCCEEDED", payment.gateway_reference)
        assert _parse_time(replay.json()["updatedAt"]) == payment.updated_at
        assert SimulatedCharge.objects.count() == 1
        assert _status(booking) == "BOOKED"
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)

    def test_declined_then_died_replays_the_decline(self, user_client, booking, settings, dies_once_recorded):
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        with pytest.raises(RequestDied):
            _pay(user_client, "k", _body(booking))
        dies_once_recorded.undo()
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"

        replay = _pay(user_client, "k", _body(booking))

        assert_problem(replay, 402, "payment_declined")
        assert replay[REPLAYED] == "true"
        assert replay.json()["detail"] == Payment.objects.get().failure_reason
        assert _status(booking) == "INITIATED"

    def test_the_answer_is_written_before_the_outcome_commits(self, user_client, booking):
        with CaptureQueriesContext(connection) as queries:
            assert _pay(user_client, "k", _body(booking)).status_code == 201

        sql = [query["sql"] for query in queries.captured_queries]
        settled = next(i for i, s in enumerate(sql) if s.startswith('UPDATE "payments_payment" SET "status"'))
        answered = next(i for i, s in enumerate(sql) if s.startswith('UPDATE "payments_idempotencykey"'))
        # The test runs in a transaction, so the settle's own ends with RELEASE SAVEPOINT (COMMIT when it runs alone).
        ends = [i for i, s in enumerate(sql) if s.startswith(("COMMIT", "RELEASE SAVEPOINT"))]
        assert settled < answered < min(i for i in ends if i > settled), sql[settled:]


class TestTtl:
    def test_key_past_its_ttl_is_as_good_as_unused(self, user_client, booking, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        assert_problem(_pay(user_client, "k", _body(booking)), 402, "payment_declined")
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        assert _pay(user_client, "k", _body(booking)).status_code == 402  # Still the stored decline.

        IdempotencyKey.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
        response = _pay(user_client, "k", _body(booking))

        assert response.status_code == 201, response.content
        assert REPLAYED not in response
        assert _status(booking) == "BOOKED"
        key = IdempotencyKey.objects.get()
        assert (key.state, key.response_status) == ("completed", 201)
        assert key.expires_at > timezone.now() + dt.timedelta(hours=23)

    def test_expired_key_may_carry_another_body(self, user_client, booking, flight):
        assert _pay(user_client, "k", _body(booking)).status_code == 201
        IdempotencyKey.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
        second = _book(user_client, flight)
        response = _pay(user_client, "k", _body(second))
        assert response.status_code == 201, response.content
        assert response.json()["bookingId"] == second
        assert SimulatedCharge.objects.count() == 2
        assert_money_matches_bookings()


class TestAnswersThatInviteRetryStoreNothing:
    def test_gateway_down_stores_nothing_and_the_retry_pays(self, user_client, booking, settings, flight):
        settings.PAYMENT_SIMULATED_OUTCOME = "fail"
        response = _pay(user_client, "k", _body(booking))

        assert_problem(response, 503, "payment_gateway_unavailable")
        assert response["Retry-After"] == "5"
        assert IdempotencyKey.objects.count() == 0
        failed = Payment.objects.get()
        assert failed.status == "FAILED"
        assert _status(booking) == "INITIATED"  # Never charged: payable again.
        assert SimulatedCharge.objects.count() == 0
        assert_money_matches_bookings()

        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        retry = _pay(user_client, "k", _body(booking))

        assert retry.status_code == 201, retry.content
        assert REPLAYED not in retry
        assert retry.json()["id"] != failed.pk
        assert _status(booking) == "BOOKED"
        assert SimulatedCharge.objects.count() == 1
        assert sorted(Payment.objects.values_list("status", flat=True)) == ["FAILED", "SUCCEEDED"]
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)

    def test_lost_answer_stores_nothing_and_the_retry_resumes_without_charging_twice(
        self, user_client, booking, settings, flight
    ):
        settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
        response = _pay(user_client, "k", _body(booking))

        assert_problem(response, 503, "payment_gateway_unavailable")
        assert response["Retry-After"] == "5"
        assert IdempotencyKey.objects.count() == 0
        payment = Payment.objects.get()
        assert (payment.status, payment.attempts) == ("PROCESSING", 1)
        assert _status(booking) == "PENDING"
        assert SimulatedCharge.objects.count() == 1  # Charged; the answer was lost.
        assert_money_matches_bookings()

        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        retry = _pay(user_client, "k", _body(booking))

        assert retry.status_code == 201, retry.content
        assert retry.json()["id"] == payment.pk
        payment.refresh_from_db()
        assert (payment.status, payment.attempts) == ("SUCCEEDED", 2)
        assert SimulatedCharge.objects.count() == 1  # No double charge.
        assert retry.json()["gatewayReference"] == SimulatedCharge.objects.get().charge_id
        assert _status(booking) == "BOOKED"
        assert IdempotencyKey.objects.get().response_status == 201
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)

    def test_lost_answer_twice_then_resume(self, user_client, booking, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
        assert_problem(_pay(user_client, "k", _body(booking)), 503, "payment_gateway_unavailable")
        assert_problem(_pay(user_client, "k", _body(booking)), 503, "payment_gateway_unavailable")
        assert IdempotencyKey.objects.count() == 0
        assert Payment.objects.get().attempts == 2
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        assert _pay(user_client, "k", _body(booking)).status_code == 201
        payment = Payment.objects.get()
        assert (payment.status, payment.attempts) == ("SUCCEEDED", 3)
        assert SimulatedCharge.objects.count() == 1
        assert_money_matches_bookings()

    def test_payment_in_progress_under_another_key_stores_nothing(self, user_client, booking, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
        assert_problem(_pay(user_client, "k-1", _body(booking)), 503, "payment_gateway_unavailable")
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"

        response = _pay(user_client, "k-2", _body(booking))

        assert_problem(response, 409, "payment_in_progress")
        assert response["Retry-After"] == "5"
        assert IdempotencyKey.objects.count() == 0
        assert _status(booking) == "PENDING"
        assert Payment.objects.count() == 1

        # The first key's retry settles it; the second key then gets a final answer.
        assert _pay(user_client, "k-1", _body(booking)).status_code == 201
        after = _pay(user_client, "k-2", _body(booking))
        assert_problem(after, 409, "booking_not_payable")
        assert REPLAYED not in after
        assert SimulatedCharge.objects.count() == 1
        assert_money_matches_bookings()

    def test_resumed_payment_still_checks_the_amount(self, user_client, booking, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "lose_answer"
        assert_problem(_pay(user_client, "k", _body(booking)), 503, "payment_gateway_unavailable")
        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        # The 503 stored nothing, so this is a new request: its amount is not the totalCost.
        response = _pay(user_client, "k", _body(booking, amount="1.00"))
        assert_problem(response, 422, "amount_mismatch")
        payment = Payment.objects.get()
        assert (payment.status, payment.attempts) == ("PROCESSING", 1)
        # The attempt in flight still holds the booking: another key cannot pay over it.
        assert_problem(_pay(user_client, "k2", _body(booking)), 409, "payment_in_progress")


class TestErrors:
    def test_anonymous_is_401_and_stores_nothing(self, anon_client, booking):
        response = _pay(anon_client, "k", _body(booking))
        assert_problem(response, 401, "not_authenticated")
        assert IdempotencyKey.objects.count() == 0
        _assert_untouched(booking)

    def test_bad_token_is_401(self, booking):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
        assert_problem(_pay(client, "k", _body(booking)), 401, "not_authenticated")
        _assert_untouched(booking)

    def test_userId_of_someone_else_is_403_and_stores_nothing(self, user_client, other_user, booking):
        response = _pay(user_client, "k", _body(booking, userId=other_user.pk))
        assert_problem(response, 403, "user_mismatch")
        assert IdempotencyKey.objects.count() == 0
        _assert_untouched(booking)
        # The key is still free.
        assert _pay(user_client, "k", _body(booking)).status_code == 201

    def test_staff_naming_another_customer_than_the_bookings_is_403(self, staff_client, other_user, booking):
        assert_problem(_pay(staff_client, "k", _body(booking, userId=other_user.pk)), 403, "user_mismatch")
        _assert_untouched(booking)

    def test_unknown_booking_is_404(self, user_client):
        assert_problem(_pay(user_client, "k", _body(424242)), 404, "not_found")
        assert Payment.objects.count() == 0

    def test_another_users_booking_is_404_never_403(self, bob_client, booking):
        response = _pay(bob_client, "k", _body(booking))
        assert_problem(response, 404, "not_found")
        _assert_untouched(booking)

    def test_another_users_booking_with_his_userId_is_still_404(self, bob_client, other_user, booking):
        assert_problem(_pay(bob_client, "k", _body(booking, userId=other_user.pk)), 404, "not_found")
        _assert_untouched(booking)

    def test_expired_booking_is_409_cancelled_and_its_seats_released(self, user_client, booking, flight):
        flight.refresh_from_db()
        assert flight.available_seats == 18
        Booking.objects.filter(pk=booking).update(expires_at=timezone.now() - dt.timedelta(seconds=1))

        response = _pay(user_client, "k", _body(booking))

        assert_problem(response, 409, "booking_expired")
        expired = Booking.objects.get(pk=booking)
        assert (expired.status, expired.cancel_reason, expired.seats_state) == ("CANCELLED", "expired", "released")
        assert not Payment.objects.exists()
        assert SimulatedCharge.objects.count() == 0
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20
        # A final answer: stored and replayed; the seats are not released twice.
        replay = _pay(user_client, "k", _body(booking))
        assert_problem(replay, 409, "booking_expired")
        assert replay[REPLAYED] == "true"
        # Another key now finds a cancelled booking.
        assert_problem(_pay(user_client, "k-2", _body(booking)), 409, "booking_not_payable")
        assert_bookings_match_ledger(flight)
        assert flight.available_seats == 20

    def test_booked_booking_is_not_payable(self, user_client, booking):
        assert _pay(user_client, "k-1", _body(booking)).status_code == 201
        response = _pay(user_client, "k-2", _body(booking))
        assert_problem(response, 409, "booking_not_payable")
        assert SimulatedCharge.objects.count() == 1
        assert Payment.objects.count() == 1
        assert_money_matches_bookings()

    def test_cancelled_booking_is_not_payable(self, user_client, booking, flight):
        assert user_client.patch(f"/api/v1/bookings/{booking}/cancel").status_code == 200
        response = _pay(user_client, "k", _body(booking))
        assert_problem(response, 409, "booking_not_payable")
        assert _status(booking) == "CANCELLED"
        assert not Payment.objects.exists()
        assert SimulatedCharge.objects.count() == 0
        assert_bookings_match_ledger(flight)

    def test_amount_mismatch_is_422_and_charges_nothing(self, user_client, booking):
        response = _pay(user_client, "k", _body(booking, amount="10999.99"))
        problem = assert_problem(response, 422, "amount_mismatch")
        assert "11000.00" in problem["detail"]
        _assert_untouched(booking)

    def test_declined_then_paid_with_a_new_key(self, user_client, booking, settings, flight):
        settings.PAYMENT_SIMULATED_OUTCOME = "decline"
        response = _pay(user_client, "k-1", _body(booking))

        assert_problem(response, 402, "payment_declined")
        assert "Retry-After" not in response
        declined = Payment.objects.get()
        assert declined.status == "DECLINED"
        assert _status(booking) == "INITIATED"
        assert SimulatedCharge.objects.get().status == "declined"
        key = IdempotencyKey.objects.get()
        assert (key.state, key.response_status) == ("completed", 402)
        assert_money_matches_bookings()

        settings.PAYMENT_SIMULATED_OUTCOME = "approve"
        paid = _pay(user_client, "k-2", _body(booking))

        assert paid.status_code == 201, paid.content
        assert paid.json()["id"] != declined.pk
        assert _status(booking) == "BOOKED"
        assert sorted(Payment.objects.values_list("status", flat=True)) == ["DECLINED", "SUCCEEDED"]
        assert SimulatedCharge.objects.filter(status="succeeded").count() == 1
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)

    def test_gateway_unavailable_is_503_with_retry_after(self, user_client, booking, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "fail"
        response = _pay(user_client, "k", _body(booking))
        assert_problem(response, 503, "payment_gateway_unavailable")
        assert response["Retry-After"] == "5"
        assert REPLAYED not in response

    def test_malformed_json_is_400(self, user_client, booking):
        response = user_client.post(PAY, "{not json", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k")
        assert_problem(response, 400, "validation_error")
        assert IdempotencyKey.objects.count() == 0
        _assert_untouched(booking)

    def test_body_that_is_not_an_object_is_400(self, user_client, booking):
        response = user_client.post(PAY, [booking], format="json", HTTP_IDEMPOTENCY_KEY="k")
        assert_problem(response, 400, "validation_error")
        assert IdempotencyKey.objects.count() == 0


class TestRetrieve:
    @pytest.fixture
    def payment(self, user_client, booking) -> dict:
        response = _pay(user_client, "k", _body(booking))
        assert response.status_code == 201
        return response.json()

    def test_owner_sees_it(self, user_client, payment):
        response = user_client.get(f"{PAY}/{payment['id']}")
        assert response.status_code == 200
        assert response.json() == payment

    def test_another_user_gets_404(self, bob_client, payment):
        assert_problem(bob_client.get(f"{PAY}/{payment['id']}"), 404, "not_found")

    def test_staff_sees_it(self, staff_client, payment):
        response = staff_client.get(f"{PAY}/{payment['id']}")
        assert response.status_code == 200
        assert response.json() == payment

    def test_anonymous_gets_401(self, anon_client, payment):
        assert_problem(anon_client.get(f"{PAY}/{payment['id']}"), 401, "not_authenticated")

    def test_unknown_id_is_404(self, user_client, payment):
        assert_problem(user_client.get(f"{PAY}/{payment['id'] + 1000}"), 404, "not_found")

    def test_nineteen_digit_id_is_404(self, user_client, staff_client):
        assert_problem(user_client.get(f"{PAY}/1234567890123456789"), 404, "not_found")
        assert_problem(staff_client.get(f"{PAY}/9999999999999999999"), 404, "not_found")

    def test_failed_payment_is_readable_with_a_null_gateway_reference(self, user_client, booking, settings):
        settings.PAYMENT_SIMULATED_OUTCOME = "fail"
        _pay(user_client, "k", _body(booking))
        failed = Payment.objects.get()
        body = user_client.get(f"{PAY}/{failed.pk}").json()
        assert (body["status"], body["gatewayReference"]) == ("FAILED", None)


class TestSchema:
    @pytest.fixture
    def create(self, client) -> dict:
        response = client.get("/api/schema/?format=json")
        assert response.status_code == 200
        return response.json()["paths"]["/api/v1/payments"]["post"]

    def test_documents_the_key_header_codes_and_demo_example(self, create):
        headers = {p["name"]: p for p in create["parameters"] if p["in"] == "header"}
        assert headers["Idempotency-Key"]["required"] is True
        assert headers["Idempotency-Key"]["schema"]["type"] == "string"
        assert "x-idempotency-key" in headers

        responses = create["responses"]
        assert {"201", "400", "401", "402", "403", "404", "409", "422", "503"} <= set(responses)
        assert "application/json" in responses["201"]["content"]
        for status in ("400", "401", "402", "403", "404", "409", "422", "503"):
            assert "application/problem+json" in responses[status]["content"], status
        descriptions = " ".join(responses[s]["description"] for s in ("400", "402", "403", "404", "409", "422", "503"))
        for code in (
            "validation_error",
            "idempotency_key_missing",
            "payment_declined",
            "user_mismatch",
            "not_found",
            "booking_expired",
            "booking_not_payable",
            "payment_in_progress",
            "idempotency_key_in_use",
            "amount_mismatch",
            "idempotency_key_reused",
            "payment_gateway_unavailable",
        ):
            assert f"`{code}`" in descriptions, code

        requests = [e["value"] for e in create["requestBody"]["content"]["application/json"]["examples"].values()]
        demo = [value for value in requests if value.get("bookingId") == 1 and "amount" in value]
        assert demo and Decimal(str(demo[0]["amount"])) == Decimal("11000.00")
        paid = [e["value"] for e in responses["201"]["content"]["application/json"]["examples"].values()]
        assert paid and all(value["amount"] == "11000.00" and value["bookingId"] == 1 for value in paid)

        assert "Idempotent-Replayed" in responses["201"]["headers"]
        for status in ("402", "404", "422"):
            assert "Idempotent-Replayed" in responses[status]["headers"], status

    def test_create_has_no_path_parameter(self, create):
        assert [p["name"] for p in create["parameters"] if p["in"] == "path"] == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
class TestConcurrentRequests:
    def _post(self, token, key, body):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        response = _pay(client, key, body)
        return response.status_code, response.json().get("code"), response.get("Retry-After")

    def test_same_key_twice_at_once_runs_once(self, user, flight, settings):
        token = Token.objects.create(user=user).key
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        booking = _book(client, flight)
        settings.PAYMENT_SIMULATED_DELAY_MS = 600  # The first holds the key while the second arrives.

        answers = sorted(race(2, lambda _: self._post(token, "k", _body(booking))), key=lambda a: a[0])

        assert answers == [(201, None, None), (409, "idempotency_key_in_use", "1")], answers
        assert SimulatedCharge.objects.count() == 1
        assert Payment.objects.count() == 1
        assert _status(booking) == "BOOKED"
        settings.PAYMENT_SIMULATED_DELAY_MS = 0
        replay = _pay(client, "k", _body(booking))
        assert (replay.status_code, replay[REPLAYED]) == (201, "true")
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)

    def test_two_keys_for_one_booking_at_once_charge_once(self, user, flight, settings):
        token = Token.objects.create(user=user).key
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        booking = _book(client, flight)
        settings.PAYMENT_SIMULATED_DELAY_MS = 600

        answers = sorted(race(2, lambda i: self._post(token, f"k-{i}", _body(booking))), key=lambda a: a[0])

        assert answers == [(201, None, None), (409, "payment_in_progress", "5")], answers
        assert SimulatedCharge.objects.count() == 1
        assert IdempotencyKey.objects.count() == 1  # The 409 stored nothing.
        assert _status(booking) == "BOOKED"
        assert_money_matches_bookings()
        assert_bookings_match_ledger(flight)


# Helpers ------------------------------------------------------------------------------------


def _book(client, flight, seats=2) -> int:
    response = client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": seats}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def _pay(client, key, body, *, seed_key=None):
    headers = {}
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    if seed_key is not None:
        headers["HTTP_X_IDEMPOTENCY_KEY"] = seed_key
    return client.post(PAY, body, format="json", **headers)


def _body(booking_id, amount="11000.00", **extra):
    return {"bookingId": booking_id, "amount": amount, **extra}


def _status(booking_id) -> str:
    return Booking.objects.get(pk=booking_id).status


def _fingerprint(booking_id, amount="11000.00", **extra):
    return request_fingerprint(method="POST", path=PAY, body={"bookingId": booking_id, "amount": amount, **extra})


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _assert_untouched(booking_id):
    """The booking is as it was created: INITIATED, no payment, nothing charged."""
    assert _status(booking_id) == "INITIATED"
    assert not Payment.objects.filter(booking_id=booking_id).exists()
    assert SimulatedCharge.objects.count() == 0


@pytest.fixture
def booking(user_client, flight) -> int:
    return _book(user_client, flight)


@pytest.fixture
def bob_client(other_user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other_user).key}")
    return client
