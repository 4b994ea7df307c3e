"""Payments API (docs/api.md#payments): thin views over payments.services, payments.idempotency and
payments.selectors."""

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bookings.services import booking_owner
from bookings_project.authentication import TokenAuthentication
from bookings_project.errors import PROBLEM_CONTENT_TYPE
from bookings_project.exceptions import DomainError, IdempotencyKeyMissing
from bookings_project.locations import location_header, location_of
from bookings_project.openapi import ID_PATH_PARAMETER, ID_PATTERN, problem, problem_responses
from bookings_project.throttling import PaymentsThrottle
from payments import idempotency, selectors, services
from payments.filters import PaymentFilter
from payments.models import Payment
from payments.serializers import PaymentActionSerializer, PaymentCreateSerializer, PaymentSerializer, payment_answer

REPLAYED_HEADER = "Idempotent-Replayed"

# The demo data's flow, as the demo user tries it on a fresh database (bookings.apis): booking 1,
# 11000.00, and a key of its own (the README's walk-through uses another), so that trying
# it again replays its answer.
EXAMPLE_PAYMENT_REQUEST = {"bookingId": 1, "amount": "11000.00"}
EXAMPLE_KEY = "try-it-booking-1"
EXAMPLE_PAYMENT = {
    "id": 1,
    "bookingId": 1,
    "userId": 1,
    "amount": "11000.00",
    "currency": "INR",
    "status": "SUCCEEDED",
    "gatewayReference": "sim_ch_5f0c6b1e2d3a4b5c6d7e8f90",
    "createdAt": "2027-01-02T09:01:00Z",
    "updatedAt": "2027-01-02T09:01:01Z",
}

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": f"^{idempotency.KEY_PATTERN.pattern}$"},
    OpenApiParameter.HEADER,
    required=True,
    description=(
        "Your unique key for this payment (at most 255 characters), kept for `IDEMPOTENCY_KEY_TTL_HOURS`. "
        "Resend the same key and body to get the first final answer again; a new attempt needs a new key. "
        "The seed's `x-idempotency-key` is accepted instead."
    ),
    examples=[OpenApiExample("A key for the demo booking", value=EXAMPLE_KEY)],
)
SEED_IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    "x-idempotency-key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    deprecated=True,
    description="The seed's name for `Idempotency-Key`; send one of the two.",
)
REPLAYED_PARAMETER = OpenApiParameter(
    REPLAYED_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    enum=["true"],
    response=[201, 202, 402, 404, 409, 422],
    description="Present (`true`) when this is the stored answer to an earlier request with the same key.",
)


def idempotency_key_of(request: Request) -> str:
    """The payment's key from `Idempotency-Key` or the seed's `x-idempotency-key`."""
    standard = request.headers.get("Idempotency-Key", "").strip()
    seed = request.headers.get("X-Idempotency-Key", "").strip()
    if standard and seed and standard != seed:
        raise serializers.ValidationError({"Idempotency-Key": "Differs from x-idempotency-key; send one key."})
    key = standard or seed
    if not key:
        raise IdempotencyKeyMissing()
    if len(key) > idempotency.MAX_KEY_LENGTH or not idempotency.KEY_PATTERN.fullmatch(key):
        raise serializers.ValidationError(
            {"Idempotency-Key": f"1 to {idempotency.MAX_KEY_LENGTH} printable ASCII characters."}
        )
    return key


@extend_schema_view(
    list=extend_schema(
        operation_id="listPayments",
        summary="List payments",
        description=(
            "Your payments, newest first (staff see everyone's). Filter by `bookingId`, `status`. "
            "An unknown parameter is a 400."
        ),
        responses={200: PaymentSerializer(many=True), **problem_responses(400, 401, 404)},
    ),
    retrieve=extend_schema(
        operation_id="getPayment",
        summary="Get a payment",
        parameters=[ID_PATH_PARAMETER],
        responses={200: PaymentSerializer, **problem_responses(401, 404)},
        examples=[OpenApiExample("Demo payment", value=EXAMPLE_PAYMENT, response_only=True)],
    ),
)
class PaymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = PaymentSerializer
    throttle_classes = [PaymentsThrottle]
    # People only, as for bookings: the Flights service token is no customer.
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    filter_backends = [DjangoFilterBackend]
    filterset_class = PaymentFilter
    lookup_value_regex = ID_PATTERN

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Payment.objects.none()
        return selectors.payment_list(user=self.request.user)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(PaymentSerializer(selectors.payment_get(user=request.user, payment_id=int(pk))).data)

    @extend_schema(
        operation_id="createPayment",
        summary="Pay for a booking, exactly once",
        description=(
            "Charges the booking's `totalCost` through the payment gateway; the booking becomes BOOKED. "
            "Send an `Idempotency-Key`: resending the same key and body never charges twice, and answers the "
            "first final answer again with `Idempotent-Replayed: true`. Answers that invite a retry (409 "
            "`idempotency_key_in_use` / `payment_in_progress` / `resource_busy`, 503) are not stored: retry them "
            "with the same key. After a 402 decline, pay again with a new key. `totalCost` is accepted for `amount`."
        ),
        parameters=[
            IDEMPOTENCY_KEY_PARAMETER,
            SEED_IDEMPOTENCY_KEY_PARAMETER,
            REPLAYED_PARAMETER,
            location_header(201, 202),  # A 202's payment exists too: follow it there.
        ],
        request=PaymentCreateSerializer,
        responses={
            201: PaymentSerializer,
            202: OpenApiResponse(
                PaymentActionSerializer,
                description=(
                    "Stripe only: the card needs 3-D Secure. The payment is `REQUIRES_ACTION` and the booking stays "
                    "PENDING: give `clientSecret` to Stripe.js (`stripe.handleNextAction`), then follow the booking "
                    "(GET it, or a `booking.confirmed` webhook) until Stripe's webhook settles it. This answer is "
                    "final for its key."
                ),
            ),
            **problem_responses(
                (400, problem(400, "Invalid input, or no key.", codes=("validation_error", "idempotency_key_missing"))),
                401,
                (
                    402,
                    problem(
                        402, "The gateway declined the payment. Pay again with a new key.", codes=("payment_declined",)
                    ),
                ),
                (403, problem(403, "`userId` is someone else's and you are not staff.", codes=("user_mismatch",))),
                (404, problem(404, "No such booking, or not yours.", codes=("not_found",))),
                (
                    409,
                    problem(
                        409,
                        "The booking cannot be paid now, or the key is still running.",
                        codes=(
                            "booking_expired",
                            "booking_not_payable",
                            "payment_in_progress",
                            "idempotency_key_in_use",
                            "resource_busy",
                        ),
                    ),
                ),
                415,
                (
                    422,
                    problem(
                        422,
                        "The amount is not the booking's totalCost, or the key was used with another body.",
                        codes=("amount_mismatch", "idempotency_key_reused"),
                    ),
                ),
                (
                    503,
                    problem(
                        503,
                        "The payment gateway did not answer, or not in time. Retry with the same key: it never "
                        "charges twice.",
                        codes=("payment_gateway_unavailable", "service_unavailable"),
                    ),
                ),
            ),
        },
        examples=[
            OpenApiExample("Pay the demo booking", value=EXAMPLE_PAYMENT_REQUEST, request_only=True),
            OpenApiExample("Older clients' alias", value={"bookingId": 1, "totalCost": "11000.00"}, request_only=True),
            OpenApiExample("Paid", value=EXAMPLE_PAYMENT, response_only=True, status_codes=["201"]),
        ],
    )
    def create(self, request: Request) -> Response:
        key = idempotency_key_of(request)
        serializer = PaymentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        user_id = data.get("userId")
        booking_owner(caller=request.user, user_id=user_id)  # The userId rule, before the key is claimed.

        def pay(claim: idempotency.Claim) -> tuple[int, dict]:
            def store_answer(payment: Payment, refusal: DomainError | None) -> None:
                # Inside the transaction that records the gateway's answer: the key's answer commits with it.
                if refusal is not None:
                    claim.store_refusal(refusal)
                else:
                    claim.store(*payment_answer(payment))  # A 202 (3-D Secure) is final for its key too.

            payment = services.payment_create(
                caller=request.user,
                booking_id=data["bookingId"],
                amount=data["amount"],
                idempotency_key=key,
                user_id=user_id,
                payment_method=data.get("paymentMethod", ""),
                on_settled=store_answer,
            )
            if claim.answer:
                return claim.answer.status, claim.answer.body
            return payment_answer(payment)

        answer = idempotency.run_idempotently(
            user=request.user,
            key=key,
            fingerprint=idempotency.request_fingerprint(
                method=request.method, path=request.path, body=serializer.normalised(caller_id=request.user.pk)
            ),
            operation=pay,
        )
        response = Response(
            answer.body,
            status=answer.status,
            content_type=PROBLEM_CONTENT_TYPE if answer.status >= 400 else None,
        )
        if answer.replayed:
            response[REPLAYED_HEADER] = "true"
        if answer.status in (status.HTTP_201_CREATED, status.HTTP_202_ACCEPTED):  # A replay too: the same payment.
            response["Location"] = location_of(request, "payment-detail", answer.body["id"])
        return response


class StripeWebhookView(APIView):
    """Stripe's events (docs/api.md#stripe): signed with the endpoint's secret, so no token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []  # Stripe's own retries; the signature check comes first and is cheap.

    @extend_schema(
        operation_id="receiveStripeWebhook",
        summary="Stripe's webhook (Stripe calls it)",
        description=(
            "Register this URL in Stripe's dashboard (Developers → Webhooks) for `payment_intent.succeeded`, "
            "`payment_intent.payment_failed` and `charge.refunded`. Each delivery is verified against "
            "`STRIPE_WEBHOOK_SECRET` (`Stripe-Signature`, else 400 and nothing changes) and each event id is "
            "handled once. Other event types are acknowledged and ignored. Any other answer than 200 (a 409, a 503) "
            "has Stripe send it again."
        ),
        auth=[],
        parameters=[
            OpenApiParameter("Stripe-Signature", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True),
        ],
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            200: inline_serializer(
                "StripeWebhookReceived",
                {"received": serializers.BooleanField(), "outcome": serializers.CharField()},
            ),
            **problem_responses(
                (400, problem(400, "The signature does not verify.", codes=("webhook_signature_invalid",))),
                (404, problem(404, "Stripe is not this service's payment gateway.", codes=("not_found",))),
                (409, problem(409, "A row it changes was locked: Stripe sends it again.", codes=("resource_busy",))),
                (
                    503,
                    problem(
                        503,
                        "Stripe (a cancel, a refund) or the database did not answer: Stripe sends it again.",
                        codes=("payment_gateway_unavailable", "service_unavailable"),
                    ),
                ),
            ),
        },
    )
    def post(self, request: Request) -> Response:
        from payments.stripe_webhook import stripe_event_handle  # Imports `stripe` only where it is used.

        outcome = stripe_event_handle(payload=request.body, signature=request.headers.get("Stripe-Signature", ""))
        return Response({"received": True, "outcome": outcome})
