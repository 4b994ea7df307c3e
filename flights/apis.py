"""Flights API (docs/api.md#flights): thin views over flights.services and flights.selectors."""

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from bookings_project.openapi import ID_PATH_PARAMETER, ID_PATTERN, problem, problem_responses
from flights import selectors, services
from flights.permissions import IsStaffForWrites, IsStaffOrServiceForWrites
from flights.serializers import (
    FlightCreateSerializer,
    FlightSeatsResultSerializer,
    FlightSerializer,
    SeatHoldSerializer,
    SeatsChangeSerializer,
)

SEED_FLIGHT_EXAMPLE = {
    "id": 123,
    "flightNumber": "UK808",
    "departureAirport": "BOM",
    "arrivalAirport": "DEL",
    "departureTime": "2027-01-10T10:00:00Z",
    "arrivalTime": "2027-01-10T12:10:00Z",
    "price": "5500.00",
    "capacity": 120,
    "totalSeats": 118,
}


@extend_schema_view(
    list=extend_schema(
        summary="List flights",
        description="Paginated, by departure time.",
        responses={200: FlightSerializer(many=True), **problem_responses(400, 401, 404)},
    ),
    retrieve=extend_schema(
        summary="Get a flight",
        parameters=[ID_PATH_PARAMETER],
        responses={
            200: FlightSerializer,
            **problem_responses(401, 404),
        },
        examples=[OpenApiExample("Seed flight", value=SEED_FLIGHT_EXAMPLE, response_only=True)],
    ),
)
class FlightViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = FlightSerializer
    permission_classes = [IsStaffForWrites]
    lookup_value_regex = ID_PATTERN

    def get_queryset(self):
        return selectors.flight_list()

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(FlightSerializer(selectors.flight_get(flight_id=int(pk))).data)

    @extend_schema(
        summary="Create a flight (staff)",
        request=FlightCreateSerializer,
        responses={201: FlightSerializer, **problem_responses(400, 401, 403, 415)},
        examples=[
            OpenApiExample(
                "New flight",
                value={k: v for k, v in SEED_FLIGHT_EXAMPLE.items() if k not in ("id", "totalSeats")},
                request_only=True,
            )
        ],
    )
    def create(self, request: Request) -> Response:
        serializer = FlightCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        flight = services.flight_create(**serializer.to_service_kwargs())
        return Response(FlightSerializer(flight).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Take or give back seats (staff or service token)",
        parameters=[ID_PATH_PARAMETER],
        description=(
            'Seed-compatible: `{"seats": n, "dec": true}` takes seats, `dec: false` gives them back. '
            "Answers the flight as it is after the change. With `reservation`, the change goes through "
            "the hold ledger and applies at most once per reference."
        ),
        request=SeatsChangeSerializer,
        responses={
            200: FlightSeatsResultSerializer,
            **problem_responses(
                400,
                401,
                403,
                404,
                415,
                (
                    409,
                    problem(
                        409,
                        codes=("insufficient_seats", "capacity_exceeded", "reservation_conflict", "resource_busy"),
                    ),
                ),
            ),
        },
        examples=[
            OpenApiExample(
                "Reserve for a booking",
                value={"seats": 2, "dec": True, "reservation": "booking-789"},
                request_only=True,
            ),
            OpenApiExample(
                "Release a booking's hold",
                value={"seats": 2, "dec": False, "reservation": "booking-789"},
                request_only=True,
            ),
            OpenApiExample("Seed style", value={"seats": 3, "dec": True}, request_only=True),
        ],
    )
    @action(detail=True, methods=["patch"], url_path="seats", permission_classes=[IsStaffOrServiceForWrites])
    def seats(self, request: Request, pk: str) -> Response:
        serializer = SeatsChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = services.flight_seats_change(
            flight_id=int(pk),
            seats=serializer.validated_data["seats"],
            decrease=serializer.validated_data["dec"],
            reservation=serializer.validated_data.get("reservation"),
        )
        body = {
            **FlightSerializer(result.flight).data,
            "reservation": SeatHoldSerializer(result.hold).data if result.hold else None,
        }
        return Response(body)
