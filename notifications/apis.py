"""Webhook endpoints API (docs/api.md#webhooks): staff only; thin views over notifications.services."""

from drf_spectacular.utils import OpenApiCallback, OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from bookings_project.authentication import TokenAuthentication
from bookings_project.exceptions import NotFound
from bookings_project.locations import LOCATION_HEADER, created
from bookings_project.openapi import ID_PATH_PARAMETER, ID_PATTERN, problem_responses
from bookings_project.pagination import page_parameters
from notifications import selectors, services
from notifications.models import WebhookEndpoint
from notifications.serializers import (
    DeliverySerializer,
    WebhookEndpointCreatedSerializer,
    WebhookEndpointCreateSerializer,
    WebhookEndpointSerializer,
    WebhookEndpointUpdateSerializer,
    WebhookEventSerializer,
)

EXAMPLE_REQUEST = {
    "url": "https://hooks.example.com/flight-bookings",
    "events": ["booking.confirmed", "booking.cancelled"],
    "description": "CRM",
}
EXAMPLE_ENDPOINT = {
    "id": 1,
    **EXAMPLE_REQUEST,
    "isActive": True,
    "createdAt": "2027-01-02T09:00:00Z",
}


@extend_schema_view(
    list=extend_schema(
        operation_id="listWebhookEndpoints",
        summary="List webhook endpoints",
        description="Staff only. Newest first.",
        responses={200: WebhookEndpointSerializer(many=True), **problem_responses(400, 401, 403, 404)},
    ),
    retrieve=extend_schema(
        operation_id="getWebhookEndpoint",
        summary="Get a webhook endpoint",
        parameters=[ID_PATH_PARAMETER],
        responses={200: WebhookEndpointSerializer, **problem_responses(401, 403, 404)},
    ),
    destroy=extend_schema(
        operation_id="deleteWebhookEndpoint",
        summary="Delete a webhook endpoint",
        description="Nothing more is sent to it; its deliveries are deleted with it.",
        parameters=[ID_PATH_PARAMETER],
        responses={204: None, **problem_responses(401, 403, 404)},
    ),
)
class WebhookEndpointViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    serializer_class = WebhookEndpointSerializer
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated, IsAdminUser]
    lookup_value_regex = ID_PATTERN
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return selectors.endpoint_list()

    def get_object(self) -> WebhookEndpoint:
        endpoint = selectors.endpoint_list().filter(pk=int(self.kwargs["pk"])).first()
        if endpoint is None:
            raise NotFound(f"Webhook endpoint {self.kwargs['pk']} does not exist.")
        return endpoint

    @extend_schema(
        operation_id="createWebhookEndpoint",
        summary="Register a webhook endpoint",
        description=(
            "Staff only. Events written from now on are POSTed to `url`, signed after the Standard Webhooks "
            "specification with the `secret` of this answer (shown only here). `events` defaults to all four "
            "types. The URL must be `https` on a public address."
        ),
        request=WebhookEndpointCreateSerializer,
        parameters=[LOCATION_HEADER],
        responses={201: WebhookEndpointCreatedSerializer, **problem_responses(400, 401, 403, 415)},
        callbacks=[
            OpenApiCallback(
                "bookingEvent",
                "{$request.body#/url}",
                extend_schema(
                    summary="A booking event, delivered to your endpoint",
                    description=(
                        "POSTed with the headers `webhook-id` (the event's `id`), `webhook-timestamp` (Unix seconds "
                        "of this attempt) and `webhook-signature` (`v1,` and base64 of HMAC-SHA256 over "
                        '`"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the base64-decoded secret after '
                        "`whsec_`): the Standard Webhooks scheme, which its libraries verify. Answer 2xx within 10 s; "
                        "anything else (a redirect included) is retried after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and "
                        "10 h. At least once: deduplicate on `webhook-id`."
                    ),
                    request=WebhookEventSerializer,
                    responses={200: OpenApiResponse(description="Received (any 2xx).")},
                ),
            )
        ],
        examples=[
            OpenApiExample("Two event types", value=EXAMPLE_REQUEST, request_only=True),
            OpenApiExample(
                "Registered",
                value={**EXAMPLE_ENDPOINT, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                response_only=True,
                status_codes=["201"],
            ),
        ],
    )
    def create(self, request: Request) -> Response:
        serializer = WebhookEndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        endpoint = services.endpoint_create(
            url=data["url"],
            events=data.get("events"),
            description=data.get("description", ""),
            created_by=request.user,
        )
        return created(
            request, WebhookEndpointCreatedSerializer(endpoint).data, view_name="webhook-detail", pk=endpoint.pk
        )

    def perform_destroy(self, instance: WebhookEndpoint) -> None:
        services.endpoint_delete(endpoint=instance)

    @extend_schema(
        operation_id="updateWebhookEndpoint",
        summary="Change a webhook endpoint",
        description="Staff only. Any of `url`, `events`, `description`, `isActive`.",
        parameters=[ID_PATH_PARAMETER],
        request=WebhookEndpointUpdateSerializer,
        responses={200: WebhookEndpointSerializer, **problem_responses(400, 401, 403, 404, 415)},
        examples=[
            OpenApiExample("Rename", value={"description": "CRM (production)"}, request_only=True),
            OpenApiExample("Pause", value={"isActive": False}, request_only=True),
        ],
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        serializer = WebhookEndpointUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = services.endpoint_update(endpoint=self.get_object(), **serializer.validated_data)
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        operation_id="listWebhookDeliveries",
        summary="An endpoint's deliveries",
        description=(
            "Staff only. Newest first: each event sent (or being sent) to the endpoint, its state (`pending`, "
            "`delivered`, `failed`), attempts, the last answer and the next attempt."
        ),
        parameters=[ID_PATH_PARAMETER, *page_parameters()],
        responses={200: DeliverySerializer(many=True), **problem_responses(400, 401, 403, 404)},
        filters=False,
    )
    @action(detail=True, methods=["get"], url_path="deliveries")
    def deliveries(self, request: Request, pk: str) -> Response:
        page = self.paginate_queryset(selectors.endpoint_deliveries(endpoint=self.get_object()))
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)
