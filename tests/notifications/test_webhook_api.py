"""The webhook endpoints API (docs/api.md#webhooks): staff only, the secret shown once, URLs
checked, deliveries listed newest first."""

import base64

import pytest

from notifications.models import Delivery, WebhookEndpoint
from tests.factories import initiated
from tests.helpers import assert_problem
from tests.notifications.conftest import register

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks"
ALL_TYPES = ["booking.created", "booking.confirmed", "booking.cancelled", "payment.refunded"]


def test_registering_answers_the_endpoint_with_its_secret_once(staff_client, staff_user):
    response = staff_client.post(URL, {"url": "https://hooks.example.com/a", "description": "CRM"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    endpoint = WebhookEndpoint.objects.get()
    assert body == {
        "id": endpoint.pk,
        "url": "https://hooks.example.com/a",
        "events": ALL_TYPES,
        "description": "CRM",
        "isActive": True,
        "createdAt": body["createdAt"],
        "secret": endpoint.secret,
    }
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) >= 24
    assert endpoint.created_by == staff_user
    shown = staff_client.get(f"{URL}/{endpoint.pk}").json()
    assert "secret" not in shown
    assert "secret" not in staff_client.get(URL).json()["results"][0]


def test_events_named_are_kept_once_each_and_unknown_or_none_are_refused(staff_client):
    response = staff_client.post(
        URL,
        {"url": "https://hooks.example.com/b", "events": ["payment.refunded", "booking.created", "booking.created"]},
        format="json",
    )
    assert response.json()["events"] == ["booking.created", "payment.refunded"]

    unknown = staff_client.post(URL, {"url": "https://hooks.example.com/c", "events": ["booking.paid"]}, format="json")
    assert assert_problem(unknown, 400, "validation_error")["errors"][0]["field"] == "events.0"
    assert_problem(
        staff_client.post(URL, {"url": "https://x.example", "events": []}, format="json"), 400, "validation_error"
    )
    assert WebhookEndpoint.objects.count() == 1


def test_patch_changes_what_it_names_and_delete_removes_it(staff_client):
    endpoint = register("https://hooks.example.com/d")

    response = staff_client.patch(
        f"{URL}/{endpoint.pk}", {"isActive": False, "events": ["booking.cancelled"]}, format="json"
    )

    assert response.status_code == 200, response.content
    assert (response.json()["isActive"], response.json()["events"]) == (False, ["booking.cancelled"])
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.events, endpoint.url) == (
        False,
        ["booking.cancelled"],
        "https://hooks.example.com/d",
    )
    assert staff_client.delete(f"{URL}/{endpoint.pk}").status_code == 204
    assert not WebhookEndpoint.objects.exists()
    assert_problem(staff_client.get(f"{URL}/{endpoint.pk}"), 404, "not_found")


def test_deliveries_are_listed_newest_first_with_their_state(staff_client, user, flight):
    endpoint = register("https://hooks.example.com/e")
    bookings = [initiated(user, flight, 1) for _ in range(3)]
    from bookings.models import OutboxEvent
    from notifications.services import event_dispatch

    for event in OutboxEvent.objects.order_by("id"):
        event_dispatch(event_id=event.pk)
    Delivery.objects.filter(event__booking=bookings[0]).update(
        state=Delivery.State.FAILED, attempts=8, last_status_code=500, last_error="HTTP 500", next_attempt_at=None
    )

    response = staff_client.get(f"{URL}/{endpoint.pk}/deliveries?pageSize=2")

    assert response.status_code == 200, response.content
    page = response.json()
    assert page["count"] == 3
    events = list(OutboxEvent.objects.order_by("-id"))
    assert [row["eventId"] for row in page["results"]] == [events[0].public_id, events[1].public_id]
    first = page["results"][0]
    assert set(first) == {
        "id",
        "eventId",
        "eventType",
        "state",
        "attempts",
        "lastStatusCode",
        "lastError",
        "nextAttemptAt",
        "deliveredAt",
        "createdAt",
    }
    assert (first["eventType"], first["state"], first["attempts"], first["lastError"]) == (
        "booking.created",
        "pending",
        0,
        None,
    )
    last = staff_client.get(f"{URL}/{endpoint.pk}/deliveries?page=2&pageSize=2").json()["results"][0]
    assert (last["state"], last["attempts"], last["lastStatusCode"], last["lastError"], last["nextAttemptAt"]) == (
        "failed",
        8,
        500,
        "HTTP 500",
        None,
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", URL),
        ("post", URL),
        ("get", f"{URL}/1"),
        ("patch", f"{URL}/1"),
        ("delete", f"{URL}/1"),
        ("get", f"{URL}/1/deliveries"),
    ],
)
def test_a_customer_is_refused_every_webhook_operation(user_client, method, path):
    register("https://hooks.example.com/f")
    response = getattr(user_client, method)(path, {"url": "https://hooks.example.com/g"}, format="json")

    assert_problem(response, 403, "permission_denied")
    assert WebhookEndpoint.objects.count() == 1


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/a", "must use https"),
        ("https://127.0.0.1/a", "127.0.0.1, which is not a public address"),
        ("https://localhost:8443/a", "not a public address"),
        ("https://10.1.2.3/a", "not a public address"),
        ("https://192.168.0.10/a", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://[::1]/a", "not a public address"),
        ("https://[::ffff:127.0.0.1]/a", "127.0.0.1, which is not a public address"),
        ("https://100.64.0.1/a", "not a public address"),
        ("https://0.0.0.0/a", "not a public address"),
        ("https://[64:ff9b::a00:1]/a", "10.0.0.1, which is not a public address"),  # NAT64
        ("https://[2002:a00:1::]/a", "10.0.0.1, which is not a public address"),  # 6to4
        ("https://user:pw@93.184.215.14/a", "user name or password"),
        ("ftp://93.184.215.14/a", "Enter an http(s) URL"),
    ],
)
def test_unsafe_urls_are_refused_at_registration(staff_client, settings, url, why):
    settings.WEBHOOK_ALLOW_INSECURE = False

    response = staff_client.post(URL, {"url": url}, format="json")

    problem = assert_problem(response, 400, "validation_error")
    assert problem["errors"][0]["field"] == "url"
    assert why in problem["errors"][0]["message"], problem
    assert not WebhookEndpoint.objects.exists()


def test_a_public_https_url_is_accepted_when_insecure_urls_are_not(staff_client, settings):
    settings.WEBHOOK_ALLOW_INSECURE = False

    response = staff_client.post(URL, {"url": "https://93.184.215.14/hooks"}, format="json")

    assert response.status_code == 201, response.content


def test_patch_checks_a_new_url_too(staff_client, settings):
    endpoint = register("https://93.184.215.14/hooks")
    settings.WEBHOOK_ALLOW_INSECURE = False

    response = staff_client.patch(f"{URL}/{endpoint.pk}", {"url": "https://10.0.0.1/x"}, format="json")

    assert_problem(response, 400, "validation_error")
    endpoint.refresh_from_db()
    assert endpoint.url == "https://93.184.215.14/hooks"


def test_the_schema_documents_every_answer_of_each_webhook_operation(staff_client):
    paths = staff_client.get("/api/schema/?format=json").json()["paths"]

    documented = {
        (path, method): sorted(operation["responses"])
        for path, item in paths.items()
        if path.startswith(URL)
        for method, operation in item.items()
    }

    assert documented == {
        (URL, "get"): ["200", "400", "401", "403", "404"],
        (URL, "post"): ["201", "400", "401", "403", "415"],
        (f"{URL}/{{id}}", "get"): ["200", "401", "403", "404"],
        (f"{URL}/{{id}}", "patch"): ["200", "400", "401", "403", "404", "415"],
        (f"{URL}/{{id}}", "delete"): ["204", "401", "403", "404"],
        (f"{URL}/{{id}}/deliveries", "get"): ["200", "400", "401", "403", "404"],
    }
