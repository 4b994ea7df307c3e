"""The payment gateway port and its two adapters, chosen by `PAYMENT_GATEWAY`.

- `SimulatedPaymentGateway` (default): approves, and keeps its charges in its own table
  (`SimulatedCharge`), so that look-ups and refunds are real. `PAYMENT_SIMULATED_OUTCOME`
  tells it to decline, to fail before charging, or to charge and lose the answer.
- `HttpPaymentGateway`: a generic JSON gateway over `requests` (the contract is in
  docs/design.md#payments-exactly-once).
- `payments.stripe_gateway.StripePaymentGateway`: Stripe's PaymentIntents (docs/design.md#stripe).

Both forward an idempotency key with every charge and refund, so resending one can never
move money twice, and raise only `PaymentGatewayUnavailable` (see its `maybe_charged`).
A decline is an answer, not an error: `Charge.status == "declined"`. So is Stripe's request
that the customer authenticate (3-D Secure) first: `"requires_action"`, with its `action`.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, NoReturn, Protocol

import requests
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from bookings_project import http_client, statements
from bookings_project.db import may_conflict
from bookings_project.exceptions import PaymentGatewayUnavailable
from payments.models import CustomerAction, Payment, SimulatedCharge

logger = logging.getLogger(__name__)


class ChargeStatus(StrEnum):
    """What the gateway's books say of a charge."""

    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    REFUNDED = "refunded"  # Charged, then given back.
    # Not charged yet, and still open: the customer must act (3-D Secure), or may confirm it.
    REQUIRES_ACTION = "requires_action"


@dataclass(frozen=True)
class Charge:
    gateway_reference: str
    status: ChargeStatus
    amount: Decimal
    currency: str
    decline_reason: str = ""
    # With REQUIRES_ACTION: what the customer's client must do.
    action: CustomerAction | None = None

    @property
    def open(self) -> bool:
        """It may still charge: settle it as unpaid only once it is stopped (`cancel`)."""
        return self.status == ChargeStatus.REQUIRES_ACTION

    @property
    def money_taken(self) -> bool:
        """The customer was charged (a refunded charge was charged, then given back)."""
        return self.status in (ChargeStatus.SUCCEEDED, ChargeStatus.REFUNDED)


@dataclass(frozen=True)
class Refund:
    refund_reference: str


class PaymentGateway(Protocol):
    def charge(self, *, amount: Decimal, currency: str, reference: str, idempotency_key: str) -> Charge:
        """Charge once per idempotency key: a repeat answers the first charge."""

    def refund(self, *, payment: Payment) -> Refund:
        """Refund the payment's charge in full, once: a repeat answers the first refund."""

    def find_charge(self, *, reference: str) -> Charge | None:
        """The charge made with this reference, if the gateway has one (for reconciliation)."""

    def cancel(self, *, reference: str) -> Charge | None:
        """Stop an open charge (`Charge.open`) so that it can no longer take money; answers
        its final state. Only Stripe's charges can be open; for the others it is a look-up."""


def refund_key(payment: Payment) -> str:
    return f"refund-{payment.reference}"


class SimulatedPaymentGateway:
    """A gateway in our own database, in its own transactions, as a remote one would be."""

    def charge(self, *, amount: Decimal, currency: str, reference: str, idempotency_key: str) -> Charge:
        outcome = settings.PAYMENT_SIMULATED_OUTCOME
        if outcome == "fail":
            raise PaymentGatewayUnavailable("The simulated gateway is down (nothing charged).", maybe_charged=False)
        if settings.PAYMENT_SIMULATED_DELAY_MS:
            time.sleep(settings.PAYMENT_SIMULATED_DELAY_MS / 1000)
        try:
            record = self._charge_once(
                amount=amount, currency=currency, reference=reference, key=idempotency_key, decline=outcome == "decline"
            )
        except DatabaseError as error:
            raise PaymentGatewayUnavailable(f"The simulated gateway failed: {error}") from error
        if outcome == "lose_answer":
            raise PaymentGatewayUnavailable("The simulated gateway charged, but its answer was lost.")
        return _charge_of(record)

    def refund(self, *, payment: Payment) -> Refund:
        try:
            with transaction.atomic():
                record = SimulatedCharge.objects.select_for_update().filter(charge_id=payment.gateway_reference).first()
                if record is None or record.status == SimulatedCharge.Status.DECLINED:
                    raise PaymentGatewayUnavailable(
                        f"The simulated gateway has no charge {payment.gateway_reference!r} to refund.",
                        maybe_charged=False,
                    )
                if record.status == SimulatedCharge.Status.SUCCEEDED:
                    record.status = SimulatedCharge.Status.REFUNDED
                    record.refund_id = f"sim_re_{uuid.uuid4().hex[:24]}"
                    record.refunded_at = timezone.now()
                    record.save(update_fields=["status", "refund_id", "refunded_at"])
        except DatabaseError as error:
            raise PaymentGatewayUnavailable(f"The simulated gateway failed: {error}") from error
        return Refund(refund_reference=record.refund_id)

    def find_charge(self, *, reference: str) -> Charge | None:
        try:
            records = list(SimulatedCharge.objects.filter(reference=reference))
        except DatabaseError as error:
            raise PaymentGatewayUnavailable(f"The simulated gateway failed: {error}") from error
        return _pick_charge([_charge_of(record) for record in records])

    def cancel(self, *, reference: str) -> Charge | None:
        return self.find_charge(reference=reference)  # A charge here is final once made.

    def _charge_once(self, *, amount: Decimal, currency: str, reference: str, key: str, decline: bool):
        try:
            # A new key is the usual case: one INSERT; a repeat is told by the unique key.
            with may_conflict():
                return statements.insert(
                    SimulatedCharge(
                        charge_id=f"sim_ch_{uuid.uuid4().hex[:24]}",
                        idempotency_key=key,
                        reference=reference,
                        amount=amount,
                        currency=currency,
                        status=SimulatedCharge.Status.DECLINED if decline else SimulatedCharge.Status.SUCCEEDED,
                        decline_reason="Declined by the simulated gateway." if decline else "",
                    )
                )
        except IntegrityError:
            # A repeat, or the same key racing us: the first charge is the one.
            return SimulatedCharge.objects.get(idempotency_key=key)


def _charge_of(record: SimulatedCharge) -> Charge:
    return Charge(
        gateway_reference=record.charge_id,
        status=ChargeStatus(record.status),
        amount=record.amount,
        currency=record.currency,
        decline_reason=record.decline_reason,
    )


def _pick_charge(charges: list[Charge]) -> Charge | None:
    """Of the charges made under one reference, the one that took money, if any."""
    taken = [charge for charge in charges if charge.money_taken]
    return (taken or charges or [None])[0]


class HttpPaymentGateway:
    """A client of a generic JSON payment gateway (contract in docs/design.md#payments-exactly-once).

    Over one `http_client.Transport`: a shared `requests.Session`, (connect, read) timeouts,
    the idempotency key on every charge and refund, `X-Request-ID`, and the token as a Bearer
    token. Only look-ups are retried here; a charge or refund is resent by its caller with
    the same key.
    """

    def __init__(self, *, base_url: str, token: str = "", timeout: float = 10.0, retries: int = 2) -> None:
        self.transport = http_client.Transport(
            service="payment_gateway", base_url=base_url, token=token, timeout=timeout, retries=retries
        )
        self.base_url = self.transport.base_url

    @property
    def session(self) -> requests.Session:
        return self.transport.session

    def charge(self, *, amount: Decimal, currency: str, reference: str, idempotency_key: str) -> Charge:
        response = self._send(
            "POST",
            "/charges",
            json={"amount": f"{amount:.2f}", "currency": currency, "reference": reference},
            idempotency_key=idempotency_key,
            what="charge",
        )
        status = response.status_code
        body = http_client.json_or_none(response)
        if status == 402:
            # A decline is definite whatever else the body says: nothing was taken.
            reason = _detail(body) or "Declined by the payment gateway."
            charge_id = body.get("id") if isinstance(body, dict) else None
            return Charge(
                gateway_reference=charge_id if isinstance(charge_id, str) else "",
                status=ChargeStatus.DECLINED,
                amount=amount,
                currency=currency,
                decline_reason=reason,
            )
        if status in (200, 201):
            charge = _parse_charge(body)
            if charge.amount != amount or charge.currency != currency:
                raise PaymentGatewayUnavailable(
                    f"The gateway answered a charge of {charge.amount} {charge.currency}, not {amount} {currency}."
                )
            return charge
        self._raise_unavailable(response, what="charge", money_moved_if_unclear=True)

    def refund(self, *, payment: Payment) -> Refund:
        response = self._send(
            "POST",
            f"/charges/{payment.gateway_reference}/refunds",
            json={"amount": f"{payment.amount:.2f}"},
            idempotency_key=refund_key(payment),
            what="refund",
        )
        body = http_client.json_or_none(response)
        if (
            response.status_code in (200, 201)
            and isinstance(body, dict)
            and body.get("status") == ChargeStatus.SUCCEEDED
        ):
            refund_id = body.get("id")
            if isinstance(refund_id, str) and refund_id:
                return Refund(refund_reference=refund_id)
        self._raise_unavailable(response, what="refund", money_moved_if_unclear=True)

    def find_charge(self, *, reference: str) -> Charge | None:
        response = self._send("GET", "/charges", params={"reference": reference}, what="look-up")
        body = http_client.json_or_none(response)
        if response.status_code == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
            return _pick_charge([_parse_charge(item) for item in body["data"]])
        self._raise_unavailable(response, what="look-up", money_moved_if_unclear=False)

    def cancel(self, *, reference: str) -> Charge | None:
        return self.find_charge(reference=reference)  # A charge of this contract is final once made.

    # Mechanics --------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, what: str, **kwargs: Any) -> requests.Response:
        try:
            return self.transport.send(method, path, **kwargs)
        except http_client.TransportError as error:
            if error.timed_out:
                logger.warning("payments: %s %s timed out: %s", method, error.url, error.__cause__)
                detail = f"The payment gateway did not answer the {what} in time."
            elif error.failure is http_client.Failure.OTHER:
                logger.warning("payments: %s %s failed: %s", method, error.url, error.__cause__)
                detail = f"The payment gateway failed ({what})."
            else:
                logger.warning("payments: %s %s failed: %s", method, error.url, error.__cause__)
                detail = f"The payment gateway could not be reached ({what})."
            raise PaymentGatewayUnavailable(detail, maybe_charged=error.may_have_arrived) from error

    def _raise_unavailable(self, response: requests.Response, *, what: str, money_moved_if_unclear: bool) -> NoReturn:
        status = response.status_code
        # 400/401/403/404/422: the gateway refused our request; nothing moved, and retrying the
        # same request will not help. Anything else (5xx, 409 "in flight", garbage) is unclear.
        refused = 400 <= status < 500 and status not in (402, 408, 409, 429)
        log = logger.error if refused else logger.warning
        log("payments: %s answered %s to a %s: %.300s", response.url, status, what, response.text)
        raise PaymentGatewayUnavailable(
            f"The payment gateway answered the {what} with {status}.",
            maybe_charged=money_moved_if_unclear and not refused,
        )


def _detail(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    return str(body.get("declineReason") or body.get("detail") or body.get("message") or "")[:255]


_HTTP_CHARGE_STATUSES = (ChargeStatus.SUCCEEDED, ChargeStatus.DECLINED, ChargeStatus.REFUNDED)


def _parse_charge(body: Any) -> Charge:
    """A charge object, or PaymentGatewayUnavailable: a body we cannot read is no answer."""
    try:
        if not isinstance(body, dict):
            raise TypeError("not an object")
        status = body["status"]
        charge_id = body.get("id") or ""
        # The contract's statuses: a charge here is final once made, never open.
        if status not in _HTTP_CHARGE_STATUSES or not isinstance(charge_id, str):
            raise ValueError("bad status or id")
        status = ChargeStatus(status)
        if status != ChargeStatus.DECLINED and not charge_id:
            raise ValueError("bad status or id")
        amount = Decimal(str(body["amount"]))
        currency = body["currency"]
        if not amount.is_finite() or not isinstance(currency, str):
            raise ValueError("bad amount or currency")
    except (KeyError, TypeError, ValueError, InvalidOperation) as error:
        raise PaymentGatewayUnavailable(
            f"The payment gateway answered with an unexpected charge: {body!r:.200}"
        ) from error
    return Charge(
        gateway_reference=charge_id,
        status=status,
        amount=amount.quantize(Decimal("0.01")),
        currency=currency,
        decline_reason=(_detail(body) or "Declined by the payment gateway.") if status == ChargeStatus.DECLINED else "",
    )


@functools.cache
def _http_gateway(base_url: str, token: str, timeout: float) -> HttpPaymentGateway:
    return HttpPaymentGateway(base_url=base_url, token=token, timeout=timeout)


def get_payment_gateway() -> PaymentGateway:
    """The adapter `PAYMENT_GATEWAY` names; the remote ones are shared so their connections are reused."""
    if settings.PAYMENT_GATEWAY == "stripe":
        from payments.stripe_gateway import stripe_gateway  # Imports `stripe` only where it is used.

        return stripe_gateway(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.PAYMENT_GATEWAY_TIMEOUT)
    if settings.PAYMENT_GATEWAY == "http":
        return _http_gateway(
            settings.PAYMENT_GATEWAY_URL, settings.PAYMENT_GATEWAY_TOKEN, settings.PAYMENT_GATEWAY_TIMEOUT
        )
    return SimulatedPaymentGateway()
