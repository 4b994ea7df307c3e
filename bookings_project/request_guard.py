"""Refusals that hold for every URL, before any view sees the request."""

from __future__ import annotations

import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse

from bookings_project.errors import problem_json
from bookings_project.exceptions import HttpsRequired

_API = re.compile(r"/api/v\d+/")


class RequestGuardMiddleware:
    """- No URL of ours carries a NUL character (`%00`). PostgreSQL refuses NUL in text, so one
      in a path or a query parameter that reaches a look-up (an admin filter, a search) would
      fail in the database as a 500; it is a 400 here instead, for every endpoint at once.
      Bodies need no such rule: every text field of a form or a serializer refuses NUL already.
    - With `SECURE_SSL_REDIRECT` on, an API request over plain HTTP is refused (403
      `https_required`), not redirected: its token has already crossed the wire, and a
      redirect that works would let the client go on sending it so. The pages (admin, the
      API's docs and schema) are redirected as usual (`SECURE_REDIRECT_EXEMPT` leaves
      /api/v1/ to this rule)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path_info or "%00" in request.META.get("QUERY_STRING", ""):
            raise BadRequest("The URL carries a NUL character.")
        if settings.SECURE_SSL_REDIRECT and _API.match(request.path_info) and not request.is_secure():
            return problem_json(HttpsRequired())
        return self.get_response(request)
