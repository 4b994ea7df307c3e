"""`X-Request-ID`: accepted from the client (or generated), echoed on the response, and
passed on to the Flights service, so one request can be followed across both logs. The
request being served is also kept here, for the audit trail to name its user."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

from bookings_project import metrics

HEADER = "X-Request-ID"
_META_KEY = "HTTP_X_REQUEST_ID"
# Anything else from a client is replaced: the id ends up in logs and outbound headers.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
request_log = logging.getLogger("bookings_project.requests")
_current: ContextVar[str | None] = ContextVar("request_id", default=None)
_request: ContextVar[HttpRequest | None] = ContextVar("request", default=None)


def get() -> str | None:
    """The id of the request being served by this thread, if any."""
    return _current.get()


def current_request() -> HttpRequest | None:
    """The request being served by this thread, if any."""
    return _request.get()


@contextmanager
def bound(value: str) -> Iterator[None]:
    """Use `value` as the request id inside the block (for work outside a request: cleanup)."""
    token = _current.set(value)
    try:
        yield
    finally:
        _current.reset(token)


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # META, not request.headers: that builds a dict of every header first.
        incoming = request.META.get(_META_KEY, "")
        value = incoming if _ACCEPTABLE.fullmatch(incoming) else uuid.uuid4().hex
        request.request_id = value
        token, request_token = _current.set(value), _request.set(request)
        started = time.monotonic()
        try:
            response = self.get_response(request)
            seconds = time.monotonic() - started
            _log_request(request, response.status_code, seconds)
            metrics.observe_request(request, response, seconds)
        finally:
            _current.reset(token)
            _request.reset(request_token)
        response[HEADER] = value
        return response


def _log_request(request: HttpRequest, status: int, seconds: float) -> None:
    """One line per request: what, for whom, the answer and how long it took."""
    user = getattr(request, "user", None)  # Set by DRF's or the session's authentication.
    request_log.info(
        "%s %s %s",
        request.method,
        request.path,
        status,
        extra={
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "user_id": getattr(user, "pk", None),
        },
    )
