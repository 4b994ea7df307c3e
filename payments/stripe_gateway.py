"""The Stripe adapter of the payment gateway port (`PAYMENT_GATEWAY=stripe`, docs/design.md#stripe).

Through the official `stripe` library. One PaymentIntent per payment, in two calls, each
with an idempotency key derived from the payment's reference:

1. create it (`intent-<reference>`), unconfirmed, with the customer's PaymentMethod, the
   amount in the currency's minor units and our ids in `metadata`; record its id on the
   payment before anything can charge;
2. confirm it (`confirm-<reference>`): succeeded, requires_action (3-D Secure), or a decline.

So a retry of ours, the client's retry with the same Idempotency-Key (which resumes the same
payment) and a crash between any two steps all land on the same intent: Stripe replays a
key's first answer. Reconciliation reads the recorded intent; a payment with none recorded
was never confirmed, so nothing can have been charged. An intent still open (waiting for
the customer) is cancelled before its payment is settled as unpaid (`cancel`), and a cancel
that finds it succeeded tells the truth instead.

The library's own retries are off: one call lasts at most the gateway's (connect, read)
timeouts, which the payment attempt window counts on (`payments.selectors`).
"""

from __future__ import annotations

import functools
import logging
from decimal import Decimal
from typing import Any, NoReturn

import requests
import stripe
from django.db import DatabaseError

from bookings_project import http_client
from bookings_project.exceptions import PaymentGatewayUnavailable
from payments.gateway import Charge, ChargeStatus, Refund, refund_key
from payments.models import CustomerAction, Payment

logger = logging.getLogger(__name__)

# Stripe's zero-decimal and three-decimal currencies (docs.stripe.com/currencies); any other
# is charged in hundredths.
ZERO_DECIMAL_CURRENCIES = frozenset(
    ["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"]
)
THREE_DECIMAL_CURRENCIES = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])

# Intent statuses in which it may still charge: someone (the customer, with its client
# secret) can confirm it.
OPEN_STATUSES = frozenset({"requires_payment_method", "requires_confirmation", "requires_action", "requires_capture"})


def minor_unit_exponent(currency: str) -> int:
    currency = currency.upper()
    if currency in ZERO_DECIMAL_CURRENCIES:
        return 0
    return 3 if currency in THREE_DECIMAL_CURRENCIES else 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """11000.00 INR → 1100000; 11000 JPY → 11000. ValueError when the amount has a fraction
    the currency cannot carry (12.50 JPY)."""
    units = amount.scaleb(minor_unit_exponent(currency))
    if units != units.to_integral_value():
        raise ValueError(f"{amount} {currency.upper()} is not a whole number of its smallest unit.")
    return int(units)


def from_minor_units(units: int, currency: str) -> Decimal:
    return (Decimal(units).scaleb(-minor_unit_exponent(currency))).quantize(Decimal("0.01"))


def intent_key(reference: str) -> str:
    return f"intent-{reference}"


def confirm_key(reference: str) -> str:
    return f"confirm-{reference}"


def cancel_key(reference: str) -> str:
    return f"cancel-{reference}"


class StripePaymentGateway:
    """Stripe's PaymentIntents, Refunds and webhooks behind the payment gateway port."""

    def __init__(self, *, secret_key: str, api_base: str = stripe.DEFAULT_API_BASE, timeout: float = 10.0) -> None:
        session = requests.Session()  # Shared: connections are reused across payments.
        http_client.mount_measured(session, service="stripe", max_retries=0)
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base},
            http_client=stripe.RequestsClient(timeout=http_client.timeouts(timeout), session=session),
            max_network_retries=0,
        )

    # The port --------------------------------------------------------------------------

    def charge(self, *, amount: Decimal, currency: str, reference: str, idempotency_key: str) -> Charge:
        payment = _payment(reference)
        intent_id = payment.gateway_reference or self._create_intent(payment)
        try:
            intent = self.client.v1.payment_intents.confirm(
                intent_id, options={"idempotency_key": confirm_key(reference)}
            ).to_dict()
        except stripe.StripeError as error:
            intent = _intent_of(error)
            if isinstance(error, stripe.CardError) and (intent or {}).get("status") != "succeeded":
                return Charge(
                    gateway_reference=intent_id,
                    status=ChargeStatus.DECLINED,
                    amount=amount,
                    currency=currency,
                    decline_reason=(error.user_message or "Declined by the card issuer.")[:255],
                )
            if intent is None or intent.get("status") not in ("succeeded", "canceled"):
                _raise_unavailable(error, what="payment confirmation", may_have_charged=True)
            # Stripe refused the confirm for the intent's state: it succeeded already (a confirm
            # whose key Stripe no longer keeps), or cleanup cancelled it meanwhile. That state answers.
        charge = _charge_of(intent)
        if charge.money_taken and (charge.amount, charge.currency) != (amount, currency):
            raise PaymentGatewayUnavailable(
                f"Stripe answered a charge of {charge.amount} {charge.currency}, not {amount} {currency}."
            )
        return charge

    def refund(self, *, payment: Payment) -> Refund:
        try:
            refund = self.client.v1.refunds.create(
                params={"payment_intent": payment.gateway_reference, "metadata": {"payment_id": str(payment.pk)}},
                options={"idempotency_key": refund_key(payment)},
            )
        except stripe.InvalidRequestError as error:
            if error.code == "charge_already_refunded":
                # Refunded already (by hand in Stripe's dashboard, say): the money is back.
                return Refund(refund_reference=self.latest_refund_id(payment.gateway_reference))
            _raise_unavailable(error, what="refund", may_have_charged=False)
        except stripe.StripeError as error:
            _raise_unavailable(error, what="refund", may_have_charged=True)
        # Pending is given: Stripe has taken the refund on and finishes it by itself.
        if refund.status not in ("succeeded", "pending"):
            raise PaymentGatewayUnavailable(f"Stripe answered the refund with status {refund.status!r}.")
        return Refund(refund_reference=refund.id)

    def find_charge(self, *, reference: str) -> Charge | None:
        intent_id = _payment(reference).gateway_reference
        if not intent_id:
            return None  # No intent recorded: none was ever confirmed, so nothing was charged.
        return _charge_of(self._retrieve(intent_id))

    def cancel(self, *, reference: str) -> Charge | None:
        """Stop an open intent, so that nobody can confirm it any more; answers its final
        state (a cancel that finds it succeeded answers the charge)."""
        intent_id = _payment(reference).gateway_reference
        if not intent_id:
            return None
        try:
            intent = self.client.v1.payment_intents.cancel(
                intent_id,
                params={"cancellation_reason": "abandoned"},
                options={"idempotency_key": cancel_key(reference)},
            ).to_dict()
        except stripe.StripeError as error:
            # Cancelled already, or succeeded meanwhile: the intent in the error says which.
            intent = _intent_of(error)
            if intent is None or intent.get("status") in OPEN_STATUSES:
                _raise_unavailable(error, what="cancel", may_have_charged=True)
        return _charge_of(intent)

    # Mechanics -------------------------------------------------------------------------

    def _create_intent(self, payment: Payment) -> str:
        """Create the payment's intent and record its id; nothing can charge before that."""
        if not payment.payment_method:
            raise PaymentGatewayUnavailable("A Stripe payment needs a paymentMethod.", maybe_charged=False)
        try:
            amount = to_minor_units(payment.amount, payment.currency)
        except ValueError as error:
            raise PaymentGatewayUnavailable(str(error), maybe_charged=False) from error
        try:
            intent = self.client.v1.payment_intents.create(
                params={
                    "amount": amount,
                    "currency": payment.currency.lower(),
                    "payment_method": payment.payment_method,
                    # Cards confirmed here, 3-D Secure in the client (Stripe.js): no redirect.
                    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                    "metadata": {
                        "booking_id": str(payment.booking_id),
                        "payment_id": str(payment.pk),
                        "payment_reference": payment.reference,
                    },
                },
                options={"idempotency_key": intent_key(payment.reference)},
            )
        except stripe.StripeError as error:
            # Nothing can have charged (an intent made is unconfirmed), but one may have been
            # made: unless Stripe refused the request, the payment stays in flight, so that the
            # retry with the same Idempotency-Key resends this key and gets that intent back
            # rather than a second one. Reconciliation settles it as not charged.
            _raise_unavailable(error, what="payment intent", may_have_charged=True)
        try:
            Payment.objects.filter(pk=payment.pk, gateway_reference="").update(gateway_reference=intent.id)
        except DatabaseError as error:
            raise PaymentGatewayUnavailable(f"The payment intent {intent.id} could not be recorded: {error}") from error
        return intent.id

    def latest_refund_id(self, intent_id: str) -> str:
        """The id of the intent's latest refund ("" if Stripe lists none)."""
        try:
            refunds = self.client.v1.refunds.list(params={"payment_intent": intent_id, "limit": 1})
        except stripe.StripeError as error:
            _raise_unavailable(error, what="refund look-up", may_have_charged=False)
        return refunds.data[0].id if refunds.data else ""

    def _retrieve(self, intent_id: str) -> dict[str, Any]:
        try:
            return self.client.v1.payment_intents.retrieve(intent_id, params={"expand": ["latest_charge"]}).to_dict()
        except stripe.StripeError as error:
            _raise_unavailable(error, what="look-up", may_have_charged=False)


def _charge_of(intent: dict[str, Any]) -> Charge:
    """What Stripe's books say of an intent, as the port's `Charge`."""
    status, intent_id = intent.get("status"), intent.get("id") or ""
    try:
        currency = str(intent["currency"]).upper()
        amount = from_minor_units(int(intent["amount"]), currency)
    except (KeyError, TypeError, ValueError) as error:
        raise PaymentGatewayUnavailable(f"Stripe answered an unexpected intent: {intent!r:.200}") from error
    error = intent.get("last_payment_error") or {}
    reason = str(error.get("message") or "")[:255]
    if status == "succeeded":
        refunded = _fully_refunded(intent.get("latest_charge"))
        return Charge(
            gateway_reference=intent_id,
            status=ChargeStatus.REFUNDED if refunded else ChargeStatus.SUCCEEDED,
            amount=amount,
            currency=currency,
        )
    if status == "canceled":
        return Charge(
            gateway_reference=intent_id,
            status=ChargeStatus.DECLINED,
            amount=amount,
            currency=currency,
            decline_reason=reason or "The payment was cancelled before it was completed.",
        )
    if status in OPEN_STATUSES:
        next_action = intent.get("next_action")
        return Charge(
            gateway_reference=intent_id,
            status=ChargeStatus.REQUIRES_ACTION,
            amount=amount,
            currency=currency,
            decline_reason=reason,
            action=CustomerAction(
                client_secret=intent.get("client_secret") or "",
                next_action=next_action or {},
            ),
        )
    # "processing": Stripe has not decided yet; its webhook, or a later look-up, will.
    raise PaymentGatewayUnavailable(f"Stripe's payment {intent_id} is {status}: not decided yet.")


def _payment(reference: str) -> Payment:
    try:
        return Payment.objects.get(reference=reference)
    except DatabaseError as error:
        raise PaymentGatewayUnavailable(f"The payment could not be read: {error}", maybe_charged=False) from error


def _intent_of(error: stripe.StripeError) -> dict[str, Any] | None:
    """The PaymentIntent Stripe puts in an error's body (a decline, an unexpected state)."""
    body = error.json_body if isinstance(error.json_body, dict) else {}
    intent = (body.get("error") or {}).get("payment_intent")
    return intent if isinstance(intent, dict) and intent.get("id") else None


def _fully_refunded(charge: Any) -> bool:
    if not charge or isinstance(charge, str):
        return False
    return bool(charge.get("refunded")) or int(charge.get("amount_refunded") or 0) >= int(charge.get("amount") or 1)


def _raise_unavailable(error: stripe.StripeError, *, what: str, may_have_charged: bool) -> NoReturn:
    """Stripe gave no usable answer: `PaymentGatewayUnavailable`. `maybe_charged` is false when
    Stripe cannot have acted (it refused the request, or it never reached Stripe)."""
    if isinstance(error, stripe.APIConnectionError):
        failure = http_client.classify(error.__cause__) if error.__cause__ else http_client.Failure.OTHER
        arrived = failure is not http_client.Failure.NOT_CONNECTED
        logger.warning("payments: Stripe %s failed (%s): %s", what, failure, error.__cause__)
        detail = (
            f"Stripe did not answer the {what} in time."
            if failure is http_client.Failure.TIMED_OUT
            else f"Stripe could not be reached ({what})."
        )
        raise PaymentGatewayUnavailable(detail, maybe_charged=may_have_charged and arrived) from error
    status = error.http_status or 0
    # Refused (bad request, key, permission, unknown id, too many requests): nothing was done.
    refused = status in (400, 401, 402, 403, 404, 429) and not isinstance(error, stripe.IdempotencyError)
    (logger.error if status in (400, 401, 403, 404) else logger.warning)(
        "payments: Stripe answered %s to a %s: %s (%s)", status, what, error.user_message, error.code
    )
    raise PaymentGatewayUnavailable(
        f"Stripe answered the {what} with {status or 'an error'}.", maybe_charged=may_have_charged and not refused
    ) from error


@functools.cache
def stripe_gateway(secret_key: str, api_base: str, timeout: float) -> StripePaymentGateway:
    return StripePaymentGateway(secret_key=secret_key, api_base=api_base, timeout=timeout)
