import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings_project import db
from tests.factories import make_flight

pytest_plugins = ["tests.fixtures.cleanup", "tests.fixtures.flights", "tests.fixtures.payments"]


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.postgres` tests need PostgreSQL's row locks: on SQLite they are skipped.
    `no_database` tests touch no database, so their outcome is the same on both: the SQLite
    suite runs them (CI runs both suites), the PostgreSQL one skips them."""
    from django.conf import settings

    on_postgresql = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    needs_postgresql = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)")
    ran_on_sqlite = pytest.mark.skip(reason="touches no database: the SQLite suite runs it")
    for item in items:
        if "no_database" in item.keywords and "django_db" in item.keywords:
            raise pytest.UsageError(f"{item.nodeid} is marked no_database but uses the database")
        if "postgres" in item.keywords and not on_postgresql:
            item.add_marker(needs_postgresql)
        elif "no_database" in item.keywords and on_postgresql:
            item.add_marker(ran_on_sqlite)


def _client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user(username="alice", password="alice-password")


@pytest.fixture
def other_user(db):
    return get_user_model().objects.create_user(username="bob", password="bob-password")


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user(username="ops", password="ops-password", is_staff=True)


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user_client(user) -> APIClient:
    return _client_for(user)


@pytest.fixture
def staff_client(staff_user) -> APIClient:
    return _client_for(staff_user)


@pytest.fixture
def flight(db):
    return make_flight(capacity=20)


class Clock:
    """A fixed clock for the code under test: `timezone.now()` answers `now` until moved."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """Time stands still until the test moves it (every caller of `timezone.now()`, the
    ORM's auto_now fields included, reads it): expiry is tested without sleeping."""
    fixed = Clock(timezone.now().replace(microsecond=0))
    monkeypatch.setattr(timezone, "now", fixed)
    # The database's clock too (what cleanup decides with): one clock for the whole test.
    monkeypatch.setattr(db, "database_now", fixed)
    return fixed
