"""Payment writes: charge a booking exactly once, refund it exactly once
(docs/design.md#state-machine, docs/api.md#payments).

A payment is three short steps, and no transaction or row lock is held across the gateway:
1. under the booking's row lock: check owner, status, expiry and amount; mark the booking
   PENDING and the payment PROCESSING; commit;
2. ask the gateway to charge, with the payment's reference as its idempotency key, so a
   resent charge (a retry, or a resumed attempt) can never charge twice;
3. under the lock again: record the outcome (BOOKED + ChargeStatus.SUCCEEDED, or INITIATED + DECLINED).
   An unknown outcome leaves the booking PENDING for a retry with the same key, or for
   cleanup to reconcile with the gateway. Stripe may ask the customer to authenticate first
   (3-D Secure): the payment is then REQUIRES_ACTION and the booking stays PENDING until
   Stripe's webhook says what came of it (`payment_settle_from_event`), or cleanup does.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from bookings import outbox
from bookings.audit import record_status_change
from bookings.models import Booking, BookingEvent
from bookings.services import booking_expire, booking_move, booking_release_seats
from bookings_project import metrics, statements
from bookings_project.db import bound_lock_wait, is_lock_contention
from bookings_project.exceptions import (
    AmountMismatch,
    BookingExpired,
    BookingNotPayable,
    NotFound,
    PaymentDeclined,
    PaymentGatewayUnavailable,
    PaymentInProgress,
    UserMismatch,
)
from payments import selectors as payment_selectors
from payments.gateway import Charge, ChargeStatus, PaymentGateway, get_payment_gateway
from payments.models import Payment

logger = logging.getLogger(__name__)

BookingStatus, PaymentStatus = Booking.Status, Payment.Status
Reason, Actor = BookingEvent.Reason, BookingEvent.Actor

# Called inside the transaction that settles a payment, with the refusal its caller gets (`payment_create`).
OnSettled = Callable[[Payment, PaymentDeclined | None], None]


@dataclass(frozen=True)
class _Attempt:
    payment: Payment
    # False when this key's payment was already settled: answer it, charge nothing.
    charge_needed: bool


def payment_create(
    *,
    caller: AbstractBaseUser,
    booking_id: int,
    amount: Decimal,
    idempotency_key: str,
    user_id: int | None = None,
    payment_method: str = "",
    gateway: PaymentGateway | None = None,
    on_settled: OnSettled | None = None,
) -> Payment:
    """Pay a booking's totalCost. Answers the SUCCEEDED payment (the booking is BOOKED), or a
    REQUIRES_ACTION one whose `action` the customer must perform (the booking stays PENDING).
    `payment_method` is the customer's Stripe PaymentMethod (the other gateways need none).

    Raises a definite refusal (`NotFound`, `BookingExpired`, `BookingNotPayable`,
    `PaymentInProgress`, `AmountMismatch`, `UserMismatch`, `PaymentDeclined`) or
    `PaymentGatewayUnavailable`, after which the same key may be sent again.

    `on_settled(payment, refusal)` is called inside the transaction that records the
    gateway's answer, if this call records it: the payment SUCCEEDED or REQUIRES_ACTION
    (`refusal` None) or DECLINED (`refusal` the `PaymentDeclined` about to be raised). What it writes commits
    with that answer or not at all (the request's idempotency key stores its answer there).
    """
    attempt = _start_attempt(
        caller=caller,
        booking_id=booking_id,
        amount=amount,
        idempotency_key=idempotency_key,
        user_id=user_id,
        payment_method=payment_method,
    )
    payment = attempt.payment
    if not attempt.charge_needed:
        return payment
    gateway = gateway or get_payment_gateway()
    try:
        charge = gateway.charge(
            amount=payment.amount,
            currency=payment.currency,
            reference=payment.reference,
            idempotency_key=payment.reference,
        )
    except PaymentGatewayUnavailable as error:
        # Only the first attempt can be known not to have charged: an earlier one of a
        # resumed payment may have, so its outcome stays unknown.
        if not error.maybe_charged and payment.attempts == 1:
            metrics.PAYMENT_OUTCOMES.labels("failed").inc()
            _record_not_charged(payment, error.detail)
        else:
            metrics.PAYMENT_OUTCOMES.labels("unknown").inc()
            _record_unknown_outcome(payment, error.detail)
        raise
    _count_outcome(charge)
    return _record_charge_retrying(payment, charge, gateway, on_settled)


def _count_outcome(charge: Charge) -> None:
    outcome = "requires_action" if charge.open else "succeeded" if charge.money_taken else "declined"
    metrics.PAYMENT_OUTCOMES.labels(outcome).inc()


def _record_charge_retrying(
    payment: Payment, charge: Charge, gateway: PaymentGateway, on_settled: OnSettled | None
) -> Payment:
    """`_record_charge`, tried again over a few seconds when the database fails: the gateway
    has answered, so the money is decided, and a short outage should end in the real answer,
    not in a key claimed until its lease runs out and a booking PENDING for cleanup. Each try
    is whole (its transaction either committed or not), and a repeat of one that did commit
    finds the payment settled and answers it."""
    for delay in payment_selectors.RECORD_RETRY_DELAYS:
        try:
            return _record_charge(payment, charge, gateway, on_settled)
        except OperationalError as error:
            if is_lock_contention(error) or connection.in_atomic_block:
                raise  # A lock wait is an answer, not an outage; inside a caller's transaction, theirs to retry.
            logger.warning(
                "payment %s: recording the gateway's answer failed (%s); trying again in %.2f s",
                payment.pk,
                error,
                delay,
            )
            connection.close()  # The failure may have broken it: the next statement opens a new one.
            time.sleep(delay)
    return _record_charge(payment, charge, gateway, on_settled)


def _refusal_of(payment: Payment) -> PaymentDeclined | None:
    """What a settled payment's caller is told: a decline, or nothing wrong."""
    return PaymentDeclined(payment.failure_reason or None) if payment.status == PaymentStatus.DECLINED else None


def _start_attempt(
    *,
    caller: AbstractBaseUser,
    booking_id: int,
    amount: Decimal,
    idempotency_key: str,
    user_id: int | None,
    payment_method: str = "",
) -> _Attempt:
    with transaction.atomic():
        bound_lock_wait()
        payment = (
            _start_first_attempt(
                caller=caller, booking_id=booking_id, amount=amount, key=idempotency_key, payment_method=payment_method
            )
            if user_id in (None, caller.pk)
            else None
        )
        if payment is not None:
            return _Attempt(payment=payment, charge_needed=True)
        # Anything else (not the caller's own, staff paying, expired, paid, in progress, another
        # amount): read it under its lock and say why.
        booking = Booking.objects.select_for_update().filter(pk=booking_id).first()
        if booking is None or not (caller.is_staff or booking.user_id == caller.pk):
            raise NotFound(f"Booking {booking_id} does not exist.")
        if user_id is not None and user_id != booking.user_id:
            raise UserMismatch(f"Booking {booking_id} does not belong to user {user_id}.")
        # This key's own payment, if it made one: only a PENDING or BOOKED booking can have it.
        own = (
            payment_selectors.payment_of_key(booking_id=booking.pk, caller=caller, idempotency_key=idempotency_key)
            if booking.status in (BookingStatus.PENDING, BookingStatus.BOOKED)
            else None
        )
        if booking.status == BookingStatus.PENDING:
            if own is None or own.status != PaymentStatus.PROCESSING:
                raise PaymentInProgress(f"Booking {booking_id} has a payment in progress under another key.")
            if amount != own.amount:
                raise AmountMismatch(f"amount {amount} differs from the booking's totalCost {own.amount}.")
            # This key's own attempt, cut short (a 503, or a request that died): resume it.
            # The gateway key is the same, so the gateway answers its first charge, if any.
            Payment.objects.filter(pk=own.pk).update(
                attempts=F("attempts") + 1, attempted_at=timezone.now(), updated_at=timezone.now()
            )
            own.refresh_from_db()
            return _Attempt(payment=own, charge_needed=True)
        if booking.status != BookingStatus.INITIATED:
            if booking.status == BookingStatus.BOOKED and own is not None and own.status == PaymentStatus.SUCCEEDED:
                return _Attempt(payment=own, charge_needed=False)  # Settled meanwhile (reconciled).
            raise BookingNotPayable(f"Booking {booking_id} is {booking.status}: there is nothing to pay.")
        if booking.seats_state != Booking.SeatsState.RESERVED:
            raise BookingNotPayable(f"Booking {booking_id} holds no seats, so it cannot be paid.")
        expired = booking_expire(booking=booking)
        if not expired:
            if amount != booking.total_cost:
                raise AmountMismatch(f"amount {amount} differs from the booking's totalCost {booking.total_cost}.")
            booking_move(booking, to=BookingStatus.PENDING, reason=Reason.PAYMENT_STARTED)
            payment = Payment.objects.create(
                booking=booking,
                user_id=booking.user_id,
                created_by=caller,
                idempotency_key=idempotency_key,
                amount=booking.total_cost,
                currency=booking.currency,
                payment_method=payment_method,
                attempted_at=timezone.now(),
            )
    if expired:
        # After the commit, outside the lock: the seats go back once, whoever else tries.
        booking_release_seats(booking_id=booking_id)
        raise BookingExpired(f"Booking {booking_id} expired unpaid; it is cancelled and its seats released.")
    return _Attempt(payment=payment, charge_needed=True)


def _start_first_attempt(
    *, caller: AbstractBaseUser, booking_id: int, amount: Decimal, key: str, payment_method: str
) -> Payment | None:
    """The usual case in one conditional UPDATE: the caller's own unpaid booking, seats held,
    not expired, this amount. It takes the booking's row lock, moves it to PENDING and writes
    the attempt; None (nothing written) when the booking is anything else."""
    now = timezone.now()
    started = statements.update(
        Booking,
        where={
            "pk": booking_id,
            "user_id": caller.pk,
            "status": BookingStatus.INITIATED,
            "seats_state": Booking.SeatsState.RESERVED,
            "expires_at__gt": now,
            "total_cost": amount,
            # The usual currency only, which the attempt below is written in; any other
            # takes the path that reads the booking.
            "currency": settings.CURRENCY,
        },
        values={"status": BookingStatus.PENDING, "updated_at": now},
    )
    if not started:
        return None
    record_status_change(
        booking_id=booking_id,
        from_status=BookingStatus.INITIATED,
        to_status=BookingStatus.PENDING,
        reason=Reason.PAYMENT_STARTED,
    )
    return statements.insert(
        Payment(
            booking_id=booking_id,
            user_id=caller.pk,
            created_by=caller,
            idempotency_key=key,
            amount=amount,
            currency=settings.CURRENCY,
            payment_method=payment_method,
            attempted_at=now,
        )
    )


def _record_charge(
    payment: Payment, charge: Charge, gateway: PaymentGateway, on_settled: OnSettled | None = None
) -> Payment:
    if _record_answer(payment, charge, on_settled):
        if refusal := _refusal_of(payment):
            raise refusal
        return payment
    money_arrived_late = False
    with transaction.atomic():
        bound_lock_wait()
        booking = Booking.objects.select_for_update().get(pk=payment.booking_id)  # Booking, then payment.
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        now = timezone.now()
        if charge.open:
            pass  # Nothing to settle: the customer must act, and the payment moved on meanwhile.
        elif payment.status in Payment.IN_FLIGHT and booking.status == BookingStatus.PENDING:
            payment.gateway_reference = charge.gateway_reference
            payment.completed_at = now
            if charge.money_taken:
                payment.status, payment.failure_reason = PaymentStatus.SUCCEEDED, ""
                to, reason = BookingStatus.BOOKED, Reason.PAYMENT_SUCCEEDED
            else:
                payment.status, payment.failure_reason = PaymentStatus.DECLINED, charge.decline_reason[:255]
                to, reason = BookingStatus.INITIATED, Reason.PAYMENT_DECLINED  # Pay again, with a new key.
            payment.save()
            booking_move(booking, to=to, reason=reason, actor=Actor.GATEWAY)
            if on_settled:
                on_settled(payment, _refusal_of(payment))
        elif charge.money_taken and payment.status not in (PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED):
            # Settled meanwhile as not charged (cleanup found no charge and cancelled the
            # booking), yet the gateway took the money: record it, then give it back.
            payment.status, payment.gateway_reference, payment.completed_at, payment.late_charge_at = (
                PaymentStatus.SUCCEEDED,
                charge.gateway_reference,
                now,
                now,
            )
            payment.save()
            money_arrived_late = True
    if money_arrived_late:
        logger.error("payment %s: charged after its booking was cancelled; refunding", payment.pk)
        payment_refund(payment_id=payment.pk, gateway=gateway)
        raise BookingExpired(
            f"Booking {payment.booking_id} was cancelled while the payment was in flight; the charge was refunded."
        )
    if refusal := _refusal_of(payment):
        raise refusal
    if payment.status == PaymentStatus.REQUIRES_ACTION and charge.open:
        payment.action = charge.action
    elif payment.status != PaymentStatus.SUCCEEDED:
        raise BookingNotPayable(f"Payment {payment.pk} ended {payment.status}.")
    return payment


class _Moved(Exception):
    """The booking was PENDING but its payment had moved on: undo, and look closer."""


def _record_answer(payment: Payment, charge: Charge, on_settled: OnSettled | None = None) -> bool:
    """The usual case in two conditional UPDATEs: the booking still PENDING and this payment
    still as the caller read it (PROCESSING, or REQUIRES_ACTION for a webhook's news), so the
    gateway's answer settles both (BOOKED, or INITIATED to pay again after a decline), and
    `on_settled` writes with them. False, with nothing written, when either had moved on
    meanwhile (cleanup or a webhook settled it): the caller then reads both under their locks."""
    if payment.status not in Payment.IN_FLIGHT:
        return False
    now = timezone.now()
    if charge.open:
        return _record_action(payment, charge, now, on_settled)
    if charge.money_taken:
        status, failure, to, reason = PaymentStatus.SUCCEEDED, "", BookingStatus.BOOKED, Reason.PAYMENT_SUCCEEDED
    else:
        status, failure = PaymentStatus.DECLINED, charge.decline_reason[:255]
        to, reason = BookingStatus.INITIATED, Reason.PAYMENT_DECLINED  # Pay again, with a new key.
    settled = {
        "status": status,
        "failure_reason": failure,
        "gateway_reference": charge.gateway_reference,
        "completed_at": now,
        "updated_at": now,
    }
    try:
        with transaction.atomic():
            # Booking, then payment: the order every writer locks them in.
            if not statements.update(
                Booking,
                where={"pk": payment.booking_id, "status": BookingStatus.PENDING},
                values={"status": to, "updated_at": now},
            ):
                return False
            if not statements.update(Payment, where={"pk": payment.pk, "status": payment.status}, values=settled):
                raise _Moved()
            record_status_change(
                booking_id=payment.booking_id,
                from_status=BookingStatus.PENDING,
                to_status=to,
                reason=reason,
                actor=Actor.GATEWAY,
            )
            for field, value in settled.items():
                setattr(payment, field, value)
            if on_settled:
                on_settled(payment, _refusal_of(payment))
    except _Moved:
        return False
    return True


def _record_action(payment: Payment, charge: Charge, now: dt.datetime, on_settled: OnSettled | None) -> bool:
    """The gateway waits for the customer (3-D Secure): the payment REQUIRES_ACTION, in one
    conditional UPDATE; the booking stays PENDING. `on_settled` stores the 202 with it."""
    with transaction.atomic():
        if not statements.update(
            Payment,
            where={"pk": payment.pk, "status": PaymentStatus.PROCESSING},
            values={
                "status": PaymentStatus.REQUIRES_ACTION,
                "gateway_reference": charge.gateway_reference,
                "updated_at": now,
            },
        ):
            return False
        payment.status, payment.gateway_reference, payment.updated_at = (
            PaymentStatus.REQUIRES_ACTION,
            charge.gateway_reference,
            now,
        )
        payment.action = charge.action
        if on_settled:
            on_settled(payment, None)
    return True


def _record_not_charged(payment: Payment, reason: str) -> None:
    with transaction.atomic():
        bound_lock_wait()
        booking = Booking.objects.select_for_update().get(pk=payment.booking_id)
        done = Payment.objects.filter(pk=payment.pk, status=PaymentStatus.PROCESSING).update(
            status=PaymentStatus.FAILED,
            failure_reason=reason[:255],
            completed_at=timezone.now(),
            updated_at=timezone.now(),
        )
        if done and booking.status == BookingStatus.PENDING:
            booking_move(booking, to=BookingStatus.INITIATED, reason=Reason.PAYMENT_FAILED, actor=Actor.GATEWAY)


def _record_unknown_outcome(payment: Payment, reason: str) -> None:
    logger.warning("payment %s: gateway outcome unknown, left PROCESSING: %s", payment.pk, reason)
    Payment.objects.filter(pk=payment.pk, status=PaymentStatus.PROCESSING).update(
        failure_reason=reason[:255], updated_at=timezone.now()
    )


def payment_refund(*, payment_id: int, gateway: PaymentGateway | None = None) -> Payment:
    """Give a ChargeStatus.SUCCEEDED payment's money back, once (the gateway refund is keyed by the
    payment). A no-op for a payment that took no money or was refunded already.
    Raises `PaymentGatewayUnavailable` when the gateway does not confirm the refund."""
    return _refund(payment_id, gateway)[0]


def payment_refund_stranded(*, payment_id: int, gateway: PaymentGateway | None = None) -> bool:
    """Cleanup: refund money taken for a booking that was cancelled meanwhile (a charge that
    landed after the booking was settled, its refund cut short). True if this call did it."""
    return _refund(payment_id, gateway)[1]


def _refund(payment_id: int, gateway: PaymentGateway | None) -> tuple[Payment, bool]:
    payment = Payment.objects.get(pk=payment_id)
    if payment.status != PaymentStatus.SUCCEEDED:
        return payment, False
    try:
        refund = (gateway or get_payment_gateway()).refund(payment=payment)
    except PaymentGatewayUnavailable:
        metrics.REFUNDS.labels("failed").inc()
        raise
    recorded = payment_record_refund(payment=payment, refund_reference=refund.refund_reference)
    payment.refresh_from_db()
    return payment, recorded


def payment_record_refund(*, payment: Payment, refund_reference: str) -> bool:
    """Record that the gateway gave a SUCCEEDED payment's money back (our refund, or one made
    at the gateway, which its webhook reports), with its outbox event. Two callers may both
    learn of the one refund: one of them records it. True if this call did."""
    now = timezone.now()
    with transaction.atomic():
        recorded = Payment.objects.filter(pk=payment.pk, status=PaymentStatus.SUCCEEDED).update(
            status=PaymentStatus.REFUNDED, refund_reference=refund_reference, refunded_at=now, updated_at=now
        )
        if recorded:
            outbox.record_event(
                type=outbox.EventType.PAYMENT_REFUNDED, booking_id=payment.booking_id, payment_id=payment.pk
            )
            metrics.count_on_commit(metrics.REFUNDS.labels("refunded"))
    if recorded:
        logger.info("payment %s: refunded (%s)", payment.pk, refund_reference)
    return bool(recorded)


def payment_settle_from_event(*, payment: Payment, charge: Charge, gateway: PaymentGateway | None = None) -> Payment:
    """What the gateway's webhook says became of a payment's charge, once it is final (Stripe's
    `payment_intent.succeeded`, or a failure whose intent was then cancelled): a charge books
    the booking if it is still PENDING, and is refunded if the booking was settled meanwhile
    (expired, cancelled); a decline puts a PENDING booking back to INITIATED. A payment
    settled already stays as it was: news that comes twice or late changes nothing, and a
    decline never undoes a charge. Answers the payment as it now is."""
    if payment.status in Payment.IN_FLIGHT:  # News of an answer already counted (the confirm's) is no new outcome.
        _count_outcome(charge)
    try:
        _record_charge(payment, charge, gateway or get_payment_gateway())
    except (PaymentDeclined, BookingNotPayable, BookingExpired):
        pass  # Declined, now or before; or charged after its booking was settled: recorded and refunded.
    except PaymentGatewayUnavailable as error:
        # The late charge is recorded (`late_charge_at`): cleanup refunds it.
        logger.error("payment %s: the refund of a late charge failed (%s); cleanup will retry", payment.pk, error)
    payment.refresh_from_db()
    return payment


def payment_refund_for_booking(*, booking_id: int, gateway: PaymentGateway | None = None) -> list[Payment]:
    """Refund every payment that holds the booking's money (there is at most one)."""
    payments = Payment.objects.filter(booking_id=booking_id, status=PaymentStatus.SUCCEEDED)
    return [payment_refund(payment_id=payment.pk, gateway=gateway) for payment in payments]


def payment_find_charge(
    *, payment: Payment, gateway: PaymentGateway | None = None, stop_if_open: bool = True
) -> Charge | None:
    """The gateway's charge under the payment's reference, if any, final: an open one is
    cancelled first, unless `stop_if_open` is false (a dry run changes nothing). A charge
    that took another amount or currency is no answer we can act on:
    `PaymentGatewayUnavailable`, for a person."""
    gateway = gateway or get_payment_gateway()
    charge = gateway.find_charge(reference=payment.reference)
    if charge is not None and charge.open and stop_if_open:
        # It could still take money (the customer may yet confirm it): stop it first, so that
        # what we settle on stays true. A cancel that finds it charged answers the charge.
        charge = gateway.cancel(reference=payment.reference)
    taken = charge is not None and charge.money_taken
    if taken and (charge.amount, charge.currency) != (payment.amount, payment.currency):
        raise PaymentGatewayUnavailable(
            f"The gateway holds {charge.amount} {charge.currency} under payment {payment.pk}'s reference, "
            f"not {payment.amount} {payment.currency}: settle it by hand."
        )
    return charge


def payment_refund_late_charge(*, payment_id: int, gateway: PaymentGateway | None = None) -> bool:
    """Cleanup: look a payment that reconciliation settled as not charged up again; if the
    charge has landed since (the gateway was still working on it), record it and refund it.
    True if this call refunded money. A crash between the two leaves a ChargeStatus.SUCCEEDED payment on a
    cancelled booking, which `payment_refund_stranded` refunds next run."""
    payment = Payment.objects.get(pk=payment_id)
    charge = payment_find_charge(payment=payment, gateway=gateway)
    if charge is None or charge.status != ChargeStatus.SUCCEEDED:
        return False
    now = timezone.now()
    with transaction.atomic():
        bound_lock_wait()
        landed = Payment.objects.filter(pk=payment.pk, status=PaymentStatus.FAILED).update(
            status=PaymentStatus.SUCCEEDED,
            gateway_reference=charge.gateway_reference,
            failure_reason="Charged after its booking was settled as unpaid.",
            late_charge_at=now,
            updated_at=now,
        )
    if not landed:
        return False  # Another host got there first.
    logger.error("payment %s: charged after reconciliation settled it as unpaid; refunding", payment.pk)
    return payment_refund_stranded(payment_id=payment.pk, gateway=gateway)


def payment_settle_from_gateway(*, payment: Payment | None, charge: Charge | None) -> bool:
    """Record what the gateway's books say of an attempt whose answer was lost (reconciliation).
    The caller holds the payment's and its booking's row locks. True if money was taken: the
    payment is ChargeStatus.SUCCEEDED; else it is settled as not charged (FAILED, DECLINED or ChargeStatus.REFUNDED)."""
    if payment is None:
        return False
    now = timezone.now()
    payment.completed_at = payment.reconciled_at = now
    if charge is not None and charge.status == ChargeStatus.SUCCEEDED:
        payment.status, payment.failure_reason, payment.gateway_reference = (
            PaymentStatus.SUCCEEDED,
            "",
            charge.gateway_reference,
        )
    elif charge is None:
        payment.status, payment.failure_reason = PaymentStatus.FAILED, "The gateway holds no charge for it."
    elif charge.status == ChargeStatus.REFUNDED:
        # Charged, then refunded at the gateway (by hand, say): nothing of it stands.
        payment.status, payment.gateway_reference, payment.refunded_at = (
            PaymentStatus.REFUNDED,
            charge.gateway_reference,
            now,
        )
    else:
        payment.status, payment.gateway_reference = PaymentStatus.DECLINED, charge.gateway_reference
        payment.failure_reason = charge.decline_reason[:255]
    payment.save()
    if payment.status == PaymentStatus.REFUNDED:
        outbox.record_event(
            type=outbox.EventType.PAYMENT_REFUNDED, booking_id=payment.booking_id, payment_id=payment.pk
        )
    return payment.status == PaymentStatus.SUCCEEDED
