"""The seed's Node Flights Service, faked with `responses` (`SeedFlightsService`): every
answer wrapped in `{"success", "message", "data", "error"}`, a numeric price, 500 with "Cannot
fetch data of the flight" for an unknown id, 400 for `{"seats": 0}`, and a seat PATCH that
answers the flight as it was *before* the change, keeps no holds and lets `totalSeats` go below
zero. The `seed` fixture (`tests.fixtures.flights`) points the service at it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from tests.support import http_faults

SEED_URL = "http://seed-flights.test"
FLIGHT_URL = re.compile(re.escape(SEED_URL) + r"/api/v1/flights/(\d+)$")
SEATS_URL = re.compile(re.escape(SEED_URL) + r"/api/v1/flights/(\d+)/seats$")

READ_TIMEOUT = "HTTPConnectionPool(host='seed-flights.test', port=80): Read timed out. (read timeout=1.0)"


@dataclass
class Received:
    method: str
    flight_id: int
    body: dict | None
    headers: dict
    # False when the connection was refused: the seed never saw it.
    arrived: bool = True


@dataclass
class SeedFlightsService:
    """The seed's Flights Service, in memory. `seats` is its `totalSeats` per flight id."""

    seats: dict[int, int] = field(default_factory=lambda: {1: 120})
    # Its numeric price, the same for every flight; a test may change it between calls.
    price: int = 5000
    requests: list[Received] = field(default_factory=list)
    # Runs once, on the next PATCH that arrives, before the seed applies it (then cleared):
    # lets "another customer" act between our GET and our PATCH.
    before_patch: Callable[[dict], None] | None = None
    # One-shot fault for the next PATCH: "refused" (never arrives, nothing applied) or
    # "timeout_after_apply" (applied, but the answer never comes back).
    patch_fault: str | None = None
    # flight id -> (status, body) answered to GETs instead of the flight.
    get_failures: dict[int, tuple[int, object]] = field(default_factory=dict)

    # Mock callbacks --------------------------------------------------------------------

    def on_get(self, request: requests.PreparedRequest):
        flight_id = int(FLIGHT_URL.match(request.url).group(1))
        self.requests.append(Received("GET", flight_id, None, dict(request.headers)))
        if flight_id in self.get_failures:
            status, body = self.get_failures[flight_id]
            return status, {}, body if isinstance(body, str) else json.dumps(body)
        if flight_id not in self.seats:
            return self._error(500, "Cannot fetch data of the flight")
        return self._ok(self._flight(flight_id, self.seats[flight_id]))

    def on_patch(self, request: requests.PreparedRequest):
        flight_id = int(SEATS_URL.match(request.url).group(1))
        body = json.loads(request.body)
        fault, self.patch_fault = self.patch_fault, None
        self.requests.append(Received("PATCH", flight_id, body, dict(request.headers), arrived=fault != "refused"))
        if fault == "refused":
            raise http_faults.refused(request.url, request=request)
        hook, self.before_patch = self.before_patch, None
        if hook:
            hook(body)
        if flight_id not in self.seats:
            return self._error(500, "Cannot update data of the flight")
        if not body.get("seats"):
            return self._error(400, ["seats not found in the incoming request in the correct form"])
        before = self.seats[flight_id]
        # No check against zero, and the flight answered is the one from before the change.
        self.seats[flight_id] = before - body["seats"] if _truthy(body.get("dec", True)) else before + body["seats"]
        if fault == "timeout_after_apply":
            raise requests.exceptions.ReadTimeout(READ_TIMEOUT, request=request)
        return self._ok(self._flight(flight_id, before))

    # Seed answers ----------------------------------------------------------------------

    def _flight(self, flight_id: int, total_seats: int) -> dict:
        return {
            "id": flight_id,
            "flightNumber": "UK808",
            "airplaneId": 1,
            "departureAirportId": "BOM",
            "arrivalAirportId": "DEL",
            "departureTime": "2027-01-10T10:00:00.000Z",
            "arrivalTime": "2027-01-10T12:10:00.000Z",
            "price": self.price,
            "boardingGate": "12A",
            "totalSeats": total_seats,
            "createdAt": "2026-12-01T08:00:00.000Z",
            "updatedAt": "2026-12-01T08:00:00.000Z",
        }

    @staticmethod
    def _ok(data: dict):
        body = {"success": True, "message": "Successfully completed the request", "data": data, "error": {}}
        return 200, {}, json.dumps(body)

    @staticmethod
    def _error(status: int, explanation):
        body = {
            "success": False,
            "message": "Something went wrong",
            "data": {},
            "error": {"explanation": explanation, "statusCode": status},
        }
        return status, {}, json.dumps(body)

    # For assertions --------------------------------------------------------------------

    def patches(self, *, dec: bool | None = None, arrived_only: bool = False) -> list[dict]:
        """Bodies of the PATCHes we sent (all attempts, unless `arrived_only`)."""
        return [
            r.body
            for r in self.requests
            if r.method == "PATCH"
            and (dec is None or _truthy(r.body.get("dec", True)) == dec)
            and (r.arrived or not arrived_only)
        ]


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.lower() not in ("", "0", "false")
    return bool(value)
