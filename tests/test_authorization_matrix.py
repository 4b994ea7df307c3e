"""Who may call what (docs/api.md#auth): every endpoint by every kind of caller, with the exact answer.

The endpoints are not listed by hand: they are GENERATED from the URL conf (every route
under `api/v1/`, with the HTTP methods its DRF view serves). `EXPECTED` holds one row per
(route, method) and `test_every_endpoint_has_a_row` demands that both sets are equal, so a
new endpoint, or a new method on an existing one, fails the suite until someone writes
down who may call it, and a row for an endpoint that went away fails too.

Callers (`ROLES`):
- anonymous: no credentials;
- owner: the ordinary user who owns the booking / payment in the URL or body;
- other: another ordinary user (someone else's booking or payment is 404, never 403);
- staff: sees and acts on everything;
- service: `Authorization: Bearer <FLIGHT_SERVICE_TOKEN>`, the Flights service token: it
  may read flights and change seats, and is nobody (401) on bookings, payments and webhooks.

For endpoints with no owned resource (flights, the token) owner and other are simply two
ordinary users. For `POST bookings` the body names the owner (`userId`), so there the
other user is acting for someone else: 403 `user_mismatch`.

Every request is valid but for who sends it (a real id, a complete body, a fresh
Idempotency-Key), so the status says what authorization decided, not validation. Beyond
the status: an error is problem+json with the table's code; a refused or read-only call
changes nothing; a successful one answers the resource it was asked about and does what it
says. Every 401 must invite the client to authenticate (`WWW-Authenticate`).
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings.models import Booking, BookingEvent
from flights.models import Flight, SeatHold
from notifications.models import WebhookEndpoint
from notifications.services import endpoint_create
from payments.models import Payment, SimulatedCharge
from tests.factories import make_flight
from tests.helpers import SERVICE_TOKEN, assert_problem
from tests.support.api import post_booking, post_payment

pytestmark = pytest.mark.django_db

API_PREFIX = "api/v1/"
ROLES = ("anonymous", "owner", "other", "staff", "service")
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "ops": "ops-password"}

# Expected answers: a bare status for a success, (status, code) for a problem.
Answer = int | tuple[int, str]
UNAUTHENTICATED: Answer = (401, "not_authenticated")
FORBIDDEN: Answer = (403, "permission_denied")
NOT_YOURS: Answer = (404, "not_found")
USER_MISMATCH: Answer = (403, "user_mismatch")
UNSIGNED: Answer = (400, "webhook_signature_invalid")


def row(*, anonymous: Answer, owner: Answer, other: Answer, staff: Answer, service: Answer) -> dict[str, Answer]:
    return {"anonymous": anonymous, "owner": owner, "other": other, "staff": staff, "service": service}


# Customers' resources: the service token is nobody here, another user's id is unknown.
def _customers(ok: int) -> dict[str, Answer]:
    return row(anonymous=UNAUTHENTICATED, owner=ok, other=NOT_YOURS, staff=ok, service=UNAUTHENTICATED)


STAFF_ONLY = "api/v1/webhooks"


def _staff_only(ok: int) -> dict[str, Answer]:
    return row(anonymous=UNAUTHENTICATED, owner=FORBIDDEN, other=FORBIDDEN, staff=ok, service=UNAUTHENTICATED)


EXPECTED: dict[tuple[str, str], dict[str, Answer]] = {
    ("api/v1/auth/token", "POST"): row(anonymous=200, owner=200, other=200, staff=200, service=200),
    # Revoking: any user their own token; the service token is nobody here.
    ("api/v1/auth/token", "DELETE"): row(
        anonymous=UNAUTHENTICATED, owner=204, other=204, staff=204, service=UNAUTHENTICATED
    ),
    # Flights: any authenticated caller reads; staff create; staff or the service change seats.
    ("api/v1/flights", "GET"): row(anonymous=UNAUTHENTICATED, owner=200, other=200, staff=200, service=200),
    ("api/v1/flights", "POST"): row(
        anonymous=UNAUTHENTICATED, owner=FORBIDDEN, other=FORBIDDEN, staff=201, service=FORBIDDEN
    ),
    ("api/v1/flights/<pk>", "GET"): row(anonymous=UNAUTHENTICATED, owner=200, other=200, staff=200, service=200),
    ("api/v1/flights/<pk>/seats", "PATCH"): row(
        anonymous=UNAUTHENTICATED, owner=FORBIDDEN, other=FORBIDDEN, staff=200, service=200
    ),
    # Bookings: people only; another user's booking is 404 (and absent from their list).
    ("api/v1/bookings", "GET"): row(
        anonymous=UNAUTHENTICATED, owner=200, other=200, staff=200, service=UNAUTHENTICATED
    ),
    ("api/v1/bookings", "POST"): row(
        anonymous=UNAUTHENTICATED, owner=201, other=USER_MISMATCH, staff=201, service=UNAUTHENTICATED
    ),
    ("api/v1/bookings/<pk>", "GET"): _customers(200),
    ("api/v1/bookings/<pk>/cancel", "PATCH"): _customers(200),
    ("api/v1/bookings/<pk>/cancel", "POST"): _customers(200),
    ("api/v1/bookings/<pk>/events", "GET"): _customers(200),
    # Payments: paying someone else's booking is as unknown as reading their payment.
    ("api/v1/payments", "GET"): row(
        anonymous=UNAUTHENTICATED, owner=200, other=200, staff=200, service=UNAUTHENTICATED
    ),
    ("api/v1/payments", "POST"): _customers(201),
    ("api/v1/payments/<pk>", "GET"): _customers(200),
    # Stripe's webhook takes no token: its signature decides (tests/payments/test_stripe_webhook.py),
    # and a call without one, as here, is refused whoever sends it.
    ("api/v1/payments/stripe/webhook", "POST"): row(
        anonymous=UNSIGNED, owner=UNSIGNED, other=UNSIGNED, staff=UNSIGNED, service=UNSIGNED
    ),
    # Webhook endpoints: staff only; the service token is nobody here.
    ("api/v1/webhooks", "GET"): _staff_only(200),
    ("api/v1/webhooks", "POST"): _staff_only(201),
    ("api/v1/webhooks/<pk>", "GET"): _staff_only(200),
    ("api/v1/webhooks/<pk>", "PATCH"): _staff_only(200),
    ("api/v1/webhooks/<pk>", "DELETE"): _staff_only(204),
    ("api/v1/webhooks/<pk>/deliveries", "GET"): _staff_only(200),
}

# Everything else the URL conf serves but admin/: GET as any caller, the same answer for all.
# route -> (path to request, answer)
OPERATIONS: dict[str, tuple[str, Answer]] = {
    "healthz": ("/healthz", 200),
    "readyz": ("/readyz", 200),
    # Off without METRICS_TOKEN (as here); with it, only for its bearer (tests/test_metrics.py).
    "metrics": ("/metrics", 404),
    "api/schema/": ("/api/schema/", 200),
    "api/docs/": ("/api/docs/", 200),
    "api-docs": ("/api-docs", 301),
    "api-docs/": ("/api-docs/", 301),
    "api/": ("/api/v1/no-such-endpoint", NOT_YOURS),  # the problem+json catch-all
}

# (route, method, role) -> reason, for answers that differ from docs/api.md. None known today.
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}
# (route, method, role) -> reason, for 401s without WWW-Authenticate. None known today.
KNOWN_401_WITHOUT_CHALLENGE: dict[tuple[str, str, str], str] = {}


# The URL conf, walked --------------------------------------------------------------------------------------

SKIPPED_METHODS = {"head", "options"}  # HEAD follows GET; OPTIONS is DRF's metadata.


def normalise(route: str) -> str:
    """`api/v1/^bookings/(?P<pk>[0-9]{1,18})/cancel$` and `bookings/<int:pk>/cancel` alike
    become `api/v1/bookings/<pk>/cancel`."""
    readable = re.sub(r"\(\?P<(\w+)>[^()]*\)", r"<\1>", route)
    readable = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", readable)
    readable = readable.replace("^", "").replace("$", "")
    assert not re.search(r"[()\[\]{}\\?*+|]", readable), f"cannot read the route {route!r}: teach normalise()"
    return readable


def walk(resolver: URLResolver, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from walk(entry, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def served_methods(pattern: URLPattern) -> list[str]:
    """The HTTP methods the view behind the pattern answers (HEAD and OPTIONS left out)."""
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:  # A viewset route: method -> action.
        return sorted(method.upper() for method in actions if method not in SKIPPED_METHODS)
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view_class is not None:  # An APIView (or a Django class-based view).
        return sorted(
            method.upper()
            for method in view_class.http_method_names
            if method not in SKIPPED_METHODS and hasattr(view_class, method)
        )
    return ["ANY"]  # A function view: its methods cannot be read, so it needs a row of its own.


def api_endpoints() -> set[tuple[str, str]]:
    return {
        (normalise(route), method)
        for route, pattern in walk(get_resolver())
        if normalise(route).startswith(API_PREFIX)
        for method in served_methods(pattern)
    }


def other_routes() -> set[str]:
    routes = {normalise(route) for route, _ in walk(get_resolver())}
    return {route for route in routes if not route.startswith((API_PREFIX, "admin/"))}


def test_every_endpoint_has_a_row():
    served = api_endpoints()
    missing = sorted(served - EXPECTED.keys())
    removed = sorted(EXPECTED.keys() - served)
    assert not missing, f"endpoints with no row in EXPECTED (write down who may call them): {missing}"
    assert not removed, f"rows in EXPECTED for endpoints the URL conf no longer serves: {removed}"


def test_every_other_route_has_a_row():
    served = other_routes()
    assert served == OPERATIONS.keys(), {
        "no row in OPERATIONS": sorted(served - OPERATIONS.keys()),
        "row for a route that is gone": sorted(OPERATIONS.keys() - served),
    }


def test_the_walk_sees_what_the_router_registers():
    """The generator itself: it must read viewset actions, @action routes and APIViews, or
    the completeness check above would pass on an empty set."""
    served = api_endpoints()
    assert {
        ("api/v1/auth/token", "POST"),
        ("api/v1/flights", "POST"),
        ("api/v1/bookings/<pk>/cancel", "PATCH"),
        ("api/v1/bookings/<pk>/cancel", "POST"),
        ("api/v1/bookings/<pk>/events", "GET"),
    } <= served
    assert ("api/v1/payments", "GET") in served
    assert normalise(r"api/v1/^bookings/(?P<pk>[0-9]{1,18})/cancel$") == "api/v1/bookings/<pk>/cancel"
    assert normalise("shop/<int:order_id>/items/<slug:item>") == "shop/<order_id>/items/<item>"


def test_every_row_names_every_role():
    for key, answers in EXPECTED.items():
        assert tuple(answers) == ROLES, key


# The callers and their resources ---------------------------------------------------------------------------

_flight_numbers = itertools.count(1)


@dataclass
class World:
    """Real users, clients and resources, made only when a case asks for them."""

    owner: object
    other: object
    staff: object
    clients: dict[str, APIClient] = field(default_factory=dict)

    def user_of(self, role: str):
        return {"owner": self.owner, "other": self.other, "staff": self.staff}.get(role)

    def client(self, role: str) -> APIClient:
        if role not in self.clients:
            client = APIClient()
            if role == "service":
                client.credentials(HTTP_AUTHORIZATION=f"Bearer {SERVICE_TOKEN}")
            elif role != "anonymous":
                token, _ = Token.objects.get_or_create(user=self.user_of(role))
                client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
            self.clients[role] = client
        return self.clients[role]

    @cached_property
    def flight(self) -> Flight:
        return make_flight(capacity=20, price="5500.00")

    @cached_property
    def booking(self) -> Booking:
        """The owner's booking, INITIATED with its seats held, made through the API."""
        response = post_booking(self.client("owner"), self.flight, 2)
        assert response.status_code == 201, response.content
        return Booking.objects.get(pk=response.json()["id"])

    @cached_property
    def payment(self) -> Payment:
        """The owner's payment of their booking (which is then BOOKED), made through the API."""
        response = post_payment(self.client("owner"), self.booking, "matrix-setup")
        assert response.status_code == 201, response.content
        return Payment.objects.get(pk=response.json()["id"])

    @cached_property
    def webhook(self) -> WebhookEndpoint:
        """An endpoint staff registered."""
        return endpoint_create(url="https://hooks.example.com/matrix", events=None, created_by=self.staff)

    def resource_id(self, route: str) -> int:
        collection = route.removeprefix(API_PREFIX).split("/")[0]
        resources = {"flights": "flight", "bookings": "booking", "payments": "payment", "webhooks": "webhook"}
        assert collection in resources, f"which resource's id goes into {route}? Teach World.resource_id()"
        return getattr(self, resources[collection]).pk


@pytest.fixture
def world(user, other_user, staff_user, settings) -> World:
    settings.FLIGHT_SERVICE_TOKEN = SERVICE_TOKEN  # As deployed: the service token is switched on.
    return World(owner=user, other=other_user, staff=staff_user)


# Valid requests, one per endpoint --------------------------------------------------------------------------


@dataclass
class Call:
    path: str
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _token_body(world: World, role: str) -> dict:
    user = world.user_of(role) or world.owner  # Anonymous callers and the service log in as the owner.
    return {"username": user.username, "password": PASSWORDS[user.username]}


def _flight_body(world: World, role: str) -> dict:
    return {
        "flightNumber": f"AZ{next(_flight_numbers)}",
        "departureAirport": "BOM",
        "arrivalAirport": "DEL",
        "departureTime": "2031-01-10T10:00:00Z",
        "arrivalTime": "2031-01-10T12:10:00Z",
        "price": "4200.00",
        "capacity": 30,
    }


BODIES: dict[tuple[str, str], Callable[[World, str], dict]] = {
    ("api/v1/auth/token", "POST"): _token_body,
    ("api/v1/flights", "POST"): _flight_body,
    ("api/v1/flights/<pk>/seats", "PATCH"): lambda world, role: {"seats": 1, "dec": True},
    ("api/v1/bookings", "POST"): lambda world, role: {
        "flightId": world.flight.pk,
        "numberOfSeats": 2,
        "userId": world.owner.pk,
    },
    ("api/v1/payments", "POST"): lambda world, role: {
        "bookingId": world.booking.pk,
        "amount": str(world.booking.total_cost),
    },
    ("api/v1/webhooks", "POST"): lambda world, role: {"url": "https://hooks.example.com/new"},
    ("api/v1/webhooks/<pk>", "PATCH"): lambda world, role: {"description": "renamed"},
}
HEADERS: dict[tuple[str, str], Callable[[], dict[str, str]]] = {
    ("api/v1/payments", "POST"): lambda: {"HTTP_IDEMPOTENCY_KEY": f"matrix-{uuid.uuid4()}"},
}
# Lists must show the resource to those who may see it, and only to them: it exists before the call.
LISTED = {
    ("api/v1/flights", "GET"): "flight",
    ("api/v1/bookings", "GET"): "booking",
    ("api/v1/payments", "GET"): "payment",
    ("api/v1/webhooks", "GET"): "webhook",
}


def build_call(world: World, route: str, method: str, role: str) -> Call:
    path = "/" + route
    if "<pk>" in route:
        path = path.replace("<pk>", str(world.resource_id(route)))
    assert "<" not in path, f"no id for {route}"
    key = (route, method)
    if key in LISTED:
        getattr(world, LISTED[key])
    body = BODIES[key](world, role) if key in BODIES else None
    headers = HEADERS[key]() if key in HEADERS else {}
    return Call(path=path, body=body, headers=headers)


def send(world: World, role: str, method: str, call: Call):
    return world.client(role).generic(
        method,
        call.path,
        data="" if call.body is None else json.dumps(call.body),
        content_type="application/json",
        **call.headers,
    )


def state() -> dict:
    """Everything a call could change, but for tokens and idempotency keys."""
    return {
        "flights": sorted(Flight.objects.values_list("id", "available_seats", "capacity")),
        "holds": sorted(SeatHold.objects.values_list("id", "state", "seats")),
        "bookings": sorted(Booking.objects.values_list("id", "user_id", "status", "seats_state")),
        "events": BookingEvent.objects.count(),
        "payments": sorted(Payment.objects.values_list("id", "status")),
        "charges": sorted(SimulatedCharge.objects.values_list("reference", "status")),
        "webhooks": sorted(WebhookEndpoint.objects.values_list("id", "url", "description")),
    }


# What a success must show, beyond its status ----------------------------------------------------------------


def _results(response) -> list[dict]:
    return response.json()["results"]


def _check_token(world, role, response):
    user = world.user_of(role) or world.owner
    assert response.json() == {"token": Token.objects.get(user=user).key}


def _check_token_revoked(world, role, response):
    assert not Token.objects.filter(user=world.user_of(role)).exists()
    assert world.client(role).get("/api/v1/flights").status_code == 401


def _check_flight_list(world, role, response):
    assert world.flight.pk in [flight["id"] for flight in _results(response)]


def _check_flight_create(world, role, response):
    created = Flight.objects.get(pk=response.json()["id"])
    assert (created.capacity, created.available_seats) == (30, 30)


def _check_flight(world, role, response):
    assert response.json()["id"] == world.flight.pk


def _check_seats(world, role, response):
    world.flight.refresh_from_db()
    assert response.json()["totalSeats"] == world.flight.available_seats == 19


def _check_booking_list(world, role, response):
    ids = [booking["id"] for booking in _results(response)]
    if role == "other":
        assert ids == [], "another user's booking leaked into the list"
    else:
        assert ids == [world.booking.pk]


def _check_booking_create(world, role, response):
    body = response.json()
    assert (body["userId"], body["status"]) == (world.owner.pk, "INITIATED")
    assert Booking.objects.get(pk=body["id"]).user_id == world.owner.pk


def _check_booking(world, role, response):
    assert response.json()["id"] == world.booking.pk


def _check_cancel(world, role, response):
    body = response.json()
    reason = "staff" if role == "staff" else "user"
    assert (body["id"], body["status"], body["cancelReason"]) == (world.booking.pk, "CANCELLED", reason)
    world.booking.refresh_from_db()
    assert world.booking.status == Booking.Status.CANCELLED


def _check_events(world, role, response):
    events = _results(response)
    assert [(e["bookingId"], e["fromStatus"], e["toStatus"]) for e in events] == [(world.booking.pk, None, "INITIATED")]


def _check_payment_create(world, role, response):
    body = response.json()
    assert (body["bookingId"], body["userId"], body["status"]) == (world.booking.pk, world.owner.pk, "SUCCEEDED")
    world.booking.refresh_from_db()
    assert world.booking.status == Booking.Status.BOOKED


def _check_payment(world, role, response):
    assert response.json()["id"] == world.payment.pk


def _check_payment_list(world, role, response):
    ids = [payment["id"] for payment in _results(response)]
    if role == "other":
        assert ids == [], "another user's payment leaked into the list"
    else:
        assert ids == [world.payment.pk]


def _check_webhook_list(world, role, response):
    assert [endpoint["id"] for endpoint in _results(response)] == [world.webhook.pk]


def _check_webhook_create(world, role, response):
    body = response.json()
    assert body["secret"].startswith("whsec_")
    assert WebhookEndpoint.objects.get(pk=body["id"]).url == "https://hooks.example.com/new"


def _check_webhook(world, role, response):
    assert response.json()["id"] == world.webhook.pk
    assert "secret" not in response.json()


def _check_webhook_update(world, role, response):
    world.webhook.refresh_from_db()
    assert response.json()["description"] == world.webhook.description == "renamed"


def _check_webhook_delete(world, role, response):
    assert not WebhookEndpoint.objects.filter(pk=world.webhook.pk).exists()


def _check_deliveries(world, role, response):
    assert _results(response) == []


CHECKS: dict[tuple[str, str], Callable] = {
    ("api/v1/auth/token", "POST"): _check_token,
    ("api/v1/auth/token", "DELETE"): _check_token_revoked,
    ("api/v1/flights", "GET"): _check_flight_list,
    ("api/v1/flights", "POST"): _check_flight_create,
    ("api/v1/flights/<pk>", "GET"): _check_flight,
    ("api/v1/flights/<pk>/seats", "PATCH"): _check_seats,
    ("api/v1/bookings", "GET"): _check_booking_list,
    ("api/v1/bookings", "POST"): _check_booking_create,
    ("api/v1/bookings/<pk>", "GET"): _check_booking,
    ("api/v1/bookings/<pk>/cancel", "PATCH"): _check_cancel,
    ("api/v1/bookings/<pk>/cancel", "POST"): _check_cancel,
    ("api/v1/bookings/<pk>/events", "GET"): _check_events,
    ("api/v1/payments", "GET"): _check_payment_list,
    ("api/v1/payments", "POST"): _check_payment_create,
    ("api/v1/payments/<pk>", "GET"): _check_payment,
    ("api/v1/webhooks", "GET"): _check_webhook_list,
    ("api/v1/webhooks", "POST"): _check_webhook_create,
    ("api/v1/webhooks/<pk>", "GET"): _check_webhook,
    ("api/v1/webhooks/<pk>", "PATCH"): _check_webhook_update,
    ("api/v1/webhooks/<pk>", "DELETE"): _check_webhook_delete,
    ("api/v1/webhooks/<pk>/deliveries", "GET"): _check_deliveries,
}


def test_every_row_has_a_success_check():
    succeeds = {key for key, answers in EXPECTED.items() if any(isinstance(answer, int) for answer in answers.values())}
    assert CHECKS.keys() == succeeds


# The matrix ------------------------------------------------------------------------------------------------


def _case_id(route: str, method: str, role: str) -> str:
    return f"{method} {route.removeprefix(API_PREFIX)} as {role}"


def _cases(known: dict[tuple[str, str, str], str], only: Callable[[Answer], bool] = lambda answer: True):
    for (route, method), answers in EXPECTED.items():
        for role, answer in answers.items():
            if not only(answer):
                continue
            reason = known.get((route, method, role))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(route, method, role, answer, id=_case_id(route, method, role), marks=marks)


@pytest.mark.parametrize(("route", "method", "role", "expected"), list(_cases(KNOWN_BUGS)))
def test_authorization_matrix(world, route, method, role, expected):
    call = build_call(world, route, method, role)
    before = state()

    response = send(world, role, method, call)

    if isinstance(expected, tuple):
        assert_problem(response, *expected)
        assert state() == before, "a refused call changed something"
        return
    assert response.status_code == expected, (response.status_code, response.content[:500])
    if method == "GET":
        assert state() == before, "a read changed something"
    CHECKS[(route, method)](world, role, response)


def _is_401(answer: Answer) -> bool:
    return isinstance(answer, tuple) and answer[0] == 401


@pytest.mark.parametrize(("route", "method", "role", "expected"), list(_cases(KNOWN_401_WITHOUT_CHALLENGE, _is_401)))
def test_every_401_asks_for_a_token(world, route, method, role, expected):
    """RFC 9110 §15.5.2: a 401 carries WWW-Authenticate; ours names the Token scheme."""
    response = send(world, role, method, build_call(world, route, method, role))

    assert response.status_code == 401
    assert response.get("WWW-Authenticate") == "Token"


def _route_answer(route: str, role: str) -> int:
    """One status for the role on the whole route: 401 if every method of it says 401, 403 on
    a staff-only view (its permission refuses OPTIONS too), else 200."""
    statuses = {
        answers[role][0] if isinstance(answers[role], tuple) else answers[role]
        for (each, _), answers in EXPECTED.items()
        if each == route
    }
    if statuses == {401}:
        return 401
    return 403 if statuses == {403} and route.startswith(STAFF_ONLY) else 200


@pytest.mark.parametrize("route", sorted({route for route, _ in EXPECTED}))
def test_options_and_head_follow_the_matrix_and_leak_nothing(world, route):
    """OPTIONS (DRF's metadata) authenticates like the route's methods, and for an id the
    caller may not see it answers exactly as for an id that does not exist. HEAD answers as
    GET, or 405 where there is no GET."""
    methods = {method for each, method in EXPECTED if each == route}
    for role in ROLES:
        call = build_call(world, route, "OPTIONS", role)
        response = send(world, role, "OPTIONS", call)
        assert response.status_code == _route_answer(route, role), (role, response.status_code)
        if "<pk>" in route:
            missing = send(world, role, "OPTIONS", Call(path="/" + route.replace("<pk>", "999999")))
            assert (missing.status_code, missing.json()) == (response.status_code, response.json()), role
        head = send(world, role, "HEAD", call)
        if "GET" in methods:
            expected = EXPECTED[(route, "GET")][role]
            assert head.status_code == (expected[0] if isinstance(expected, tuple) else expected), role
        else:
            assert head.status_code == (401 if _route_answer(route, role) == 401 else 405), role


def test_filters_cannot_widen_a_users_list(world):
    """`?userId=` of someone else shows a user nothing more; staff get that user's bookings."""
    booking = world.booking
    query = f"/api/v1/bookings?userId={world.owner.pk}&flightId={world.flight.pk}"
    assert _results(world.client("other").get(query)) == []
    assert [b["id"] for b in _results(world.client("staff").get(query))] == [booking.pk]
    assert [b["id"] for b in _results(world.client("owner").get(query))] == [booking.pk]


def test_a_wrong_service_token_is_401_even_on_flights(world):
    """The service role above proves the right token works; a wrong one is no one."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-the-service-token")
    response = client.patch(f"/api/v1/flights/{world.flight.pk}/seats", {"seats": 1}, format="json")
    assert_problem(response, 401, "not_authenticated")
    world.flight.refresh_from_db()
    assert world.flight.available_seats == 20


@pytest.mark.parametrize("route", list(OPERATIONS))
def test_operations_routes_answer_everyone_alike(world, route):
    path, expected = OPERATIONS[route]
    for role in ROLES:
        response = world.client(role).get(path)
        if isinstance(expected, tuple):
            assert_problem(response, *expected)
        else:
            assert response.status_code == expected, (role, response.status_code)
        if expected == 301:
            assert response["Location"] == "/api/docs/", role


def test_someone_elses_booking_answers_like_a_missing_one(world):
    """The 404 for another user's booking is the one for an id that does not exist."""
    booking = world.booking
    missing = Booking.objects.order_by("-pk").first().pk + 1000
    other = world.client("other")
    theirs = assert_problem(other.get(f"/api/v1/bookings/{booking.pk}"), 404, "not_found")
    nobodys = assert_problem(other.get(f"/api/v1/bookings/{missing}"), 404, "not_found")
    assert theirs["detail"].replace(str(booking.pk), "N") == nobodys["detail"].replace(str(missing), "N")
