"""`bookings_project.statements`: the hot path's UPDATE, INSERT and look-up, compiled once per
connection, on SQLite and PostgreSQL.

- each does what the ORM call it stands for does: the same SQL, the same rows changed or
  written, the same values read back (decimals, datetimes, UUIDs and JSON included), the
  same errors;
- a call in another shape (a filter on NULL, IS NULL against IS NOT NULL, an expression it
  does not know, a model with save signals) is answered as the ORM answers it;
- a booking and its payment through the API send every statement of theirs compiled: none
  of the hot path falls back to the ORM unnoticed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.backend import DatabaseBackend as TheirBackend
from django_tasks_db.models import DBTaskResult
from rest_framework.authtoken.models import Token

from bookings.models import Booking, BookingEvent, OutboxEvent
from bookings.services import booking_create
from bookings_project import statements
from bookings_project.statements import _ORM
from bookings_project.tasks_backend import DatabaseBackend as OurBackend
from flights.models import Flight, SeatHold
from flights.services import flight_seats_change
from notifications.tasks import deliver, dispatch_events
from payments.models import IdempotencyKey
from tests.factories import initiated, make_flight
from tests.support.api import post_payment

pytestmark = pytest.mark.django_db


def _sql_of(call) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        call()
    return [query["sql"] for query in captured.captured_queries]


def _forget_compiled() -> None:
    connection.bookings_statements = {}


def _compiled_kinds() -> list[tuple[str, str]]:
    """What this connection compiled since `_forget_compiled`, as (helper, model); fails if
    any of it went through the ORM fallback instead."""
    compiled = connection.bookings_statements
    assert [key for key, value in compiled.items() if value is _ORM] == []
    return sorted((key[0], key[1].__name__) for key in compiled)


# An audit event and its outbox event, written in one statement where the database can.
_AUDIT_WITH_OUTBOX = [("insert_together", "BookingEvent")] if connection.vendor == "postgresql" else []


# UPDATE ------------------------------------------------------------------------------------


def test_an_update_sends_the_orms_sql_and_changes_what_it_changes(user, flight):
    booking = initiated(user, flight)
    now = timezone.now()
    where = {
        "pk": booking.pk,
        "status": Booking.Status.INITIATED,
        "expires_at__gt": now,
        "total_cost": booking.total_cost,
    }
    values = {"status": Booking.Status.PENDING, "updated_at": now}
    with transaction.atomic():
        orm_sql = _sql_of(lambda: Booking.objects.filter(**where).update(**values))
        transaction.set_rollback(True)
    _forget_compiled()

    assert _sql_of(lambda: statements.update(Booking, where=where, values=values)) == orm_sql
    booking.refresh_from_db()
    assert (booking.status, booking.updated_at) == (Booking.Status.PENDING, now)
    # Compiled now: the second call sends the same SQL and is refused by its condition.
    assert _sql_of(lambda: statements.update(Booking, where=where, values=values)) == orm_sql
    assert statements.update(Booking, where=where, values=values) == 0


@pytest.mark.parametrize(
    ("where", "changed"),
    [
        ({"total_cost": Decimal("11000.00")}, 1),
        ({"total_cost": Decimal("11000.01")}, 0),
        ({"seats__gte": 2}, 1),
        ({"seats__gt": 2}, 0),
        ({"seats__lte": 2}, 1),
        ({"seats__lt": 2}, 0),
        ({"user_id": "other"}, 0),
        ({"cancelled_at__isnull": True}, 1),
        ({"cancelled_at__isnull": False}, 0),
        ({"cancelled_at": None}, 1),  # IS NULL, through the ORM.
    ],
)
def test_an_update_changes_the_rows_its_filter_matches(user, other_user, flight, where, changed):
    booking = initiated(user, flight)  # Two seats at 5500.00.
    where = {"pk": booking.pk, **{k: other_user.pk if v == "other" else v for k, v in where.items()}}

    # Twice: compiled the first time, sent compiled the second (on a fresh booking).
    assert statements.update(Booking, where=where, values={"flight_service_error": "x"}) == changed
    again = initiated(user, flight)
    where["pk"] = again.pk
    assert statements.update(Booking, where=where, values={"flight_service_error": "y"}) == changed
    assert Booking.objects.get(pk=again.pk).flight_service_error == ("y" if changed else "")


def test_is_null_and_is_not_null_are_two_statements(user, flight):
    booking = initiated(user, flight)

    assert statements.update(Booking, where={"pk": booking.pk, "cancelled_at__isnull": False}, values={"seats": 3}) == 0
    assert statements.update(Booking, where={"pk": booking.pk, "cancelled_at__isnull": True}, values={"seats": 4}) == 1
    assert Booking.objects.get(pk=booking.pk).seats == 4


def test_an_update_adds_to_a_column_and_sets_null(user, flight):
    seats = F("available_seats")
    for value in (seats - 3, seats + 1, seats - 3):  # Compiled for - and for +, then - sent compiled.
        statements.update(Flight, where={"pk": flight.pk}, values={"available_seats": value})
    assert Flight.objects.get(pk=flight.pk).available_seats == flight.capacity - 5

    claim = IdempotencyKey.objects.create(
        user=user, key="k", fingerprint="f", lease=uuid.uuid4(), expires_at=timezone.now()
    )
    for lease in (uuid.uuid4(), None):  # A UUID, then NULL: two statements.
        statements.update(IdempotencyKey, where={"pk": claim.pk}, values={"lease": lease, "response_body": {"a": [1]}})
        claim.refresh_from_db()
        assert (claim.lease, claim.response_body) == (lease, {"a": [1]})


def test_an_expression_it_does_not_know_goes_through_the_orm(flight):
    values = {"available_seats": Greatest(F("available_seats") - 500, Value(0))}
    assert statements.update(Flight, where={"pk": flight.pk}, values=values) == 1
    assert statements.update(Flight, where={"pk": flight.pk}, values=values) == 1
    assert Flight.objects.get(pk=flight.pk).available_seats == 0
    assert _ORM in connection.bookings_statements.values()


def test_an_update_inside_a_transaction_that_fails_marks_it_for_rollback(user, flight):
    booking = initiated(user, flight)
    with pytest.raises(IntegrityError), transaction.atomic():
        statements.update(Booking, where={"pk": booking.pk}, values={"seats": 2})  # Compiled.
        statements.update(Booking, where={"pk": booking.pk}, values={"seats": -1})  # seats >= 1.
    assert Booking.objects.get(pk=booking.pk).seats == 2


# INSERT ------------------------------------------------------------------------------------


def test_an_insert_writes_the_row_the_orm_would(user, flight):
    fields = {
        "user": user,
        "flight_id": flight.pk,
        "seats": 3,
        "total_cost": Decimal("16500.00"),
        "status": Booking.Status.INITIATED,
        "seats_state": Booking.SeatsState.RESERVED,
        "expires_at": timezone.now() + dt.timedelta(minutes=10),
    }
    by_orm = Booking.objects.create(**fields)
    _forget_compiled()

    for _ in range(2):  # Compiled, then sent compiled.
        booking = statements.insert(Booking(**fields))
        assert booking.pk > by_orm.pk and not booking._state.adding and booking._state.db == "default"
        assert booking.created_at is not None and booking.updated_at is not None  # auto_now(_add).
        stored = Booking.objects.get(pk=booking.pk)
        for field in Booking._meta.concrete_fields:
            if field.name not in ("id", "created_at", "updated_at"):
                assert getattr(stored, field.attname) == getattr(by_orm, field.attname), field.name
        assert (stored.created_at, stored.updated_at) == (booking.created_at, booking.updated_at)


def test_an_insert_that_breaks_a_unique_constraint_raises_and_leaves_the_transaction_usable(flight):
    statements.insert(SeatHold(flight_id=flight.pk, ref="r-1", seats=1, state=SeatHold.State.HELD))
    with transaction.atomic():
        with pytest.raises(IntegrityError), transaction.atomic():
            statements.insert(SeatHold(flight_id=flight.pk, ref="r-1", seats=1, state=SeatHold.State.HELD))
        statements.insert(SeatHold(flight_id=flight.pk, ref="r-2", seats=1, state=SeatHold.State.HELD))
    assert sorted(SeatHold.objects.values_list("ref", flat=True)) == ["r-1", "r-2"]


def test_a_model_with_save_signals_is_saved_by_the_orm(user, flight):
    booking = initiated(user, flight)
    heard = []

    def receiver(sender, instance, created, **kwargs):
        heard.append((instance.to_status, created))

    post_save.connect(receiver, sender=BookingEvent)
    try:
        statements.insert(BookingEvent(booking_id=booking.pk, to_status="PENDING", reason="x", actor="user"))
    finally:
        post_save.disconnect(receiver, sender=BookingEvent)
    assert heard == [("PENDING", True)]


def test_rows_inserted_together_are_one_statement_on_postgresql_and_read_back_their_keys(user, flight):
    booking = initiated(user, flight)
    _forget_compiled()
    for _ in range(2):  # Compiled, then sent compiled.
        audit = BookingEvent(
            booking_id=booking.pk, from_status="INITIATED", to_status="BOOKED", reason="paid", actor="user"
        )
        event = OutboxEvent(type=OutboxEvent.Type.BOOKING_CONFIRMED, booking_id=booking.pk)
        sql = _sql_of(lambda audit=audit, event=event: statements.insert_together(audit, event))
        assert len(sql) == (1 if connection.vendor == "postgresql" else 2)
        if connection.vendor == "postgresql":
            assert sql[0].startswith('WITH r0 AS (INSERT INTO "bookings_bookingevent"')
        for row in (audit, event):
            assert row.pk is not None and not row._state.adding and row._state.db == "default"
        stored_audit, stored_event = BookingEvent.objects.get(pk=audit.pk), OutboxEvent.objects.get(pk=event.pk)
        assert (stored_audit.to_status, stored_audit.reason, stored_audit.created_at) == (
            "BOOKED",
            "paid",
            audit.created_at,
        )
        assert (stored_event.public_id, stored_event.type, stored_event.created_at) == (
            event.public_id,
            "booking.confirmed",
            event.created_at,
        )
    assert OutboxEvent.objects.filter(booking=booking, type="booking.confirmed").count() == 2


def test_rows_inserted_together_with_save_signals_are_saved_by_the_orm(user, flight):
    booking = initiated(user, flight)
    heard = []

    def receiver(sender, instance, created, **kwargs):
        heard.append((instance.to_status, created))

    audit = BookingEvent(booking_id=booking.pk, to_status="BOOKED", reason="paid", actor="user")
    event = OutboxEvent(type=OutboxEvent.Type.BOOKING_CONFIRMED, booking_id=booking.pk)
    post_save.connect(receiver, sender=BookingEvent)
    try:
        statements.insert_together(audit, event)
    finally:
        post_save.disconnect(receiver, sender=BookingEvent)
    assert heard == [("BOOKED", True)]
    assert BookingEvent.objects.filter(pk=audit.pk).exists() and OutboxEvent.objects.filter(pk=event.pk).exists()


# Look-up -----------------------------------------------------------------------------------


def test_a_look_up_reads_what_the_orm_reads():
    flight = make_flight(price="1234.56")
    for _ in range(2):
        found = statements.get(Flight, flight.pk)
        by_orm = Flight.objects.get(pk=flight.pk)
        assert found is not by_orm and not found._state.adding
        for field in Flight._meta.concrete_fields:
            assert getattr(found, field.attname) == getattr(by_orm, field.attname), field.name
        assert isinstance(found.price, Decimal) and found.departure_time.tzinfo is not None
    assert statements.get(Flight, flight.pk + 1000) is None
    assert statements.get(Flight, str(flight.pk)).pk == flight.pk


def test_a_look_up_with_related_rows_reads_them_in_the_same_statement(user):
    key = Token.objects.create(user=user).key
    for _ in range(2):  # Compiled, then sent compiled.
        with CaptureQueriesContext(connection) as captured:
            token = statements.get(Token, key, related=("user",))
            assert (token.key, token.user.pk, token.user.username) == (key, user.pk, user.username)
        assert len(captured.captured_queries) == 1
    assert statements.get(Token, "no-such-key", related=("user",)) is None


@pytest.mark.django_db(transaction=True)
def test_a_locked_look_up_sends_select_for_update_and_only_in_a_transaction(flight):
    with pytest.raises(transaction.TransactionManagementError):
        statements.get(Flight, flight.pk, for_update=True)
    with transaction.atomic():
        sql = _sql_of(lambda: statements.get(Flight, flight.pk, for_update=True))
        assert statements.get(Flight, flight.pk, for_update=True).available_seats == flight.available_seats
        orm_sql = _sql_of(lambda: list(Flight.objects.select_for_update().filter(pk=flight.pk).order_by()))
    # SQLite has no row locks: Django leaves FOR UPDATE out there, and so does the compiled look-up.
    assert len(sql) == 1 and sql[0].endswith("FOR UPDATE") == connection.features.has_select_for_update
    assert sql == orm_sql


@pytest.mark.django_db(transaction=True)
def test_a_look_up_by_another_unique_field_sends_the_orms_sql(flight):
    hold = SeatHold.objects.create(flight=flight, ref="booking-7", seats=2, state=SeatHold.State.HELD)
    with transaction.atomic():
        for _ in range(2):  # Compiled, then sent compiled.
            sql = _sql_of(lambda: statements.get(SeatHold, "booking-7", by="ref", for_update=True))
            found = statements.get(SeatHold, "booking-7", by="ref", for_update=True)
            assert (found.pk, found.flight_id, found.seats, found.state) == (hold.pk, flight.pk, 2, "held")
        orm_sql = _sql_of(lambda: list(SeatHold.objects.select_for_update().filter(ref="booking-7").order_by()))
        assert statements.get(SeatHold, "booking-8", by="ref", for_update=True) is None
    assert sql == orm_sql


def test_a_look_up_by_a_field_that_is_not_unique_is_refused(flight):
    with pytest.raises(ValueError, match="not unique"):
        statements.get(SeatHold, flight.pk, by="flight")


# The hot path --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_booking_and_its_payment_send_only_compiled_statements(user, user_client, flight):
    booking = initiated(user, flight)  # Warm: the shapes the flow sends are compiled once.
    assert post_payment(user_client, booking.pk, "warm", booking.total_cost).status_code == 201
    _forget_compiled()

    response = user_client.post("/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 1}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert post_payment(user_client, body["id"], "pay", body["totalCost"]).status_code == 201

    # The token (each request); the flight; its seats; the booking, its hold, three events and two outbox events
    # (created, confirmed) with the worker's task queued after each; the key, the payment, the charge; booking
    # PENDING, BOOKED; payment SUCCEEDED; the key's answer.
    assert _compiled_kinds() == [
        ("get", "Flight"),
        ("get", "Token"),
        ("insert", "Booking"),
        ("insert", "BookingEvent"),
        ("insert", "DBTaskResult"),
        ("insert", "IdempotencyKey"),
        ("insert", "OutboxEvent"),
        ("insert", "Payment"),
        ("insert", "SeatHold"),
        ("insert", "SimulatedCharge"),
        *_AUDIT_WITH_OUTBOX,
        ("update", "Booking"),
        ("update", "Booking"),
        ("update", "Flight"),
        ("update", "IdempotencyKey"),
        ("update", "Payment"),
    ]


def test_a_seat_change_of_the_flights_api_sends_its_writes_compiled(flight):
    """The Flights service's side of the HTTP adapter: the flight locked, its hold looked up, the flight moved, the
    hold written."""
    _forget_compiled()
    change = flight_seats_change(flight_id=flight.pk, seats=2, decrease=True, reservation="booking-1")
    assert (change.flight.available_seats, change.hold.seats) == (flight.available_seats - 2, 2)
    flight.refresh_from_db()
    assert flight.available_seats == change.flight.available_seats
    assert SeatHold.objects.get(ref="booking-1").state == SeatHold.State.HELD
    assert _compiled_kinds() == [("get", "Flight"), ("get", "SeatHold"), ("insert", "SeatHold"), ("update", "Flight")]


@pytest.mark.django_db(transaction=True)
def test_the_saga_sends_its_writes_compiled(saga_in_process, user, flight):
    """A booking that walks the saga, as over the HTTP adapter: booking, its audit and outbox
    events (and the worker's task), the seat change, the booking's seats state RESERVED."""
    _forget_compiled()
    booking = booking_create(user=user, flight_id=flight.pk, seats=2)
    assert Booking.objects.get(pk=booking.pk).seats_state == Booking.SeatsState.RESERVED
    assert _compiled_kinds() == [
        ("get", "Flight"),
        ("get", "Flight"),
        ("get", "SeatHold"),
        ("insert", "Booking"),
        ("insert", "BookingEvent"),
        ("insert", "DBTaskResult"),
        ("insert", "OutboxEvent"),
        ("insert", "SeatHold"),
        *_AUDIT_WITH_OUTBOX,
        ("update", "Booking"),
        ("update", "Flight"),
    ]


@pytest.mark.django_db
def test_the_task_queue_writes_the_row_django_tasks_dbs_own_backend_would():
    """bookings_project.tasks_backend: the queue's INSERT compiled, its model's primary key set
    by the model, its save signal's work done by the backend: the same row as the ORM's."""
    _forget_compiled()
    fields = [f.name for f in DBTaskResult._meta.concrete_fields if f.name not in ("id", "enqueued_at")]
    for task, args in ((dispatch_events, [[1, 2]]), (deliver.using(run_after=timezone.now()), [7, "email"])):
        ours = OurBackend("default", {}).enqueue(task, args, {})
        theirs = TheirBackend("default", {}).enqueue(task, args, {})
        rows = {row.pk: [getattr(row, name) for name in fields] for row in DBTaskResult.objects.all()}
        assert rows[uuid.UUID(ours.id)] == rows[uuid.UUID(theirs.id)]
        DBTaskResult.objects.all().delete()
    assert ("insert", "DBTaskResult") in _compiled_kinds()


@pytest.mark.django_db
def test_the_task_queue_answers_the_result_django_tasks_dbs_own_backend_would():
    ours = OurBackend("default", {}).enqueue(dispatch_events, [[3]], {})
    read_back = DBTaskResult.objects.get(pk=ours.id).task_result

    assert ours == read_back  # Every field, the task included (its backend, queue, priority, run_after).
    assert (ours.status, ours.args, ours.task.name) == ("READY", [[3]], "dispatch_events")
