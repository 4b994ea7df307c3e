"""The payment gateway of docs/design.md#payments-exactly-once (its HTTP contract), faked.

`FakeGateway` is a small stateful implementation of that contract: charges by id, by
idempotency key and by reference, and refunds. It is used two ways:

- served over real HTTP by a `ThreadingHTTPServer` on 127.0.0.1 (`serving(fake)`, or the
  `served_gateway` fixture of `tests.fixtures.payments`);
- as `responses` callbacks (`mocked(fake, ...)`), where each endpoint first plays a
  scripted fault (`lost`, `answers`, `tampered`: a timeout after or before the charge was
  applied, a refused connection, a 5xx, a garbage body, ...) and then answers as the
  healthy gateway does.

Check the money side of the invariants against its books with
`assert_money_matches_bookings(standing=fake.standing())`.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import responses

from payments.gateway import HttpPaymentGateway

TOKEN = "secret"
PREFIX = "/v1"
MOCK_BASE = "http://payments.test" + PREFIX

Behaviour = Callable[["FakeGateway", requests.PreparedRequest], tuple[int, dict, str]]


# The fake gateway ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """A request the gateway processed, and the status it answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # Lower-case names.
    body: Any
    status: int


class FakeGateway:
    """The payment gateway of that contract, in memory and thread-safe.

    `decline` makes new charges declined: "402" answers 402, "200" answers 201 with
    `"status": "declined"`. `token` is the only Bearer token it accepts.
    """

    def __init__(self, *, token: str = TOKEN, prefix: str = PREFIX) -> None:
        self.token, self.prefix = token, prefix
        self.decline: str | None = None
        self.lock = threading.Lock()
        self.charges: dict[str, dict] = {}  # id -> charge, with our bookkeeping fields.
        self.first_answers: dict[str, tuple[dict, int, dict]] = {}  # key -> (request, status, body)
        self.refunds: dict[str, dict] = {}  # key -> refund
        self.received: list[Received] = []
        self.late_answers: list[float] = []  # Over real HTTP: seconds to wait before the next answers.

    # What the gateway holds.

    def standing(self) -> set[str]:
        """References of the charges that took money and were not refunded."""
        with self.lock:
            return {c["reference"] for c in self.charges.values() if c["status"] == "succeeded" and not c["refunded"]}

    def charges_for(self, reference: str) -> list[dict]:
        return [c for c in self.charges.values() if c["reference"] == reference]

    def seen(self, method: str, kind: str) -> list[Received]:
        """Processed requests of one kind: "charge", "refund" or "lookup"."""
        pattern = {"charge": r"/charges", "refund": r"/charges/[^/]+/refunds", "lookup": r"/charges"}[kind]
        return [
            r for r in self.received if r.method == method and re.fullmatch(re.escape(self.prefix) + pattern, r.path)
        ]

    # The contract.

    def handle(self, method: str, target: str, headers: Any, body: bytes | str | None) -> tuple[int, dict]:
        url = urlsplit(target)
        query = parse_qs(url.query)
        lowered = {name.lower(): value for name, value in headers.items()}
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = "<not json>"
        with self.lock:
            status, payload = self._route(method, url.path, query, lowered, data)
            self.received.append(Received(method, url.path, query, lowered, data, status))
        return status, payload

    def _route(self, method: str, path: str, query: dict, headers: dict, data: Any) -> tuple[int, dict]:
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "invalid_token"}
        rest = path[len(self.prefix) :] if path.startswith(self.prefix) else None
        if method == "POST" and rest == "/charges":
            return self._charge(headers, data)
        refund = re.fullmatch(r"/charges/([^/]+)/refunds", rest or "")
        if method == "POST" and refund:
            return self._refund(refund.group(1), headers, data)
        if method == "GET" and rest == "/charges":
            reference = query.get("reference", [""])[0]
            return 200, {"data": [self._public(c) for c in self.charges.values() if c["reference"] == reference]}
        return 404, {"error": "no_such_endpoint"}

    def _charge(self, headers: dict, data: Any) -> tuple[int, dict]:
        key = headers.get("idempotency-key")
        try:
            amount = f"{Decimal(data['amount']):.2f}"
            currency, reference = data["currency"], data["reference"]
        except (TypeError, KeyError, ArithmeticError, ValueError):
            return 400, {"error": "bad_request"}
        if not key:
            return 400, {"error": "idempotency_key_required"}
        if key in self.first_answers:
            request, status, answer = self.first_answers[key]
            if request != data:
                return 422, {"error": "idempotency_key_reused"}
            return (200 if status == 201 else status), dict(answer)
        charge = {
            "id": f"ch_{uuid.uuid4().hex[:20]}",
            "status": "declined" if self.decline else "succeeded",
            "amount": amount,
            "currency": currency,
            "reference": reference,
        }
        if self.decline:
            charge["declineReason"] = "Insufficient funds."
        self.charges[charge["id"]] = {**charge, "refunded": False, "key": key}
        if self.decline == "402":
            status, answer = (
                402,
                {"status": "declined", "declineReason": "Insufficient funds.", "id": charge["id"]},
            )
        else:
            status, answer = 201, charge
        self.first_answers[key] = (data, status, answer)
        return status, dict(answer)

    def _refund(self, charge_id: str, headers: dict, data: Any) -> tuple[int, dict]:
        key = headers.get("idempotency-key")
        if not key:
            return 400, {"error": "idempotency_key_required"}
        if key in self.refunds:
            return 200, dict(self.refunds[key])
        charge = self.charges.get(charge_id)
        if charge is None:
            return 404, {"error": "no_such_charge"}
        if charge["status"] != "succeeded" or charge["refunded"]:
            return 422, {"error": "charge_not_refundable"}
        if not isinstance(data, dict) or data.get("amount") != charge["amount"]:
            return 422, {"error": "amount_must_be_the_charge_amount"}
        refund = {"id": f"re_{uuid.uuid4().hex[:20]}", "status": "succeeded", "charge": charge_id}
        charge["refunded"] = True
        self.refunds[key] = refund
        return 201, dict(refund)

    @staticmethod
    def _public(charge: dict) -> dict:
        return {name: value for name, value in charge.items() if name != "key"}


# The fake over real HTTP --------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _StubServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fake = self.server.fake
        status, payload = fake.handle(self.command, self.path, self.headers, body)
        if fake.late_answers:
            time.sleep(fake.late_answers.pop(0))  # Applied, but the answer comes late.
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, *args: Any) -> None:
        pass


class _StubServer(ThreadingHTTPServer):
    """A fake's server: `fake` is what its handler answers from."""

    daemon_threads = True
    block_on_close = False
    fake: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # A client that timed out and hung up, or a connection the fake dropped, is expected here.


def close_gateway(gateway: HttpPaymentGateway) -> None:
    """Close the gateway's keep-alive connections (see `tests.helpers.close_cached_flight_gateway`)."""
    gateway.transport.close()


def dead_url() -> str:
    """A local address where nothing listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{PREFIX}"


@contextlib.contextmanager
def served(fake: Any, handler: type[BaseHTTPRequestHandler], path: str = "") -> Iterator[str]:
    """`fake` answered by `handler` on a real socket of 127.0.0.1 for the duration of the block.
    Yields its base URL (`path` after the port)."""
    server = _StubServer(("127.0.0.1", 0), handler)
    server.fake = fake
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def serving(fake: FakeGateway) -> contextlib.AbstractContextManager[str]:
    """The fake on a real socket for the duration of the block. Yields its base URL."""
    return served(fake, _Handler, PREFIX)


# The fake as `responses` callbacks, with scripted faults ---------------------------------------


def _respond(fake: FakeGateway, request: requests.PreparedRequest) -> tuple[int, dict, str]:
    status, payload = fake.handle(request.method, request.path_url, request.headers, request.body)
    return status, {"Content-Type": "application/json"}, json.dumps(payload)


def healthy(fake: FakeGateway, request: requests.PreparedRequest) -> tuple[int, dict, str]:
    return _respond(fake, request)


def lost(error: Exception, *, applied: bool) -> Behaviour:
    """The request fails on the wire, after the gateway applied it or before it arrived."""

    def behaviour(fake, request):
        if applied:
            _respond(fake, request)
        raise error

    return behaviour


def answers(status: int, body: Any = "", *, applied: bool, content_type: str = "application/json") -> Behaviour:
    """The gateway (or a proxy in front of it) answers this, having applied the request or not."""

    def behaviour(fake, request):
        if applied:
            _respond(fake, request)
        return status, {"Content-Type": content_type}, body if isinstance(body, str) else json.dumps(body)

    return behaviour


def tampered(**changes: Any) -> Behaviour:
    """Applied; the answer arrives with these fields changed."""

    def behaviour(fake, request):
        status, headers, body = _respond(fake, request)
        return status, headers, json.dumps({**json.loads(body), **changes})

    return behaviour


@dataclass
class Mocked:
    rsps: responses.RequestsMock
    charge: responses.BaseResponse
    refund: responses.BaseResponse
    lookup: responses.BaseResponse


def mocked(
    fake: FakeGateway,
    *,
    charge: tuple[Behaviour, ...] = (),
    refund: tuple[Behaviour, ...] = (),
    lookup: tuple[Behaviour, ...] = (),
    base: str = MOCK_BASE,
) -> Mocked:
    """A RequestsMock for the three endpoints: each plays its scripted behaviours, one per
    call, then answers as the healthy gateway."""

    def scripted(behaviours: tuple[Behaviour, ...]):
        script = list(behaviours)

        def callback(request):
            return (script.pop(0) if script else healthy)(fake, request)

        return callback

    rsps = responses.RequestsMock(assert_all_requests_are_fired=False)
    return Mocked(
        rsps=rsps,
        charge=rsps.add_callback(responses.POST, f"{base}/charges", callback=scripted(charge)),
        refund=rsps.add_callback(
            responses.POST, re.compile(re.escape(base) + r"/charges/[^/?]+/refunds"), callback=scripted(refund)
        ),
        lookup=rsps.add_callback(
            responses.GET, re.compile(re.escape(base) + r"/charges(\?.*)?"), callback=scripted(lookup)
        ),
    )


# A watch on the simulated gateway ------------------------------------------------------------


class GatewayWatch:
    """Every SimulatedPaymentGateway (the default one, and any made in a test) reports its
    calls here and fails on demand: the gateway is outside the code under test."""

    def __init__(self) -> None:
        self.charges: list[str] = []
        self.refunds: list[int] = []
        self.look_ups: list[str] = []
        self.refund_fault: str | None = None  # "down" (nothing refunded) or "answer_lost" (refunded)
        self.look_up_down = False
        self.before_charge = None  # Called before the charge reaches the gateway.
        self.after_look_up = None  # Called between the gateway's answer and its arrival.
