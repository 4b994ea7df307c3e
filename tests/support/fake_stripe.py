"""The parts of Stripe's API that the Stripe adapter uses (see /work/notes/stripe-wire.md), faked.

`FakeStripe` is a small stateful, thread-safe Stripe: PaymentIntents (create, confirm, retrieve,
cancel), their charges, refunds, Stripe's idempotency (the first answer per key replayed with
`Idempotent-Replayed: true`, other parameters under a key refused), the test payment methods'
outcomes, 3-D Secure completed or failed from the customer's side (`complete_action`), and the
events each state change would send to a webhook (`signed`, `deliver`). It speaks the wire format
the official `stripe` library speaks (form-encoded bodies with nested keys, Bearer keys, Stripe's
error bodies), so the adapter is tested through the real library. It is used two ways, after
`tests.support.payment_gateway`:

- served over real HTTP by a `ThreadingHTTPServer` on 127.0.0.1 (`serving(fake)` yields the
  base address to give `StripeClient(base_addresses={"api": ...})`), where `fake.on(kind, ...)`
  scripts faults on the socket: an answer late, a connection dropped before or after the
  request was applied, a proxy's 5xx;
- as `responses` callbacks (`mocked(fake, ...)`), where each endpoint first plays scripted
  behaviours (`lost`, `answers`, `tampered`) and then answers as the healthy fake does.

Check the money side against its books: `standing()` (references that hold money) and
`charged_twice()` (references that took money more than once: must be empty).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import requests
import responses

from tests.support.payment_gateway import served

API_KEY = "sk_test_fake"
WEBHOOK_SECRET = "whsec_fake_secret"
API_VERSION = "2026-10-28.endive"  # stripe 16.1.0's `_ApiVersion.CURRENT`.
MOCK_BASE = "https://api.stripe.test"  # Without /v1: what `base_addresses={"api": ...}` takes.

Kind = Literal["create", "confirm", "retrieve", "cancel", "refund", "refunds"]
Behaviour = Callable[["FakeStripe", requests.PreparedRequest], tuple[int, dict, str]]

# Currencies whose amounts have no minor unit (https://docs.stripe.com/currencies#zero-decimal).
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)

DECLINES = {
    "pm_card_chargeDeclined": ("generic_decline", "Your card was declined."),
    "pm_card_visa_chargeDeclinedInsufficientFunds": ("insufficient_funds", "Your card has insufficient funds."),
}
NEEDS_AUTHENTICATION = frozenset({"pm_card_authenticationRequired", "pm_card_threeDSecure2Required"})
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing")
CANCELLATION_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer", "abandoned"})

_ROUTES: tuple[tuple[str, str, Kind], ...] = (
    ("POST", r"/v1/payment_intents", "create"),
    ("POST", r"/v1/payment_intents/([^/]+)/confirm", "confirm"),
    ("POST", r"/v1/payment_intents/([^/]+)/cancel", "cancel"),
    ("GET", r"/v1/payment_intents/([^/]+)", "retrieve"),
    ("POST", r"/v1/refunds", "refund"),
    ("GET", r"/v1/refunds", "refunds"),
)


def kind_of(method: str, path: str) -> Kind | None:
    """Which of the adapter's calls a request is, so faults and assertions can name it."""
    for route_method, pattern, kind in _ROUTES:
        if method == route_method and re.fullmatch(pattern, path):
            return kind
    return None


# Money and the wire format ------------------------------------------------------------------


def to_minor(amount: Decimal | int | str, currency: str) -> int:
    """An amount in Stripe's minor units: JPY has none (¥1200 -> 1200), USD and INR two."""
    exponent = 0 if currency.lower() in ZERO_DECIMAL else 2
    minor = Decimal(amount).scaleb(exponent)
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount} {currency} has more decimals than the currency")
    return int(minor)


def from_minor(amount: int, currency: str) -> Decimal:
    """The inverse of `to_minor`, to compare the fake's books with ours."""
    return Decimal(amount).scaleb(0 if currency.lower() in ZERO_DECIMAL else -2)


def parse_form(text: str) -> dict[str, Any]:
    """A Stripe form body or query string as nested data, as Stripe reads it.

    `metadata[booking_id]=7` -> {"metadata": {"booking_id": "7"}}, `expand[0]=latest_charge` ->
    {"expand": ["latest_charge"]} (also `expand[]=`). Values stay strings, as sent.
    """
    root: dict[str, Any] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", name)
        parts = [name] if match is None else [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "":  # `a[]=x`: append.
                part = str(len(node))
            if last:
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):  # `a=1&a[b]=2`: the later, nested one wins.
                    child = node[part] = {}
                node = child
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {key: _lists(value) for key, value in node.items()}
    if items and all(key.isdigit() for key in items):
        return [items[key] for key in sorted(items, key=int)]
    return items


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _error(status: int, type_: str, message: str, **fields: Any) -> tuple[int, dict]:
    return status, {"error": {"type": type_, "message": message, **fields}}


class _Invalid(Exception):
    """A request that failed validation: Stripe answers it but saves nothing under its idempotency key."""

    def __init__(self, status: int, payload: dict) -> None:
        super().__init__(status)
        self.status, self.payload = status, payload


def _invalid(message: str, *, code: str, param: str | None = None, status: int = 400) -> _Invalid:
    return _Invalid(*_error(status, "invalid_request_error", message, code=code, **({"param": param} if param else {})))


def _missing(kind: str, id_: str) -> _Invalid:
    return _invalid(f"No such {kind}: '{id_}'", code="resource_missing", param="id", status=404)


# The fake Stripe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """A request the fake processed, and the status it answered (`replayed`: from the key's first answer)."""

    method: str
    path: str
    query: dict[str, Any]  # Nested, as `parse_form` reads it.
    headers: dict[str, str]  # Lower-case names.
    form: dict[str, Any]  # Nested, as `parse_form` reads it.
    status: int
    replayed: bool = False

    @property
    def kind(self) -> Kind | None:
        return kind_of(self.method, self.path)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass(frozen=True)
class Fault:
    """What the served fake does to one request on the socket (see `dropped`, `late`, `proxy_answers`)."""

    action: Literal["drop", "late", "answer"]
    applied: bool = True
    seconds: float = 0.0
    status: int = 502
    body: str = ""


def dropped(*, applied: bool) -> Fault:
    """The connection closes without an answer, after the fake applied the request or before."""
    return Fault("drop", applied=applied)


def late(seconds: float) -> Fault:
    """Applied; the answer is sent `seconds` late (past the client's timeout, it is lost)."""
    return Fault("late", seconds=seconds)


def proxy_answers(status: int, body: str = "", *, applied: bool) -> Fault:
    """Something in front of Stripe answers this (a 502 page, say), the request applied or not."""
    return Fault("answer", applied=applied, status=status, body=body)


@dataclass
class _FirstAnswer:
    method: str
    path: str
    form: dict[str, Any]
    status: int
    body: dict


class FakeStripe:
    """Stripe's PaymentIntents, charges and refunds, in memory and thread-safe.

    `api_key` is the only secret key it accepts. The outcome of a confirm is the intent's
    payment method's, as with Stripe's test payment methods (`DECLINES`, `NEEDS_AUTHENTICATION`;
    any other pm succeeds). Amounts are kept as sent, in minor units.

    `refunds_in_charge_events`: whether `charge.refunded` carries `refunds: {"data": [...]}`, as
    /work/notes/stripe-wire.md says. Since API version 2022-11-15 Stripe no longer includes a
    charge's refunds unless expanded: pass False to test against that shape.
    """

    def __init__(self, *, api_key: str = API_KEY, refunds_in_charge_events: bool = True) -> None:
        self.api_key = api_key
        self.refunds_in_charge_events = refunds_in_charge_events
        self.lock = threading.RLock()
        self.intents: dict[str, dict] = {}  # id -> PaymentIntent, as Stripe shows it.
        self.charges: dict[str, dict] = {}  # id -> Charge, as Stripe shows it.
        self.refunds: dict[str, dict] = {}  # id -> Refund, as Stripe shows it.
        self.events: list[dict] = []  # In the order they happened.
        self.received: list[Received] = []
        self.first_answers: dict[str, _FirstAnswer] = {}  # idempotency key -> first answer.
        self.late_answers: list[float] = []  # Served: seconds to wait before the next answers, any kind.
        self.faults: dict[str, list[Fault]] = {}  # Served: kind -> faults for its next requests.
        self._request: tuple[str | None, str | None] = (None, None)  # (request id, key) being handled.

    # What Stripe holds.

    def seen(self, kind: Kind) -> list[Received]:
        """Processed requests of one kind: "create", "confirm", "retrieve", "cancel" or "refund"."""
        with self.lock:
            return [r for r in self.received if r.kind == kind]

    def unkeyed(self) -> list[Received]:
        """POSTs that came without an Idempotency-Key (Stripe accepts them; the adapter must not send them)."""
        with self.lock:
            return [r for r in self.received if r.method == "POST" and not r.idempotency_key]

    def intents_for(self, reference: str) -> list[dict]:
        """The intents created for one of our payment references (`metadata[payment_reference]`)."""
        with self.lock:
            return [
                copy.deepcopy(i) for i in self.intents.values() if i["metadata"].get("payment_reference") == reference
            ]

    def standing(self) -> set[str]:
        """References whose intent took money that was not refunded in full."""
        with self.lock:
            return {
                intent["metadata"].get("payment_reference", "")
                for intent in self.intents.values()
                if intent["status"] == "succeeded" and not self.charges[intent["latest_charge"]]["refunded"]
            }

    def takings(self) -> dict[str, int]:
        """Per reference, how many intents took money (refunded or not)."""
        counts: dict[str, int] = {}
        with self.lock:
            for intent in self.intents.values():
                if intent["status"] == "succeeded":
                    reference = intent["metadata"].get("payment_reference", "")
                    counts[reference] = counts.get(reference, 0) + 1
        return counts

    def charged_twice(self) -> dict[str, int]:
        """References that took money more than once, and how many times: must be empty."""
        return {reference: count for reference, count in self.takings().items() if count > 1}

    def events_of(self, type_: str) -> list[dict]:
        """The events of one type, to deliver or to assert on."""
        with self.lock:
            return [e for e in self.events if e["type"] == type_]

    # Scripting.

    def on(self, kind: Kind, *faults: Fault) -> None:
        """Served only: the next requests of `kind` meet these faults, one each, in order."""
        with self.lock:
            self.faults.setdefault(kind, []).extend(faults)

    def complete_action(self, intent_id: str, *, succeed: bool) -> dict:
        """The customer finishes 3-D Secure (in the browser, not through our API): the intent
        succeeds with a charge, or returns to requires_payment_method with Stripe's error.
        Returns the intent."""
        with self.lock:
            intent = self.intents[intent_id]
            if intent["status"] != "requires_action":
                raise ValueError(f"{intent_id} is {intent['status']}, not requires_action")
            self._request = (None, None)
            intent["next_action"] = None
            if succeed:
                self._succeed(intent)
            else:
                intent.update(
                    status="requires_payment_method",
                    last_payment_error={
                        "type": "card_error",
                        "code": "payment_intent_authentication_failure",
                        "message": "The provided PaymentMethod has failed authentication. You can provide "
                        "payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
                        "payment_method": {"id": intent["payment_method"], "object": "payment_method"},
                    },
                    payment_method=None,
                )
                self._event("payment_intent.payment_failed", intent)
            return copy.deepcopy(intent)

    # Webhooks.

    def deliver(
        self,
        url: str,
        secret: str = WEBHOOK_SECRET,
        events: Iterable[dict] | None = None,
        session: Any = None,
    ) -> list[int]:
        """POST events (by default all of the fake's so far, in order), signed, to `url`, as Stripe's
        webhook sender does; returns the statuses. Pass a list twice over to play Stripe's
        redeliveries, or reversed to play its lack of ordering. `session`: a `requests.Session`
        (the default is `requests`) or Django's test `Client`."""
        with self.lock:
            chosen = list(self.events if events is None else events)
        statuses = []
        for event in chosen:
            body, headers = signed(event, secret)
            if session is None or isinstance(session, requests.Session):
                answer = (session or requests).post(url, data=body, headers=headers, timeout=5)
            else:  # Django's test client: the body as content, the signature as a header.
                answer = session.post(
                    url,
                    data=body,
                    content_type=headers["Content-Type"],
                    headers={"Stripe-Signature": headers["Stripe-Signature"]},
                )
            statuses.append(answer.status_code)
        return statuses

    # The API.

    def handle(self, method: str, target: str, headers: Any, body: bytes | str | None) -> tuple[int, dict, dict]:
        """One request: (status, extra response headers, JSON body). Records it."""
        url = urlsplit(target)
        query = parse_form(url.query)
        lowered = {name.lower(): value for name, value in headers.items()}
        text = body.decode() if isinstance(body, bytes) else (body or "")
        form = parse_form(text)
        request_id = _new_id("req")
        answer_headers = {"Request-Id": request_id}
        key = lowered.get("idempotency-key") if method == "POST" else None  # Stripe ignores it on a GET.
        if key:
            answer_headers["Idempotency-Key"] = key
        replayed = False
        with self.lock:
            if lowered.get("authorization") != f"Bearer {self.api_key}":
                status, payload = self._unauthorized(lowered.get("authorization"))
            elif key and key in self.first_answers:
                first = self.first_answers[key]
                status, payload = self._mismatch(key, first, method, url.path, form)
                if not status:
                    status, payload, replayed = first.status, copy.deepcopy(first.body), True
                    answer_headers["Idempotent-Replayed"] = "true"
            else:
                self._request = (request_id, key)
                try:
                    status, payload = self._route(method, url.path, query, form)
                except _Invalid as invalid:
                    status, payload = invalid.status, invalid.payload
                else:  # Stripe saves the answer once the endpoint ran, whatever it was.
                    if key:
                        self.first_answers[key] = _FirstAnswer(method, url.path, form, status, copy.deepcopy(payload))
            self.received.append(Received(method, url.path, query, lowered, form, status, replayed))
        return status, answer_headers, payload

    def _unauthorized(self, authorization: str | None) -> tuple[int, dict]:
        if not authorization:
            return _error(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        shown = authorization.removeprefix("Bearer ")
        return _error(401, "invalid_request_error", f"Invalid API Key provided: {shown[:8]}****{shown[-4:]}")

    def _mismatch(self, key: str, first: _FirstAnswer, method: str, path: str, form: dict) -> tuple[int, dict]:
        """Stripe's idempotency_error when a key is reused for another request; (0, {}) when it is the same."""
        if (first.method, first.path) != (method, path):
            return _error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{first.method} {first.path}' vs '{method} {path}'). Try using a key other than '{key}' if "
                "you meant to execute a different request.",
            )
        if first.form != form:
            return _error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request.",
            )
        return 0, {}

    def _route(self, method: str, path: str, query: dict, form: dict) -> tuple[int, dict]:
        kind = kind_of(method, path)
        intent_id = path.split("/")[3] if kind in ("confirm", "cancel", "retrieve") else ""
        if kind in ("confirm", "cancel", "retrieve") and intent_id not in self.intents:
            raise _missing("payment_intent", intent_id)
        if kind == "create":
            return self._create(form)
        if kind == "confirm":
            return self._confirm(self.intents[intent_id], form)
        if kind == "retrieve":
            return 200, self._shown(self.intents[intent_id], query.get("expand", []))
        if kind == "cancel":
            return self._cancel(self.intents[intent_id], form)
        if kind == "refund":
            return self._refund(form)
        if kind == "refunds":
            return 200, self._refund_list(query)
        raise _Invalid(*_error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."))

    def _create(self, form: dict) -> tuple[int, dict]:
        for name in ("amount", "currency"):
            if name not in form:
                raise _invalid(f"Missing required param: {name}.", code="parameter_missing", param=name)
        if not re.fullmatch(r"[0-9]+", str(form["amount"])):  # "12.50" is refused: amounts are in minor units.
            raise _invalid(f"Invalid integer: {form['amount']}", code="parameter_invalid_integer", param="amount")
        intent_id = _new_id("pi")
        automatic = form.get("automatic_payment_methods") or {}
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(form["amount"]),
            "amount_received": 0,
            "automatic_payment_methods": {
                "enabled": automatic.get("enabled") == "true",
                **({"allow_redirects": automatic["allow_redirects"]} if "allow_redirects" in automatic else {}),
            }
            if automatic
            else None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": str(form["currency"]).lower(),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(form.get("metadata") or {}),
            "next_action": None,
            "payment_method": form.get("payment_method"),
            "status": "requires_confirmation" if form.get("payment_method") else "requires_payment_method",
        }
        self.intents[intent_id] = intent
        if form.get("confirm") == "true":
            return self._confirm(intent, {})
        return 200, copy.deepcopy(intent)

    def _confirm(self, intent: dict, form: dict) -> tuple[int, dict]:
        if intent["status"] in ("succeeded", "canceled", "processing"):
            return self._unexpected(intent, "confirm")
        if form.get("payment_method"):  # A new card for another attempt.
            intent["payment_method"] = form["payment_method"]
        elif intent["status"] == "requires_action":
            return 200, copy.deepcopy(intent)  # Still waiting for the customer.
        pm = intent["payment_method"]
        if not pm:
            return _error(
                400,
                "invalid_request_error",
                "You cannot confirm this PaymentIntent because it's missing a payment method. To confirm the "
                "PaymentIntent with a payment method, pass `payment_method`.",
                code="payment_intent_unexpected_state",
                payment_intent=copy.deepcopy(intent),
            )
        if pm in DECLINES:
            decline_code, message = DECLINES[pm]
            charge = self._charge(intent, status="failed")
            error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": decline_code,
                "message": message,
                "charge": charge["id"],
                "payment_method": {"id": pm, "object": "payment_method"},
            }
            intent.update(status="requires_payment_method", last_payment_error=error, payment_method=None)
            self._event("payment_intent.payment_failed", intent)
            return 402, {"error": {**error, "payment_intent": copy.deepcopy(intent)}}
        if pm in NEEDS_AUTHENTICATION:
            intent.update(
                status="requires_action",
                last_payment_error=None,
                next_action={
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {
                        "type": "three_d_secure_redirect",
                        "stripe_js": f"https://hooks.stripe.com/redirect/authenticate/src_{secrets.token_hex(12)}",
                        "source": f"src_{secrets.token_hex(12)}",
                    },
                },
            )
            self._event("payment_intent.requires_action", intent)
            return 200, copy.deepcopy(intent)
        self._succeed(intent)
        return 200, copy.deepcopy(intent)

    def _succeed(self, intent: dict) -> None:
        charge = self._charge(intent, status="succeeded")
        intent.update(status="succeeded", amount_received=intent["amount"], last_payment_error=None, next_action=None)
        intent["latest_charge"] = charge["id"]
        self._event("payment_intent.succeeded", intent)

    def _charge(self, intent: dict, *, status: str) -> dict:
        charge = {
            "id": _new_id("ch"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"] if status == "succeeded" else 0,
            "amount_refunded": 0,
            "captured": status == "succeeded",
            "created": int(time.time()),
            "currency": intent["currency"],
            "livemode": False,
            "metadata": {},
            "paid": status == "succeeded",
            "payment_intent": intent["id"],
            "payment_method": intent["payment_method"],
            "refunded": False,
            "status": status,
        }
        self.charges[charge["id"]] = charge
        intent["latest_charge"] = charge["id"]
        return charge

    def _cancel(self, intent: dict, form: dict) -> tuple[int, dict]:
        reason = form.get("cancellation_reason")
        if reason is not None and reason not in CANCELLATION_REASONS:
            raise _invalid(
                f"Invalid cancellation_reason: must be one of {', '.join(sorted(CANCELLATION_REASONS))}",
                code="parameter_invalid_empty" if reason == "" else "parameter_unknown",
                param="cancellation_reason",
            )
        if intent["status"] not in CANCELABLE:
            return self._unexpected(intent, "cancel")
        intent.update(status="canceled", cancellation_reason=reason, canceled_at=int(time.time()), next_action=None)
        self._event("payment_intent.canceled", intent)
        return 200, copy.deepcopy(intent)

    def _unexpected(self, intent: dict, verb: str) -> tuple[int, dict]:
        if verb == "cancel":
            message = (
                f"You cannot cancel this PaymentIntent because it has a status of {intent['status']}. Only a "
                "PaymentIntent with one of the following statuses may be canceled: " + ", ".join(CANCELABLE) + "."
            )
        elif intent["status"] == "succeeded":
            message = (
                "You cannot confirm this PaymentIntent because it has already succeeded after being previously "
                "confirmed."
            )
        else:
            message = f"You cannot confirm this PaymentIntent because it has a status of {intent['status']}."
        return _error(
            400,
            "invalid_request_error",
            message,
            code="payment_intent_unexpected_state",
            payment_intent=copy.deepcopy(intent),
        )

    def _refund_list(self, query: dict) -> dict:
        """GET /v1/refunds?payment_intent=...&limit=N: newest first, in Stripe's list shape."""
        intent_id = query.get("payment_intent")
        refunds = [r for r in self.refunds.values() if not intent_id or r.get("payment_intent") == intent_id]
        refunds.sort(key=lambda refund: refund.get("created", 0), reverse=True)
        limit = int(query.get("limit") or 10)
        return {"object": "list", "url": "/v1/refunds", "has_more": len(refunds) > limit, "data": refunds[:limit]}

    def _refund(self, form: dict) -> tuple[int, dict]:
        intent_id, charge_id = form.get("payment_intent"), form.get("charge")
        if not intent_id and not charge_id:
            raise _invalid(
                "One of the following params should be provided for this request: payment_intent or charge.",
                code="parameter_missing",
            )
        if intent_id:
            if intent_id not in self.intents:
                raise _missing("payment_intent", intent_id)
            charge = self.charges.get(self.intents[intent_id]["latest_charge"] or "")
        else:
            if charge_id not in self.charges:
                raise _missing("charge", charge_id)
            charge = self.charges[charge_id]
        if charge is None or charge["status"] != "succeeded":
            return _error(
                400,
                "invalid_request_error",
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund."
                if intent_id
                else f"Charge {charge_id} has not succeeded: there is nothing to refund.",
                param="payment_intent" if intent_id else "charge",
            )
        if charge["refunded"]:
            return _error(
                400,
                "invalid_request_error",
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = int(form["amount"]) if str(form.get("amount", "")).isdigit() else remaining
        if amount > remaining or amount <= 0:
            return _error(
                400,
                "invalid_request_error",
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
                code="amount_too_large",
                param="amount",
            )
        refund = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "metadata": dict(form.get("metadata") or {}),
            "payment_intent": charge["payment_intent"],
            "reason": form.get("reason"),
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refunds = [r for r in self.refunds.values() if r["charge"] == charge["id"]]
        listed = {
            "refunds": {
                "object": "list",
                "data": copy.deepcopy(refunds),
                "has_more": False,
                "total_count": len(refunds),
                "url": f"/v1/charges/{charge['id']}/refunds",
            }
        }
        self._event("charge.refunded", {**charge, **(listed if self.refunds_in_charge_events else {})})
        return 200, copy.deepcopy(refund)

    def _shown(self, intent: dict, expand: Iterable[str]) -> dict:
        shown = copy.deepcopy(intent)
        if "latest_charge" in expand and shown["latest_charge"]:
            shown["latest_charge"] = copy.deepcopy(self.charges[shown["latest_charge"]])
        return shown

    def _event(self, type_: str, obj: dict) -> None:
        request_id, key = self._request
        self.events.append(
            {
                "id": _new_id("evt"),
                "object": "event",
                "api_version": API_VERSION,
                "created": int(time.time()),
                "data": {"object": copy.deepcopy(obj)},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": request_id, "idempotency_key": key},
                "type": type_,
            }
        )


# Webhooks -----------------------------------------------------------------------------------


def signature(body: bytes, secret: str, timestamp: int) -> str:
    """Stripe's v1 scheme: hex HMAC-SHA256, keyed by the whole `whsec_...` secret, of "<t>.<body>"."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed(event: dict, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers Stripe would POST for `event` to an endpoint with this secret."""
    body = json.dumps(event, indent=2).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    return body, {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": f"t={timestamp},v1={signature(body, secret, timestamp)}",
    }


# The fake over real HTTP --------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any  # tests.support.payment_gateway's server, whose `fake` is a FakeStripe.

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fake = self.server.fake
        kind = kind_of(self.command, urlsplit(self.path).path)
        with fake.lock:
            script = fake.faults.get(kind or "", [])
            fault = script.pop(0) if script else None
        if fault is None or fault.applied:
            status, headers, payload = fake.handle(self.command, self.path, self.headers, body)
        if fault is not None and fault.action == "drop":
            self._hang_up()
            return
        if fault is not None and fault.action == "answer":
            status, headers, data = fault.status, {}, fault.body.encode()
        else:
            data = json.dumps(payload).encode()
        seconds = fault.seconds if fault is not None and fault.action == "late" else 0.0
        if fake.late_answers:
            seconds += fake.late_answers.pop(0)
        if seconds:
            time.sleep(seconds)  # Applied, but the answer comes late.
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_POST = _serve

    def log_message(self, *args: Any) -> None:
        pass


def serving(fake: FakeStripe) -> contextlib.AbstractContextManager[str]:
    """The fake on a real socket for the duration of the block. Yields its base address (no /v1)."""
    return served(fake, _Handler)


# The fake as `responses` callbacks, with scripted faults -------------------------------------


def _respond(fake: FakeStripe, request: requests.PreparedRequest) -> tuple[int, dict, str]:
    status, headers, payload = fake.handle(request.method or "", request.path_url, request.headers, request.body)
    return status, {"Content-Type": "application/json", **headers}, json.dumps(payload)


def healthy(fake: FakeStripe, request: requests.PreparedRequest) -> tuple[int, dict, str]:
    return _respond(fake, request)


def lost(error: Exception, *, applied: bool) -> Behaviour:
    """The request fails on the wire (see `tests.support.http_faults`), after Stripe applied it or before."""

    def behaviour(fake: FakeStripe, request: requests.PreparedRequest) -> tuple[int, dict, str]:
        if applied:
            _respond(fake, request)
        raise error

    return behaviour


def answers(status: int, body: Any = "", *, applied: bool, content_type: str = "application/json") -> Behaviour:
    """Stripe (or a proxy in front of it) answers this, having applied the request or not."""

    def behaviour(fake: FakeStripe, request: requests.PreparedRequest) -> tuple[int, dict, str]:
        if applied:
            _respond(fake, request)
        return status, {"Content-Type": content_type}, body if isinstance(body, str) else json.dumps(body)

    return behaviour


def tampered(**changes: Any) -> Behaviour:
    """Applied; the answer arrives with these top-level fields changed."""

    def behaviour(fake: FakeStripe, request: requests.PreparedRequest) -> tuple[int, dict, str]:
        status, headers, body = _respond(fake, request)
        return status, headers, json.dumps({**json.loads(body), **changes})

    return behaviour


@dataclass
class Mocked:
    rsps: responses.RequestsMock
    endpoints: dict[str, responses.BaseResponse] = field(default_factory=dict)  # kind -> its mock.


def mocked(
    fake: FakeStripe,
    *,
    create: tuple[Behaviour, ...] = (),
    confirm: tuple[Behaviour, ...] = (),
    retrieve: tuple[Behaviour, ...] = (),
    cancel: tuple[Behaviour, ...] = (),
    refund: tuple[Behaviour, ...] = (),
    refunds: tuple[Behaviour, ...] = (),
    base: str = MOCK_BASE,
) -> Mocked:
    """A RequestsMock for the six endpoints at `base`: each plays its scripted behaviours, one
    per call, then answers as the healthy fake."""

    def scripted(behaviours: tuple[Behaviour, ...]) -> Callable[[requests.PreparedRequest], tuple[int, dict, str]]:
        script = list(behaviours)

        def callback(request: requests.PreparedRequest) -> tuple[int, dict, str]:
            return (script.pop(0) if script else healthy)(fake, request)

        return callback

    # Anchored: `responses` matches a pattern's start only, and uses up a callback when two match.
    root = re.escape(base)
    intent = root + r"/v1/payment_intents/[^/?]+"
    rsps = responses.RequestsMock(assert_all_requests_are_fired=False)
    routes: list[tuple[str, str, tuple[Behaviour, ...], re.Pattern]] = [
        ("create", responses.POST, create, re.compile(root + r"/v1/payment_intents$")),
        ("confirm", responses.POST, confirm, re.compile(intent + "/confirm$")),
        ("cancel", responses.POST, cancel, re.compile(intent + "/cancel$")),
        ("retrieve", responses.GET, retrieve, re.compile(intent + r"(\?.*)?$")),
        ("refund", responses.POST, refund, re.compile(root + r"/v1/refunds$")),
        ("refunds", responses.GET, refunds, re.compile(root + r"/v1/refunds(\?.*)?$")),
    ]
    endpoints = {
        kind: rsps.add_callback(method, pattern, callback=scripted(behaviours))
        for kind, method, behaviours, pattern in routes
    }
    return Mocked(rsps=rsps, endpoints=endpoints)
