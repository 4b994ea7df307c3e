"""Shared OpenAPI pieces: the problem-details schemas and the error responses per status."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from bookings_project.errors import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, title_of

# Ids are 64-bit integers: a longer one cannot exist, so it is refused in the URL (404) or
# in a body (400) before it reaches the database, where SQLite and PostgreSQL would fail differently.
ID_PATTERN = "[0-9]{1,18}"
MAX_ID = 10**18 - 1

# Example 1: on a fresh demo database (`make run`), the first of each resource
# (docs/api.md#trying-it-in-swagger-ui).
ID_PATH_PARAMETER = OpenApiParameter(
    "id",
    OpenApiTypes.INT,
    OpenApiParameter.PATH,
    description="The resource's integer id.",
    examples=[OpenApiExample("The first", value=1)],
)


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(allow_null=True, help_text="Dotted path of the field; null for the whole body.")
    message = serializers.CharField()


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details with a stable machine-readable `code`."""

    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    code = serializers.CharField()
    errors = FieldErrorSerializer(many=True, required=False)


_DESCRIPTIONS = {
    400: "Invalid input (`validation_error`).",
    401: "No or bad credentials (`not_authenticated`).",
    403: "Not allowed (`permission_denied`).",
    404: "Unknown id, or one that is not yours (`not_found`).",
    405: "Method not allowed (`method_not_allowed`).",
    409: "Conflict with the resource's current state.",
    415: "Only `application/json` bodies are accepted (`unsupported_media_type`).",
    429: "Too many requests (`throttled`); retry after `Retry-After` seconds.",
    503: "A dependency is unavailable; retry after `Retry-After` seconds.",
}


def problem(status: int, description: str | None = None, codes: tuple[str, ...] = ()) -> OpenApiResponse:
    text = description or _DESCRIPTIONS.get(status, "Error.")
    if codes:
        text += " Codes: " + ", ".join(f"`{code}`" for code in codes) + "."
    examples = [
        OpenApiExample(
            code,
            value={
                "type": PROBLEM_TYPE_BASE + code,
                "title": title_of(code),
                "status": status,
                "detail": "…",
                "code": code,
            },
            response_only=True,
            status_codes=[str(status)],
        )
        for code in codes
    ]
    return OpenApiResponse(ProblemSerializer, description=text, examples=examples)


def problem_responses(*items: int | tuple[int, OpenApiResponse]) -> dict:
    """`{(status, "application/problem+json"): response}` for `@extend_schema(responses=...)`.

    Give a bare status for its standard description, or `(status, problem(...))`.
    """
    responses = {}
    for item in items:
        status, response = item if isinstance(item, tuple) else (item, problem(item))
        responses[(status, PROBLEM_CONTENT_TYPE)] = response
    return responses


class ServiceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "flights.authentication.ServiceTokenAuthentication"
    name = "serviceToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The shared FLIGHT_SERVICE_TOKEN of a Bookings service calling this Flights service.",
        }


class AutoSchema(SpectacularAutoSchema):
    """Every operation of a rate-limited view documents its 429 answer; the Flights service
    token is shown only where a view says so (`documents_service_token`, the seat change)."""

    def get_auth(self):
        auth = super().get_auth()
        if getattr(self.view, "documents_service_token", False):
            return auth
        return [scheme for scheme in auth if ServiceTokenScheme.name not in scheme]

    def _get_response_bodies(self, direction="response"):
        bodies = super()._get_response_bodies(direction)
        if self.view.throttle_classes and "429" not in bodies:
            bodies["429"] = self._get_response_for_code(
                problem(429, codes=("throttled",)), "429", media_types=[PROBLEM_CONTENT_TYPE], direction=direction
            )
        return bodies


def allow_empty_query_values(result: dict, generator, request, public) -> dict:
    """Postprocessing hook: an empty query parameter is read as absent (bookings_project.query),
    so every query parameter says `allowEmptyValue`."""
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("in") == "query":
                    parameter["allowEmptyValue"] = True
    return result
