"""Bookings API (docs/api.md#bookings): thin views over bookings.services and bookings.selectors."""

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from bookings import references, selectors, services
from bookings.filters import BookingFilter
from bookings.models import Booking
from bookings.serializers import BookingCreateSerializer, BookingEventSerializer
from bookings_project.authentication import TokenAuthentication
from bookings_project.locations import LOCATION_HEADER, created
from bookings_project.openapi import ID_PATH_PARAMETER, ID_PATTERN, problem, problem_responses
from bookings_project.pagination import page_parameters
from bookings_project.throttling import BookingsThrottle
from payments import selectors as payment_selectors
from payments.serializers import BookingAnswerSerializer
from workflows.services import booking_cancel

# The examples are the demo data's (`load_demo_data`) as the demo user sees it on a fresh
# database: flight 1 (UK808) at 5500.00 a seat, 2 seats, booking 1 (docs/api.md#trying-it-in-swagger-ui).
EXAMPLE_BOOKING_REQUEST = {"flightId": 1, "numberOfSeats": 2}
EXAMPLE_BOOKING = {
    "id": 1,
    "reference": references.reference_of(1),
    "flightId": 1,
    "userId": 1,
    "numberOfSeats": 2,
    "totalCost": "11000.00",
    "currency": "INR",
    "status": "INITIATED",
    "createdAt": "2027-01-02T09:00:00Z",
    "updatedAt": "2027-01-02T09:00:00Z",
    "expiresAt": "2027-01-02T09:10:00Z",
    "cancelReason": None,
    "payment": None,
}
EXAMPLE_CANCELLED = {
    **EXAMPLE_BOOKING,
    "status": "CANCELLED",
    "updatedAt": "2027-01-02T09:03:00Z",
    "cancelReason": "user",
    "payment": {
        "id": 1,
        "status": "REFUNDED",
        "amount": "11000.00",
        "currency": "INR",
        "refundedAt": "2027-01-02T09:03:00Z",
    },
}

_FLIGHT_UNAVAILABLE = (
    503,
    problem(
        503,
        "The Flights service did not answer, or not in time. Nothing is held for you; retry after `Retry-After`.",
        codes=("flight_service_unavailable",),
    ),
)


@extend_schema_view(
    list=extend_schema(
        operation_id="listBookings",
        summary="List bookings",
        description=(
            "Your bookings, newest first (staff see everyone's). Filter by `status`, `flightId`, `reference`, "
            "`userId`. An unknown parameter is a 400."
        ),
        responses={200: BookingAnswerSerializer(many=True), **problem_responses(400, 401, 403, 404)},
    ),
    retrieve=extend_schema(
        operation_id="getBooking",
        summary="Get a booking",
        parameters=[ID_PATH_PARAMETER],
        responses={200: BookingAnswerSerializer, **problem_responses(401, 403, 404)},
        examples=[OpenApiExample("Demo booking", value=EXAMPLE_BOOKING, response_only=True)],
    ),
)
class BookingViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = BookingAnswerSerializer
    throttle_classes = [BookingsThrottle]
    # People only: the Flights service token (a Bearer token) is no customer here, so its
    # authentication is left out and such a caller is anonymous (401).
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    filter_backends = [DjangoFilterBackend]
    filterset_class = BookingFilter
    lookup_value_regex = ID_PATTERN

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # Schema generation has no user.
            return Booking.objects.none()
        return selectors.booking_list(user=self.request.user)

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        payment_selectors.attach_latest_payments(page)
        return self.get_paginated_response(BookingAnswerSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        booking = selectors.booking_get(user=request.user, booking_id=int(pk))
        payment_selectors.attach_latest_payments([booking])
        return Response(BookingAnswerSerializer(booking).data)

    @extend_schema(
        operation_id="createBooking",
        summary="Book seats on a flight",
        description=(
            "Writes the booking and reserves its seats with the Flights service; the seats are held until "
            "`expiresAt` (`BOOKING_HOLD_MINUTES`). Pay before then. `noOfSeats` is accepted for `numberOfSeats`."
        ),
        request=BookingCreateSerializer,
        parameters=[LOCATION_HEADER],
        responses={
            201: BookingAnswerSerializer,
            **problem_responses(
                400,
                401,
                (403, problem(403, "`userId` is someone else's and you are not staff.", codes=("user_mismatch",))),
                (404, problem(404, "No such flight (or no such user, for staff).", codes=("not_found",))),
                (409, problem(409, codes=("insufficient_seats", "resource_busy", "reservation_conflict"))),
                415,
                _FLIGHT_UNAVAILABLE,
            ),
        },
        examples=[
            OpenApiExample("Two seats on the demo flight", value=EXAMPLE_BOOKING_REQUEST, request_only=True),
            OpenApiExample("Older clients' alias", value={"flightId": 1, "noOfSeats": 2}, request_only=True),
            OpenApiExample("Created", value=EXAMPLE_BOOKING, response_only=True, status_codes=["201"]),
        ],
    )
    def create(self, request: Request) -> Response:
        serializer = BookingCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        owner = services.booking_owner(caller=request.user, user_id=data.get("userId"))
        booking = services.booking_create(user=owner, flight_id=data["flightId"], seats=data["numberOfSeats"])
        payment_selectors.attach_no_payment(booking)
        return created(request, BookingAnswerSerializer(booking).data, view_name="booking-detail", pk=booking.pk)

    # PATCH is the seed's; POST, the same operation, needs an id of its own.
    @extend_schema(methods=["POST"], operation_id="cancelBookingWithPost")
    @extend_schema(
        operation_id="cancelBooking",
        summary="Cancel a booking",
        description=(
            "Cancels the booking and gives its seats back to the flight. Cancelling twice answers the same "
            "cancelled booking. PATCH (the seed's) and POST both work; no body is needed. A paid booking is "
            "refunded: its `payment` says so (`REFUNDED`, `refundedAt`)."
        ),
        parameters=[ID_PATH_PARAMETER],
        request=None,
        responses={
            200: OpenApiResponse(BookingAnswerSerializer, description="The booking, CANCELLED."),
            **problem_responses(
                401,
                403,
                404,
                (
                    409,
                    problem(
                        409,
                        "A payment is in flight, or the booking is busy.",
                        codes=("payment_in_progress", "resource_busy"),
                    ),
                ),
            ),
        },
        examples=[
            OpenApiExample("Cancelled and refunded", value=EXAMPLE_CANCELLED, response_only=True, status_codes=["200"])
        ],
    )
    @action(detail=True, methods=["patch", "post"], url_path="cancel")
    def cancel(self, request: Request, pk: str) -> Response:
        booking = selectors.booking_get(user=request.user, booking_id=int(pk))
        reason = Booking.CancelReason.USER if booking.user_id == request.user.pk else Booking.CancelReason.STAFF
        cancellation = booking_cancel(booking_id=booking.pk, reason=reason)
        payment_selectors.attach_latest_payments([cancellation.booking])
        return Response(BookingAnswerSerializer(cancellation.booking).data)

    @extend_schema(
        operation_id="listBookingEvents",
        summary="A booking's history",
        description=(
            "Every status change of the booking, oldest first: from, to, why, who (`user`, `staff`, `cleanup` "
            "or `gateway`), the request id and the time. Paginated like every list."
        ),
        parameters=[ID_PATH_PARAMETER, *page_parameters()],
        responses={200: BookingEventSerializer(many=True), **problem_responses(400, 401, 404)},
        filters=False,
    )
    @action(detail=True, methods=["get"], url_path="events", filter_backends=[])
    def events(self, request: Request, pk: str) -> Response:
        events = selectors.booking_events(user=request.user, booking_id=int(pk))
        page = self.paginate_queryset(events)
        return self.get_paginated_response(BookingEventSerializer(page, many=True).data)
