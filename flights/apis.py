"""Flights API (docs/api.md#flights): thin views over flights.services and flights.selectors."""

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from bookings_project.authentication import TokenAuthentication
from bookings_project.locations import LOCATION_HEADER, created
from bookings_project.openapi import ID_PATH_PARAMETER, ID_PATTERN, problem, problem_responses
from flights import selectors, services
from flights.authentication import ServiceTokenAuthentication
from flights.filters import FlightFilter
from flights.permissions import IsStaffForWrites, IsStaffOrServiceForWrites
from flights.serializers import (
    FlightCreateSerializer,
    FlightSeatsResultSerializer,
    FlightSerializer,
    SeatHoldSerializer,
    SeatsChangeSerializer,
)

# The demo data's first flight (`load_demo_data`), id 1 on a fresh database
# (docs/api.md#trying-it-in-swagger-ui).
EXAMPLE_FLIGHT = {
    "id": 1,
    "flightNumber": "UK808",
    "departureAirport": "BOM",
    "arrivalAirport": "DEL",
    "departureTime": "2027-01-10T10:00:00Z",
    "arrivalTime": "2027-01-10T12:10:00Z",
    "price": "5500.00",
    "currency": "INR",
    "capacity": 120,
    "totalSeats": 118,
}


@extend_schema_view(
    list=extend_schema(
        operation_id="searchFlights",
        summary="Search flights",
        description=(
            "Paginated, by departure time, then id. Every filter is optional and they combine: "
            "`departureAirport`, `arrivalAirport` (3-letter codes, any case), `departureDate` (the UTC date "
            "of `departureTime`), `minSeats` (seats still available). An unknown parameter is a 400."
        ),
        responses={200: FlightSerializer(many=True), **problem_responses(400, 401, 404)},
    ),
    retrieve=extend_schema(
        operation_id="getFlight",
        summary="Get a flight",
        parameters=[ID_PATH_PARAMETER],
        responses={
            200: FlightSerializer,
            **problem_responses(401, 404),
        },
        examples=[OpenApiExample("Demo flight", value=EXAMPLE_FLIGHT, response_only=True)],
    ),
)
class FlightViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = FlightSerializer
    # People, and a remote Bookings service with the Flights service token (a Bearer token),
    # which reads flights and changes seats. The schema shows that token on the seat change
    # only (`documents_service_token`): customers have no use for it.
    authentication_classes = [TokenAuthentication, ServiceTokenAuthentication, SessionAuthentication]
    permission_classes = [IsStaffForWrites]
    filter_backends = [DjangoFilterBackend]
    filterset_class = FlightFilter
    lookup_value_regex = ID_PATTERN
    documents_service_token = False

    def get_queryset(self):
        return selectors.flight_list()

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(FlightSerializer(selectors.flight_get(flight_id=int(pk))).data)

    @extend_schema(
        operation_id="createFlight",
        summary="Create a flight (staff)",
        request=FlightCreateSerializer,
        parameters=[LOCATION_HEADER],
        responses={201: FlightSerializer, **problem_responses(400, 401, 403, 415)},
        examples=[
            OpenApiExample(
                "New flight",
                value={k: v for k, v in EXAMPLE_FLIGHT.items() if k not in ("id", "totalSeats")},
                request_only=True,
            )
        ],
    )
    def create(self, request: Request) -> Response:
        serializer = FlightCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        flight = services.flight_create(**serializer.to_service_kwargs())
        return created(request, FlightSerializer(flight).data, view_name="flight-detail", pk=flight.pk)

    @extend_schema(
        operation_id="changeFlightSeats",
        summary="Take or give back seats (staff or service token)",
        parameters=[ID_PATH_PARAMETER],
        description=(
            'Seed-compatible: `{"seats": n, "dec": true}` takes seats, `dec: false` gives them back. '
            "Answers the flight as it is after the change. With `reservation`, the change goes through "
            "the hold ledger and applies at most once per reference. Staff, or a Bookings service with the "
            "Flights service token (`Authorization: Bearer <FLIGHT_SERVICE_TOKEN>`), which may also read flights."
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
                value={"seats": 2, "dec": True, "reservation": "example-hold-1"},
                request_only=True,
            ),
            OpenApiExample(
                "Release a booking's hold",
                value={"seats": 2, "dec": False, "reservation": "example-hold-1"},
                request_only=True,
            ),
            OpenApiExample("Seed style", value={"seats": 3, "dec": True}, request_only=True),
        ],
    )
    @action(
        detail=True,
        methods=["patch"],
        url_path="seats",
        permission_classes=[IsStaffOrServiceForWrites],
        documents_service_token=True,
    )
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
