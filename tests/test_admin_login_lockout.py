"""Admin login: a lockout per username and client address (django-axes), that ends by
itself, answered before any password is checked; the API's token endpoint is not part of it."""

from __future__ import annotations

import datetime as dt

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import F
from django.test import Client

pytestmark = pytest.mark.django_db

PASSWORD = "the-right-password"
ATTACKER = "203.0.113.7"
STAFF_DESK = "198.51.100.20"


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True, is_superuser=True)


def log_in(password: str, address: str, username: str = "ops"):
    """A fresh browser at `address` sending the admin login form; the answer."""
    client = Client(REMOTE_ADDR=address)
    return client.post("/admin/login/", {"username": username, "password": password, "next": "/admin/"})


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_wrong_passwords_lock_the_pair_then_even_the_right_one_is_refused(staff):
    answers = [log_in(f"guess-{n}", ATTACKER).status_code for n in range(settings.AXES_FAILURE_LIMIT)]
    right = log_in(PASSWORD, ATTACKER)

    assert answers == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]  # The form again, then locked.
    assert right.status_code == 429
    assert not logged_in(right)


def test_a_locked_pair_is_refused_before_the_password_is_checked(staff, monkeypatch):
    for n in range(settings.AXES_FAILURE_LIMIT):
        log_in(f"guess-{n}", ATTACKER)
    checked = []
    original = get_user_model().check_password
    monkeypatch.setattr(
        get_user_model(), "check_password", lambda self, raw: checked.append(raw) or original(self, raw)
    )

    assert log_in("another-guess", ATTACKER).status_code == 429
    assert checked == []  # No password hashing spent on a locked pair.


def test_the_staff_member_still_logs_in_from_their_own_address(staff):
    for n in range(settings.AXES_FAILURE_LIMIT + 3):
        log_in(f"guess-{n}", ATTACKER)

    assert logged_in(log_in(PASSWORD, STAFF_DESK))


def test_a_lockout_ends_by_itself_after_the_cool_off(staff):
    for n in range(settings.AXES_FAILURE_LIMIT):
        log_in(f"guess-{n}", ATTACKER)
    assert log_in(PASSWORD, ATTACKER).status_code == 429
    # The cool-off passes (the lockout is counted from the attempts' own times).
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME - dt.timedelta(seconds=1))

    assert logged_in(log_in(PASSWORD, ATTACKER))


def test_a_success_before_the_limit_starts_the_count_again(staff):
    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(f"guess-{n}", ATTACKER)
    assert logged_in(log_in(PASSWORD, ATTACKER))

    answers = [log_in(f"again-{n}", ATTACKER).status_code for n in range(settings.AXES_FAILURE_LIMIT - 1)]
    assert answers == [200] * (settings.AXES_FAILURE_LIMIT - 1)


def test_behind_proxies_the_lockout_reads_the_clients_address(staff, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "127.0.0.1"  # Every request arrives from nginx.

    def via_proxy(password: str, client: str):
        browser = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=client)
        return browser.post("/admin/login/", {"username": "ops", "password": password, "next": "/admin/"})

    for n in range(settings.AXES_FAILURE_LIMIT):
        via_proxy(f"guess-{n}", ATTACKER)

    assert via_proxy(PASSWORD, ATTACKER).status_code == 429
    assert logged_in(via_proxy(PASSWORD, STAFF_DESK))


def test_the_api_token_endpoint_is_not_locked_by_it(staff, anon_client):
    for n in range(settings.AXES_FAILURE_LIMIT + 1):
        anon_client.post("/api/v1/auth/token", {"username": "ops", "password": f"guess-{n}"}, format="json")

    response = anon_client.post("/api/v1/auth/token", {"username": "ops", "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
