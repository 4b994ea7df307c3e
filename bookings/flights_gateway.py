"""The one way bookings reach flight inventory (docs/design.md#the-flights-service-boundary): a port, two adapters.

- `InProcessFlightGateway` (default) calls the `flights` app's services. The inventory is
  in our database, so a reserve joins the booking's own transaction (`joins_transactions`):
  booking, hold and seats commit together, with no saga to walk. Built with
  `joins_transactions=False` it commits each call on its own, exactly as if the service were
  remote, to run the HTTP adapter's saga against the real ledger (the saga's tests do).
- `HttpFlightGateway` (when `FLIGHT_SERVICE_URL` is set) speaks the Flights API over HTTP:
  ours, or the seed's Node Flights Service with its envelope and quirks.

Both raise only domain errors: `NotFound`, `InsufficientSeats`, `ReservationConflict`,
`CapacityExceeded`, `ResourceBusy` are definite refusals (nothing changed);
`FlightServiceUnavailable` means the outcome is unknown (see its `maybe_applied`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, Protocol

import requests
from django.conf import settings
from django.db import OperationalError

from bookings_project import http_client
from bookings_project.db import is_lock_contention
from bookings_project.exceptions import (
    CapacityExceeded,
    DomainError,
    FlightServiceUnavailable,
    InsufficientSeats,
    NotFound,
    ReservationConflict,
    ResourceBusy,
)

logger = logging.getLogger(__name__)

# Bounds the HTTP adapter's memory of recently answered flights (`recent_flight`).
MAX_REMEMBERED_FLIGHTS = 10_000


@dataclass(frozen=True)
class FlightInfo:
    id: int
    price: Decimal
    available_seats: int
    # The service keeps one hold per reference, so a release by reference is safe to repeat.
    keeps_holds: bool
    # The price's; `CURRENCY` for a service that does not say (the seed's).
    currency: str = ""


@dataclass(frozen=True)
class SeatChange:
    # Seats the hold moved (0 for a release of a reserve that never arrived); None when the
    # service keeps no holds and so cannot say.
    hold_seats: int | None
    keeps_holds: bool
    # The flight as the service answered it after the change (its price then), if it did.
    flight: FlightInfo | None = None


class HoldToRelease(NamedTuple):
    """One hold a batch gives back (`InProcessFlightGateway.release_holds`)."""

    ref: str
    flight_id: int
    seats: int


class FlightGateway(Protocol):
    # True when seats can be taken inside the caller's database transaction
    # (`hold_seats` + `take_seats`); else every call commits on its own and the caller runs the saga.
    joins_transactions: bool

    def get_flight(self, flight_id: int) -> FlightInfo: ...

    def recent_flight(self, flight_id: int) -> FlightInfo | None:
        """The flight as the service last answered it, if that was recent enough to book on
        without reading it again; None: read it."""
        ...

    def reserve_seats(self, *, flight_id: int, seats: int, ref: str) -> SeatChange: ...

    def release_seats(self, *, flight_id: int, seats: int, ref: str) -> SeatChange: ...

    def is_ready(self) -> bool: ...


class InProcessFlightGateway:
    """Calls `flights` directly: joined to the caller's transaction, or each call committing
    on its own as a remote call would (`joins_transactions=False`)."""

    def __init__(self, *, joins_transactions: bool = True) -> None:
        self.joins_transactions = joins_transactions

    def take_seats(self, *, flight_id: int, seats: int, price: Decimal) -> bool:
        """Inside the caller's transaction, last before its COMMIT (the flight stays locked to
        its end): take the seats at the price read with `get_flight`. False, with nothing
        taken, if the price changed since; `NotFound`, `InsufficientSeats` as ever."""
        from flights import services

        return services.flight_seats_take(flight_id=flight_id, seats=seats, price=price)

    def hold_seats(self, *, flight_id: int, seats: int, ref: str) -> None:
        from flights import services

        services.seat_hold_add(flight_id=flight_id, seats=seats, ref=ref)

    def release_holds(self, *, holds: list[HoldToRelease]) -> dict[str, int]:
        """Inside the caller's transaction (cleanup's batches): release these holds, the
        seats going back with one change for all their flights, which stay locked to its
        end. Answers `{ref: seats}` of the holds released; one the ledger does not hold just
        so is left as it is, for `release_seats` one by one. A refusal or a database error
        leaves the caller's transaction to roll back: nothing applied."""
        from flights import services

        with _database_errors_as_unavailable(maybe_applied=False):
            return services.seat_holds_release(holds=holds)

    def get_flight(self, flight_id: int) -> FlightInfo:
        from flights import selectors

        with _database_errors_as_unavailable(maybe_applied=False):
            flight = selectors.flight_get(flight_id=flight_id)
        return _flight_info(flight)

    def recent_flight(self, flight_id: int) -> FlightInfo | None:
        return None  # Reading it is one local SELECT, and it must be fresh for `take_seats`.

    def reserve_seats(self, *, flight_id: int, seats: int, ref: str) -> SeatChange:
        return self._change(flight_id=flight_id, seats=seats, ref=ref, decrease=True)

    def release_seats(self, *, flight_id: int, seats: int, ref: str) -> SeatChange:
        return self._change(flight_id=flight_id, seats=seats, ref=ref, decrease=False)

    def _change(self, *, flight_id: int, seats: int, ref: str, decrease: bool) -> SeatChange:
        from flights import services

        # A database error may strike at COMMIT, after the change was written: unknown outcome.
        with _database_errors_as_unavailable(maybe_applied=True):
            result = services.flight_seats_change(flight_id=flight_id, seats=seats, decrease=decrease, reservation=ref)
        return SeatChange(
            hold_seats=result.hold.seats if result.hold else None, keeps_holds=True, flight=_flight_info(result.flight)
        )

    def is_ready(self) -> bool:
        return True  # It is the database, which /readyz checks already.


def _flight_info(flight: Any) -> FlightInfo:
    return FlightInfo(
        id=flight.pk,
        price=flight.price,
        available_seats=flight.available_seats,
        keeps_holds=True,
        currency=flight.currency,
    )


@contextlib.contextmanager
def _database_errors_as_unavailable(*, maybe_applied: bool) -> Iterator[None]:
    """Lock waits that ran out are a definite refusal; other database failures are unknown."""
    try:
        yield
    except OperationalError as error:
        if is_lock_contention(error):
            raise ResourceBusy("The flight is busy with other bookings. Retry shortly.") from error
        logger.error("flights (in process): database failure: %s", error)
        raise FlightServiceUnavailable(maybe_applied=maybe_applied) from error


class HttpFlightGateway:
    """A client of a remote Flights API: ours, or the seed's Node service.

    Over one `http_client.Transport` per process: a shared `requests.Session`, (connect,
    read) timeouts, bounded retries with backoff for GETs only (a seat change is never resent
    blindly), `X-Request-ID`, and the service token as a Bearer token; the booking's hold
    reference goes with every seat change.
    """

    # Another service, another database: every seat change commits there, and the booking's saga compensates.
    joins_transactions = False

    def __init__(
        self, *, base_url: str, token: str = "", timeout: float = 5.0, retries: int = 2, remember_seconds: float = 0
    ) -> None:
        # 500 is not retried: the seed answers 500 for an unknown flight, and for real faults.
        self.transport = http_client.Transport(
            service="flights", base_url=base_url, token=token, timeout=timeout, retries=retries
        )
        self.base_url = self.transport.base_url
        self.remember_seconds = remember_seconds
        # flight id -> (monotonic time, the flight as last answered); shared by the process's threads.
        self._recent: dict[int, tuple[float, FlightInfo]] = {}

    @property
    def session(self) -> requests.Session:
        return self.transport.session

    # The port ---------------------------------------------------------------------------

    def get_flight(self, flight_id: int) -> FlightInfo:
        response = self._send("GET", f"/api/v1/flights/{flight_id}", maybe_applied=False)
        if _is_seed_unknown_flight(response):
            raise NotFound(f"Flight {flight_id} does not exist.")
        self._raise_for_refusal(response, flight_id=flight_id, maybe_applied=False)
        return self._remember(_parse_flight(response, flight_id))

    def recent_flight(self, flight_id: int) -> FlightInfo | None:
        seen = self._recent.get(flight_id)
        if seen is None or time.monotonic() - seen[0] > self.remember_seconds:
            return None
        return seen[1]

    def reserve_seats(self, *, flight_id: int, seats: int, ref: str) -> SeatChange:
        try:
            change = self._change_seats(flight_id=flight_id, seats=seats, ref=ref, decrease=True)
        except (NotFound, InsufficientSeats):
            self._recent.pop(flight_id, None)  # What we remembered let this booking through: read it next time.
            raise
        if change.keeps_holds:
            return change
        # The seed's service lets seats go below zero and answers with the flight as it was
        # before the change: re-read, and give the seats back if we took the last ones twice.
        try:
            flight = self.get_flight(flight_id)
        except DomainError as error:
            raise FlightServiceUnavailable(
                f"Seats were taken but the flight could not be re-read: {error.detail}", maybe_applied=True
            ) from error
        if flight.available_seats < 0:
            self._recent.pop(flight_id, None)
            try:
                self._change_seats(flight_id=flight_id, seats=seats, ref=ref, decrease=False)
            except DomainError as error:
                # Our seats were taken for certain; whether they came back is unknown.
                raise FlightServiceUnavailable(
                    f"Seats were taken past zero and giving them back failed: {error.detail}", maybe_applied=True
                ) from error
            raise InsufficientSeats(f"Flight {flight_id} has no {seats} seat(s) left; the reservation was given back.")
        return SeatChange(hold_seats=None, keeps_holds=False, flight=flight)

    def release_seats(self, *, flight_id: int, seats: int, ref: str) -> SeatChange:
        return self._change_seats(flight_id=flight_id, seats=seats, ref=ref, decrease=False)

    def is_ready(self) -> bool:
        try:
            response = self.transport.send("GET", "/api/v1/flights", params={"pageSize": 1})
        except http_client.TransportError as error:
            logger.warning("readiness: Flights service unreachable: %s", error.__cause__)
            return False
        # Any answer that is not a server error means it is up (401 means the token is wrong: not ready).
        return response.status_code < 500 and response.status_code not in (401, 403)

    # Mechanics --------------------------------------------------------------------------

    def _change_seats(self, *, flight_id: int, seats: int, ref: str, decrease: bool) -> SeatChange:
        response = self._send(
            "PATCH",
            f"/api/v1/flights/{flight_id}/seats",
            json={"seats": seats, "dec": decrease, "reservation": ref},
            maybe_applied=True,
        )
        self._raise_for_refusal(response, flight_id=flight_id, maybe_applied=True)
        body = _json(response, maybe_applied=True)
        if isinstance(body, dict) and isinstance(body.get("reservation"), dict):
            hold = body["reservation"]
            if hold.get("ref") != ref or not isinstance(hold.get("seats"), int):
                raise FlightServiceUnavailable(
                    f"The Flights service answered a seat change with a different hold: {hold!r:.200}"
                )
            flight = self._remember(_parse_flight(response, flight_id, maybe_applied=True))
            return SeatChange(hold_seats=hold["seats"], keeps_holds=True, flight=flight)
        # At least a flight, or it is garbage; but the seed's is the flight from before the change.
        _parse_flight(response, flight_id, maybe_applied=True)
        return SeatChange(hold_seats=None, keeps_holds=False)

    def _remember(self, flight: FlightInfo) -> FlightInfo:
        if self.remember_seconds > 0:
            if len(self._recent) >= MAX_REMEMBERED_FLIGHTS:
                self._recent.clear()  # Rare (that many flights booked within seconds), and only costs reads.
            self._recent[flight.id] = (time.monotonic(), flight)
        return flight

    def _send(self, method: str, path: str, *, maybe_applied: bool, **kwargs: Any) -> requests.Response:
        try:
            return self.transport.send(method, path, **kwargs)
        except http_client.TransportError as error:
            if error.timed_out:
                logger.warning("flights: %s %s timed out: %s", method, error.url, error.__cause__)
                detail = "The Flights service did not answer in time."
            else:
                logger.warning("flights: %s %s failed: %s", method, error.url, error.__cause__)
                detail = (
                    None if error.failure is http_client.Failure.OTHER else "The Flights service could not be reached."
                )
            raise FlightServiceUnavailable(detail, maybe_applied=maybe_applied and error.may_have_arrived) from error

    def _raise_for_refusal(self, response: requests.Response, *, flight_id: int, maybe_applied: bool) -> None:
        status = response.status_code
        if status < 400:
            return
        if status >= 500:
            logger.warning("flights: %s answered %s: %.200s", response.url, status, response.text)
            raise FlightServiceUnavailable(
                f"The Flights service answered {status}.", maybe_applied=maybe_applied and status != 503
            )
        body = http_client.json_or_none(response)
        code = body.get("code") if isinstance(body, dict) else None
        if status == 404:
            raise NotFound(f"Flight {flight_id} does not exist.")
        if status == 409:
            refusal = {
                "insufficient_seats": InsufficientSeats,
                "capacity_exceeded": CapacityExceeded,
                "resource_busy": ResourceBusy,
            }.get(code, ReservationConflict)
            raise refusal(_detail(body) or None)
        # 400/401/403/...: our request or our credentials are wrong. Nothing was changed, and
        # retrying will not help; ops must look at the log.
        logger.error("flights: %s answered %s: %.300s", response.url, status, response.text)
        raise FlightServiceUnavailable(f"The Flights service refused the request ({status}).", maybe_applied=False)


def _json(response: requests.Response, *, maybe_applied: bool) -> Any:
    body = http_client.json_or_none(response)
    if body is None:
        raise FlightServiceUnavailable(
            f"The Flights service answered {response.status_code} with a body that is not JSON.",
            maybe_applied=maybe_applied,
        )
    return body


def _detail(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    detail = body.get("detail") or body.get("message") or ""
    return str(detail)[:300]


def _unwrap(body: Any) -> Any:
    """The seed wraps answers as {"success", "message", "data", "error"}; ours is the plain resource."""
    if isinstance(body, dict) and "success" in body and "data" in body:
        return body["data"]
    return body


def _is_seed_unknown_flight(response: requests.Response) -> bool:
    """The seed answers an unknown flight: 500 and this explanation (docs/design.md#the-flights-service-boundary)."""
    if response.status_code != 500:
        return False
    body = http_client.json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and body.get("success") is False
        and "cannot fetch data of the flight" in str(error.get("explanation", "")).lower()
    )


def _parse_flight(response: requests.Response, flight_id: int, *, maybe_applied: bool = False) -> FlightInfo:
    body = _json(response, maybe_applied=maybe_applied)
    data = _unwrap(body)
    try:
        price = Decimal(str(data["price"]))
        available = data["totalSeats"]
        if isinstance(available, bool) or not isinstance(available, int):
            raise TypeError("totalSeats is not an integer")
        if not price.is_finite() or price < 0 or int(data["id"]) != flight_id:
            raise ValueError("bad price or id")
        currency = data.get("currency") or settings.CURRENCY
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
            raise ValueError("bad currency")
    except (KeyError, TypeError, ValueError, InvalidOperation) as error:
        raise FlightServiceUnavailable(
            f"The Flights service answered with an unexpected flight: {str(body)[:200]}", maybe_applied=maybe_applied
        ) from error
    return FlightInfo(
        id=flight_id,
        price=price.quantize(Decimal("0.01")),
        available_seats=available,
        keeps_holds=body is data,  # Our plain resource: our service, which keeps holds.
        currency=currency.upper(),
    )


@functools.cache
def _http_gateway(base_url: str, token: str, timeout: float, remember_seconds: float) -> HttpFlightGateway:
    return HttpFlightGateway(base_url=base_url, token=token, timeout=timeout, remember_seconds=remember_seconds)


def get_flight_gateway() -> FlightGateway:
    """The adapter the settings ask for; the HTTP one is shared so its connections are reused."""
    if settings.FLIGHT_SERVICE_URL:
        return _http_gateway(
            settings.FLIGHT_SERVICE_URL,
            settings.FLIGHT_SERVICE_TOKEN,
            settings.FLIGHT_SERVICE_TIMEOUT,
            settings.FLIGHT_SERVICE_REMEMBER_SECONDS,
        )
    return InProcessFlightGateway()
