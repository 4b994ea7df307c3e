"""Writes to flight inventory. Each function is one short transaction, except the pair
`flight_seats_take` + `seat_hold_add`, which run inside the caller's (docs/design.md#the-flights-service-boundary)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, F, IntegerField, Value, When
from django.utils import timezone

from bookings_project import metrics, statements
from bookings_project.db import bound_lock_wait
from bookings_project.exceptions import CapacityExceeded, InsufficientSeats, NotFound, ReservationConflict
from flights.models import Flight, FlightEdit, SeatHold, default_currency


@dataclass(frozen=True)
class SeatChangeResult:
    flight: Flight
    hold: SeatHold | None


def flight_create(
    *,
    flight_number: str,
    departure_airport: str,
    arrival_airport: str,
    departure_time: dt.datetime,
    arrival_time: dt.datetime,
    price: Decimal,
    capacity: int,
    currency: str = "",
) -> Flight:
    """A new flight starts with every seat available; its price is in `currency`, else `CURRENCY`."""
    return Flight.objects.create(
        currency=currency or default_currency(),
        flight_number=flight_number,
        departure_airport=departure_airport,
        arrival_airport=arrival_airport,
        departure_time=departure_time,
        arrival_time=arrival_time,
        price=price,
        capacity=capacity,
        available_seats=capacity,
    )


# What staff may edit on a flight (admin): seats move only through the ledger, and capacity is
# fixed once seats are sold from it.
EDITABLE_FIELDS = frozenset(
    {"flight_number", "departure_airport", "arrival_airport", "departure_time", "arrival_time", "price", "currency"}
)


def flight_update(*, flight_id: int, changes: Mapping[str, Any], changed_by: Any = None) -> FlightEdit | None:
    """Apply staff's edit of a flight and record it (`FlightEdit`: each changed field's old and
    new value as text, and who), in one short transaction under the flight's row lock. Only
    the changed fields are written, so a seat change committed meanwhile is kept, and the
    values compared are the locked row's, so the record says what really changed. None if
    nothing did; Django's `ValidationError` for a value a flight cannot have. A booking
    already made keeps its totalCost: it was priced when made."""
    unknown = set(changes) - EDITABLE_FIELDS
    if unknown:
        raise ValueError(f"Not editable on a flight: {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        bound_lock_wait()
        flight = Flight.objects.select_for_update().filter(pk=flight_id).first()
        if flight is None:
            raise NotFound(f"Flight {flight_id} does not exist.")
        changed = {}
        for name, value in changes.items():
            before = getattr(flight, name)
            if before != value:
                changed[name] = [_as_text(before), _as_text(value)]
                setattr(flight, name, value)
        if not changed:
            return None
        flight.full_clean(exclude=["available_seats", "capacity"], validate_unique=False)
        flight.save(update_fields=[*changed, "updated_at"])
        return FlightEdit.objects.create(flight=flight, changed_by=changed_by, changes=changed)


def _as_text(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else str(value)


def _flight_for_update(flight_id: int) -> Flight:
    """Lock the flight's row for the rest of the transaction. Every seat change goes here."""
    with metrics.seat_lock():
        flight = statements.get(Flight, flight_id, for_update=True)
    if flight is None:
        raise NotFound(f"Flight {flight_id} does not exist.")
    return flight


def flight_seats_change(
    *, flight_id: int, seats: int, decrease: bool, reservation: str | None = None
) -> SeatChangeResult:
    """Take (`decrease`) or give back seats, under the flight's row lock.

    With a `reservation` reference the change goes through the hold ledger and applies at
    most once per reference: a repeated reserve or release answers as the first did.
    """
    try:
        with transaction.atomic():
            bound_lock_wait()
            flight = _flight_for_update(flight_id)
            if reservation is None:
                _apply(flight, -seats if decrease else seats)
                return SeatChangeResult(flight=flight, hold=None)
            hold = statements.get(SeatHold, reservation, by="ref", for_update=True)
            if hold is not None and hold.flight_id != flight.pk:
                raise ReservationConflict(f"Reservation {reservation!r} belongs to another flight.")
            if decrease:
                hold = _reserve(flight, hold, reservation, seats)
            else:
                hold = _release(flight, hold, reservation, seats)
            return SeatChangeResult(flight=flight, hold=hold)
    except IntegrityError:
        # A new hold's reference was written meanwhile for another flight (same-flight
        # writers are serialised by the flight's row lock, so only a cross-flight reuse gets
        # here): the whole change is undone, with no savepoint spent on the usual case.
        raise ReservationConflict(f"Reservation {reservation!r} belongs to another flight.") from None


def flight_seats_take(*, flight_id: int, seats: int, price: Decimal) -> bool:
    """Take `seats` on a flight inside the caller's transaction, at the `price` the caller
    read; the flight's row stays locked from here to the transaction's end, so call it last,
    just before COMMIT. Record the hold (`seat_hold_add`) in the same transaction, so that
    seats, hold and whatever the caller writes commit together.

    One conditional UPDATE: a flight with fewer seats left refuses instead of overselling
    (the database's check constraint stands behind it). False, with nothing taken, if the
    price changed since it was read.
    """
    bound_lock_wait()
    with metrics.seat_lock():  # The UPDATE takes the row lock.
        taken = statements.update(
            Flight,
            where={"pk": flight_id, "available_seats__gte": seats, "price": price},
            values={"available_seats": F("available_seats") - seats, "updated_at": timezone.now()},
        )
    if taken:
        return True
    available = Flight.objects.filter(pk=flight_id).values_list("available_seats", flat=True).first()
    if available is None:
        raise NotFound(f"Flight {flight_id} does not exist.")
    if available < seats:
        raise InsufficientSeats(f"Flight {flight_id} has {available} seat(s) left; {seats} requested.")
    return False


def seat_hold_add(*, flight_id: int, seats: int, ref: str) -> None:
    """The ledger's record of seats `flight_seats_take` took in this transaction, under a
    reference that is new (a booking's own): it is released by reference like any other."""
    statements.insert(SeatHold(flight_id=flight_id, ref=ref, seats=seats, state=SeatHold.State.HELD))


def _reserve(flight: Flight, hold: SeatHold | None, ref: str, seats: int) -> SeatHold:
    if hold is not None:
        if hold.state == SeatHold.State.RELEASED:
            raise ReservationConflict(f"Reservation {ref!r} was already released; it cannot be reserved again.")
        if hold.seats != seats:
            raise ReservationConflict(f"Reservation {ref!r} holds {hold.seats} seat(s), not {seats}.")
        return hold  # A repeat: already applied once.
    _apply(flight, -seats)
    return _new_hold(flight=flight, ref=ref, seats=seats, state=SeatHold.State.HELD)


def _release(flight: Flight, hold: SeatHold | None, ref: str, seats: int) -> SeatHold:
    if hold is None:
        # Never reserved (or not yet arrived): move no seat, leave a tombstone so that a
        # late reserve with this reference is refused.
        return _new_hold(flight=flight, ref=ref, seats=0, state=SeatHold.State.RELEASED)
    if hold.state == SeatHold.State.RELEASED:
        return hold  # A repeat: already applied once.
    if hold.seats != seats:
        raise ReservationConflict(f"Reservation {ref!r} holds {hold.seats} seat(s), not {seats}.")
    _apply(flight, hold.seats)
    hold.state = SeatHold.State.RELEASED
    hold.released_at = timezone.now()
    hold.save(update_fields=["state", "released_at"])
    return hold


def _apply(flight: Flight, delta: int) -> None:
    """Move `delta` seats on a flight whose row this transaction holds locked."""
    if flight.available_seats + delta < 0:
        raise InsufficientSeats(f"Flight {flight.pk} has {flight.available_seats} seat(s) left; {-delta} requested.")
    if flight.available_seats + delta > flight.capacity:
        raise CapacityExceeded(
            f"Flight {flight.pk} has {flight.available_seats} of {flight.capacity} seats available; "
            f"giving back {delta} would exceed its capacity."
        )
    flight.available_seats += delta
    flight.updated_at = timezone.now()
    statements.update(
        Flight,
        where={"pk": flight.pk},
        values={"available_seats": flight.available_seats, "updated_at": flight.updated_at},
    )


def _new_hold(*, flight: Flight, ref: str, seats: int, state: str) -> SeatHold:
    """The last write of a seat change: a reference taken meanwhile by another flight fails
    it with IntegrityError, which `flight_seats_change` answers."""
    return statements.insert(
        SeatHold(
            flight=flight,
            ref=ref,
            seats=seats,
            state=state,
            released_at=timezone.now() if state == SeatHold.State.RELEASED else None,
        )
    )


def seat_holds_release(*, holds: list[tuple[str, int, int]]) -> dict[str, int]:
    """Release many holds at once inside the caller's transaction (cleanup's batches,
    docs/design.md#cleanup); the caller must be in `transaction.atomic()`, and the flights
    stay locked to its end.

    `holds` are `(ref, flight_id, seats)`. Each one the ledger holds just so is released
    once, and the seats go back to all the flights with one UPDATE, within capacity. Answers
    `{ref: seats}` of the holds released; a hold the ledger does not hold so (missing,
    released already, another flight or seat count) is left as it is and not in the answer,
    for the caller to settle one by one (`flight_seats_change`). A flight that would pass its
    capacity raises `CapacityExceeded`: the caller's transaction must then roll back whole.

    Four statements whatever the number of holds and flights: lock the flights, read the
    holds, release them, give the seats back.
    """
    wanted = {ref: (flight_id, seats) for ref, flight_id, seats in holds}
    if not wanted:
        return {}
    bound_lock_wait()
    # In id order, as each seat change locks its one flight first and then its holds: two
    # batches never deadlock, and no other change to these flights' holds runs meanwhile.
    with metrics.seat_lock():
        flights = {
            pk: (available, capacity)
            for pk, available, capacity in Flight.objects.select_for_update()
            .filter(pk__in={flight_id for flight_id, _ in wanted.values()})
            .order_by("pk")
            .values_list("pk", "available_seats", "capacity")
        }
    held = SeatHold.objects.filter(ref__in=wanted, state=SeatHold.State.HELD).values_list(
        "pk", "ref", "flight_id", "seats"
    )
    released = {ref: (pk, flight_id, seats) for pk, ref, flight_id, seats in held if wanted[ref] == (flight_id, seats)}
    if not released:
        return {}
    back: dict[int, int] = {}
    for _, flight_id, seats in released.values():
        back[flight_id] = back.get(flight_id, 0) + seats
    for flight_id, seats in back.items():
        available, capacity = flights[flight_id]
        if available + seats > capacity:
            raise CapacityExceeded(
                f"Flight {flight_id} has {available} of {capacity} seats available; "
                f"giving back {seats} would exceed its capacity."
            )
    now = timezone.now()
    SeatHold.objects.filter(pk__in=[pk for pk, _, _ in released.values()]).update(
        state=SeatHold.State.RELEASED, released_at=now
    )
    added = Case(*(When(pk=pk, then=Value(seats)) for pk, seats in back.items()), output_field=IntegerField())
    Flight.objects.filter(pk__in=back).update(available_seats=F("available_seats") + added, updated_at=now)
    return {ref: seats for ref, (_, _, seats) in released.items()}
