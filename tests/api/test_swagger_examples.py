"""Every example in the schema works when tried, as Swagger UI's "Try it out" sends it, by the
demo users on the demo data (`load_demo_data` on a fresh database, as `make run` leaves it):
2xx, with the status and the fields the schema documents. And every documented error's
example says what the server sends for its code."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings_project.errors import PROBLEM_TYPE_BASE, title_of

# The order a person tries them in: log in, look, book, pay, read, cancel, log out.
CUSTOMER_WALK = [
    "createToken",
    "searchFlights",
    "getFlight",
    "createBooking",
    "listBookings",
    "getBooking",
    "createPayment",
    "listPayments",
    "getPayment",
    "listBookingEvents",
    "cancelBooking",
    "cancelBookingWithPost",
    "revokeToken",
]
# Staff's own operations, tried as the demo staff user.
STAFF_WALK = [
    "createFlight",
    "changeFlightSeats",
    "createWebhookEndpoint",
    "listWebhookEndpoints",
    "getWebhookEndpoint",
    "updateWebhookEndpoint",
    "listWebhookDeliveries",
    "deleteWebhookEndpoint",
]
# Called by another service, never tried by a person: Stripe signs each call with a secret of
# its own (tests/payments/test_stripe_webhook.py tries it).
CALLED_BY_OTHERS = ["receiveStripeWebhook"]


def operations(schema: dict) -> dict[str, tuple[str, str, dict]]:
    return {
        operation["operationId"]: (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


def example_values(container: dict) -> list:
    """The example values of a parameter or a media type, as Swagger UI offers them."""
    if "examples" in container:
        return [example["value"] for example in container["examples"].values()]
    return [container["example"]] if "example" in container else []


def requests_of(path: str, operation: dict) -> list[tuple[str, dict, dict | None]]:
    """(url, headers, body) for each example body (or once, with none)."""
    url, headers = path, {}
    for parameter in operation.get("parameters", []):
        values = example_values(parameter)
        if parameter["in"] == "path":
            assert values, f"{operation['operationId']}: no example for the path's {parameter['name']}"
            url = url.replace("{" + parameter["name"] + "}", str(values[0]))
        elif parameter["in"] == "header" and values:
            headers["HTTP_" + parameter["name"].upper().replace("-", "_")] = values[0]
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return [(url, headers, None)]
    bodies = example_values(content)
    assert bodies, f"{operation['operationId']}: a body with no example (Swagger UI would send its placeholders)"
    return [(url, headers, body) for body in bodies]


def documented_fields(schema: dict, operation: dict, status: int) -> set[str] | None:
    answer = operation["responses"][str(status)].get("content", {}).get("application/json")
    if answer is None:
        return None
    ref = answer["schema"].get("$ref") or answer["schema"].get("allOf", [{}])[0].get("$ref")
    if ref is None:  # A page: {count, next, previous, results}.
        return set(answer["schema"]["properties"])
    return set(schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])


@pytest.fixture
def demo(transactional_db):
    """The demo data on a fresh database: ids from 1, as after `make run`."""
    call_command("load_demo_data", stdout=open("/dev/null", "w"))  # noqa: SIM115
    clients = {}
    for username in ("demo", "staff"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user__username=username).key}")
        clients[username] = client
    return clients


@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_every_example_works_when_tried_as_the_demo_users(demo):
    schema = APIClient().get("/api/schema/?format=json").json()
    found = operations(schema)
    assert sorted(found) == sorted(CUSTOMER_WALK + STAFF_WALK + CALLED_BY_OTHERS), "add a new operation to a walk"

    tried = []
    for walk, user in ((CUSTOMER_WALK, "demo"), (STAFF_WALK, "staff")):
        for operation_id in walk:
            path, method, operation = found[operation_id]
            client = demo[user] if operation_id != "createToken" else APIClient()
            for url, headers, body in requests_of(path, operation):
                response = getattr(client, method)(url, body, format="json", **headers)
                label = f"{operation_id} {method.upper()} {url} {body}"
                assert 200 <= response.status_code < 300, f"{label}: {response.status_code} {response.content[:300]!r}"
                assert str(response.status_code) in operation["responses"], label
                fields = documented_fields(schema, operation, response.status_code)
                if fields is not None:
                    assert set(response.json()) == fields, label
                tried.append(operation_id)
    assert set(tried) == set(found) - set(CALLED_BY_OTHERS)


@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_the_answers_examples_have_the_fields_of_the_real_answers(demo):
    """A response example that drifted from the resource (a field renamed, one missing) would
    mislead as much as a request example that fails."""
    schema = APIClient().get("/api/schema/?format=json").json()
    for operation_id, (_path, _method, operation) in operations(schema).items():
        for status, response in operation["responses"].items():
            if not status.startswith("2"):
                continue
            content = response.get("content", {}).get("application/json", {})
            fields = documented_fields(schema, operation, int(status))
            for value in example_values(content):
                if isinstance(value, dict) and fields and "results" not in fields:
                    assert set(value) == fields, f"{operation_id} {status}"


def test_every_documented_error_says_what_the_server_sends(client):
    schema = client.get("/api/schema/?format=json").json()
    checked = 0
    for operation_id, (_path, _method, operation) in operations(schema).items():
        for status, response in operation["responses"].items():
            for example in example_values(response.get("content", {}).get("application/problem+json", {})):
                code = example["code"]
                assert example["status"] == int(status), operation_id
                assert example["type"] == PROBLEM_TYPE_BASE + code, operation_id
                assert example["title"] == title_of(code), f"{operation_id} {code}"
                checked += 1
    assert checked >= 19


def test_operations_are_named_and_the_service_token_shows_on_the_seat_change_only(client):
    schema = client.get("/api/schema/?format=json").json()
    found = operations(schema)
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]*)+", operation_id) for operation_id in found), sorted(found)
    with_service_token = {
        operation_id
        for operation_id, (_path, _method, operation) in found.items()
        if any("serviceToken" in scheme for scheme in operation.get("security", []))
    }
    assert with_service_token == {"changeFlightSeats"}
