"""Refusals that hold for every URL, before any view sees the request."""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse


class RefuseNulMiddleware:
    """No URL of ours carries a NUL character (`%00`). PostgreSQL refuses NUL in text, so one
    in a path or a query parameter that reaches a look-up (an admin filter, a search) would
    fail in the database as a 500; it is a 400 here instead, for every endpoint at once.
    Bodies need no such rule: every text field of a form or a serializer refuses NUL already."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path_info or "%00" in request.META.get("QUERY_STRING", ""):
            raise BadRequest("The URL carries a NUL character.")
        return self.get_response(request)
