"""Data migrations: what they do to rows that exist when they run."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("payments", "0002_reconciled_at"), ("bookings", "0004_list_and_cleanup_indexes")]
AFTER = [("payments", "0003_late_charge_at")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def back_to_the_latest_schema():
    """Whatever the test does, the database ends with every migration applied again."""
    yield
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest_schema")
def test_money_already_stranded_on_a_cancelled_booking_is_marked_for_cleanup():
    old = migrate(BEFORE)
    User = old.get_model("auth", "User")
    Booking = old.get_model("bookings", "Booking")
    Payment = old.get_model("payments", "Payment")
    user = User.objects.create(username="before-the-migration")
    now = timezone.now()

    def booking(status: str):
        return Booking.objects.create(
            user=user, flight_id=1, seats=1, total_cost=Decimal("100.00"), status=status, expires_at=now
        )

    def payment(of, status: str, reference: str):
        return Payment.objects.create(
            booking=of,
            user=user,
            created_by=user,
            idempotency_key=reference,
            amount=Decimal("100.00"),
            currency="INR",
            status=status,
            reference=reference,
            attempted_at=now,
        )

    stranded = payment(booking("CANCELLED"), "SUCCEEDED", "stranded")
    payment(booking("BOOKED"), "SUCCEEDED", "paid")
    payment(booking("CANCELLED"), "REFUNDED", "refunded")
    Payment.objects.filter(pk=stranded.pk).update(updated_at=now - dt.timedelta(hours=2))

    new = migrate(AFTER)

    marked = dict(new.get_model("payments", "Payment").objects.values_list("reference", "late_charge_at"))
    assert marked == {"stranded": now - dt.timedelta(hours=2), "paid": None, "refunded": None}
