"""The domain's exceptions: what a service, selector or gateway raises when a business rule
or a dependency says no.

Each carries its HTTP status, a stable `code` and a `title` (and `retry_after` when the same
request may succeed later); `bookings_project.errors` renders them as problem details, and
nothing here knows about HTTP beyond those attributes.
"""

from __future__ import annotations


class DomainError(Exception):
    """A business rule said no. Each subclass has its HTTP status and stable code."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"
    default_detail: str = "The request could not be processed."
    retry_after: int | None = None

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        self.detail = detail or self.default_detail
        if retry_after is not None:
            self.retry_after = retry_after
        super().__init__(self.detail)

    @property
    def invites_retry(self) -> bool:
        """The same request may succeed later (busy, in progress, a dependency down): such
        answers carry Retry-After, and an idempotency key never stores them (docs/api.md#idempotency)."""
        return self.retry_after is not None


class PayloadTooLarge(DomainError):
    status, code, title = 413, "payload_too_large", "Request body too large"
    default_detail = "The request body is larger than this service takes."


class HttpsRequired(DomainError):
    status, code, title = 403, "https_required", "HTTPS required"
    default_detail = (
        "The API answers over HTTPS only. Send this request to the https:// URL, with a new token if it carried one."
    )


class NotFound(DomainError):
    status, code, title = 404, "not_found", "Not found"
    default_detail = "No such resource."


class InsufficientSeats(DomainError):
    status, code, title = 409, "insufficient_seats", "Not enough seats"
    default_detail = "The flight does not have enough seats left."


class CapacityExceeded(DomainError):
    status, code, title = 409, "capacity_exceeded", "Seats above capacity"
    default_detail = "Giving back these seats would take the flight above its capacity."


class ReservationConflict(DomainError):
    status, code, title = 409, "reservation_conflict", "Reservation conflict"
    default_detail = "This reservation reference is already used differently."


class ResourceBusy(DomainError):
    status, code, title = 409, "resource_busy", "Resource busy"
    default_detail = "Another request holds this resource. Retry shortly."
    retry_after = 1


class ServiceUnavailable(DomainError):
    status, code, title = 503, "service_unavailable", "Service unavailable"
    default_detail = "A dependency of the service is unavailable. Retry shortly."
    retry_after = 5


class FlightServiceUnavailable(DomainError):
    """The Flights service did not give a definite answer (timeout, refused, 5xx, garbage).

    `maybe_applied` says whether a seat change may have taken effect anyway: false only
    when the request provably never reached the service (connection refused).
    """

    status, code, title = 503, "flight_service_unavailable", "Flights service unavailable"
    default_detail = "The Flights service is unavailable or did not answer in time. Retry shortly."
    retry_after = 5

    def __init__(self, detail: str | None = None, *, maybe_applied: bool = True) -> None:
        super().__init__(detail)
        self.maybe_applied = maybe_applied


class UserMismatch(DomainError):
    status, code, title = 403, "user_mismatch", "User mismatch"
    default_detail = "userId must be your own id; only staff may act for another user."


class PaymentInProgress(DomainError):
    status, code, title = 409, "payment_in_progress", "Payment in progress"
    default_detail = "A payment for this booking is in progress. Retry once it has finished."
    retry_after = 5


class BookingExpired(DomainError):
    status, code, title = 409, "booking_expired", "Booking expired"
    default_detail = "The booking's hold ran out before it was paid; it has been cancelled and its seats released."


class BookingNotPayable(DomainError):
    status, code, title = 409, "booking_not_payable", "Booking not payable"
    default_detail = "The booking is already paid or cancelled."


class AmountMismatch(DomainError):
    status, code, title = 422, "amount_mismatch", "Amount mismatch"
    default_detail = "The amount differs from the booking's totalCost."


class PaymentDeclined(DomainError):
    status, code, title = 402, "payment_declined", "Payment declined"
    default_detail = "The payment gateway declined the payment. Pay again with a new Idempotency-Key."


class PaymentGatewayUnavailable(DomainError):
    """The payment gateway gave no definite answer, or refused our request.

    `maybe_charged` says whether money may have been taken anyway: false only when the
    request provably never reached the gateway or the gateway refused it outright.
    """

    status, code, title = 503, "payment_gateway_unavailable", "Payment gateway unavailable"
    default_detail = (
        "The payment gateway is unavailable or did not answer in time. Retry with the same Idempotency-Key."
    )
    retry_after = 5

    def __init__(self, detail: str | None = None, *, maybe_charged: bool = True) -> None:
        super().__init__(detail)
        self.maybe_charged = maybe_charged


class WebhookSignatureInvalid(DomainError):
    status, code, title = 400, "webhook_signature_invalid", "Webhook signature invalid"
    default_detail = "The Stripe-Signature header is missing, malformed, too old, or does not match the body."


class IdempotencyKeyMissing(DomainError):
    status, code, title = 400, "idempotency_key_missing", "Idempotency-Key missing"
    default_detail = "Send an Idempotency-Key header (x-idempotency-key is accepted too) with every payment."


class IdempotencyKeyInUse(DomainError):
    status, code, title = 409, "idempotency_key_in_use", "Idempotency-Key in use"
    default_detail = "A request with this Idempotency-Key is still running. Retry shortly for its answer."
    retry_after = 1


class IdempotencyKeyReused(DomainError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency-Key reused"
    default_detail = "This Idempotency-Key was used with a different request body. Use a new key."


class InvalidCredentials(DomainError):
    status, code, title = 401, "not_authenticated", "Not authenticated"
    default_detail = "Unable to log in with the provided credentials."
