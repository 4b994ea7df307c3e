"""The one place that renders every error as RFC 9457 problem details.

Services raise `DomainError` subclasses (`bookings_project.exceptions`), rendered from their
status, code and title; DRF's and Django's own exceptions, and database errors, are
translated here too, so a client always gets `application/problem+json` with a stable `code`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from bookings_project.db import is_lock_contention
from bookings_project.exceptions import DomainError, NotFound, PayloadTooLarge, ResourceBusy, ServiceUnavailable

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://flight-bookings.example/problems/"


# DRF exception class -> code. Checked in order, so subclasses come first.
_DRF_CODES: list[tuple[type[drf_exceptions.APIException], str]] = [
    (drf_exceptions.ValidationError, "validation_error"),
    (drf_exceptions.ParseError, "validation_error"),
    (drf_exceptions.NotAuthenticated, "not_authenticated"),
    (drf_exceptions.AuthenticationFailed, "not_authenticated"),
    (drf_exceptions.PermissionDenied, "permission_denied"),
    (drf_exceptions.NotFound, "not_found"),
    (drf_exceptions.MethodNotAllowed, "method_not_allowed"),
    (drf_exceptions.NotAcceptable, "not_acceptable"),
    (drf_exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (drf_exceptions.Throttled, "throttled"),
]


def _titles() -> dict[str, str]:
    """Every code's one title: the domain errors' own, and those of the codes only DRF and
    Django raise. The server renders these and the schema's examples show them."""
    titles = {
        "validation_error": "Invalid input",
        "permission_denied": "Permission denied",
        "method_not_allowed": "Method not allowed",
        "not_acceptable": "Not acceptable",
        "unsupported_media_type": "Unsupported media type",
        "throttled": "Too many requests",
        "internal_error": "Internal server error",
    }
    pending = [DomainError]
    while pending:
        error = pending.pop()
        pending.extend(error.__subclasses__())
        if titles.setdefault(error.code, error.title) != error.title:
            raise AssertionError(f"Code {error.code} has two titles: {titles[error.code]!r}, {error.title!r}.")
    return titles


PROBLEM_TITLES: dict[str, str] = _titles()


def title_of(code: str) -> str:
    return PROBLEM_TITLES[code]


def problem_body(
    *, status: int, code: str, title: str, detail: str, errors: list[dict] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def flatten_validation_errors(detail: Any, prefix: str = "") -> list[dict[str, str | None]]:
    """Turn DRF's nested error structure into `[{"field": "a.b", "message": "..."}]`."""
    if isinstance(detail, dict):
        items: list[dict[str, str | None]] = []
        for key, value in detail.items():
            if key in ("non_field_errors", "__all__"):
                field = prefix or None
            else:
                field = f"{prefix}.{key}" if prefix else str(key)
            items.extend(flatten_validation_errors(value, field or ""))
        return items
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return [{"field": prefix or None, "message": str(item)} for item in detail]
        items = []
        for index, item in enumerate(detail):
            items.extend(flatten_validation_errors(item, f"{prefix}[{index}]" if prefix else str(index)))
        return items
    return [{"field": prefix or None, "message": str(detail)}]


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[dict] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        problem_body(status=status, code=code, title=title, detail=detail, errors=errors),
        status=status,
        headers=headers,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def problem_exception_handler(exc: Exception, context: dict) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception a view raises becomes problem details."""
    if isinstance(exc, Http404):
        exc = NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    elif isinstance(exc, SuspiciousOperation):
        # Django's own refusals of a request (a body too large, too many fields): the
        # client's fault, answered as Django answers them outside a view, never a 500.
        exc = _refusal(exc)
    elif isinstance(exc, OperationalError):
        if is_lock_contention(exc):
            logger.warning("lock wait ran out: %s", exc)
            exc = ResourceBusy()
        else:
            logger.error("database unavailable: %s", exc)
            exc = ServiceUnavailable("The database is unavailable. Retry shortly.")

    if isinstance(exc, DomainError):
        domain_headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        if exc.status == 401:
            domain_headers["WWW-Authenticate"] = "Token"
        return problem_response(
            status=exc.status, code=exc.code, title=exc.title, detail=exc.detail, headers=domain_headers
        )

    if isinstance(exc, drf_exceptions.APIException):
        code = next((code for cls, code in _DRF_CODES if isinstance(exc, cls)), "bad_request")
        title = title_of(code)
        headers: dict[str, str] = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.wait)))
        detail, errors = str(exc.detail), None
        if isinstance(exc, drf_exceptions.ValidationError):
            detail, errors = "The request has invalid fields; see `errors`.", flatten_validation_errors(exc.detail)
        elif isinstance(exc, drf_exceptions.ParseError):
            # A malformed body is one more kind of invalid input, so it carries `errors` too.
            errors = [{"field": None, "message": detail}]
        return problem_response(
            status=exc.status_code, code=code, title=title, detail=detail, errors=errors, headers=headers
        )

    logger.exception("unhandled error in %s", context.get("view").__class__.__name__)
    return problem_response(
        status=500,
        code="internal_error",
        title=title_of("internal_error"),
        detail="Something went wrong on our side. It has been logged.",
    )


# Django-level handlers, for errors raised outside DRF views (unknown URLs, middleware). -----


def problem_json(error: DomainError) -> JsonResponse:
    """A domain error as problem+json, outside DRF (middleware)."""
    return _json_problem(error.status, error.code, error.detail)


def _json_problem(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse(
        problem_body(status=status, code=code, title=title_of(code), detail=detail),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
    )


@csrf_exempt  # Unsafe methods to unknown URLs must get the 404, not a CSRF page.
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Catch-all for unknown URLs under /api/: problem+json, whatever DEBUG says."""
    return _json_problem(404, "not_found", f"No endpoint at {request.path}.")


def _wants_problem(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _refusal(exception: Exception | None) -> DomainError:
    if isinstance(exception, RequestDataTooBig):
        return PayloadTooLarge(f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
    return DomainError("The request could not be understood.")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _wants_problem(request):
        return defaults.bad_request(request, exception)
    return problem_json(_refusal(exception))


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _wants_problem(request):
        return defaults.permission_denied(request, exception)
    return _json_problem(403, "permission_denied", "You may not do this.")


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _wants_problem(request):
        return defaults.page_not_found(request, exception)
    return api_not_found(request)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: problem+json under /api/, Django's page elsewhere."""
    if not _wants_problem(request):
        return csrf.csrf_failure(request, reason)
    return _json_problem(403, "permission_denied", f"CSRF check failed: {reason}")


def handler500(request: HttpRequest) -> HttpResponse:
    if not _wants_problem(request):
        return defaults.server_error(request)
    return _json_problem(500, "internal_error", "Something went wrong on our side.")
