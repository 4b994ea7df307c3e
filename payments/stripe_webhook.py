"""Stripe's webhook (`POST /api/v1/payments/stripe/webhook`, docs/design.md#stripe).

The signature is checked with the official library, against the endpoint's signing secret,
before anything is read. Three event types matter:

- `payment_intent.succeeded`: the charge is final; the payment books its booking, or is
  refunded if the booking was settled meanwhile (`payment_settle_from_event`);
- `payment_intent.payment_failed`: not final (whoever holds the client secret may confirm the
  intent again), so the intent is cancelled first, and the cancel's answer is what we settle
  on: a decline puts the booking back to INITIATED; a cancel that finds it succeeded books it;
- `charge.refunded`: a full refund (ours, or one made in Stripe's dashboard) marks the
  payment REFUNDED (a refund that comes before the success's event settles the charge
  first); a booking still BOOKED then has its cancel requested, which cleanup finishes.

Each event id is handled once: a `StripeEvent` row is written after it is handled, and a
repeat is answered from it. Handling is idempotent by the payment's state, so an event that
Stripe sends twice at once, or again after a crash before its row was written, changes
nothing the second time; and since each handler acts on a final state, events out of order
end where the last state is. Anything else is acknowledged and ignored.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from bookings import services as booking_services
from bookings.models import Booking
from bookings_project.exceptions import NotFound, WebhookSignatureInvalid
from payments import services
from payments.gateway import Charge, ChargeStatus, get_payment_gateway
from payments.models import Payment, StripeEvent
from payments.stripe_gateway import from_minor_units

logger = logging.getLogger(__name__)

SUCCEEDED, FAILED, REFUNDED = "payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded"
HANDLED_TYPES = (SUCCEEDED, FAILED, REFUNDED)


def stripe_event_handle(*, payload: bytes, signature: str) -> str:
    """Verify and handle one delivery; answers what it came to (for the log and the answer).
    Raises `WebhookSignatureInvalid` (nothing changes), `NotFound` when Stripe is not our
    gateway, or `PaymentGatewayUnavailable` when Stripe must send it again later."""
    if not signature:
        raise WebhookSignatureInvalid("No Stripe-Signature header.")  # Whatever the gateway: never Stripe's.
    if settings.PAYMENT_GATEWAY != "stripe":
        raise NotFound("Stripe is not this service's payment gateway.")
    event = _verified(payload, signature)
    event_id, event_type = event.get("id"), event.get("type")
    if event_type not in HANDLED_TYPES or not isinstance(event_id, str):
        return "ignored"
    if StripeEvent.objects.filter(event_id=event_id).exists():
        return "duplicate"
    obj = (event.get("data") or {}).get("object") or {}
    payment = _payment_of(obj, event_type)
    if payment is None:
        outcome = "ignored: no payment of ours"
        logger.warning("stripe: event %s (%s) names no payment of ours", event_id, event_type)
    elif event_type == SUCCEEDED:
        outcome = _succeeded(payment, obj)
    elif event_type == FAILED:
        outcome = _failed(payment, obj)
    else:
        outcome = _refunded(payment, obj)
    try:
        with transaction.atomic():
            StripeEvent.objects.create(
                event_id=event_id,
                type=event_type,
                payment=payment,
                outcome=outcome[:255],
                created=dt.datetime.fromtimestamp(int(event.get("created") or 0), tz=dt.UTC),
            )
    except IntegrityError:
        return "duplicate"  # The same event, handled at the same time by another delivery.
    logger.info("stripe: event %s (%s): %s", event_id, event_type, outcome)
    return outcome


def _verified(payload: bytes, signature: str) -> dict[str, Any]:
    try:
        event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except stripe.SignatureVerificationError as error:
        raise WebhookSignatureInvalid() from error
    except (ValueError, RecursionError) as error:  # Signed, yet no JSON we can read: not Stripe's.
        raise WebhookSignatureInvalid("The body is not a JSON event.") from error
    return event.to_dict()


def _payment_of(obj: dict[str, Any], event_type: str) -> Payment | None:
    """Our payment for the event's intent: by the intent id recorded on it, else by the ids
    the intent carries in its metadata (its id was not recorded yet)."""
    intent_id = obj.get("payment_intent") if event_type == REFUNDED else obj.get("id")
    if not isinstance(intent_id, str) or not intent_id:
        return None
    payment = Payment.objects.filter(gateway_reference=intent_id).first()
    if payment is not None or event_type == REFUNDED:
        return payment
    metadata = obj.get("metadata") or {}
    payment_id, reference = str(metadata.get("payment_id") or ""), metadata.get("payment_reference")
    if not payment_id.isdigit() or not reference:
        return None
    payment = Payment.objects.filter(pk=int(payment_id), reference=reference, gateway_reference="").first()
    if payment is not None:
        Payment.objects.filter(pk=payment.pk, gateway_reference="").update(gateway_reference=intent_id)
        payment.gateway_reference = intent_id
    return payment


def _succeeded(payment: Payment, intent: dict[str, Any]) -> str:
    """The intent's money was taken (or its charge's: a `charge.refunded` that came first)."""
    try:
        currency = str(intent["currency"]).upper()
        amount = from_minor_units(int(intent["amount"]), currency)
    except (KeyError, TypeError, ValueError):
        return "ignored: no amount"
    if (amount, currency) != (payment.amount, payment.currency):
        logger.error(
            "stripe: payment %s: Stripe charged %s %s, not %s %s: settle it by hand",
            payment.pk,
            amount,
            currency,
            payment.amount,
            payment.currency,
        )
        return f"ignored: charged {amount} {currency}, not {payment.amount} {payment.currency}"
    intent_id = intent["payment_intent"] if intent.get("object") == "charge" else intent["id"]
    charge = Charge(gateway_reference=intent_id, status=ChargeStatus.SUCCEEDED, amount=amount, currency=currency)
    return _outcome(services.payment_settle_from_event(payment=payment, charge=charge))


def _failed(payment: Payment, intent: dict[str, Any]) -> str:
    if payment.status not in Payment.IN_FLIGHT:
        return f"already {payment.status}"
    gateway = get_payment_gateway()
    final = gateway.cancel(reference=payment.reference)  # So that nobody can confirm it any more.
    if final is None:
        return "ignored: no intent recorded"
    if final.status == ChargeStatus.DECLINED:
        reason = str((intent.get("last_payment_error") or {}).get("message") or final.decline_reason)
        final = Charge(
            gateway_reference=final.gateway_reference,
            status=ChargeStatus.DECLINED,
            amount=final.amount,
            currency=final.currency,
            decline_reason=reason or "The payment failed.",
        )
    return _outcome(services.payment_settle_from_event(payment=payment, charge=final, gateway=gateway))


def _refunded(payment: Payment, charge: dict[str, Any]) -> str:
    if not charge.get("refunded"):
        logger.warning("stripe: payment %s partly refunded at Stripe: left as it is", payment.pk)
        return "ignored: partial refund"
    if payment.status in Payment.IN_FLIGHT:
        # The refund's event came before the success's: a refund proves the charge, so settle
        # that first (booked, or refunded as a late charge), then the refund.
        _succeeded(payment, charge)
        payment.refresh_from_db()
    if payment.status != Payment.Status.SUCCEEDED:
        return f"already {payment.status}"  # Our own refund (recorded when it was made), or none to record.
    # Events of the API version the library pins carry no refunds list: ask for the latest.
    refunds = (charge.get("refunds") or {}).get("data") or []
    refund_id = (
        str(refunds[0].get("id") or "") if refunds else get_payment_gateway().latest_refund_id(charge["payment_intent"])
    )
    if not services.payment_record_refund(payment=payment, refund_reference=refund_id):
        return f"already {payment.status}"
    # Refunded in Stripe's dashboard while the booking is BOOKED (our own cancel asks for the
    # cancel before it refunds): money back means no booking, so cleanup finishes the cancel
    # and gives the seats back, as for a cancel cut short.
    booking_services.booking_request_cancel(booking_id=payment.booking_id, reason=Booking.CancelReason.STAFF)
    return "refunded"


def _outcome(payment: Payment) -> str:
    booking_status = Booking.objects.values_list("status", flat=True).get(pk=payment.booking_id)
    return f"payment {payment.status}, booking {booking_status}"
